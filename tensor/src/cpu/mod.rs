//! The CPU backend: storage is a `Vec<f32>`, kernels are vectorised with `wide`, split across
//! threads with `rayon`, and matrix products go through AVX-512 register tiles of our own
//! (the linear layers' and the attention's, [`tile`]) or `matrixmultiply::sgemm`.
//!
//! Each submodule is one family of kernels; this file only routes the device trait to them.

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod few_rows;
pub mod gemm;
pub mod index;
pub mod layer_norm;
pub mod math;
pub mod matmul;
pub mod parallel;
pub mod pool;
pub mod reduce;
pub mod rotary;
pub mod softmax;
pub mod tile;
pub mod walk;

use crate::attention::KeyVisibility;
use crate::backend::{
    AttentionGrads, AttentionOutput, AttentionSaved, AttentionSavedOwned, BackendStorage, BinaryOp, Device,
    HeadOrder, LayerNormGrads, LayerNormOutput, LayerNormSaved, MatmulSpec, Operand, Owned, ReduceOp,
    Storage, UnaryOp,
};
use crate::error::Result;
use crate::layout::Layout;

/// Tensor data in main memory. Large buffers go back to the [`pool`] when dropped; every
/// buffer is counted in the pool's live bytes while a tensor (or a kernel, for scratch) holds it.
#[derive(Debug, Default)]
pub struct CpuStorage {
    data: Vec<f32>,
}

impl Clone for CpuStorage {
    fn clone(&self) -> Self {
        CpuStorage::new(self.data.clone())
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        pool::count_freed(self.data.capacity() * 4);
        pool::recycle(std::mem::take(&mut self.data));
    }
}

impl CpuStorage {
    pub fn new(data: Vec<f32>) -> Self {
        pool::count_live(data.capacity() * 4);
        CpuStorage { data }
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    /// For kernels that hold a big scratch buffer as storage, so that it counts as live.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

/// The slice and layout of a CPU operand.
fn parts<'a>(x: &Operand<'a, CpuStorage>) -> (&'a [f32], &'a Layout) {
    (x.storage().as_slice(), x.layout())
}

/// The positions of a contiguous layout: one run from its offset.
fn span(layout: &Layout) -> std::ops::Range<usize> {
    layout.offset()..layout.offset() + layout.numel()
}

/// The elements of a contiguous operand that a kernel writes over.
fn owned_slice<'s>(x: &'s mut Owned<CpuStorage>) -> &'s mut [f32] {
    let range = span(x.layout());
    &mut x.storage_mut().data[range]
}

/// A layer norm's saved weight, mean and `1/σ`, each as contiguous values.
fn norm_params<'a>(saved: &LayerNormSaved<'a, CpuStorage>) -> [elementwise::Contiguous<'a>; 3] {
    [&saved.weight, &saved.mean, &saved.rstd].map(|o| {
        let (data, layout) = parts(o);
        elementwise::contiguous(data, layout)
    })
}

/// A `[B, H, T, D]` operand for the attention kernels.
fn heads<'a>(x: &Operand<'a, CpuStorage>) -> attention::Heads<'a> {
    attention::Heads { data: x.storage().as_slice(), layout: x.layout() }
}

/// A kernel's output.
fn out(data: Vec<f32>) -> Result<CpuStorage> {
    Ok(CpuStorage::new(data))
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn into_storage(self) -> Storage {
        Storage::Cpu(self)
    }
    fn to_host(x: Operand<Self>) -> Result<Vec<f32>> {
        let (data, layout) = parts(&x);
        if layout.is_contiguous() {
            return Ok(data[span(layout)].to_vec());
        }
        Ok(elementwise::unary(data, layout, UnaryOp::Identity))
    }
    fn unary(x: Operand<Self>, op: UnaryOp) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(elementwise::unary(data, layout, op))
    }
    fn binary(a: Operand<Self>, b: Operand<Self>, op: BinaryOp) -> Result<Self> {
        let ((a, la), (b, lb)) = (parts(&a), parts(&b));
        out(elementwise::binary(a, la, b, lb, op))
    }
    fn where_cond(cond: Operand<Self>, on_true: Operand<Self>, on_false: Operand<Self>) -> Result<Self> {
        let ((c, lc), (t, lt), (f, lf)) = (parts(&cond), parts(&on_true), parts(&on_false));
        out(elementwise::where_cond(c, lc, t, lt, f, lf))
    }
    fn reduce(x: Operand<Self>, axis: usize, op: ReduceOp) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(reduce::reduce(data, layout, axis, op))
    }
    fn argmax(x: Operand<Self>, axis: usize) -> Result<Vec<usize>> {
        let (data, layout) = parts(&x);
        Ok(reduce::argmax(data, layout, axis))
    }
    fn softmax(x: Operand<Self>) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(softmax::softmax(data, layout))
    }
    fn softmax_backward(y: Operand<Self>, dy: Operand<Self>) -> Result<Self> {
        let ((y, ly), (dy, ldy)) = (parts(&y), parts(&dy));
        out(softmax::softmax_backward(y, ly, dy, ldy))
    }
    fn layer_norm(
        x: Operand<Self>,
        weight: Operand<Self>,
        bias: Operand<Self>,
        eps: f32,
    ) -> Result<LayerNormOutput<Self>> {
        let (data, layout) = parts(&x);
        let w = elementwise::contiguous(weight.storage().as_slice(), weight.layout());
        let b = elementwise::contiguous(bias.storage().as_slice(), bias.layout());
        let f = layer_norm::forward(data, layout, &w, &b, eps);
        Ok(LayerNormOutput { y: out(f.y)?, mean: out(f.mean)?, rstd: out(f.rstd)? })
    }
    fn layer_norm_backward(saved: LayerNormSaved<Self>, dy: Operand<Self>) -> Result<LayerNormGrads<Self>> {
        let [w, mean, rstd] = norm_params(&saved);
        let g = layer_norm::backward(parts(&saved.input), &w, (&mean, &rstd), parts(&dy));
        Ok(LayerNormGrads { dx: out(g.dx)?, dweight: out(g.dw)?, dbias: out(g.db)? })
    }
    fn layer_norm_backward_add(
        mut acc: Owned<Self>,
        saved: LayerNormSaved<Self>,
        dy: Operand<Self>,
    ) -> Result<Option<(Self, Self)>> {
        let [w, mean, rstd] = norm_params(&saved);
        // The Tensor layer passes a contiguous `acc` of the input's shape.
        let dx = owned_slice(&mut acc);
        let (dw, db) =
            layer_norm::backward_into(parts(&saved.input), &w, (&mean, &rstd), parts(&dy), (dx, true));
        Ok(Some((out(dw)?, out(db)?)))
    }
    fn matmul(a: Operand<Self>, b: Operand<Self>) -> Result<Self> {
        let spec = MatmulSpec::of(a.layout(), b.layout())?;
        out(matmul::matmul(parts(&a), parts(&b), &spec))
    }
    fn matmul_plus(
        a: Operand<Self>,
        b: Operand<Self>,
        bias: Option<Operand<Self>>,
        residual: Option<Operand<Self>>,
    ) -> Result<Option<Self>> {
        let spec = MatmulSpec::of(a.layout(), b.layout())?;
        fn contiguous<'a>(t: &Operand<'a, CpuStorage>) -> elementwise::Contiguous<'a> {
            let (data, layout) = parts(t);
            elementwise::contiguous(data, layout)
        }
        let (bias, residual) = (bias.as_ref().map(contiguous), residual.as_ref().map(contiguous));
        let terms =
            gemm::Terms { bias: bias.as_deref(), residual: residual.as_deref(), ..Default::default() };
        Ok(Some(out(matmul::matmul_plus(parts(&a), parts(&b), terms, &spec))?))
    }
    fn matmul_plus_gelu(
        a: Operand<Self>,
        b: Operand<Self>,
        bias: Option<Operand<Self>>,
    ) -> Result<Option<(Self, Self)>> {
        let spec = MatmulSpec::of(a.layout(), b.layout())?;
        let bias = bias.as_ref().map(|t| {
            let (data, layout) = parts(t);
            elementwise::contiguous(data, layout)
        });
        let terms = gemm::Terms { bias: bias.as_deref(), ..Default::default() };
        let made = matmul::matmul_plus_gelu(parts(&a), parts(&b), terms, &spec);
        Ok(made
            .map(|(activations, derivatives)| (CpuStorage::new(activations), CpuStorage::new(derivatives))))
    }
    fn matmul_add(mut c: Owned<Self>, a: Operand<Self>, b: Operand<Self>) -> Result<bool> {
        let spec = MatmulSpec::of(a.layout(), b.layout())?;
        let layout = c.layout();
        Ok(matmul::matmul_add((&mut c.storage_mut().data, layout), parts(&a), parts(&b), &spec))
    }
    fn matmul_pair(
        acc: Option<Owned<Self>>,
        (a, b): (Operand<Self>, Operand<Self>),
        (c, d): (Operand<Self>, Operand<Self>),
        times: Option<Operand<Self>>,
    ) -> Result<Option<(Option<Self>, Self)>> {
        let first = MatmulSpec::of(a.layout(), b.layout())?;
        let times = times.as_ref().map(|t| {
            let (data, layout) = parts(t);
            elementwise::contiguous(data, layout)
        });
        let second = MatmulSpec::of(c.layout(), d.layout())?;
        let mut acc = acc;
        let acc = acc.as_mut().map(|acc| {
            let layout = acc.layout();
            (acc.storage_mut().data.as_mut_slice(), layout)
        });
        let pair = matmul::matmul_pair(
            acc,
            (parts(&a), parts(&b), &first),
            (parts(&c), parts(&d), &second),
            times.as_deref(),
        );
        Ok(pair.map(|(first, second)| (first.map(CpuStorage::new), CpuStorage::new(second))))
    }
    fn attention(
        q: Operand<Self>,
        k: Operand<Self>,
        v: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionOutput<Self>> {
        let (out, lse) = attention::forward(heads(&q), heads(&k), heads(&v), vis);
        Ok(AttentionOutput {
            out: CpuStorage::new(out),
            lse: CpuStorage::new(lse),
            order: HeadOrder::TokenMajor,
        })
    }
    fn attention_backward(
        saved: AttentionSaved<Self>,
        d_out: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionGrads<Self>> {
        let s = attention::Saved {
            q: heads(&saved.q),
            k: heads(&saved.k),
            v: heads(&saved.v),
            out: heads(&saved.out),
            lse: parts(&saved.lse),
        };
        let [dq, dk, dv] = attention::backward(s, heads(&d_out), vis);
        Ok(AttentionGrads { dq: CpuStorage::new(dq), dk: CpuStorage::new(dk), dv: CpuStorage::new(dv) })
    }
    fn attention_backward_over_keys(
        saved: AttentionSavedOwned<Self>,
        d_out: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<(Self, HeadOrder)> {
        let AttentionSavedOwned { q, mut k, mut v, out, lse } = saved;
        let (k_layout, v_layout) = (k.layout(), v.layout());
        let (dq, order) = attention::backward_over_keys(
            (heads(&q), heads(&out), parts(&lse)),
            (&mut k.storage_mut().data, k_layout),
            (&mut v.storage_mut().data, v_layout),
            heads(&d_out),
            vis,
        );
        Ok((CpuStorage::new(dq), order))
    }
    fn rotate_pairs(x: Operand<Self>, cos: Operand<Self>, sin: Operand<Self>) -> Result<Self> {
        out(rotary::rotate_pairs(parts(&x), parts(&cos), parts(&sin)))
    }
    fn rotate_pairs_in_place(mut x: Owned<Self>, cos: Operand<Self>, sin: Operand<Self>) -> Result<()> {
        let layout = x.layout();
        rotary::rotate_pairs_in_place((&mut x.storage_mut().data, layout), parts(&cos), parts(&sin));
        Ok(())
    }
    fn index_select(x: Operand<Self>, axis: usize, indices: &[usize]) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(index::index_select(data, layout, axis, indices))
    }
    fn embedding_plus(table: Operand<Self>, ids: &[usize], rows: Operand<Self>) -> Result<Option<Self>> {
        let (table, rows) = (parts(&table), parts(&rows));
        Ok(Some(out(index::embedding_plus(table, ids, rows))?))
    }
    fn index_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(index::index_add(data, layout, axis, indices, size))
    }
    fn gather(x: Operand<Self>, axis: usize, indices: &[usize], out_shape: &[usize]) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(index::gather(data, layout, axis, indices, out_shape))
    }
    fn scatter_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self> {
        let (data, layout) = parts(&x);
        out(index::scatter_add(data, layout, axis, indices, size))
    }
    fn cat(parts_: &[Operand<Self>], axis: usize) -> Result<Self> {
        let slices: Vec<(&[f32], &Layout)> = parts_.iter().map(parts).collect();
        out(index::cat(&slices, axis))
    }
    fn adamw_step(operands: [Operand<Self>; 4], step: &crate::adamw::AdamWStep) -> Result<[Self; 3]> {
        // The Tensor layer made every operand contiguous.
        let slices = operands.map(|o| {
            let (data, layout) = parts(&o);
            &data[span(layout)]
        });
        Ok(adamw::step(slices, step).map(CpuStorage::new))
    }
    fn adamw_step_in_place(
        (mut x, g): (Owned<Self>, Operand<Self>),
        (mut m, mut v): (Owned<Self>, Owned<Self>),
        step: &crate::adamw::AdamWStep,
    ) -> Result<()> {
        // The Tensor layer passes contiguous operands only.
        let (g_data, g_layout) = parts(&g);
        let g = &g_data[span(g_layout)];
        adamw::step_in_place((owned_slice(&mut x), g), (owned_slice(&mut m), owned_slice(&mut v)), step);
        Ok(())
    }
    fn write(&mut self, dst: &Layout, src: Operand<Self>) -> Result<()> {
        let (data, layout) = parts(&src);
        index::copy_strided(data, layout, &mut self.data, dst);
        Ok(())
    }
}
