//! Ops that pick, place or join elements: concatenation, index-select and index-add, embedding
//! lookup and its scatter-add, gather and scatter-add along an axis, argmax and top-k.
//!
//! Indices are host `usize` slices (token ids, labels, sampled positions come from the host);
//! every index is bounds-checked here, so backends never see one out of range.

use std::sync::Arc;

use crate::backend::UnaryOp;
use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Joins tensors along `axis`; all other axes must agree.
    pub fn cat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        let Some(first) = parts.first() else { bail!("cat", "needs at least one tensor") };
        first.layout.check_axis("cat", axis)?;
        for p in &parts[1..] {
            first.same_device("cat", p)?;
            let agree = p.rank() == first.rank()
                && p.shape().iter().zip(first.shape()).enumerate().all(|(d, (a, b))| d == axis || a == b);
            if !agree {
                bail!(
                    "cat",
                    "shapes {} and {} differ outside axis {axis}",
                    fmt_shape(first.shape()),
                    fmt_shape(p.shape())
                );
            }
        }
        let operands = parts.iter().map(|p| p.operand()).collect::<Result<Vec<_>>>()?;
        let s = first.kernels().cat(&operands, axis)?;
        let mut shape = first.shape().to_vec();
        shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
        Ok(Tensor::from_output(s, &shape))
    }

    /// Writes `src` over entries `start..start + src.shape()[axis]` of `axis`, in place: what
    /// `self.narrow(axis, start, len)` shows becomes `src`. The other axes must agree. This is
    /// the only op that changes a tensor, and it keeps value semantics: when the storage is
    /// shared (with a clone, a view, a tape's saved input) or holds more than this tensor
    /// shows, `self` first becomes a private contiguous copy, so no other tensor ever sees the
    /// change. Key/value caches use it to append the newest position's keys without copying
    /// the ones they already hold.
    pub fn write_narrow(&mut self, axis: usize, start: usize, src: &Tensor) -> Result<()> {
        self.same_device("write_narrow", src)?;
        self.layout.check_axis("write_narrow", axis)?;
        let len = src.shape().get(axis).copied().unwrap_or(0);
        let fits = src.rank() == self.rank()
            && src.shape().iter().zip(self.shape()).enumerate().all(|(d, (a, b))| d == axis || a == b)
            && start.checked_add(len).is_some_and(|end| end <= self.shape()[axis]);
        if !fits {
            bail!(
                "write_narrow",
                "cannot write {} at {start} of axis {axis} of {}",
                fmt_shape(src.shape()),
                fmt_shape(self.shape())
            );
        }
        if src.numel() == 0 {
            return Ok(());
        }
        let private = self.is_contiguous()
            && self.layout.offset() == 0
            && self.storage.backend().len() == self.numel()
            && Arc::get_mut(&mut self.storage).is_some();
        if !private {
            let copy = self.kernels().unary(self.operand()?, UnaryOp::Identity)?;
            *self = Tensor::from_output(copy, self.shape());
        }
        let dst = self.layout.narrow(axis, start, len)?;
        let storage = Arc::get_mut(&mut self.storage).expect("a private copy was just made");
        storage.backend_mut().write(&dst, src.operand()?)
    }

    fn check_indices(&self, op: &'static str, axis: usize, indices: &[usize]) -> Result<()> {
        self.layout.check_axis(op, axis)?;
        let size = self.shape()[axis];
        if let Some(bad) = indices.iter().find(|&&i| i >= size) {
            bail!(
                op,
                "index {bad} out of range for axis {axis} of size {size} in {}",
                fmt_shape(self.shape())
            );
        }
        Ok(())
    }

    /// The entries `indices` of `axis`, in that order (repeats allowed).
    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        self.check_indices("index_select", axis, indices)?;
        let s = self.kernels().index_select(self.operand()?, axis, indices)?;
        let mut shape = self.shape().to_vec();
        shape[axis] = indices.len();
        Ok(Tensor::from_output(s, &shape))
    }

    /// The adjoint of `index_select`: a tensor with `size` entries along `axis`, zero except
    /// `out[.., indices[i], ..] += self[.., i, ..]`.
    pub fn index_add(&self, axis: usize, indices: &[usize], size: usize) -> Result<Tensor> {
        self.layout.check_axis("index_add", axis)?;
        if indices.len() != self.shape()[axis] {
            bail!("index_add", "{} indices for axis {axis} of {}", indices.len(), fmt_shape(self.shape()));
        }
        if let Some(bad) = indices.iter().find(|&&i| i >= size) {
            bail!("index_add", "index {bad} out of range for a target axis of size {size}");
        }
        let s = self.kernels().index_add(self.operand()?, axis, indices, size)?;
        let mut shape = self.shape().to_vec();
        shape[axis] = size;
        Ok(Tensor::from_output(s, &shape))
    }

    /// Embedding lookup: `self` is a `[vocab, dim]` table, `ids` has shape `ids_shape`, and the
    /// result has shape `ids_shape + [dim]`.
    pub fn embedding(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Tensor> {
        if self.rank() != 2 {
            bail!("embedding", "table must be [vocab, dim], got {}", fmt_shape(self.shape()));
        }
        if ids.len() != ids_shape.iter().product::<usize>() {
            bail!("embedding", "{} ids do not fill shape {}", ids.len(), fmt_shape(ids_shape));
        }
        let rows = self.index_select(0, ids)?;
        rows.reshape(&[ids_shape, &[self.shape()[1]]].concat())
    }

    /// [`Tensor::embedding`] plus `rows` `[N, dim]` (for `ids_shape` `[.., N]`, broadcast over
    /// the leading axes): a token's embedding plus its position's, `table[ids[.., n]] +
    /// rows[n]`. Devices that can add them as they look the tokens up do (the CPU), without a
    /// tensor of the lookup alone and a pass over it; the numbers are the lookup's then the
    /// add's.
    pub fn embedding_plus(&self, ids: &[usize], ids_shape: &[usize], rows: &Tensor) -> Result<Tensor> {
        let name = "embedding_plus";
        if self.rank() != 2 {
            bail!(name, "table must be [vocab, dim], got {}", fmt_shape(self.shape()));
        }
        if ids.len() != ids_shape.iter().product::<usize>() {
            bail!(name, "{} ids do not fill shape {}", ids.len(), fmt_shape(ids_shape));
        }
        let dim = self.shape()[1];
        let positions = ids_shape.last().copied().unwrap_or(1);
        if rows.shape() != [positions, dim] {
            bail!(
                name,
                "rows of shape {} for ids of shape {} into a table of shape {}: need [{positions}, {dim}]",
                fmt_shape(rows.shape()),
                fmt_shape(ids_shape),
                fmt_shape(self.shape())
            );
        }
        self.same_device(name, rows)?;
        self.check_indices(name, 0, ids)?;
        let shape = [ids_shape, &[dim]].concat();
        match self.kernels().embedding_plus(self.operand()?, ids, rows.operand()?)? {
            Some(s) => Ok(Tensor::from_output(s, &shape)),
            None => self.embedding(ids, ids_shape)?.add(rows),
        }
    }

    /// The table gradient of an embedding lookup: rows of `self` (shape `ids_shape + [dim]`)
    /// added into a `[vocab, dim]` table at their ids.
    pub fn embedding_backward(&self, ids: &[usize], vocab: usize) -> Result<Tensor> {
        let dim = *self.shape().last().unwrap_or(&0);
        self.reshape(&[ids.len(), dim])?.index_add(0, ids, vocab)
    }

    /// `out[.., i, ..] = self[.., indices[.., i, ..], ..]` along `axis`; `indices` has shape
    /// `index_shape`, equal to `self`'s except along `axis`.
    pub fn gather(&self, axis: usize, indices: &[usize], index_shape: &[usize]) -> Result<Tensor> {
        self.check_index_shape("gather", axis, indices, index_shape)?;
        self.check_indices("gather", axis, indices)?;
        let s = self.kernels().gather(self.operand()?, axis, indices, index_shape)?;
        Ok(Tensor::from_output(s, index_shape))
    }

    /// The adjoint of `gather`: a tensor with `size` entries along `axis`, zero except
    /// `out[.., indices[.., i, ..], ..] += self[.., i, ..]`.
    pub fn scatter_add(&self, axis: usize, indices: &[usize], size: usize) -> Result<Tensor> {
        self.layout.check_axis("scatter_add", axis)?;
        if indices.len() != self.numel() {
            bail!(
                "scatter_add",
                "{} indices for a source of shape {}",
                indices.len(),
                fmt_shape(self.shape())
            );
        }
        if let Some(bad) = indices.iter().find(|&&i| i >= size) {
            bail!("scatter_add", "index {bad} out of range for a target axis of size {size}");
        }
        let s = self.kernels().scatter_add(self.operand()?, axis, indices, size)?;
        let mut shape = self.shape().to_vec();
        shape[axis] = size;
        Ok(Tensor::from_output(s, &shape))
    }

    fn check_index_shape(
        &self,
        op: &'static str,
        axis: usize,
        indices: &[usize],
        shape: &[usize],
    ) -> Result<()> {
        self.layout.check_axis(op, axis)?;
        let agree = shape.len() == self.rank()
            && shape.iter().zip(self.shape()).enumerate().all(|(d, (a, b))| d == axis || a == b);
        if !agree || indices.len() != shape.iter().product::<usize>() {
            bail!(
                op,
                "{} indices of shape {} do not fit {} along axis {axis}",
                indices.len(),
                fmt_shape(shape),
                fmt_shape(self.shape())
            );
        }
        Ok(())
    }

    /// Index of the largest entry along `axis` (the first on ties), in row-major order of the
    /// shape without `axis`.
    pub fn argmax(&self, axis: usize) -> Result<Vec<usize>> {
        self.layout.check_axis("argmax", axis)?;
        if self.shape()[axis] == 0 {
            bail!("argmax", "axis {axis} of {} is empty", fmt_shape(self.shape()));
        }
        self.kernels().argmax(self.operand()?, axis)
    }

    /// The `k` largest entries along the last axis, largest first (ties keep the lower index):
    /// their values, shape `[..., k]`, and their indices in the same order.
    pub fn topk(&self, k: usize) -> Result<(Tensor, Vec<usize>)> {
        let Some(&n) = self.shape().last() else { bail!("topk", "needs at least one axis") };
        if k > n {
            bail!("topk", "k = {k} exceeds the last axis of {}", fmt_shape(self.shape()));
        }
        let data = self.to_vec()?;
        let mut values = Vec::with_capacity(data.len() / n.max(1) * k);
        let mut indices = Vec::with_capacity(values.capacity());
        let mut order: Vec<usize> = Vec::with_capacity(n);
        let rows = if n == 0 { [].chunks_exact(1) } else { data.chunks_exact(n) };
        for row in rows {
            order.clear();
            order.extend(0..n);
            // Descending by value; NaN sorts first like a maximum; stable keeps lower indices first.
            order.sort_by(|&a, &b| {
                row[b].partial_cmp(&row[a]).unwrap_or_else(|| row[b].is_nan().cmp(&row[a].is_nan()).reverse())
            });
            for &i in &order[..k] {
                values.push(row[i]);
                indices.push(i);
            }
        }
        let mut shape = self.shape().to_vec();
        *shape.last_mut().unwrap() = k;
        Ok((Tensor::from_vec(values, &shape)?.to_device(&self.device())?, indices))
    }
}
