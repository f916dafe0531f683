// Reductions along one axis, one work-group per output element. `first` maps each output
// element to the storage position of the first element of its fiber; the fiber has `len`
// elements `stride` apart. NaN propagates through max and min.

__kernel void reduce(int op, Layout first, int len, int stride, __global const float* src,
                     __global float* dst, int n) {
    __local float scratch[ROW_GROUP];
    int o = get_group_id(0), l = get_local_id(0);
    int base = position(first, o);
    float r;
    if (op == REDUCE_SUM) {
        float acc = 0.0f;
        for (int i = l; i < len; i += ROW_GROUP) acc += src[base + i * stride];
        r = group_sum(acc, scratch);
    } else if (op == REDUCE_MAX || op == REDUCE_MIN) {
        float acc = op == REDUCE_MAX ? -INFINITY : INFINITY;
        int nan = 0;
        for (int i = l; i < len; i += ROW_GROUP) {
            float v = src[base + i * stride];
            nan |= isnan(v);
            acc = op == REDUCE_MAX ? fmax(acc, v) : fmin(acc, v);
        }
        r = op == REDUCE_MAX ? group_max(acc, scratch) : group_min(acc, scratch);
        if (group_max(nan ? 1.0f : 0.0f, scratch) > 0.0f) r = NAN;
    } else {                                // REDUCE_LOG_SUM_EXP, shifted by the max
        float m = -INFINITY;
        for (int i = l; i < len; i += ROW_GROUP) m = fmax(m, src[base + i * stride]);
        m = group_max(m, scratch);
        float s = 0.0f;
        if (isfinite(m))
            for (int i = l; i < len; i += ROW_GROUP) s += exp(src[base + i * stride] - m);
        s = group_sum(s, scratch);
        r = isfinite(m) ? m + log(s) : m;
    }
    if (l == 0) dst[o] = r;
}

// One work-item per output element (argmax is not on any hot path).
__kernel void argmax(Layout first, int len, int stride, __global const float* src,
                     __global int* dst, int n) {
    int o = get_global_id(0);
    if (o >= n) return;
    int base = position(first, o);
    int best = 0;
    float bv = src[base];
    for (int r = 1; r < len; ++r) {
        float v = src[base + r * stride];
        if (v > bv || (isnan(v) && !isnan(bv))) { best = r; bv = v; }
    }
    dst[o] = best;
}
