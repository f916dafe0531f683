// Softmax along the last axis, one work-item per row. `rows` maps a row number to the storage
// position of its first element; the row's elements are `stride` apart. Output is contiguous.

__kernel void softmax(Layout rows, int cols, int stride, __global const float* src,
                      __global float* dst, int n_rows) {
    int r = get_global_id(0);
    if (r >= n_rows) return;
    int base = position(rows, r);
    float m = -INFINITY;
    for (int c = 0; c < cols; ++c) m = fmax(m, src[base + c * stride]);
    float s = 0.0f;
    for (int c = 0; c < cols; ++c) {
        float e = exp(src[base + c * stride] - m);
        dst[r * cols + c] = e;
        s += e;
    }
    float inv = 1.0f / s;
    for (int c = 0; c < cols; ++c) dst[r * cols + c] *= inv;
}

// dx = y * (dy - sum(dy * y)) along the last axis.
__kernel void softmax_backward(Layout yrows, int ystride, __global const float* y,
                               Layout grows, int gstride, __global const float* dy,
                               __global float* dx, int cols, int n_rows) {
    int r = get_global_id(0);
    if (r >= n_rows) return;
    int yb = position(yrows, r), gb = position(grows, r);
    float dot = 0.0f;
    for (int c = 0; c < cols; ++c) dot += y[yb + c * ystride] * dy[gb + c * gstride];
    for (int c = 0; c < cols; ++c) {
        float yv = y[yb + c * ystride];
        dx[r * cols + c] = yv * (dy[gb + c * gstride] - dot);
    }
}
