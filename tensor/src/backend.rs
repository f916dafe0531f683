//! The device trait: what a place that holds tensors (the CPU, an OpenCL device) must be able
//! to do.
//!
//! The [`Tensor`] API checks shapes, axes and devices, works out output shapes
//! and broadcast layouts, and then calls one coarse op of the device. Ops are coarse (a whole
//! matmul, a fused layer norm, a softmax), so one dynamic call per op costs nothing next to
//! the work it starts.
//!
//! A device implements [`BackendStorage`] for its own storage type: every op receives its
//! operands as [`Operand`]s of that type and returns fresh contiguous storage. An `Operand` is
//! a storage and a layout that lies inside it, and only this crate can make one (from a
//! `Tensor`, checking the layout's extent against the storage once), so no safe code can hand
//! a kernel a layout that reads outside its storage. Kernels that use `unsafe` (the CPU's
//! `sgemm`) rely on exactly that.
//!
//! Tensors hold storage as [`Storage`]: the CPU's statically, any other device's boxed behind
//! [`DynStorage`], the object-safe form of the trait that every `BackendStorage` gets for free.
//! Its blanket implementation is the one place where operands are turned back into the
//! device's own type, so a device's kernels never check operand types themselves.
//!
//! The CPU ([`crate::cpu::CpuStorage`]) and the `gpu` crate's OpenCL storage implement it; the
//! layers above `tensor` never change when a device is added.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::adamw::AdamWStep;
use crate::attention::KeyVisibility;
use crate::bail;
use crate::cpu::CpuStorage;
use crate::error::{fmt_shape, Error, Result};
use crate::layout::Layout;
use crate::tensor::Tensor;

pub use crate::op_table::{BinaryOp, ReduceOp, UnaryOp};

/// The shape of a batched matrix product `out[b] = a[b] @ b[b]`, read off its operands'
/// layouts: `a` is `[batch..., m, k]`, `b` is `[batch..., k, n]` (batch axes already
/// broadcast, either operand possibly strided: a transposed operand is a layout with swapped
/// strides); `out` is contiguous `[batch..., m, n]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    pub batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl MatmulSpec {
    /// The product of two operand layouts, or an error if they do not form one. Kernels take
    /// the sizes from here, never from elsewhere, so they match what the operands hold.
    pub fn of(a: &Layout, b: &Layout) -> Result<MatmulSpec> {
        let (sa, sb) = (a.shape(), b.shape());
        let r = sa.len();
        if r < 2 || sb.len() != r || sa[..r - 2] != sb[..r - 2] || sa[r - 1] != sb[r - 2] {
            bail!("matmul", "operand layouts {} and {} do not form a product", fmt_shape(sa), fmt_shape(sb));
        }
        Ok(MatmulSpec { batch: sa[..r - 2].to_vec(), m: sa[r - 2], k: sa[r - 1], n: sb[r - 1] })
    }
}

/// One operand of an op as a device sees it: a storage of type `S` and a layout that lies
/// inside it. Only this crate makes operands, each checked once, when an op starts.
pub struct Operand<'a, S: ?Sized = Storage> {
    storage: &'a S,
    layout: &'a Layout,
}

impl<S: ?Sized> Clone for Operand<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for Operand<'_, S> {}

impl<'a, S: ?Sized> Operand<'a, S> {
    pub fn storage(&self) -> &'a S {
        self.storage
    }
    /// The layout: every position it reaches is below the storage's length.
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }
}

impl<'a> Operand<'a> {
    /// `tensor` read through `layout` (its own, or a broadcast of it), after checking that
    /// every position the layout reaches lies inside the tensor's storage.
    pub(crate) fn of(tensor: &'a Tensor, layout: &'a Layout) -> Result<Operand<'a>> {
        let storage: &Storage = &tensor.storage;
        let len = storage.backend().len();
        match layout.checked_extent() {
            Some(extent) if extent <= len => Ok(Operand { storage, layout }),
            _ => Err(Error::new(
                "operand",
                format!(
                    "layout {} (offset {}) reaches past a storage of {len} elements",
                    fmt_shape(layout.shape()),
                    layout.offset()
                ),
            )),
        }
    }

    /// The same operand as the device's own storage type: the one place operand types are
    /// checked (the `Tensor` layer has already checked that all operands share a device).
    fn typed<S: BackendStorage>(self) -> Result<Operand<'a, S>> {
        match self.storage.backend().as_any().downcast_ref::<S>() {
            Some(storage) => Ok(Operand { storage, layout: self.layout }),
            None => Err(Error::new(
                "operand",
                format!("an operand on {} reached another device's kernel", self.storage.device()),
            )),
        }
    }
}

/// A storage an op may write over, with the layout of the tensor it holds: storage that no
/// other tensor shares, read and written through a layout that lies inside it and reaches no
/// position twice. Only this crate makes one (from a tensor it owns), checked when the op starts.
pub struct Owned<'a, S: ?Sized = Storage> {
    storage: &'a mut S,
    layout: &'a Layout,
}

impl<'a, S: ?Sized> Owned<'a, S> {
    /// The storage, for reading.
    pub fn storage(&self) -> &S {
        self.storage
    }
    /// The storage, for writing (only through [`Owned::layout`]'s positions).
    pub fn storage_mut(&mut self) -> &mut S {
        self.storage
    }
    /// The layout: inside the storage, every position reached once.
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }
    /// The current contents as an operand.
    pub fn operand(&self) -> Operand<'_, S> {
        Operand { storage: self.storage, layout: self.layout }
    }
}

impl<'a> Owned<'a> {
    /// `tensor`'s storage to write over through its layout: `None` when another tensor shares
    /// the storage, or the layout reaches some position twice (or, malformed, leaves it).
    pub(crate) fn of(tensor: &'a mut Tensor) -> Option<Owned<'a>> {
        let Tensor { storage, layout } = tensor;
        let storage = Arc::get_mut(storage)?;
        let fits = layout.checked_extent().is_some_and(|e| e <= storage.backend().len());
        (fits && layout.is_one_to_one()).then_some(Owned { storage, layout })
    }

    /// The same storage as the device's own type (see [`Operand`]'s `typed`).
    fn typed<S: BackendStorage>(self) -> Result<Owned<'a, S>> {
        let device = self.storage.device();
        match self.storage.backend_mut().as_any_mut().downcast_mut::<S>() {
            Some(storage) => Ok(Owned { storage, layout: self.layout }),
            None => {
                Err(Error::new("operand", format!("an operand on {device} reached another device's kernel")))
            }
        }
    }
}

/// The fused layer norm forward's outputs: `y`, plus the per-row `mean` and reciprocal
/// standard deviation `rstd` that the backward needs (shape: the input's without its last
/// axis).
pub struct LayerNormOutput<S = Storage> {
    pub y: S,
    pub mean: S,
    pub rstd: S,
}

/// What the fused layer norm backward reads: the forward's input and weight, and the saved
/// per-row statistics (contiguous).
pub struct LayerNormSaved<'a, S: ?Sized = Storage> {
    pub input: Operand<'a, S>,
    pub weight: Operand<'a, S>,
    pub mean: Operand<'a, S>,
    pub rstd: Operand<'a, S>,
}

/// The fused attention forward's outputs: `out` `[B, H, L, Dv]` stored in `order`, and the
/// per-query log-sum-exp `lse` `[B, H, L]` (−∞ for a query that sees no key), contiguous.
pub struct AttentionOutput<S = Storage> {
    pub out: S,
    pub lse: S,
    pub order: HeadOrder,
}

/// How the fused attention stores a `[B, H, T, W]` result (its output, the queries' gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOrder {
    /// `[B, H, T, W]`, contiguous: each head's rows together.
    HeadMajor,
    /// `[B, T, H, W]`, contiguous: each position's heads side by side, the heads merged as a
    /// `[B, T, H·W]` projection reads them (the output projection) or made them (the query
    /// projection's gradient), so merging them costs no copy.
    TokenMajor,
}

impl HeadOrder {
    /// The `[B, H, T, W]` layout of a result of shape `shape` stored in this order.
    pub fn layout(self, [b, h, t, w]: [usize; 4]) -> Layout {
        match self {
            HeadOrder::HeadMajor => Layout::contiguous(&[b, h, t, w]),
            HeadOrder::TokenMajor => {
                Layout::contiguous(&[b, t, h, w]).permute(&[0, 2, 1, 3]).expect("a permutation of four axes")
            }
        }
    }
}

/// What the fused attention backward reads: the forward's `q` `[B, H, L, D]`, `k`
/// `[B, H, N, D]`, `v` `[B, H, N, Dv]`, its output `[B, H, L, Dv]` and `lse` `[B, H, L]`.
pub struct AttentionSaved<'a, S: ?Sized = Storage> {
    pub q: Operand<'a, S>,
    pub k: Operand<'a, S>,
    pub v: Operand<'a, S>,
    pub out: Operand<'a, S>,
    pub lse: Operand<'a, S>,
}

/// [`AttentionSaved`] with `k` and `v` owned by the backward, which writes `dk` and `dv` over
/// them (see [`BackendStorage::attention_backward_over_keys`]).
pub struct AttentionSavedOwned<'a, S: ?Sized = Storage> {
    pub q: Operand<'a, S>,
    pub k: Owned<'a, S>,
    pub v: Owned<'a, S>,
    pub out: Operand<'a, S>,
    pub lse: Operand<'a, S>,
}

/// Gradients of the fused attention, contiguous: `dq` `[B, H, L, D]`, `dk` `[B, H, N, D]`,
/// `dv` `[B, H, N, Dv]`.
pub struct AttentionGrads<S = Storage> {
    pub dq: S,
    pub dk: S,
    pub dv: S,
}

/// Gradients of the fused layer norm: the input's, the weight's and the bias's.
pub struct LayerNormGrads<S = Storage> {
    pub dx: S,
    pub dweight: S,
    pub dbias: S,
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
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::new(crate::cpu::pool::zeroed(len)))),
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

/// Flat f32 storage on one device, and the ops on it: what a device implements.
///
/// Every op reads its operands through their layouts and returns new contiguous storage of
/// the output shape. The `Tensor` layer has already checked that all operands live on this
/// device and that shapes, axes and indices are valid, and every [`Operand`]'s layout lies
/// inside its storage.
pub trait BackendStorage: Sized + Send + Sync + fmt::Debug + 'static {
    fn device(&self) -> Device;
    /// Number of f32 elements allocated.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Wraps a result as a tensor's storage.
    fn into_storage(self) -> Storage;

    /// The elements in row-major order, copied to the host.
    fn to_host(x: Operand<Self>) -> Result<Vec<f32>>;
    /// `op` applied to every element.
    fn unary(x: Operand<Self>, op: UnaryOp) -> Result<Self>;
    /// `op(a[i], b[i])`; both layouts have the output shape (broadcast already applied).
    fn binary(a: Operand<Self>, b: Operand<Self>, op: BinaryOp) -> Result<Self>;
    /// `cond[i] != 0 ? on_true[i] : on_false[i]`; all three layouts have the output shape.
    fn where_cond(cond: Operand<Self>, on_true: Operand<Self>, on_false: Operand<Self>) -> Result<Self>;
    /// Reduces `axis`; the output has the input's shape with `axis` of size 1.
    fn reduce(x: Operand<Self>, axis: usize, op: ReduceOp) -> Result<Self>;
    /// Index of the largest element along `axis` (the first one on ties), in row-major order
    /// of the output shape (the input's without `axis`).
    fn argmax(x: Operand<Self>, axis: usize) -> Result<Vec<usize>>;
    /// Softmax along the last axis.
    fn softmax(x: Operand<Self>) -> Result<Self>;
    /// Given `y = softmax(x)` and `dy`, returns `dx = y * (dy - Σ dy*y)` along the last axis.
    fn softmax_backward(y: Operand<Self>, dy: Operand<Self>) -> Result<Self>;
    /// Layer norm over the last axis with an elementwise affine (`weight`, `bias` of the last
    /// axis's size).
    fn layer_norm(
        x: Operand<Self>,
        weight: Operand<Self>,
        bias: Operand<Self>,
        eps: f32,
    ) -> Result<LayerNormOutput<Self>>;
    /// The fused backward of [`BackendStorage::layer_norm`].
    fn layer_norm_backward(saved: LayerNormSaved<Self>, dy: Operand<Self>) -> Result<LayerNormGrads<Self>>;
    /// [`BackendStorage::layer_norm_backward`] with `dx` added into `acc` (contiguous, the
    /// input's shape) in place, for the devices that do; `None`, leaving `acc` as it was, for
    /// the others (the caller then adds a fresh `dx`). Else `(dweight, dbias)`. By default:
    /// none.
    fn layer_norm_backward_add(
        _acc: Owned<Self>,
        _saved: LayerNormSaved<Self>,
        _dy: Operand<Self>,
    ) -> Result<Option<(Self, Self)>> {
        Ok(None)
    }
    /// Batched matrix product; the sizes are [`MatmulSpec::of`] the two layouts.
    fn matmul(a: Operand<Self>, b: Operand<Self>) -> Result<Self>;
    /// `a·b + bias + residual`, each term where given, for a `bias` of one value per column of
    /// the product (a linear layer's) and a `residual` of the product's shape (the stream its
    /// output is added to), for the devices that add them as part of the product; `None` for
    /// the others (the caller then adds them to the product). By default: none.
    fn matmul_plus(
        _a: Operand<Self>,
        _b: Operand<Self>,
        _bias: Option<Operand<Self>>,
        _residual: Option<Operand<Self>>,
    ) -> Result<Option<Self>> {
        Ok(None)
    }
    /// `GELU(y)` and `GELU'(y)` for `y = a·b + bias` (the bias where given): an MLP's hidden
    /// layer and the factor its backward multiplies the gradient by, for the devices that make
    /// both as the product is stored (without storing `y`); `None` for the others (the caller
    /// then composes). By default: none.
    fn matmul_plus_gelu(
        _a: Operand<Self>,
        _b: Operand<Self>,
        _bias: Option<Operand<Self>>,
    ) -> Result<Option<(Self, Self)>> {
        Ok(None)
    }
    /// `c += a·b` written over `c` (laid out as the product's output), for the products a
    /// device adds in place; `false`, leaving `c` as it was, for the others (the caller then
    /// adds a fresh product). By default: none.
    fn matmul_add(_c: Owned<Self>, _a: Operand<Self>, _b: Operand<Self>) -> Result<bool> {
        Ok(false)
    }
    /// `a·b` and `c·d` computed together, the first added into `acc` where given (as
    /// [`Self::matmul_add`]; its result is then `None`), or multiplied elementwise by `times`
    /// (of the first product's shape) where that is given (the gradient of an activation's
    /// input: its output's gradient times its derivative), for the devices that share their
    /// threads between two products (a linear layer's backward: its input's gradient and its
    /// weight's); `None` for the others, `acc` left as it was (the caller then makes each
    /// alone). By default: none.
    fn matmul_pair(
        _acc: Option<Owned<Self>>,
        _first: (Operand<Self>, Operand<Self>),
        _second: (Operand<Self>, Operand<Self>),
        _times: Option<Operand<Self>>,
    ) -> Result<Option<(Option<Self>, Self)>> {
        Ok(None)
    }
    /// Fused attention (see [`crate::attention`]): `q` `[B, H, L, D]`, `k` `[B, H, N, D]`, `v`
    /// `[B, H, N, Dv]`, the keys each query sees given by `vis`.
    fn attention(
        q: Operand<Self>,
        k: Operand<Self>,
        v: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionOutput<Self>>;
    /// The fused attention backward, from the saved forward and the output gradient `d_out`
    /// `[B, H, L, Dv]`.
    fn attention_backward(
        saved: AttentionSaved<Self>,
        d_out: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionGrads<Self>>;
    /// The fused attention backward with `dk` written over `k` and `dv` over `v`, each in its
    /// own layout; returns `dq`, stored in the order it gives. At long contexts the keys and
    /// values are the biggest tensors of a step, and their gradients need not take two more
    /// of their size. By default: [`BackendStorage::attention_backward`], then the gradients
    /// copied over.
    fn attention_backward_over_keys(
        saved: AttentionSavedOwned<Self>,
        d_out: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<(Self, HeadOrder)> {
        let AttentionSavedOwned { q, mut k, mut v, out, lse } = saved;
        let grads = {
            let saved = AttentionSaved { q, k: k.operand(), v: v.operand(), out, lse };
            Self::attention_backward(saved, d_out, vis)?
        };
        for (owned, grad) in [(&mut k, &grads.dk), (&mut v, &grads.dv)] {
            let contiguous = Layout::contiguous(owned.layout.shape());
            let layout = owned.layout;
            owned.storage.write(layout, Operand { storage: grad, layout: &contiguous })?;
        }
        Ok((grads.dq, HeadOrder::HeadMajor))
    }
    /// Rotary's pair rotation (see [`crate::rotary`]): `cos` and `sin` are broadcast to `x`'s
    /// shape but for their last axis, the `dims` rotated channels.
    fn rotate_pairs(x: Operand<Self>, cos: Operand<Self>, sin: Operand<Self>) -> Result<Self>;
    /// [`BackendStorage::rotate_pairs`] written over `x` (channels past the tables' count stay
    /// as they are). By default: the rotation, then a copy over `x`.
    fn rotate_pairs_in_place(x: Owned<Self>, cos: Operand<Self>, sin: Operand<Self>) -> Result<()> {
        let rotated = Self::rotate_pairs(x.operand(), cos, sin)?;
        let contiguous = Layout::contiguous(x.layout.shape());
        let layout = x.layout;
        x.storage.write(layout, Operand { storage: &rotated, layout: &contiguous })
    }
    /// Picks entries `indices` along `axis`: the output has `indices.len()` entries there.
    fn index_select(x: Operand<Self>, axis: usize, indices: &[usize]) -> Result<Self>;
    /// Rows `ids` of the `[vocab, dim]` `table`, each plus row `i % N` of `rows` `[N, dim]`
    /// (`ids` row-major over `[.., N]`): `[ids.len(), dim]`, contiguous. For the devices that
    /// add as they look up; `None` for the others (the caller then composes). By default:
    /// none.
    fn embedding_plus(_table: Operand<Self>, _ids: &[usize], _rows: Operand<Self>) -> Result<Option<Self>> {
        Ok(None)
    }
    /// The adjoint of `index_select`: zeros with `size` entries along `axis`, and
    /// `out[.., indices[i], ..] += x[.., i, ..]` (repeated indices accumulate).
    fn index_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self>;
    /// `out[.., i, ..] = x[.., indices[.., i, ..], ..]` along `axis`, where `indices` has the
    /// output's shape (given as `out_shape`) in row-major order.
    fn gather(x: Operand<Self>, axis: usize, indices: &[usize], out_shape: &[usize]) -> Result<Self>;
    /// The adjoint of `gather`: zeros with `size` entries along `axis`, and
    /// `out[.., indices[.., i, ..], ..] += x[.., i, ..]`.
    fn scatter_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self>;
    /// Concatenates `parts` along `axis`.
    fn cat(parts: &[Operand<Self>], axis: usize) -> Result<Self>;
    /// One AdamW step (see [`crate::adamw`]) of the contiguous, equally shaped parameter,
    /// gradient and moments `[x, g, m, v]`: the new `[x, m, v]`.
    fn adamw_step(operands: [Operand<Self>; 4], step: &AdamWStep) -> Result<[Self; 3]>;
    /// [`BackendStorage::adamw_step`] written over the contiguous `x`, `m` and `v`. By default:
    /// the step, then a copy over each.
    fn adamw_step_in_place(
        (x, g): (Owned<Self>, Operand<Self>),
        (m, v): (Owned<Self>, Owned<Self>),
        step: &AdamWStep,
    ) -> Result<()> {
        let new = Self::adamw_step([x.operand(), g, m.operand(), v.operand()], step)?;
        for (owned, value) in [x, m, v].into_iter().zip(&new) {
            let contiguous = Layout::contiguous(owned.layout.shape());
            let layout = owned.layout;
            owned.storage.write(layout, Operand { storage: value, layout: &contiguous })?;
        }
        Ok(())
    }
    /// The one op that writes into existing storage: `self[dst] = src`, where `dst` has
    /// `src`'s shape, lies inside `self` and reaches no position twice. The `Tensor` layer
    /// calls it only on storage that no other tensor shares.
    fn write(&mut self, dst: &Layout, src: Operand<Self>) -> Result<()>;
}

/// [`BackendStorage`] in object-safe form, as [`Storage::Ext`] holds it. Every
/// `BackendStorage` implements it through the blanket implementation below (devices never
/// implement it by hand); `self` only selects the device, and the operands carry the data.
pub trait DynStorage: Send + Sync + fmt::Debug + Any {
    fn device(&self) -> Device;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn to_host(&self, x: Operand) -> Result<Vec<f32>>;
    fn unary(&self, x: Operand, op: UnaryOp) -> Result<Storage>;
    fn binary(&self, a: Operand, b: Operand, op: BinaryOp) -> Result<Storage>;
    fn where_cond(&self, cond: Operand, on_true: Operand, on_false: Operand) -> Result<Storage>;
    fn reduce(&self, x: Operand, axis: usize, op: ReduceOp) -> Result<Storage>;
    fn argmax(&self, x: Operand, axis: usize) -> Result<Vec<usize>>;
    fn softmax(&self, x: Operand) -> Result<Storage>;
    fn softmax_backward(&self, y: Operand, dy: Operand) -> Result<Storage>;
    fn layer_norm(&self, x: Operand, weight: Operand, bias: Operand, eps: f32) -> Result<LayerNormOutput>;
    fn layer_norm_backward(&self, saved: LayerNormSaved, dy: Operand) -> Result<LayerNormGrads>;
    fn layer_norm_backward_add(
        &self,
        acc: Owned,
        saved: LayerNormSaved,
        dy: Operand,
    ) -> Result<Option<(Storage, Storage)>>;
    fn matmul(&self, a: Operand, b: Operand) -> Result<Storage>;
    fn matmul_plus(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
        residual: Option<Operand>,
    ) -> Result<Option<Storage>>;
    fn matmul_plus_gelu(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
    ) -> Result<Option<(Storage, Storage)>>;
    fn matmul_add(&self, c: Owned, a: Operand, b: Operand) -> Result<bool>;
    fn matmul_pair(
        &self,
        acc: Option<Owned>,
        first: (Operand, Operand),
        second: (Operand, Operand),
        times: Option<Operand>,
    ) -> Result<Option<(Option<Storage>, Storage)>>;
    fn attention(&self, q: Operand, k: Operand, v: Operand, vis: &KeyVisibility) -> Result<AttentionOutput>;
    fn attention_backward(
        &self,
        saved: AttentionSaved,
        d_out: Operand,
        vis: &KeyVisibility,
    ) -> Result<AttentionGrads>;
    fn attention_backward_over_keys(
        &self,
        saved: AttentionSavedOwned,
        d_out: Operand,
        vis: &KeyVisibility,
    ) -> Result<(Storage, HeadOrder)>;
    fn rotate_pairs(&self, x: Operand, cos: Operand, sin: Operand) -> Result<Storage>;
    fn rotate_pairs_in_place(&self, x: Owned, cos: Operand, sin: Operand) -> Result<()>;
    fn index_select(&self, x: Operand, axis: usize, indices: &[usize]) -> Result<Storage>;
    fn index_add(&self, x: Operand, axis: usize, indices: &[usize], size: usize) -> Result<Storage>;
    fn embedding_plus(&self, table: Operand, ids: &[usize], rows: Operand) -> Result<Option<Storage>>;
    fn gather(&self, x: Operand, axis: usize, indices: &[usize], out_shape: &[usize]) -> Result<Storage>;
    fn scatter_add(&self, x: Operand, axis: usize, indices: &[usize], size: usize) -> Result<Storage>;
    fn cat(&self, parts: &[Operand], axis: usize) -> Result<Storage>;
    fn adamw_step(&self, operands: [Operand; 4], step: &AdamWStep) -> Result<[Storage; 3]>;
    fn adamw_step_in_place(&self, x: (Owned, Operand), m_v: (Owned, Owned), step: &AdamWStep) -> Result<()>;
    fn write(&mut self, dst: &Layout, src: Operand) -> Result<()>;
}

impl<S: BackendStorage> DynStorage for S {
    fn device(&self) -> Device {
        BackendStorage::device(self)
    }
    fn len(&self) -> usize {
        BackendStorage::len(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn to_host(&self, x: Operand) -> Result<Vec<f32>> {
        S::to_host(x.typed()?)
    }
    fn unary(&self, x: Operand, op: UnaryOp) -> Result<Storage> {
        Ok(S::unary(x.typed()?, op)?.into_storage())
    }
    fn binary(&self, a: Operand, b: Operand, op: BinaryOp) -> Result<Storage> {
        Ok(S::binary(a.typed()?, b.typed()?, op)?.into_storage())
    }
    fn where_cond(&self, cond: Operand, on_true: Operand, on_false: Operand) -> Result<Storage> {
        Ok(S::where_cond(cond.typed()?, on_true.typed()?, on_false.typed()?)?.into_storage())
    }
    fn reduce(&self, x: Operand, axis: usize, op: ReduceOp) -> Result<Storage> {
        Ok(S::reduce(x.typed()?, axis, op)?.into_storage())
    }
    fn argmax(&self, x: Operand, axis: usize) -> Result<Vec<usize>> {
        S::argmax(x.typed()?, axis)
    }
    fn softmax(&self, x: Operand) -> Result<Storage> {
        Ok(S::softmax(x.typed()?)?.into_storage())
    }
    fn softmax_backward(&self, y: Operand, dy: Operand) -> Result<Storage> {
        Ok(S::softmax_backward(y.typed()?, dy.typed()?)?.into_storage())
    }
    fn layer_norm(&self, x: Operand, weight: Operand, bias: Operand, eps: f32) -> Result<LayerNormOutput> {
        let out = S::layer_norm(x.typed()?, weight.typed()?, bias.typed()?, eps)?;
        Ok(LayerNormOutput {
            y: out.y.into_storage(),
            mean: out.mean.into_storage(),
            rstd: out.rstd.into_storage(),
        })
    }
    fn layer_norm_backward_add(
        &self,
        acc: Owned,
        saved: LayerNormSaved,
        dy: Operand,
    ) -> Result<Option<(Storage, Storage)>> {
        let saved = LayerNormSaved {
            input: saved.input.typed()?,
            weight: saved.weight.typed()?,
            mean: saved.mean.typed()?,
            rstd: saved.rstd.typed()?,
        };
        let grads = S::layer_norm_backward_add(acc.typed()?, saved, dy.typed()?)?;
        Ok(grads.map(|(dw, db)| (dw.into_storage(), db.into_storage())))
    }
    fn layer_norm_backward(&self, saved: LayerNormSaved, dy: Operand) -> Result<LayerNormGrads> {
        let saved = LayerNormSaved {
            input: saved.input.typed()?,
            weight: saved.weight.typed()?,
            mean: saved.mean.typed()?,
            rstd: saved.rstd.typed()?,
        };
        let g = S::layer_norm_backward(saved, dy.typed()?)?;
        Ok(LayerNormGrads {
            dx: g.dx.into_storage(),
            dweight: g.dweight.into_storage(),
            dbias: g.dbias.into_storage(),
        })
    }
    fn matmul(&self, a: Operand, b: Operand) -> Result<Storage> {
        Ok(S::matmul(a.typed()?, b.typed()?)?.into_storage())
    }
    fn matmul_plus(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
        residual: Option<Operand>,
    ) -> Result<Option<Storage>> {
        let (bias, residual) =
            (bias.map(|t| t.typed()).transpose()?, residual.map(|t| t.typed()).transpose()?);
        Ok(S::matmul_plus(a.typed()?, b.typed()?, bias, residual)?.map(|s| s.into_storage()))
    }
    fn matmul_plus_gelu(
        &self,
        a: Operand,
        b: Operand,
        bias: Option<Operand>,
    ) -> Result<Option<(Storage, Storage)>> {
        let bias = bias.map(|t| t.typed()).transpose()?;
        let made = S::matmul_plus_gelu(a.typed()?, b.typed()?, bias)?;
        Ok(made.map(|(y, activations)| (y.into_storage(), activations.into_storage())))
    }
    fn matmul_add(&self, c: Owned, a: Operand, b: Operand) -> Result<bool> {
        S::matmul_add(c.typed()?, a.typed()?, b.typed()?)
    }
    fn matmul_pair(
        &self,
        acc: Option<Owned>,
        (a, b): (Operand, Operand),
        (c, d): (Operand, Operand),
        times: Option<Operand>,
    ) -> Result<Option<(Option<Storage>, Storage)>> {
        let acc = acc.map(|acc| acc.typed()).transpose()?;
        let times = times.map(|t| t.typed()).transpose()?;
        let pair = S::matmul_pair(acc, (a.typed()?, b.typed()?), (c.typed()?, d.typed()?), times)?;
        Ok(pair.map(|(first, second)| (first.map(|s| s.into_storage()), second.into_storage())))
    }
    fn attention(&self, q: Operand, k: Operand, v: Operand, vis: &KeyVisibility) -> Result<AttentionOutput> {
        let out = S::attention(q.typed()?, k.typed()?, v.typed()?, vis)?;
        Ok(AttentionOutput { out: out.out.into_storage(), lse: out.lse.into_storage(), order: out.order })
    }
    fn attention_backward(
        &self,
        saved: AttentionSaved,
        d_out: Operand,
        vis: &KeyVisibility,
    ) -> Result<AttentionGrads> {
        let saved = AttentionSaved {
            q: saved.q.typed()?,
            k: saved.k.typed()?,
            v: saved.v.typed()?,
            out: saved.out.typed()?,
            lse: saved.lse.typed()?,
        };
        let g = S::attention_backward(saved, d_out.typed()?, vis)?;
        Ok(AttentionGrads { dq: g.dq.into_storage(), dk: g.dk.into_storage(), dv: g.dv.into_storage() })
    }
    fn attention_backward_over_keys(
        &self,
        saved: AttentionSavedOwned,
        d_out: Operand,
        vis: &KeyVisibility,
    ) -> Result<(Storage, HeadOrder)> {
        let saved = AttentionSavedOwned {
            q: saved.q.typed()?,
            k: saved.k.typed()?,
            v: saved.v.typed()?,
            out: saved.out.typed()?,
            lse: saved.lse.typed()?,
        };
        let (dq, order) = S::attention_backward_over_keys(saved, d_out.typed()?, vis)?;
        Ok((dq.into_storage(), order))
    }
    fn rotate_pairs(&self, x: Operand, cos: Operand, sin: Operand) -> Result<Storage> {
        Ok(S::rotate_pairs(x.typed()?, cos.typed()?, sin.typed()?)?.into_storage())
    }
    fn rotate_pairs_in_place(&self, x: Owned, cos: Operand, sin: Operand) -> Result<()> {
        S::rotate_pairs_in_place(x.typed()?, cos.typed()?, sin.typed()?)
    }
    fn index_select(&self, x: Operand, axis: usize, indices: &[usize]) -> Result<Storage> {
        Ok(S::index_select(x.typed()?, axis, indices)?.into_storage())
    }
    fn embedding_plus(&self, table: Operand, ids: &[usize], rows: Operand) -> Result<Option<Storage>> {
        Ok(S::embedding_plus(table.typed()?, ids, rows.typed()?)?.map(|s| s.into_storage()))
    }
    fn index_add(&self, x: Operand, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
        Ok(S::index_add(x.typed()?, axis, indices, size)?.into_storage())
    }
    fn gather(&self, x: Operand, axis: usize, indices: &[usize], out_shape: &[usize]) -> Result<Storage> {
        Ok(S::gather(x.typed()?, axis, indices, out_shape)?.into_storage())
    }
    fn scatter_add(&self, x: Operand, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
        Ok(S::scatter_add(x.typed()?, axis, indices, size)?.into_storage())
    }
    fn cat(&self, parts: &[Operand], axis: usize) -> Result<Storage> {
        let typed = parts.iter().map(|p| p.typed()).collect::<Result<Vec<Operand<S>>>>()?;
        Ok(S::cat(&typed, axis)?.into_storage())
    }
    fn adamw_step(&self, operands: [Operand; 4], step: &AdamWStep) -> Result<[Storage; 3]> {
        let [x, g, m, v] = operands;
        let typed = [x.typed()?, g.typed()?, m.typed()?, v.typed()?];
        Ok(S::adamw_step(typed, step)?.map(BackendStorage::into_storage))
    }
    fn adamw_step_in_place(
        &self,
        (x, g): (Owned, Operand),
        (m, v): (Owned, Owned),
        step: &AdamWStep,
    ) -> Result<()> {
        S::adamw_step_in_place((x.typed()?, g.typed()?), (m.typed()?, v.typed()?), step)
    }
    fn write(&mut self, dst: &Layout, src: Operand) -> Result<()> {
        BackendStorage::write(self, dst, src.typed()?)
    }
}

/// Flat storage: the CPU's, statically, or another device's behind [`DynStorage`].
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Ext(Box<dyn DynStorage>),
}

impl Storage {
    /// The storage as the device trait, whichever device holds it.
    pub fn backend(&self) -> &dyn DynStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Ext(s) => s.as_ref(),
        }
    }

    /// The storage as the device trait, for the one op that writes in place.
    pub(crate) fn backend_mut(&mut self) -> &mut dyn DynStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Ext(s) => s.as_mut(),
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
}
