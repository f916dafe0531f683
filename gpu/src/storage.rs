//! OpenCL storage and the device trait's ops on it: each op checks nothing the `Tensor` layer
//! has checked, describes its operands' layouts to the kernel, and launches it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use ocl::Buffer;
use tensor::backend::{LayerNormGrads, LayerNormOutput};
use tensor::{BackendStorage, BinaryOp, Device, Layout, MatmulSpec, ReduceOp, Result, Storage, UnaryOp};

use crate::device::{cl_err, OpenClDevice};
use crate::layout_arg::{fiber_starts, i32_of, rows, LayoutArg};

use crate::program::{ROW_GROUP, TILE};

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

fn wrap(s: OpenClStorage) -> Result<Storage> {
    Ok(Storage::Ext(Box::new(s)))
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

    /// The OpenCL buffer of another operand of the same op.
    fn other<'a>(&self, s: &'a Storage) -> Result<&'a OpenClStorage> {
        let o = s.downcast::<OpenClStorage>().ok_or_else(|| {
            tensor::Error::new("opencl", format!("operand is on {}, not opencl", s.device()))
        })?;
        if !Arc::ptr_eq(&o.device, &self.device) {
            return Err(tensor::Error::new("opencl", "operands on different OpenCL devices"));
        }
        Ok(o)
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
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn to_host(&self, layout: &Layout) -> Result<Vec<f32>> {
        let n = layout.numel();
        let contiguous = if layout.is_contiguous() && layout.offset() == 0 && n == self.len {
            None
        } else {
            Some(self.unary_raw(layout, UnaryOp::Identity)?)
        };
        let src = contiguous.as_ref().unwrap_or(self);
        let mut out = vec![0.0; n];
        if n > 0 {
            src.buffer.read(&mut out).len(n).enq().map_err(cl_err)?;
        }
        Ok(out)
    }

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        wrap(self.unary_raw(layout, op)?)
    }

    fn binary(&self, layout: &Layout, rhs: &Storage, rhs_layout: &Layout, op: BinaryOp) -> Result<Storage> {
        let b = self.other(rhs)?;
        let n = layout.numel();
        let out = Self::alloc(&self.device, n)?;
        let (la, lb) = (LayoutArg::of(layout)?, LayoutArg::of(rhs_layout)?);
        self.run("binary", n, |k| {
            k.arg(op.code()).arg(la).arg(&self.buffer).arg(lb).arg(&b.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        wrap(out)
    }

    fn where_cond(
        &self,
        layout: &Layout,
        t: &Storage,
        lt: &Layout,
        f: &Storage,
        lf: &Layout,
    ) -> Result<Storage> {
        let (t, f) = (self.other(t)?, self.other(f)?);
        let n = layout.numel();
        let out = Self::alloc(&self.device, n)?;
        let (lc, lt, lf) = (LayoutArg::of(layout)?, LayoutArg::of(lt)?, LayoutArg::of(lf)?);
        self.run("where_cond", n, |k| {
            k.arg(lc)
                .arg(&self.buffer)
                .arg(lt)
                .arg(&t.buffer)
                .arg(lf)
                .arg(&f.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        wrap(out)
    }

    fn reduce(&self, layout: &Layout, axis: usize, op: ReduceOp) -> Result<Storage> {
        let first = fiber_starts(layout, axis, 1)?;
        let n = resized(layout, axis, 1);
        let (len, stride) = (i32_of(layout.shape()[axis])?, i32_of(layout.strides()[axis])?);
        let out = Self::alloc(&self.device, n)?;
        self.run_rows("reduce", n, |k| {
            k.arg(op as i32).arg(first).arg(len).arg(stride).arg(&self.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        wrap(out)
    }

    fn argmax(&self, layout: &Layout, axis: usize) -> Result<Vec<usize>> {
        let first = fiber_starts(layout, axis, 1)?;
        let n = resized(layout, axis, 1);
        let (len, stride) = (i32_of(layout.shape()[axis])?, i32_of(layout.strides()[axis])?);
        let out = Buffer::<i32>::builder()
            .queue(self.device.queue.clone())
            .len(n.max(1))
            .build()
            .map_err(cl_err)?;
        self.run("argmax", n, |k| {
            k.arg(first).arg(len).arg(stride).arg(&self.buffer).arg(&out).arg(n as i32);
        })?;
        let mut host = vec![0i32; n];
        if n > 0 {
            out.read(&mut host).enq().map_err(cl_err)?;
        }
        Ok(host.into_iter().map(|i| i as usize).collect())
    }

    fn softmax(&self, layout: &Layout) -> Result<Storage> {
        let (rows_arg, cols, stride, n_rows) = rows(layout)?;
        let out = Self::alloc(&self.device, layout.numel())?;
        self.run_rows("softmax", n_rows, |k| {
            k.arg(rows_arg).arg(cols).arg(stride).arg(&self.buffer).arg(&out.buffer).arg(n_rows as i32);
        })?;
        wrap(out)
    }

    fn softmax_backward(&self, layout: &Layout, dy: &Storage, dy_layout: &Layout) -> Result<Storage> {
        let g = self.other(dy)?;
        let (yr, cols, ys, n_rows) = rows(layout)?;
        let (gr, _, gs, _) = rows(dy_layout)?;
        let out = Self::alloc(&self.device, layout.numel())?;
        self.run_rows("softmax_backward", n_rows, |k| {
            k.arg(yr)
                .arg(ys)
                .arg(&self.buffer)
                .arg(gr)
                .arg(gs)
                .arg(&g.buffer)
                .arg(&out.buffer)
                .arg(cols)
                .arg(n_rows as i32);
        })?;
        wrap(out)
    }

    fn layer_norm(
        &self,
        layout: &Layout,
        weight: &Storage,
        lw: &Layout,
        bias: &Storage,
        lb: &Layout,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let (w, b) = (self.other(weight)?, self.other(bias)?);
        let (xr, cols, stride, n_rows) = rows(layout)?;
        let (lw, lb) = (LayoutArg::of(lw)?, LayoutArg::of(lb)?);
        let y = Self::alloc(&self.device, layout.numel())?;
        let mean = Self::alloc(&self.device, n_rows)?;
        let rstd = Self::alloc(&self.device, n_rows)?;
        self.run_rows("layer_norm", n_rows, |k| {
            k.arg(xr)
                .arg(cols)
                .arg(stride)
                .arg(&self.buffer)
                .arg(lw)
                .arg(&w.buffer)
                .arg(lb)
                .arg(&b.buffer)
                .arg(eps);
            k.arg(&y.buffer).arg(&mean.buffer).arg(&rstd.buffer).arg(n_rows as i32);
        })?;
        Ok(LayerNormOutput { y: wrap(y)?, mean: wrap(mean)?, rstd: wrap(rstd)? })
    }

    fn layer_norm_backward(
        &self,
        layout: &Layout,
        weight: &Storage,
        lw: &Layout,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        dy_layout: &Layout,
    ) -> Result<LayerNormGrads> {
        let (w, mean, rstd, g) = (self.other(weight)?, self.other(mean)?, self.other(rstd)?, self.other(dy)?);
        let (xr, cols, stride, n_rows) = rows(layout)?;
        let (gr, _, gstride, _) = rows(dy_layout)?;
        let lw = LayoutArg::of(lw)?;
        let dx = Self::alloc(&self.device, layout.numel())?;
        let c = cols as usize;
        let dw = Self::alloc(&self.device, c)?;
        let db = Self::alloc(&self.device, c)?;
        self.run_rows("layer_norm_backward_dx", n_rows, |k| {
            k.arg(xr)
                .arg(cols)
                .arg(stride)
                .arg(&self.buffer)
                .arg(lw)
                .arg(&w.buffer)
                .arg(&mean.buffer)
                .arg(&rstd.buffer);
            k.arg(gr).arg(gstride).arg(&g.buffer).arg(&dx.buffer).arg(n_rows as i32);
        })?;
        self.run("layer_norm_backward_dw", c, |k| {
            k.arg(xr).arg(stride).arg(&self.buffer).arg(&mean.buffer).arg(&rstd.buffer);
            k.arg(gr)
                .arg(gstride)
                .arg(&g.buffer)
                .arg(&dw.buffer)
                .arg(&db.buffer)
                .arg(cols)
                .arg(n_rows as i32);
        })?;
        Ok(LayerNormGrads { dx: wrap(dx)?, dweight: wrap(dw)?, dbias: wrap(db)? })
    }

    fn matmul(
        &self,
        layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<Storage> {
        let b = self.other(rhs)?;
        let MatmulSpec { batch, m, k, n } = spec;
        let batches: usize = batch.iter().product();
        let out = Self::alloc(&self.device, batches * m * n)?;
        let r = layout.rank();
        let (sa, sb) = (layout.strides(), rhs_layout.strides());
        let la = LayoutArg::new(batch, &sa[..r - 2], layout.offset())?;
        let lb = LayoutArg::new(batch, &sb[..r - 2], rhs_layout.offset())?;
        let (rsa, csa, rsb, csb) =
            (i32_of(sa[r - 2])?, i32_of(sa[r - 1])?, i32_of(sb[r - 2])?, i32_of(sb[r - 1])?);
        let (mi, ki, ni) = (i32_of(*m)?, i32_of(*k)?, i32_of(*n)?);
        let global = [n.div_ceil(TILE) * TILE, m.div_ceil(TILE) * TILE, batches];
        self.device.launch("matmul", global, Some([TILE, TILE, 1]), |kb| {
            kb.arg(la).arg(rsa).arg(csa).arg(&self.buffer).arg(lb).arg(rsb).arg(csb).arg(&b.buffer);
            kb.arg(&out.buffer).arg(mi).arg(ki).arg(ni);
        })?;
        wrap(out)
    }

    fn index_select(&self, layout: &Layout, axis: usize, indices: &[usize]) -> Result<Storage> {
        let picked = fiber_starts(layout, axis, indices.len())?;
        let inner: usize = layout.shape()[axis + 1..].iter().product();
        let n = resized(layout, axis, indices.len());
        let idx = self.int_buffer(indices)?;
        let out = Self::alloc(&self.device, n)?;
        let (stride, len, inner) = (i32_of(layout.strides()[axis])?, i32_of(indices.len())?, i32_of(inner)?);
        self.run("index_select", n, |k| {
            k.arg(picked)
                .arg(stride)
                .arg(len)
                .arg(inner)
                .arg(&idx)
                .arg(&self.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        wrap(out)
    }

    fn index_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
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
        let (starts, sources) = (self.int_buffer(&starts)?, self.int_buffer(&sources)?);
        let out = Self::alloc(&self.device, n)?;
        let (stride, size_i, inner) = (i32_of(layout.strides()[axis])?, i32_of(size)?, i32_of(inner)?);
        self.run("index_add", n, |k| {
            k.arg(first)
                .arg(stride)
                .arg(size_i)
                .arg(inner)
                .arg(&starts)
                .arg(&sources)
                .arg(&self.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        wrap(out)
    }

    fn gather(
        &self,
        layout: &Layout,
        axis: usize,
        indices: &[usize],
        out_shape: &[usize],
    ) -> Result<Storage> {
        let mut strides = layout.strides().to_vec();
        strides[axis] = 0;
        let picked = LayoutArg::new(out_shape, &strides, layout.offset())?;
        let n = indices.len();
        let idx = self.int_buffer(indices)?;
        let out = Self::alloc(&self.device, n)?;
        let stride = i32_of(layout.strides()[axis])?;
        self.run("gather", n, |k| {
            k.arg(picked).arg(stride).arg(&idx).arg(&self.buffer).arg(&out.buffer).arg(n as i32);
        })?;
        wrap(out)
    }

    fn scatter_add(&self, layout: &Layout, axis: usize, indices: &[usize], size: usize) -> Result<Storage> {
        let first = fiber_starts(layout, axis, size)?;
        let inner: usize = layout.shape()[axis + 1..].iter().product();
        let outer: usize = layout.shape()[..axis].iter().product();
        let n = outer * size * inner;
        let idx = self.int_buffer(indices)?;
        let out = Self::alloc(&self.device, n)?;
        let (stride, src_len, size_i, inner_i) =
            (i32_of(layout.strides()[axis])?, i32_of(layout.shape()[axis])?, i32_of(size)?, i32_of(inner)?);
        self.run("scatter_add", n, |k| {
            k.arg(first)
                .arg(stride)
                .arg(src_len)
                .arg(size_i)
                .arg(inner_i)
                .arg(&idx)
                .arg(&self.buffer)
                .arg(&out.buffer)
                .arg(n as i32);
        })?;
        wrap(out)
    }

    fn cat(&self, layout: &Layout, others: &[(&Storage, &Layout)], axis: usize) -> Result<Storage> {
        let mut parts = vec![(self, layout)];
        for (s, l) in others {
            parts.push((self.other(s)?, l));
        }
        let mut shape = layout.shape().to_vec();
        shape[axis] = parts.iter().map(|(_, l)| l.shape()[axis]).sum();
        let out = Self::alloc(&self.device, shape.iter().product())?;
        let mut start = 0;
        for (s, l) in parts {
            let len = l.shape()[axis];
            let dst = LayoutArg::of(&Layout::contiguous(&shape).narrow(axis, start, len)?)?;
            let src = LayoutArg::of(l)?;
            let n = l.numel();
            self.run("copy_strided", n, |k| {
                k.arg(src).arg(&s.buffer).arg(dst).arg(&out.buffer).arg(n as i32);
            })?;
            start += len;
        }
        wrap(out)
    }
}

impl OpenClStorage {
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
