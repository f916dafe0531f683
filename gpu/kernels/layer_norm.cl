// Layer norm over the last axis. Forward and the input gradient: one work-group per row.
// dweight and dbias: one work-item per column summing over rows (neighbouring work-items read
// neighbouring columns).

__kernel void layer_norm(Layout rows, int cols, int stride, __global const float* x,
                         Layout lw, __global const float* w, Layout lb, __global const float* b,
                         float eps, __global float* y, __global float* mean_out,
                         __global float* rstd_out, int n_rows) {
    __local float scratch[ROW_GROUP];
    int r = get_group_id(0), l = get_local_id(0);
    int base = position(rows, r);
    float s = 0.0f;
    for (int c = l; c < cols; c += ROW_GROUP) s += x[base + c * stride];
    float mean = group_sum(s, scratch) / cols;
    float v = 0.0f;
    for (int c = l; c < cols; c += ROW_GROUP) { float d = x[base + c * stride] - mean; v += d * d; }
    float rstd = 1.0f / sqrt(group_sum(v, scratch) / cols + eps);
    for (int c = l; c < cols; c += ROW_GROUP)
        y[r * cols + c] = (x[base + c * stride] - mean) * rstd * w[position(lw, c)] + b[position(lb, c)];
    if (l == 0) {
        mean_out[r] = mean;
        rstd_out[r] = rstd;
    }
}

__kernel void layer_norm_backward_dx(Layout rows, int cols, int stride, __global const float* x,
                                     Layout lw, __global const float* w,
                                     __global const float* mean, __global const float* rstd,
                                     Layout grows, int gstride, __global const float* dy,
                                     __global float* dx, int n_rows) {
    __local float scratch[ROW_GROUP];
    int r = get_group_id(0), l = get_local_id(0);
    int xb = position(rows, r), gb = position(grows, r);
    float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = l; c < cols; c += ROW_GROUP) {
        float xhat = (x[xb + c * stride] - mu) * rs;
        float g = dy[gb + c * gstride] * w[position(lw, c)];
        sg += g;
        sgx += g * xhat;
    }
    float mean_g = group_sum(sg, scratch) / cols;
    float mean_gx = group_sum(sgx, scratch) / cols;
    for (int c = l; c < cols; c += ROW_GROUP) {
        float xhat = (x[xb + c * stride] - mu) * rs;
        float g = dy[gb + c * gstride] * w[position(lw, c)];
        dx[r * cols + c] = rs * (g - mean_g - xhat * mean_gx);
    }
}

__kernel void layer_norm_backward_dw(Layout rows, int stride, __global const float* x,
                                     __global const float* mean, __global const float* rstd,
                                     Layout grows, int gstride, __global const float* dy,
                                     __global float* dw, __global float* db, int cols, int n_rows) {
    int c = get_global_id(0);
    if (c >= cols) return;
    float sw = 0.0f, sb = 0.0f;
    for (int r = 0; r < n_rows; ++r) {
        float g = dy[position(grows, r) + c * gstride];
        float xhat = (x[position(rows, r) + c * stride] - mean[r]) * rstd[r];
        sw += g * xhat;
        sb += g;
    }
    dw[c] = sw;
    db[c] = sb;
}
