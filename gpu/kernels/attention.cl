// Fused attention (tensor/src/attention.rs has the math): one work-item per query row for the
// forward and for dq, one per key row for dk and dv, each streaming over the other side with an
// online softmax, so no [B, H, L, N] buffer exists. q, k, v, out and d_out are [B, H, T, D]
// layouts; outputs are contiguous [B, H, T, D] and lse [B, H, L].
// Visibility: `causal` with `offset` (query i at position offset + i), key positions
// (`pos_rows` 0: key j at j; 1: one row for all; else per batch row), hidden keys likewise,
// and sparse patterns (`pattern_rows` 0: none; 1: one for all heads; else one per head), each
// SPARSE_MAX_PARTS parts of (kind, a, b): 1 local window a, 2 columns of stride a, 3 same
// block of a, 4 the last b positions of blocks of a (tensor/src/sparse_pattern.rs), 0 unused.
// ATTENTION_MAX_DIM and SPARSE_MAX_PARTS are defines from gpu/src/program.rs.

typedef struct {
    int causal;
    int offset;
    int pos_rows;
    int hidden_rows;
    int keys;
    int pattern_rows;
} Visibility;

inline int part_allows(__global const int* part, int p, int k) {
    int a = part[1], d = p - k;
    switch (part[0]) {
        case 1: return d < a;
        case 2: return d % a == 0;
        case 3: return k / a == p / a;
        case 4: return k % a >= a - part[2];
        default: return 0;
    }
}

inline int key_sees(Visibility vis, __global const int* pos, __global const int* hidden,
                    __global const int* pattern, int b, int h, int i, int j) {
    if (vis.hidden_rows > 0 && hidden[(vis.hidden_rows == 1 ? 0 : b) * vis.keys + j]) return 0;
    int p = vis.offset + i;
    int k = vis.pos_rows > 0 ? pos[(vis.pos_rows == 1 ? 0 : b) * vis.keys + j] : j;
    if (vis.causal && k > p) return 0;
    if (vis.pattern_rows == 0) return 1;
    if (k > p) return 0;
    if (k == p) return 1;  // a query always sees its own position
    __global const int* parts = pattern + (vis.pattern_rows == 1 ? 0 : h) * SPARSE_MAX_PARTS * 3;
    for (int r = 0; r < SPARSE_MAX_PARTS; ++r) {
        if (part_allows(parts + 3 * r, p, k)) return 1;
    }
    return 0;
}

// Storage position of element (b, h, t, 0) of a [B, H, T, D] layout; columns step by strides[3].
inline int head_row(Layout l, int b, int h, int t) {
    return l.offset + b * l.strides[0] + h * l.strides[1] + t * l.strides[2];
}

inline float dot_rows(Layout la, __global const float* a, int ra, Layout lb, __global const float* b, int rb, int d) {
    float s = 0.0f;
    for (int c = 0; c < d; ++c) s += a[ra + c * la.strides[3]] * b[rb + c * lb.strides[3]];
    return s;
}

__kernel void attention_forward(Layout lq, __global const float* q, Layout lk, __global const float* k,
                                Layout lv, __global const float* v, Visibility vis,
                                __global const int* pos, __global const int* hidden, __global const int* pattern,
                                __global float* out, __global float* lse, int rows) {
    int row = get_global_id(0);
    if (row >= rows) return;
    int heads = lq.shape[1], queries = lq.shape[2], dk = lq.shape[3], dv = lv.shape[3];
    // row = (b * H + h) * L + i, the order of the outputs.
    int i = row % queries, h = (row / queries) % heads, b = row / queries / heads;
    int rq = head_row(lq, b, h, i);
    float m = -INFINITY, l = 0.0f, acc[ATTENTION_MAX_DIM];
    for (int c = 0; c < dv; ++c) acc[c] = 0.0f;
    for (int j = 0; j < vis.keys; ++j) {
        float s = key_sees(vis, pos, hidden, pattern, b, h, i, j) ? dot_rows(lq, q, rq, lk, k, head_row(lk, b, h, j), dk) : -FLT_MAX;
        float m_new = fmax(m, s);
        float corr = m == -INFINITY ? 0.0f : exp(m - m_new);
        float p = exp(s - m_new);
        int rv = head_row(lv, b, h, j);
        l = l * corr + p;
        for (int c = 0; c < dv; ++c) acc[c] = acc[c] * corr + p * v[rv + c * lv.strides[3]];
        m = m_new;
    }
    if (m == -INFINITY || m == -FLT_MAX) {
        // Sees no key: the composition's softmax over equal scores averages every value.
        for (int c = 0; c < dv; ++c) {
            float s = 0.0f;
            for (int j = 0; j < vis.keys; ++j) s += v[head_row(lv, b, h, j) + c * lv.strides[3]];
            out[row * dv + c] = s / vis.keys;
        }
        lse[row] = -INFINITY;
    } else {
        for (int c = 0; c < dv; ++c) out[row * dv + c] = acc[c] / l;
        lse[row] = m + log(l);
    }
}

// dq for one query row, and delta = do . o (which the key-row kernel reads).
__kernel void attention_backward_dq(Layout lq, __global const float* q, Layout lk, __global const float* k,
                                    Layout lv, __global const float* v, Layout lo, __global const float* o,
                                    Layout llse, __global const float* lse, Layout lg, __global const float* g,
                                    Visibility vis, __global const int* pos, __global const int* hidden,
                                    __global const int* pattern, __global float* dq, __global float* delta, int rows) {
    int row = get_global_id(0);
    if (row >= rows) return;
    int heads = lq.shape[1], queries = lq.shape[2], dk = lq.shape[3], dv = lv.shape[3];
    int i = row % queries, h = (row / queries) % heads, b = row / queries / heads;
    int rq = head_row(lq, b, h, i), rg = head_row(lg, b, h, i);
    float d = dot_rows(lg, g, rg, lo, o, head_row(lo, b, h, i), dv);
    delta[row] = d;
    float m = lse[llse.offset + b * llse.strides[0] + h * llse.strides[1] + i * llse.strides[2]];
    float acc[ATTENTION_MAX_DIM];
    for (int c = 0; c < dk; ++c) acc[c] = 0.0f;
    if (m != -INFINITY) {
        for (int j = 0; j < vis.keys; ++j) {
            if (!key_sees(vis, pos, hidden, pattern, b, h, i, j)) continue;
            int rk = head_row(lk, b, h, j);
            float p = exp(dot_rows(lq, q, rq, lk, k, rk, dk) - m);
            float ds = p * (dot_rows(lg, g, rg, lv, v, head_row(lv, b, h, j), dv) - d);
            for (int c = 0; c < dk; ++c) acc[c] += ds * k[rk + c * lk.strides[3]];
        }
    }
    for (int c = 0; c < dk; ++c) dq[row * dk + c] = acc[c];
}

// dk and dv for one key row.
__kernel void attention_backward_dkv(Layout lq, __global const float* q, Layout lk, __global const float* k,
                                     Layout lv, __global const float* v, Layout llse, __global const float* lse,
                                     Layout lg, __global const float* g, __global const float* delta,
                                     Visibility vis, __global const int* pos, __global const int* hidden,
                                     __global const int* pattern, __global float* dkey, __global float* dval, int rows) {
    int row = get_global_id(0);
    if (row >= rows) return;
    int heads = lq.shape[1], queries = lq.shape[2], dk = lq.shape[3], dv = lv.shape[3];
    // row = (b * H + h) * N + j.
    int j = row % vis.keys, h = (row / vis.keys) % heads, b = row / vis.keys / heads;
    int rk = head_row(lk, b, h, j), rv = head_row(lv, b, h, j);
    float ak[ATTENTION_MAX_DIM], av[ATTENTION_MAX_DIM];
    for (int c = 0; c < dk; ++c) ak[c] = 0.0f;
    for (int c = 0; c < dv; ++c) av[c] = 0.0f;
    for (int i = 0; i < queries; ++i) {
        float m = lse[llse.offset + b * llse.strides[0] + h * llse.strides[1] + i * llse.strides[2]];
        int rg = head_row(lg, b, h, i);
        if (m == -INFINITY) {
            // That query averaged every value uniformly.
            for (int c = 0; c < dv; ++c) av[c] += g[rg + c * lg.strides[3]] / vis.keys;
            continue;
        }
        if (!key_sees(vis, pos, hidden, pattern, b, h, i, j)) continue;
        int rq = head_row(lq, b, h, i);
        float p = exp(dot_rows(lq, q, rq, lk, k, rk, dk) - m);
        float ds = p * (dot_rows(lg, g, rg, lv, v, rv, dv) - delta[(b * heads + h) * queries + i]);
        for (int c = 0; c < dv; ++c) av[c] += p * g[rg + c * lg.strides[3]];
        for (int c = 0; c < dk; ++c) ak[c] += ds * q[rq + c * lq.strides[3]];
    }
    for (int c = 0; c < dk; ++c) dkey[row * dk + c] = ak[c];
    for (int c = 0; c < dv; ++c) dval[row * dv + c] = av[c];
}
