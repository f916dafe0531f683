// Layer norm over the last axis. Forward: one work-item per row computes mean, 1/sigma and y.
// Backward: one work-item per row computes dx; one per column sums dweight and dbias over rows.

__kernel void layer_norm(Layout rows, int cols, int stride, __global const float* x,
                         Layout lw, __global const float* w, Layout lb, __global const float* b,
                         float eps, __global float* y, __global float* mean_out,
                         __global float* rstd_out, int n_rows) {
    int r = get_global_id(0);
    if (r >= n_rows) return;
    int base = position(rows, r);
    float mean = 0.0f;
    for (int c = 0; c < cols; ++c) mean += x[base + c * stride];
    mean /= cols;
    float var = 0.0f;
    for (int c = 0; c < cols; ++c) { float d = x[base + c * stride] - mean; var += d * d; }
    var /= cols;
    float rstd = 1.0f / sqrt(var + eps);
    for (int c = 0; c < cols; ++c)
        y[r * cols + c] = (x[base + c * stride] - mean) * rstd * w[position(lw, c)] + b[position(lb, c)];
    mean_out[r] = mean;
    rstd_out[r] = rstd;
}

__kernel void layer_norm_backward_dx(Layout rows, int cols, int stride, __global const float* x,
                                     Layout lw, __global const float* w,
                                     __global const float* mean, __global const float* rstd,
                                     Layout grows, int gstride, __global const float* dy,
                                     __global float* dx, int n_rows) {
    int r = get_global_id(0);
    if (r >= n_rows) return;
    int xb = position(rows, r), gb = position(grows, r);
    float mu = mean[r], rs = rstd[r];
    float mean_g = 0.0f, mean_gx = 0.0f;
    for (int c = 0; c < cols; ++c) {
        float xhat = (x[xb + c * stride] - mu) * rs;
        float g = dy[gb + c * gstride] * w[position(lw, c)];
        mean_g += g;
        mean_gx += g * xhat;
    }
    mean_g /= cols;
    mean_gx /= cols;
    for (int c = 0; c < cols; ++c) {
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
