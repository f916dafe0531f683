// Reductions along one axis. `first` maps each output element to the storage position of the
// first element of its reduced fiber; the fiber has `len` elements `stride` apart. One
// work-item reduces one fiber.

__kernel void reduce(int op, Layout first, int len, int stride, __global const float* src,
                     __global float* dst, int n) {
    int o = get_global_id(0);
    if (o >= n) return;
    int base = position(first, o);
    if (op == 0) {                          // sum
        float acc = 0.0f;
        for (int r = 0; r < len; ++r) acc += src[base + r * stride];
        dst[o] = acc;
    } else if (op == 1 || op == 2) {        // max, min
        float acc = op == 1 ? -INFINITY : INFINITY;
        for (int r = 0; r < len; ++r) {
            float v = src[base + r * stride];
            if (isnan(v)) { acc = v; break; }
            acc = op == 1 ? fmax(acc, v) : fmin(acc, v);
        }
        dst[o] = acc;
    } else {                                // log-sum-exp, shifted by the max
        float m = -INFINITY;
        for (int r = 0; r < len; ++r) m = fmax(m, src[base + r * stride]);
        if (!isfinite(m)) { dst[o] = m; return; }
        float s = 0.0f;
        for (int r = 0; r < len; ++r) s += exp(src[base + r * stride] - m);
        dst[o] = m + log(s);
    }
}

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
