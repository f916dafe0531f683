//! The CPU backend: storage is a `Vec<f32>`, kernels are vectorised with `wide`, split across
//! threads with `rayon`, and matrix products go through `matrixmultiply::sgemm`.
//!
//! Each submodule is one family of kernels; this file only routes the device trait to them.

pub mod elementwise;
pub mod index;
pub mod layer_norm;
pub mod math;
pub mod matmul;
pub mod parallel;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub mod walk;

use std::any::Any;

use crate::backend::{
    BackendStorage, BinaryOp, Device, LayerNormGrads, LayerNormOutput, MatmulSpec, ReduceOp, Storage, UnaryOp,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Tensor data in main memory. Large buffers go back to the [`pool`] when dropped.
#[derive(Clone, Debug, Default)]
pub struct CpuStorage {
    data: Vec<f32>,
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        pool::recycle(std::mem::take(&mut self.data));
    }
}

impl CpuStorage {
    pub fn new(data: Vec<f32>) -> Self {
        CpuStorage { data }
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

fn wrap(data: Vec<f32>) -> Result<Storage> {
    Ok(Storage::Cpu(CpuStorage::new(data)))
}

/// The CPU slice of an operand (the Tensor layer has already checked devices).
fn cpu<'a>(op: &'static str, s: &'a Storage) -> Result<&'a [f32]> {
    s.as_cpu()
        .map(CpuStorage::as_slice)
        .ok_or_else(|| Error::new(op, format!("operand is on {}, not cpu", s.device())))
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn to_host(&self, layout: &Layout) -> Result<Vec<f32>> {
        if layout.is_contiguous() {
            return Ok(self.data[layout.offset()..layout.offset() + layout.numel()].to_vec());
        }
        Ok(elementwise::unary(&self.data, layout, UnaryOp::Identity))
    }
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        wrap(elementwise::unary(&self.data, layout, op))
    }
    fn binary(&self, layout: &Layout, rhs: &Storage, rhs_layout: &Layout, op: BinaryOp) -> Result<Storage> {
        wrap(elementwise::binary(&self.data, layout, cpu("binary", rhs)?, rhs_layout, op))
    }
    fn where_cond(
        &self,
        layout: &Layout,
        t: &Storage,
        lt: &Layout,
        f: &Storage,
        lf: &Layout,
    ) -> Result<Storage> {
        wrap(elementwise::where_cond(
            &self.data,
            layout,
            cpu("where_cond", t)?,
            lt,
            cpu("where_cond", f)?,
            lf,
        ))
    }
    fn reduce(&self, layout: &Layout, axis: usize, op: ReduceOp) -> Result<Storage> {
        wrap(reduce::reduce(&self.data, layout, axis, op))
    }
    fn argmax(&self, layout: &Layout, axis: usize) -> Result<Vec<usize>> {
        Ok(reduce::argmax(&self.data, layout, axis))
    }
    fn softmax(&self, layout: &Layout) -> Result<Storage> {
        wrap(softmax::softmax(&self.data, layout))
    }
    fn softmax_backward(&self, layout: &Layout, dy: &Storage, dy_layout: &Layout) -> Result<Storage> {
        wrap(softmax::softmax_backward(&self.data, layout, cpu("softmax_backward", dy)?, dy_layout))
    }
    fn layer_norm(
        &self,
        layout: &Layout,
        weight: &Storage,
        weight_layout: &Layout,
        bias: &Storage,
        bias_layout: &Layout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let w = elementwise::contiguous(cpu("layer_norm", weight)?, weight_layout);
        let b = elementwise::contiguous(cpu("layer_norm", bias)?, bias_layout);
        let f = layer_norm::forward(&self.data, layout, &w, &b, eps);
        Ok(LayerNormOutput { y: wrap(f.y)?, mean: wrap(f.mean)?, rstd: wrap(f.rstd)? })
    }
    fn layer_norm_backward(
        &self,
        layout: &Layout,
        weight: &Storage,
        weight_layout: &Layout,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        dy_layout: &Layout,
    ) -> Result<LayerNormGrads> {
        let op = "layer_norm_backward";
        let w = elementwise::contiguous(cpu(op, weight)?, weight_layout);
        let g = layer_norm::backward(
            &self.data,
            layout,
            &w,
            cpu(op, mean)?,
            cpu(op, rstd)?,
            cpu(op, dy)?,
            dy_layout,
        );
        Ok(LayerNormGrads { dx: wrap(g.dx)?, dweight: wrap(g.dw)?, dbias: wrap(g.db)? })
    }
    fn matmul(
        &self,
        layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<Storage> {
        wrap(matmul::matmul(&self.data, layout, cpu("matmul", rhs)?, rhs_layout, spec))
    }
    fn index_select(&self, layout: &Layout, axis: usize, indices: &[usize]) -> Result<Storage> {
        wrap(index::index_select(&self.data, layout, axis, indices))
    }
    fn index_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
        wrap(index::index_add(&self.data, layout, axis, indices, size))
    }
    fn gather(
        &self,
        layout: &Layout,
        axis: usize,
        indices: &[usize],
        out_shape: &[usize],
    ) -> Result<Storage> {
        wrap(index::gather(&self.data, layout, axis, indices, out_shape))
    }
    fn scatter_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
        wrap(index::scatter_add(&self.data, layout, axis, indices, size))
    }
    fn cat(&self, layout: &Layout, others: &[(&Storage, &Layout)], axis: usize) -> Result<Storage> {
        let mut parts = vec![(self.data.as_slice(), layout)];
        for (s, l) in others {
            parts.push((cpu("cat", s)?, l));
        }
        wrap(index::cat(&parts, axis))
    }
}
