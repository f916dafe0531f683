//! Views: new layouts over the same storage. None of these copy, except `reshape` of data that
//! is not laid out row-major (it falls back to `contiguous().reshape(..)`) and `contiguous`
//! itself when the tensor is not already contiguous.

use crate::backend::UnaryOp;
use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::layout::Layout;
use crate::tensor::Tensor;

impl Tensor {
    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout }
    }

    /// Swaps axes `a` and `b`.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.transpose(a, b)?))
    }

    /// Swaps the last two axes (the matrix transpose of a batch of matrices).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            bail!("t", "needs at least 2 axes, got shape {}", fmt_shape(self.shape()));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Output axis `i` is input axis `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(dims)?))
    }

    /// Entries `start..start+len` of `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow(axis, start, len)?))
    }

    /// Broadcasts to `shape` with numpy rules (stride-0 axes; nothing is copied).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_to(shape)?))
    }

    /// The same elements in row-major order under a new shape. One axis may be given as
    /// `usize::MAX` to be inferred. A view when the layout allows it, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let shape = infer_shape(self.shape(), shape)?;
        match self.layout.reshape_view(&shape) {
            Some(layout) => Ok(self.with_layout(layout)),
            None => {
                let c = self.contiguous()?;
                Ok(c.with_layout(Layout::contiguous(&shape)))
            }
        }
    }

    /// Collapses all axes into one.
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// A contiguous tensor with the same elements: `self` if already contiguous, else a copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let storage = self.kernels().unary(self.operand()?, UnaryOp::Identity)?;
        Ok(Tensor::from_output(storage, self.shape()))
    }

    /// Inserts a size-1 axis at `axis`.
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.unsqueeze(axis)?))
    }

    /// Removes the size-1 axis `axis`.
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.squeeze(axis)?))
    }
}

/// Resolves one `usize::MAX` entry of `to` so the element counts match; errors otherwise.
fn infer_shape(from: &[usize], to: &[usize]) -> Result<Vec<usize>> {
    let numel: usize = from.iter().product();
    let holes = to.iter().filter(|&&d| d == usize::MAX).count();
    let known: usize = to.iter().filter(|&&d| d != usize::MAX).product();
    let shape_str = || {
        let parts: Vec<String> =
            to.iter().map(|&d| if d == usize::MAX { "?".into() } else { d.to_string() }).collect();
        format!("[{}]", parts.join(","))
    };
    match holes {
        0 if known == numel => Ok(to.to_vec()),
        1 if known > 0 && numel.is_multiple_of(known) => {
            Ok(to.iter().map(|&d| if d == usize::MAX { numel / known } else { d }).collect())
        }
        0 | 1 => bail!("reshape", "cannot reshape {} ({numel} elements) to {}", fmt_shape(from), shape_str()),
        _ => bail!("reshape", "at most one axis can be inferred, got {}", shape_str()),
    }
}
