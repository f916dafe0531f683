//! The device trait: what a place that holds tensors (the CPU, an OpenCL device) must be able
//! to do.
//!
//! The [`Tensor`](crate::Tensor) API checks shapes, axes and devices, works out output shapes and
//! broadcast layouts, and then calls one coarse op of [`BackendStorage`] on the storage of the
//! first operand. A backend sees only flat storage plus [`Layout`]s that are already valid, and
//! always returns fresh contiguous storage. Ops are coarse (a whole matmul, a fused layer norm,
//! a softmax), so one dynamic call per op costs nothing next to the work it starts.
//!
//! The CPU implements this trait statically ([`crate::cpu::CpuStorage`]); other crates (the
//! `gpu` crate) implement it too and wrap their storage in [`Storage::Ext`], so the layers above
//! `tensor` never change when a device is added.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::cpu::CpuStorage;
use crate::error::Result;
use crate::layout::Layout;

pub use crate::op_table::{BinaryOp, UnaryOp};

/// Reductions along one axis. (Their kernels differ in more than one expression, so each
/// backend writes them out; the OpenCL code is the variant's position, `op as i32`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// `log Σ exp(x)`, computed as `m + log Σ exp(x - m)` with `m` the maximum.
    LogSumExp,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::LogSumExp];

    /// The method name (`"sum"`, `"log_sum_exp"`), also used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::LogSumExp => "log_sum_exp",
        }
    }
}

/// A batched matrix product `out[b] = a[b] @ b[b]`, with batch axes already broadcast.
///
/// `a` has layout `[batch..., m, k]` and `b` has `[batch..., k, n]`, both possibly strided (a
/// transposed operand is just a layout with swapped strides); `out` is contiguous
/// `[batch..., m, n]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    pub batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Outputs of the fused layer norm forward over the last axis: `y`, plus the per-row `mean` and
/// reciprocal standard deviation `rstd` that the backward needs (shape: the input's without its
/// last axis).
pub struct LayerNormOutput {
    pub y: Storage,
    pub mean: Storage,
    pub rstd: Storage,
}

/// Gradients of the fused layer norm: the input's, the weight's and the bias's.
pub struct LayerNormGrads {
    pub dx: Storage,
    pub dweight: Storage,
    pub dbias: Storage,
}

/// A device that can hold tensors.
pub trait BackendDevice: Send + Sync + fmt::Debug {
    /// A name for people and for telling devices apart, e.g. `opencl:0`.
    fn name(&self) -> String;
    /// Copies host data onto the device.
    fn upload(&self, data: &[f32]) -> Result<Storage>;
    /// `len` zeros on the device.
    fn zeros(&self, len: usize) -> Result<Storage>;
}

/// Where a tensor's numbers live.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Ext(Arc<dyn BackendDevice>),
}

impl Device {
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Ext(d) => d.name(),
        }
    }
    /// Copies host data onto this device.
    pub fn upload(&self, data: &[f32]) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::new(data.to_vec()))),
            Device::Ext(d) => d.upload(data),
        }
    }
    pub fn zeros(&self, len: usize) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::new(vec![0.0; len]))),
            Device::Ext(d) => d.zeros(len),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Flat f32 storage on some device, and the ops on it.
///
/// Every op reads its inputs through their layouts and returns new contiguous storage of the
/// output shape. Operands other than `self` are passed as [`Storage`]; a backend takes its own
/// kind out of them with [`Storage::downcast`]. The `Tensor` layer has already checked that all
/// operands live on the same device and that shapes and axes are valid.
pub trait BackendStorage: Send + Sync + fmt::Debug + Any {
    fn device(&self) -> Device;
    /// Number of f32 elements allocated.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;

    /// The elements of `layout` in row-major order, copied to the host.
    fn to_host(&self, layout: &Layout) -> Result<Vec<f32>>;
    /// `op` applied to every element.
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage>;
    /// `op(self[i], rhs[i])`; both layouts have the output shape (broadcast already applied).
    fn binary(&self, layout: &Layout, rhs: &Storage, rhs_layout: &Layout, op: BinaryOp) -> Result<Storage>;
    /// `self[i] != 0 ? on_true[i] : on_false[i]`; all three layouts have the output shape.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Storage,
        on_true_layout: &Layout,
        on_false: &Storage,
        on_false_layout: &Layout,
    ) -> Result<Storage>;
    /// Reduces `axis`; the output has the input's shape with `axis` of size 1.
    fn reduce(&self, layout: &Layout, axis: usize, op: ReduceOp) -> Result<Storage>;
    /// Index of the largest element along `axis` (the first one on ties), in row-major order of
    /// the output shape (the input's without `axis`).
    fn argmax(&self, layout: &Layout, axis: usize) -> Result<Vec<usize>>;
    /// Softmax along the last axis.
    fn softmax(&self, layout: &Layout) -> Result<Storage>;
    /// Given `y = softmax(x)` (self) and `dy`, returns `dx = y * (dy - Σ dy*y)` along the last axis.
    fn softmax_backward(&self, layout: &Layout, dy: &Storage, dy_layout: &Layout) -> Result<Storage>;
    /// Layer norm over the last axis with an elementwise affine (`weight`, `bias` of the last
    /// axis's size).
    fn layer_norm(
        &self,
        layout: &Layout,
        weight: &Storage,
        weight_layout: &Layout,
        bias: &Storage,
        bias_layout: &Layout,
        eps: f32,
    ) -> Result<LayerNormOutput>;
    /// The fused backward of [`BackendStorage::layer_norm`]; `mean` and `rstd` are contiguous.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        layout: &Layout,
        weight: &Storage,
        weight_layout: &Layout,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        dy_layout: &Layout,
    ) -> Result<LayerNormGrads>;
    /// Batched matrix product, see [`MatmulSpec`].
    fn matmul(
        &self,
        layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<Storage>;
    /// Picks entries `indices` along `axis`: the output has `indices.len()` entries there.
    fn index_select(&self, layout: &Layout, axis: usize, indices: &[usize]) -> Result<Storage>;
    /// The adjoint of `index_select`: zeros with `size` entries along `axis`, and
    /// `out[.., indices[i], ..] += self[.., i, ..]` (repeated indices accumulate).
    fn index_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage>;
    /// `out[.., i, ..] = self[.., indices[.., i, ..], ..]` along `axis`, where `indices` has the
    /// output's shape (given as `out_shape`) in row-major order.
    fn gather(&self, layout: &Layout, axis: usize, indices: &[usize], out_shape: &[usize])
        -> Result<Storage>;
    /// The adjoint of `gather`: zeros with `size` entries along `axis`, and
    /// `out[.., indices[.., i, ..], ..] += self[.., i, ..]`.
    fn scatter_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage>;
    /// Concatenates `self` (first) and `others` along `axis`.
    fn cat(&self, layout: &Layout, others: &[(&Storage, &Layout)], axis: usize) -> Result<Storage>;
}

/// Flat storage: the CPU's, statically, or another backend's behind the trait.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Ext(Box<dyn BackendStorage>),
}

impl Storage {
    /// The storage as the device trait, whichever backend holds it.
    pub fn backend(&self) -> &dyn BackendStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Ext(s) => s.as_ref(),
        }
    }

    pub fn device(&self) -> Device {
        self.backend().device()
    }

    /// The CPU data, if this storage is on the CPU.
    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Ext(_) => None,
        }
    }

    /// A backend's own storage type, for the operands of its ops.
    pub fn downcast<T: BackendStorage>(&self) -> Option<&T> {
        self.backend().as_any().downcast_ref::<T>()
    }
}
