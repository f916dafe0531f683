//! OpenCL storage and the device trait's ops on it: each op checks nothing the `Tensor` layer
//! has checked, describes its operands' layouts to the kernel, and launches it. Operands
//! arrive as `tensor::Operand<OpenClStorage>`: already this device's storage, with layouts
//! that lie inside their buffers.

use std::fmt;
use std::sync::Arc;

use ocl::Buffer;
use tensor::backend::{
    AttentionGrads, AttentionOutput, AttentionSaved, HeadOrder, LayerNormGrads, LayerNormOutput,
    LayerNormSaved,
};
use tensor::{
    AdamWStep, BackendStorage, BinaryOp, Device, KeyVisibility, Layout, MatmulSpec, Operand, ReduceOp,
    Result, SparsePart, Storage, UnaryOp,
};

use crate::device::{cl_err, OpenClDevice};
use crate::layout_arg::{fiber_starts, i32_of, rows, LayoutArg, VisibilityArg};

use crate::program::{ATTENTION_MAX_DIM, ROW_GROUP, SPARSE_MAX_PARTS, TILE};

/// `len` f32 in an OpenCL buffer (allocated with at least one element: OpenCL has no empty
/// buffers).
pub struct OpenClStorage {
    buffer: Buffer<f32>,
    len: usize,
    device: Arc<OpenClDevice>,
}

impl fmt::Debug for OpenClStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenClStorage({} f32 on opencl:{})", self.len, self.device.info.ordinal)
    }
}

impl OpenClStorage {
    fn alloc(device: &Arc<OpenClDevice>, len: usize) -> Result<Self> {
        let buffer =
            Buffer::<f32>::builder().queue(device.queue.clone()).len(len.max(1)).build().map_err(cl_err)?;
        Ok(OpenClStorage { buffer, len, device: device.clone() })
    }

    pub(crate) fn from_host(device: &Arc<OpenClDevice>, data: &[f32]) -> Result<Self> {
        let s = Self::alloc(device, data.len())?;
        if !data.is_empty() {
            s.buffer.write(data).enq().map_err(cl_err)?;
        }
        Ok(s)
    }

    pub(crate) fn filled(device: &Arc<OpenClDevice>, len: usize, value: f32) -> Result<Self> {
        let s = Self::alloc(device, len)?;
        let n = i32_of(len)?;
        device.launch("fill", [len, 1, 1], None, |k| {
            k.arg(&s.buffer).arg(value).arg(n);
        })?;
        Ok(s)
    }

    fn int_buffer(&self, values: &[usize]) -> Result<Buffer<i32>> {
        let v: Vec<i32> = values.iter().map(|&x| i32_of(x)).collect::<Result<_>>()?;
        let b = Buffer::<i32>::builder()
            .queue(self.device.queue.clone())
            .len(v.len().max(1))
            .build()
            .map_err(cl_err)?;
        if !v.is_empty() {
            b.write(&v).enq().map_err(cl_err)?;
        }
        Ok(b)
    }

    /// Runs a row kernel: one work-group of [`ROW_GROUP`] work-items per row.
    fn run_rows<'b>(
        &'b self,
        name: &str,
        rows: usize,
        args: impl FnOnce(&mut ocl::builders::KernelBuilder<'b>),
    ) -> Result<()> {
        self.device.launch(name, [rows * ROW_GROUP, 1, 1], Some([ROW_GROUP, 1, 1]), args)
    }

    /// Runs a one-dimensional kernel over `n` work-items.
    fn run<'b>(
        &'b self,
        name: &str,
        n: usize,
        args: impl FnOnce(&mut ocl::builders::KernelBuilder<'b>),
    ) -> Result<()> {
        self.device.launch(name, [n, 1, 1], None, args)
    }
}

/// Number of elements of `layout`'s shape with `axis` resized to `len`.
fn resized(layout: &Layout, axis: usize, len: usize) -> usize {
    layout.shape().iter().enumerate().map(|(d, &s)| if d == axis { len } else { s }).product()
}

impl BackendStorage for OpenClStorage {
    fn device(&self) -> Device {
        self.device.device()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn into_storage(self) -> Storage {
        Storage::Ext(Box::new(self))
    }

    fn to_host(x: Operand<Self>) -> Result<Vec<f32>> {
        let (s, layout) = (x.storage(), x.layout());
        let n = layout.numel();
        let contiguous = if layout.is_contiguous() && layout.offset() == 0 && n == s.len {
            None
        } else {
            Some(s.unary_raw(layout, UnaryOp::Identity)?)
        };
        let src = contiguous.as_ref().unwrap_or(s);
        let mut out = vec![0.0; n];
        if n > 0 {
            src.buffer.read(&mut out).len(n).enq().map_err(cl_err)?;
        }
        Ok(out)
    }

    fn unary(x: Operand<Self>, op: UnaryOp) -> Result<Self> {
        x.storage().unary_raw(x.layout(), op)
    }

    fn binary(a: Operand<Self>, b: Operand<Self>, op: BinaryOp) -> Result<Self> {
        let s = a.storage();
        let n = a.layout().numel();
        let out = Self::alloc(&s.device, n)?;
        let (la, lb) = (LayoutArg::of(a.layout())?, LayoutArg::of(b.layout())?);
        s.run("binary", n, |k| {
            k.arg(op.code())
                .arg(la)
                .arg(&s.buffer)
                .arg(lb)
                .arg(&b.storage().buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        Ok(out)
    }

    fn where_cond(cond: Operand<Self>, on_true: Operand<Self>, on_false: Operand<Self>) -> Result<Self> {
        let (s, t, f) = (cond.storage(), on_true.storage(), on_false.storage());
        let n = cond.layout().numel();
        let out = Self::alloc(&s.device, n)?;
        let lc = LayoutArg::of(cond.layout())?;
        let (lt, lf) = (LayoutArg::of(on_true.layout())?, LayoutArg::of(on_false.layout())?);
        s.run("where_cond", n, |k| {
            k.arg(lc)
                .arg(&s.buffer)
                .arg(lt)
                .arg(&t.buffer)
                .arg(lf)
                .arg(&f.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        Ok(out)
    }

    fn reduce(x: Operand<Self>, axis: usize, op: ReduceOp) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        let first = fiber_starts(layout, axis, 1)?;
        let n = resized(layout, axis, 1);
        let (len, stride) = (i32_of(layout.shape()[axis])?, i32_of(layout.strides()[axis])?);
        let out = Self::alloc(&s.device, n)?;
        s.run_rows("reduce", n, |k| {
            k.arg(op as i32).arg(first).arg(len).arg(stride).arg(&s.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        Ok(out)
    }

    fn argmax(x: Operand<Self>, axis: usize) -> Result<Vec<usize>> {
        let (s, layout) = (x.storage(), x.layout());
        let first = fiber_starts(layout, axis, 1)?;
        let n = resized(layout, axis, 1);
        let (len, stride) = (i32_of(layout.shape()[axis])?, i32_of(layout.strides()[axis])?);
        let out =
            Buffer::<i32>::builder().queue(s.device.queue.clone()).len(n.max(1)).build().map_err(cl_err)?;
        s.run("argmax", n, |k| {
            k.arg(first).arg(len).arg(stride).arg(&s.buffer).arg(&out).arg(n as i32);
        })?;
        let mut host = vec![0i32; n];
        if n > 0 {
            out.read(&mut host).enq().map_err(cl_err)?;
        }
        Ok(host.into_iter().map(|i| i as usize).collect())
    }

    fn softmax(x: Operand<Self>) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        let (rows_arg, cols, stride, n_rows) = rows(layout)?;
        let out = Self::alloc(&s.device, layout.numel())?;
        s.run_rows("softmax", n_rows, |k| {
            k.arg(rows_arg).arg(cols).arg(stride).arg(&s.buffer).arg(&out.buffer).arg(n_rows as i32);
        })?;
        Ok(out)
    }

    fn softmax_backward(y: Operand<Self>, dy: Operand<Self>) -> Result<Self> {
        let (s, layout, g) = (y.storage(), y.layout(), dy.storage());
        let (yr, cols, ys, n_rows) = rows(layout)?;
        let (gr, _, gs, _) = rows(dy.layout())?;
        let out = Self::alloc(&s.device, layout.numel())?;
        s.run_rows("softmax_backward", n_rows, |k| {
            k.arg(yr)
                .arg(ys)
                .arg(&s.buffer)
                .arg(gr)
                .arg(gs)
                .arg(&g.buffer)
                .arg(&out.buffer)
                .arg(cols)
                .arg(n_rows as i32);
        })?;
        Ok(out)
    }

    fn layer_norm(
        x: Operand<Self>,
        weight: Operand<Self>,
        bias: Operand<Self>,
        eps: f32,
    ) -> Result<LayerNormOutput<Self>> {
        let (s, layout, w, b) = (x.storage(), x.layout(), weight.storage(), bias.storage());
        let (xr, cols, stride, n_rows) = rows(layout)?;
        let (lw, lb) = (LayoutArg::of(weight.layout())?, LayoutArg::of(bias.layout())?);
        let y = Self::alloc(&s.device, layout.numel())?;
        let mean = Self::alloc(&s.device, n_rows)?;
        let rstd = Self::alloc(&s.device, n_rows)?;
        s.run_rows("layer_norm", n_rows, |k| {
            k.arg(xr)
                .arg(cols)
                .arg(stride)
                .arg(&s.buffer)
                .arg(lw)
                .arg(&w.buffer)
                .arg(lb)
                .arg(&b.buffer)
                .arg(eps);
            k.arg(&y.buffer).arg(&mean.buffer).arg(&rstd.buffer).arg(n_rows as i32);
        })?;
        Ok(LayerNormOutput { y, mean, rstd })
    }

    fn layer_norm_backward(saved: LayerNormSaved<Self>, dy: Operand<Self>) -> Result<LayerNormGrads<Self>> {
        // The row statistics are contiguous (the tensor layer makes them so).
        let (s, layout, w) = (saved.input.storage(), saved.input.layout(), saved.weight.storage());
        let (mean, rstd, g) = (saved.mean.storage(), saved.rstd.storage(), dy.storage());
        let (xr, cols, stride, n_rows) = rows(layout)?;
        let (gr, _, gstride, _) = rows(dy.layout())?;
        let lw = LayoutArg::of(saved.weight.layout())?;
        let dx = Self::alloc(&s.device, layout.numel())?;
        let c = cols as usize;
        let dw = Self::alloc(&s.device, c)?;
        let db = Self::alloc(&s.device, c)?;
        s.run_rows("layer_norm_backward_dx", n_rows, |k| {
            k.arg(xr)
                .arg(cols)
                .arg(stride)
                .arg(&s.buffer)
                .arg(lw)
                .arg(&w.buffer)
                .arg(&mean.buffer)
                .arg(&rstd.buffer);
            k.arg(gr).arg(gstride).arg(&g.buffer).arg(&dx.buffer).arg(n_rows as i32);
        })?;
        s.run("layer_norm_backward_dw", c, |k| {
            k.arg(xr).arg(stride).arg(&s.buffer).arg(&mean.buffer).arg(&rstd.buffer);
            k.arg(gr)
                .arg(gstride)
                .arg(&g.buffer)
                .arg(&dw.buffer)
                .arg(&db.buffer)
                .arg(cols)
                .arg(n_rows as i32);
        })?;
        Ok(LayerNormGrads { dx, dweight: dw, dbias: db })
    }

    fn matmul(a: Operand<Self>, rhs: Operand<Self>) -> Result<Self> {
        let (s, layout, b, rhs_layout) = (a.storage(), a.layout(), rhs.storage(), rhs.layout());
        let MatmulSpec { batch, m, k, n } = MatmulSpec::of(layout, rhs_layout)?;
        let (m, k, n) = (&m, &k, &n);
        let batches: usize = batch.iter().product();
        let out = Self::alloc(&s.device, batches * m * n)?;
        let r = layout.rank();
        let (sa, sb) = (layout.strides(), rhs_layout.strides());
        let la = LayoutArg::new(&batch, &sa[..r - 2], layout.offset())?;
        let lb = LayoutArg::new(&batch, &sb[..r - 2], rhs_layout.offset())?;
        let (rsa, csa, rsb, csb) =
            (i32_of(sa[r - 2])?, i32_of(sa[r - 1])?, i32_of(sb[r - 2])?, i32_of(sb[r - 1])?);
        let (mi, ki, ni) = (i32_of(*m)?, i32_of(*k)?, i32_of(*n)?);
        let global = [n.div_ceil(TILE) * TILE, m.div_ceil(TILE) * TILE, batches];
        s.device.launch("matmul", global, Some([TILE, TILE, 1]), |kb| {
            kb.arg(la).arg(rsa).arg(csa).arg(&s.buffer).arg(lb).arg(rsb).arg(csb).arg(&b.buffer);
            kb.arg(&out.buffer).arg(mi).arg(ki).arg(ni);
        })?;
        Ok(out)
    }

    fn attention(
        q: Operand<Self>,
        k: Operand<Self>,
        v: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionOutput<Self>> {
        let s = q.storage();
        let (sq, sv) = (q.layout().shape(), v.layout().shape());
        let (rows, keys) = (sq[0] * sq[2] * sq[1], k.layout().shape()[2]);
        check_head_dims(sq[3], sv[3])?;
        let (out, lse) = (Self::alloc(&s.device, rows * sv[3])?, Self::alloc(&s.device, rows)?);
        let vb = s.visibility_buffers(vis, keys)?;
        let (lq, lk, lv) =
            (LayoutArg::of(q.layout())?, LayoutArg::of(k.layout())?, LayoutArg::of(v.layout())?);
        let rows_i = i32_of(rows)?;
        s.run("attention_forward", rows, |kb| {
            kb.arg(lq).arg(&s.buffer).arg(lk).arg(&k.storage().buffer).arg(lv).arg(&v.storage().buffer);
            kb.arg(vb.scalars).arg(&vb.pos).arg(&vb.hidden).arg(&vb.pattern);
            kb.arg(&out.buffer).arg(&lse.buffer).arg(rows_i);
        })?;
        Ok(AttentionOutput { out, lse, order: HeadOrder::HeadMajor })
    }

    fn attention_backward(
        saved: AttentionSaved<Self>,
        d_out: Operand<Self>,
        vis: &KeyVisibility,
    ) -> Result<AttentionGrads<Self>> {
        let AttentionSaved { q, k, v, out, lse } = saved;
        let s = q.storage();
        let (sq, sv) = (q.layout().shape(), v.layout().shape());
        let (batch, heads, queries, dk, dv) = (sq[0], sq[1], sq[2], sq[3], sv[3]);
        let keys = k.layout().shape()[2];
        check_head_dims(dk, dv)?;
        let (q_rows, k_rows) = (batch * queries * heads, batch * keys * heads);
        let dq = Self::alloc(&s.device, q_rows * dk)?;
        let delta = Self::alloc(&s.device, q_rows)?;
        let (dkey, dval) = (Self::alloc(&s.device, k_rows * dk)?, Self::alloc(&s.device, k_rows * dv)?);
        let vb = s.visibility_buffers(vis, keys)?;
        let (lq, lk, lv) =
            (LayoutArg::of(q.layout())?, LayoutArg::of(k.layout())?, LayoutArg::of(v.layout())?);
        let (lo, llse, lg) =
            (LayoutArg::of(out.layout())?, LayoutArg::of(lse.layout())?, LayoutArg::of(d_out.layout())?);
        let (kbuf, vbuf, gbuf) = (&k.storage().buffer, &v.storage().buffer, &d_out.storage().buffer);
        let (q_rows_i, k_rows_i) = (i32_of(q_rows)?, i32_of(k_rows)?);
        s.run("attention_backward_dq", q_rows, |kb| {
            kb.arg(lq).arg(&s.buffer).arg(lk).arg(kbuf).arg(lv).arg(vbuf).arg(lo).arg(&out.storage().buffer);
            kb.arg(llse).arg(&lse.storage().buffer).arg(lg).arg(gbuf);
            kb.arg(vb.scalars).arg(&vb.pos).arg(&vb.hidden).arg(&vb.pattern);
            kb.arg(&dq.buffer).arg(&delta.buffer).arg(q_rows_i);
        })?;
        let uniform_rows = batch * heads * dv;
        let uniform = Self::alloc(&s.device, uniform_rows)?;
        let (keys_i, uniform_rows_i) = (i32_of(keys)?, i32_of(uniform_rows)?);
        s.run("attention_uniform_grad", uniform_rows, |kb| {
            kb.arg(llse).arg(&lse.storage().buffer).arg(lg).arg(gbuf);
            kb.arg(keys_i).arg(&uniform.buffer).arg(uniform_rows_i);
        })?;
        s.run("attention_backward_dkv", k_rows, |kb| {
            kb.arg(lq)
                .arg(&s.buffer)
                .arg(lk)
                .arg(kbuf)
                .arg(lv)
                .arg(vbuf)
                .arg(llse)
                .arg(&lse.storage().buffer);
            kb.arg(lg).arg(gbuf).arg(&delta.buffer).arg(&uniform.buffer);
            kb.arg(vb.scalars).arg(&vb.pos).arg(&vb.hidden).arg(&vb.pattern);
            kb.arg(&dkey.buffer).arg(&dval.buffer).arg(k_rows_i);
        })?;
        Ok(AttentionGrads { dq, dk: dkey, dv: dval })
    }

    fn rotate_pairs(x: Operand<Self>, cos: Operand<Self>, sin: Operand<Self>) -> Result<Self> {
        let s = x.storage();
        let n = x.layout().numel();
        let out = Self::alloc(&s.device, n)?;
        let (lx, lc, ls) =
            (LayoutArg::of(x.layout())?, LayoutArg::of(cos.layout())?, LayoutArg::of(sin.layout())?);
        let n_i = i32_of(n)?;
        s.run("rotate_pairs", n, |k| {
            k.arg(lx).arg(&s.buffer).arg(lc).arg(&cos.storage().buffer).arg(ls).arg(&sin.storage().buffer);
            k.arg(&out.buffer).arg(n_i);
        })?;
        Ok(out)
    }

    fn index_select(x: Operand<Self>, axis: usize, indices: &[usize]) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        let picked = fiber_starts(layout, axis, indices.len())?;
        let inner: usize = layout.shape()[axis + 1..].iter().product();
        let n = resized(layout, axis, indices.len());
        let idx = s.int_buffer(indices)?;
        let out = Self::alloc(&s.device, n)?;
        let (stride, len, inner) = (i32_of(layout.strides()[axis])?, i32_of(indices.len())?, i32_of(inner)?);
        s.run("index_select", n, |k| {
            k.arg(picked)
                .arg(stride)
                .arg(len)
                .arg(inner)
                .arg(&idx)
                .arg(&s.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        Ok(out)
    }

    fn index_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        // For each target entry t, the source entries j with indices[j] == t (CSR).
        let mut starts = vec![0usize; size + 1];
        for &t in indices {
            starts[t + 1] += 1;
        }
        for t in 0..size {
            starts[t + 1] += starts[t];
        }
        let mut fill = starts.clone();
        let mut sources = vec![0usize; indices.len()];
        for (j, &t) in indices.iter().enumerate() {
            sources[fill[t]] = j;
            fill[t] += 1;
        }
        let first = fiber_starts(layout, axis, size)?;
        let inner: usize = layout.shape()[axis + 1..].iter().product();
        let n = resized(layout, axis, size);
        let (starts, sources) = (s.int_buffer(&starts)?, s.int_buffer(&sources)?);
        let out = Self::alloc(&s.device, n)?;
        let (stride, size_i, inner) = (i32_of(layout.strides()[axis])?, i32_of(size)?, i32_of(inner)?);
        s.run("index_add", n, |k| {
            k.arg(first)
                .arg(stride)
                .arg(size_i)
                .arg(inner)
                .arg(&starts)
                .arg(&sources)
                .arg(&s.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        Ok(out)
    }

    fn gather(x: Operand<Self>, axis: usize, indices: &[usize], out_shape: &[usize]) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        let mut strides = layout.strides().to_vec();
        strides[axis] = 0;
        let picked = LayoutArg::new(out_shape, &strides, layout.offset())?;
        let n = indices.len();
        let idx = s.int_buffer(indices)?;
        let out = Self::alloc(&s.device, n)?;
        let stride = i32_of(layout.strides()[axis])?;
        s.run("gather", n, |k| {
            k.arg(picked).arg(stride).arg(&idx).arg(&s.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        Ok(out)
    }

    fn scatter_add(x: Operand<Self>, axis: usize, indices: &[usize], size: usize) -> Result<Self> {
        let (s, layout) = (x.storage(), x.layout());
        let first = fiber_starts(layout, axis, size)?;
        let inner: usize = layout.shape()[axis + 1..].iter().product();
        let outer: usize = layout.shape()[..axis].iter().product();
        let n = outer * size * inner;
        let idx = s.int_buffer(indices)?;
        let out = Self::alloc(&s.device, n)?;
        let (stride, src_len, size_i, inner_i) =
            (i32_of(layout.strides()[axis])?, i32_of(layout.shape()[axis])?, i32_of(size)?, i32_of(inner)?);
        s.run("scatter_add", n, |k| {
            k.arg(first)
                .arg(stride)
                .arg(src_len)
                .arg(size_i)
                .arg(inner_i)
                .arg(&idx)
                .arg(&s.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        Ok(out)
    }

    fn cat(parts: &[Operand<Self>], axis: usize) -> Result<Self> {
        let first = parts.first().ok_or_else(|| tensor::Error::new("cat", "no operands"))?;
        let mut shape = first.layout().shape().to_vec();
        shape[axis] = parts.iter().map(|p| p.layout().shape()[axis]).sum();
        let out = Self::alloc(&first.storage().device, shape.iter().product())?;
        let mut start = 0;
        for p in parts {
            let (s, l) = (p.storage(), p.layout());
            let len = l.shape()[axis];
            let dst = LayoutArg::of(&Layout::contiguous(&shape).narrow(axis, start, len)?)?;
            let src = LayoutArg::of(l)?;
            let n = l.numel();
            s.run("copy_strided", n, |k| {
                k.arg(src).arg(&s.buffer).arg(dst).arg(&out.buffer).arg(n as i32);
            })?;
            start += len;
        }
        Ok(out)
    }

    fn adamw_step(operands: [Operand<Self>; 4], step: &AdamWStep) -> Result<[Self; 3]> {
        let [x, g, m, v] = operands;
        let (s, n) = (x.storage(), x.layout().numel());
        let outs = [Self::alloc(&s.device, n)?, Self::alloc(&s.device, n)?, Self::alloc(&s.device, n)?];
        // Contiguous operands (the Tensor layer made them so): only their offsets differ.
        let offsets = [x, g, m, v].map(|o| i32_of(o.layout().offset()));
        let [ox, og, om, ov] = offsets;
        let (ox, og, om, ov) = (ox?, og?, om?, ov?);
        let AdamWStep { lr, beta1, beta2, eps, decay, c1, c2 } = *step;
        let n_i = i32_of(n)?;
        s.run("adamw_step", n, |k| {
            k.arg(&s.buffer).arg(ox).arg(&g.storage().buffer).arg(og);
            k.arg(&m.storage().buffer).arg(om).arg(&v.storage().buffer).arg(ov);
            k.arg(&outs[0].buffer).arg(&outs[1].buffer).arg(&outs[2].buffer);
            k.arg(lr).arg(beta1).arg(beta2).arg(eps).arg(decay).arg(c1).arg(c2).arg(n_i);
        })?;
        Ok(outs)
    }

    fn write(&mut self, dst: &Layout, src: Operand<Self>) -> Result<()> {
        let (s, n) = (src.storage(), src.layout().numel());
        let (from, to) = (LayoutArg::of(src.layout())?, LayoutArg::of(dst)?);
        s.run("copy_strided", n, |k| {
            k.arg(from).arg(&s.buffer).arg(to).arg(&self.buffer).arg(n as i32);
        })
    }
}

/// The attention kernels keep a row of the output in registers.
fn check_head_dims(dk: usize, dv: usize) -> Result<()> {
    if dk.max(dv) > ATTENTION_MAX_DIM {
        return Err(tensor::Error::new(
            "attention",
            format!("head dims {dk} and {dv}: the OpenCL kernels hold at most {ATTENTION_MAX_DIM}"),
        ));
    }
    Ok(())
}

impl OpenClStorage {
    /// The key-position and hidden-key tables of `vis` as device buffers, and its scalars.
    /// The key positions, hidden-key flags and sparse patterns of `vis` as buffers, and its
    /// scalars.
    fn visibility_buffers(&self, vis: &KeyVisibility, keys: usize) -> Result<VisibilityBuffers> {
        let pos = self.int_buffer(vis.key_positions.as_deref().unwrap_or(&[]))?;
        let flags: Vec<usize> =
            vis.hidden_keys.as_deref().unwrap_or(&[]).iter().map(|&h| h as usize).collect();
        let mut parts = Vec::new();
        for pattern in vis.pattern.as_deref().unwrap_or(&[]) {
            if pattern.parts.len() > SPARSE_MAX_PARTS {
                return Err(tensor::Error::new(
                    "attention",
                    format!(
                        "a sparse pattern of {} parts: the OpenCL kernels take at most {SPARSE_MAX_PARTS}",
                        pattern.parts.len()
                    ),
                ));
            }
            for r in 0..SPARSE_MAX_PARTS {
                parts.extend(match pattern.parts.get(r) {
                    None => [0, 0, 0],
                    Some(SparsePart::Local { window }) => [1, *window, 0],
                    Some(SparsePart::Columns { stride }) => [2, *stride, 0],
                    Some(SparsePart::SameBlock { block }) => [3, *block, 0],
                    Some(SparsePart::Summary { block, summary }) => [4, *block, *summary],
                });
            }
        }
        Ok(VisibilityBuffers {
            pos,
            hidden: self.int_buffer(&flags)?,
            pattern: self.int_buffer(&parts)?,
            scalars: VisibilityArg::new(vis, keys)?,
        })
    }

    fn unary_raw(&self, layout: &Layout, op: UnaryOp) -> Result<OpenClStorage> {
        let n = layout.numel();
        let out = Self::alloc(&self.device, n)?;
        let (code, c) = (op.code(), op.scalar());
        let lx = LayoutArg::of(layout)?;
        self.run("unary", n, |k| {
            k.arg(code).arg(c).arg(lx).arg(&self.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        Ok(out)
    }
}

/// What the attention kernels read of a [`KeyVisibility`].
struct VisibilityBuffers {
    pos: Buffer<i32>,
    hidden: Buffer<i32>,
    /// `SPARSE_MAX_PARTS` parts of `(kind, a, b)` per pattern.
    pattern: Buffer<i32>,
    scalars: VisibilityArg,
}
