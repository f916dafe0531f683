// Elementwise kernels, one work-item per output element (output contiguous).
// apply_unary(op, x, c) and apply_binary(op, a, b) are generated from tensor::op_table
// (gpu/src/program.rs), with the op codes of UnaryOp::code and BinaryOp::code.

__kernel void unary(int op, float c, Layout x, __global const float* src, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i < n) dst[i] = apply_unary(op, src[position(x, i)], c);
}

__kernel void binary(int op, Layout la, __global const float* a, Layout lb, __global const float* b,
                     __global float* dst, int n) {
    int i = get_global_id(0);
    if (i < n) dst[i] = apply_binary(op, a[position(la, i)], b[position(lb, i)]);
}

__kernel void where_cond(Layout lc, __global const float* c, Layout lt, __global const float* t,
                         Layout lf, __global const float* f, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i < n) dst[i] = c[position(lc, i)] != 0.0f ? t[position(lt, i)] : f[position(lf, i)];
}

// dst[position(ld, i)] = src[position(ls, i)]: strided copies (contiguous(), cat).
__kernel void copy_strided(Layout ls, __global const float* src, Layout ld, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i < n) dst[position(ld, i)] = src[position(ls, i)];
}

__kernel void fill(__global float* dst, float value, int n) {
    int i = get_global_id(0);
    if (i < n) dst[i] = value;
}

// Rotary's pair rotation, one work-item per element of x (layouts lx; lc, ls broadcast to x's
// shape with `dims` channels last): the same products and sum as x*cos + rotate_half(x)*sin.
__kernel void rotate_pairs(Layout lx, __global const float* x, Layout lc, __global const float* cs,
                           Layout ls, __global const float* sn, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    int last = lx.rank - 1, d = lx.shape[last], dims = lc.shape[last];
    int c = i % d, row = i / d;
    if (c >= dims) { dst[i] = x[position(lx, i)]; return; }
    int c0 = c - (c & 1);
    int xi = position(lx, row * d + c0), ti = position(lc, row * dims + c0), si = position(ls, row * dims + c0);
    float x0 = x[xi], x1 = x[xi + lx.strides[last]];
    if ((c & 1) == 0) dst[i] = x0 * cs[ti] + -x1 * sn[si];
    else dst[i] = x1 * cs[ti + lc.strides[last]] + x0 * sn[si + ls.strides[last]];
}

// One AdamW step (tensor/src/adamw.rs has the math, in this order): the new parameter and
// moments from contiguous x, g, m, v at their offsets.
__kernel void adamw_step(__global const float* x, int ox, __global const float* g, int og,
                         __global const float* m, int om, __global const float* v, int ov,
                         __global float* x_out, __global float* m_out, __global float* v_out,
                         float lr, float beta1, float beta2, float eps, float decay, float c1, float c2, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    float gi = g[og + i];
    float mi = m[om + i] * beta1 + gi * (1.0f - beta1);
    float vi = v[ov + i] * beta2 + gi * gi * (1.0f - beta2);
    float denom = sqrt(vi / c2) + eps;
    x_out[i] = x[ox + i] * decay - mi / c1 / denom * lr;
    m_out[i] = mi;
    v_out[i] = vi;
}
