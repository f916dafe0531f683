// Indexing kernels. `picked` is the source layout with the indexed axis given the output's
// length and stride 0, so position(picked, i) is the start of the fiber and the index adds
// `idx * axis_stride`.

// index_select / gather: out[i] = src[position(picked, i) + indices[which(i)] * axis_stride],
// where which(i) is the axis coordinate of i (index_select) or i itself (gather).
__kernel void index_select(Layout picked, int axis_stride, int axis_len, int inner,
                           __global const int* indices, __global const float* src,
                           __global float* dst, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    int j = (i / inner) % axis_len;
    dst[i] = src[position(picked, i) + indices[j] * axis_stride];
}

__kernel void gather(Layout picked, int axis_stride, __global const int* indices,
                     __global const float* src, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    dst[i] = src[position(picked, i) + indices[i] * axis_stride];
}

// index_add: out (contiguous, `size` along the axis) gets, at axis coordinate t, the sum of the
// source slices listed for t in CSR form (sources[starts[t]..starts[t+1]]). No atomics needed.
__kernel void index_add(Layout first, int axis_stride, int size, int inner,
                        __global const int* starts, __global const int* sources,
                        __global const float* src, __global float* dst, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    int t = (i / inner) % size;
    int base = position(first, i);
    float acc = 0.0f;
    for (int s = starts[t]; s < starts[t + 1]; ++s) acc += src[base + sources[s] * axis_stride];
    dst[i] = acc;
}

// scatter_add: out[(o, t, r)] = sum over source positions j along the axis with
// indices[(o, j, r)] == t of src[(o, j, r)]; src_layout is the source's layout, whose
// axis coordinate is replaced by j.
__kernel void scatter_add(Layout first, int axis_stride, int src_axis_len, int size, int inner,
                          __global const int* indices, __global const float* src,
                          __global float* dst, int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    int r = i % inner;
    int t = (i / inner) % size;
    int o = i / (inner * size);
    int base = position(first, i);
    float acc = 0.0f;
    for (int j = 0; j < src_axis_len; ++j)
        if (indices[(o * src_axis_len + j) * inner + r] == t) acc += src[base + j * axis_stride];
    dst[i] = acc;
}
