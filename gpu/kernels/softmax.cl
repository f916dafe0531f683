// Softmax along the last axis, one work-group per row. `rows` maps a row number to the storage
// position of its first element; the row's elements are `stride` apart. Output is contiguous.

__kernel void softmax(Layout rows, int cols, int stride, __global const float* src,
                      __global float* dst, int n_rows) {
    __local float scratch[ROW_GROUP];
    int r = get_group_id(0), l = get_local_id(0);
    int base = position(rows, r);
    float m = -INFINITY;
    for (int c = l; c < cols; c += ROW_GROUP) m = fmax(m, src[base + c * stride]);
    m = group_max(m, scratch);
    float s = 0.0f;
    for (int c = l; c < cols; c += ROW_GROUP) {
        float e = exp(src[base + c * stride] - m);
        dst[r * cols + c] = e;
        s += e;
    }
    float inv = 1.0f / group_sum(s, scratch);
    for (int c = l; c < cols; c += ROW_GROUP) dst[r * cols + c] *= inv;
}

// dx = y * (dy - sum(dy * y)) along the last axis.
__kernel void softmax_backward(Layout yrows, int ystride, __global const float* y,
                               Layout grows, int gstride, __global const float* dy,
                               __global float* dx, int cols, int n_rows) {
    __local float scratch[ROW_GROUP];
    int r = get_group_id(0), l = get_local_id(0);
    int yb = position(yrows, r), gb = position(grows, r);
    float dot = 0.0f;
    for (int c = l; c < cols; c += ROW_GROUP) dot += y[yb + c * ystride] * dy[gb + c * gstride];
    dot = group_sum(dot, scratch);
    for (int c = l; c < cols; c += ROW_GROUP) {
        float yv = y[yb + c * ystride];
        dx[r * cols + c] = yv * (dy[gb + c * gstride] - dot);
    }
}
