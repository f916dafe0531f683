// Fused attention (tensor/src/attention.rs has the math): one work-item per query row for the
// forward and for dq, one per key row for dk and dv, each streaming over the other side with an
// online softmax, so no [B, H, L, N] buffer exists. q, k, v, out and d_out are [B, H, T, D]
// layouts; outputs are contiguous [B, H, T, D] and lse [B, H, L].
// Visibility: `causal` with `offset` (query i at position offset + i), key positions
// (`pos_rows` 0: key j at j; 1: one row for all; else per batch row), hidden keys likewise,
// and sparse patterns (`pattern_rows` 0: none; 1: one for all heads; else one per head), each
// SPARSE_MAX_PARTS parts of (kind, a, b): 1 local window a, 2 columns of stride a, 3 same
// block of a, 4 the last b positions of blocks of a (tensor/src/sparse_pattern.rs), 0 unused.
// Where key j sits at position j, a pattern's pairs are enumerated (KeyWalk, QueryWalk) rather
// than tested key by key, so a query visits O(√n) keys, not n.
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

// The parts of head h's pattern.
inline __global const int* head_parts(Visibility vis, __global const int* pattern, int h) {
    return pattern + (vis.pattern_rows == 1 ? 0 : h) * SPARSE_MAX_PARTS * 3;
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
    __global const int* parts = head_parts(vis, pattern, h);
    for (int r = 0; r < SPARSE_MAX_PARTS; ++r) {
        if (part_allows(parts + 3 * r, p, k)) return 1;
    }
    return 0;
}

// Each part's allowed positions form an ascending run; the walks visit the runs in turn (the
// query's own position first, as "part -1") and skip a pair an earlier part already gave, so
// every allowed pair is visited exactly once.

// The first key position part `part` allows to a query at p (the caller stops past p), or -1.
inline int part_first_key(__global const int* part, int p) {
    int a = part[1];
    switch (part[0]) {
        case 1: return max(0, p - a + 1);
        case 2: return p % a;
        case 3: return p - p % a;
        case 4: return a - part[2];
        default: return -1;
    }
}

// The next key position after k in part `part`'s run.
inline int part_next_key(__global const int* part, int k) {
    int a = part[1];
    switch (part[0]) {
        case 2: return k + a;
        case 4: return (k + 1) % a == 0 ? k + 1 + a - part[2] : k + 1;
        default: return k + 1;
    }
}

// The first query position at or after `from` that part `part` lets see key position k, or -1.
inline int part_first_query(__global const int* part, int k, int from) {
    int a = part[1], p = max(k, from);
    switch (part[0]) {
        case 1: return p - k < a ? p : -1;
        case 2: return k + (p - k + a - 1) / a * a;
        case 3: return p / a == k / a ? p : -1;
        case 4: return k % a >= a - part[2] ? p : -1;
        default: return -1;
    }
}

// The next query position after p in part `part`'s run for key position k, or -1.
inline int part_next_query(__global const int* part, int k, int p) {
    int a = part[1];
    switch (part[0]) {
        case 1: return p + 1 - k < a ? p + 1 : -1;
        case 2: return p + a;
        case 3: return (p + 1) / a == k / a ? p + 1 : -1;
        default: return p + 1;
    }
}

// Whether the pair (p, k) was given before part r: by the query's own position or a part < r.
inline int taken_earlier(__global const int* parts, int r, int p, int k) {
    if (k == p) return 1;
    for (int e = 0; e < r; ++e) {
        if (part_allows(parts + 3 * e, p, k)) return 1;
    }
    return 0;
}

// Whether the walks enumerate a pattern's pairs (key j at position j) or test every key.
inline int enumerates(Visibility vis) { return vis.pattern_rows > 0 && vis.pos_rows == 0; }

// The keys query i sees, one by one: start with {-1, -1, 0}; next_seen_key gives -1 at the end.
typedef struct {
    int part;     // the run being walked (-1: the query's own position)
    int at;       // the last key (position) visited
    int started;  // whether the run has begun
} KeyWalk;

inline int next_seen_key(Visibility vis, __global const int* pos, __global const int* hidden,
                         __global const int* pattern, int b, int h, int i, KeyWalk* w) {
    if (!enumerates(vis)) {
        while (++w->at < vis.keys) {
            if (key_sees(vis, pos, hidden, pattern, b, h, i, w->at)) return w->at;
        }
        return -1;
    }
    __global const int* parts = head_parts(vis, pattern, h);
    int p = vis.offset + i;
    while (w->part < SPARSE_MAX_PARTS) {
        int r = w->part, k;
        if (!w->started) k = r < 0 ? p : part_first_key(parts + 3 * r, p);
        else k = r < 0 ? -1 : part_next_key(parts + 3 * r, w->at);
        w->started = 1;
        if (k < 0 || k > p || k >= vis.keys) {
            w->part += 1;
            w->started = 0;
            continue;
        }
        w->at = k;
        if (r >= 0 && taken_earlier(parts, r, p, k)) continue;
        if (key_sees(vis, pos, hidden, pattern, b, h, i, k)) return k;
    }
    return -1;
}

// The queries (of `queries`) that see key j, one by one: start with {-1, -1, 0}.
typedef KeyWalk QueryWalk;

inline int next_seeing_query(Visibility vis, __global const int* pos, __global const int* hidden,
                             __global const int* pattern, int b, int h, int j, int queries, QueryWalk* w) {
    if (!enumerates(vis)) {
        while (++w->at < queries) {
            if (key_sees(vis, pos, hidden, pattern, b, h, w->at, j)) return w->at;
        }
        return -1;
    }
    __global const int* parts = head_parts(vis, pattern, h);
    int first = vis.offset, last = vis.offset + queries - 1;
    while (w->part < SPARSE_MAX_PARTS) {
        int r = w->part, p;
        if (!w->started) p = r < 0 ? j : part_first_query(parts + 3 * r, j, first);
        else p = r < 0 ? -1 : part_next_query(parts + 3 * r, j, w->at);
        w->started = 1;
        if (p < 0 || p > last) {
            w->part += 1;
            w->started = 0;
            continue;
        }
        w->at = p;
        if (p < first || (r >= 0 && taken_earlier(parts, r, p, j))) continue;
        if (key_sees(vis, pos, hidden, pattern, b, h, p - first, j)) return p - first;
    }
    return -1;
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
    KeyWalk walk = {-1, -1, 0};
    for (int j; (j = next_seen_key(vis, pos, hidden, pattern, b, h, i, &walk)) >= 0;) {
        float s = dot_rows(lq, q, rq, lk, k, head_row(lk, b, h, j), dk);
        float m_new = fmax(m, s);
        float corr = m == -INFINITY ? 0.0f : exp(m - m_new);
        float p = exp(s - m_new);
        int rv = head_row(lv, b, h, j);
        l = l * corr + p;
        for (int c = 0; c < dv; ++c) acc[c] = acc[c] * corr + p * v[rv + c * lv.strides[3]];
        m = m_new;
    }
    if (m == -INFINITY) {
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
        KeyWalk walk = {-1, -1, 0};
        for (int j; (j = next_seen_key(vis, pos, hidden, pattern, b, h, i, &walk)) >= 0;) {
            int rk = head_row(lk, b, h, j);
            float p = exp(dot_rows(lq, q, rq, lk, k, rk, dk) - m);
            float ds = p * (dot_rows(lg, g, rg, lv, v, head_row(lv, b, h, j), dv) - d);
            for (int c = 0; c < dk; ++c) acc[c] += ds * k[rk + c * lk.strides[3]];
        }
    }
    for (int c = 0; c < dk; ++c) dq[row * dk + c] = acc[c];
}

// What every value row's gradient gains from the queries that saw no key (they averaged every
// value uniformly): per (b, h, c), the sum of their output gradients over the number of keys.
__kernel void attention_uniform_grad(Layout llse, __global const float* lse, Layout lg, __global const float* g,
                                     int keys, __global float* uniform, int rows) {
    int row = get_global_id(0);
    if (row >= rows) return;
    int heads = lg.shape[1], queries = lg.shape[2], dv = lg.shape[3];
    // row = (b * H + h) * Dv + c.
    int c = row % dv, h = (row / dv) % heads, b = row / dv / heads;
    float s = 0.0f;
    for (int i = 0; i < queries; ++i) {
        float m = lse[llse.offset + b * llse.strides[0] + h * llse.strides[1] + i * llse.strides[2]];
        if (m == -INFINITY) s += g[head_row(lg, b, h, i) + c * lg.strides[3]];
    }
    uniform[row] = s / keys;
}

// dk and dv for one key row.
__kernel void attention_backward_dkv(Layout lq, __global const float* q, Layout lk, __global const float* k,
                                     Layout lv, __global const float* v, Layout llse, __global const float* lse,
                                     Layout lg, __global const float* g, __global const float* delta,
                                     __global const float* uniform, Visibility vis, __global const int* pos,
                                     __global const int* hidden, __global const int* pattern,
                                     __global float* dkey, __global float* dval, int rows) {
    int row = get_global_id(0);
    if (row >= rows) return;
    int heads = lq.shape[1], queries = lq.shape[2], dk = lq.shape[3], dv = lv.shape[3];
    // row = (b * H + h) * N + j.
    int j = row % vis.keys, h = (row / vis.keys) % heads, b = row / vis.keys / heads;
    int rk = head_row(lk, b, h, j), rv = head_row(lv, b, h, j);
    float ak[ATTENTION_MAX_DIM], av[ATTENTION_MAX_DIM];
    for (int c = 0; c < dk; ++c) ak[c] = 0.0f;
    for (int c = 0; c < dv; ++c) av[c] = uniform[(b * heads + h) * dv + c];
    QueryWalk walk = {-1, -1, 0};
    for (int i; (i = next_seeing_query(vis, pos, hidden, pattern, b, h, j, queries, &walk)) >= 0;) {
        float m = lse[llse.offset + b * llse.strides[0] + h * llse.strides[1] + i * llse.strides[2]];
        if (m == -INFINITY) continue;  // counted in `uniform`
        int rq = head_row(lq, b, h, i), rg = head_row(lg, b, h, i);
        float p = exp(dot_rows(lq, q, rq, lk, k, rk, dk) - m);
        float ds = p * (dot_rows(lg, g, rg, lv, v, rv, dv) - delta[(b * heads + h) * queries + i]);
        for (int c = 0; c < dv; ++c) av[c] += p * g[rg + c * lg.strides[3]];
        for (int c = 0; c < dk; ++c) ak[c] += ds * q[rq + c * lq.strides[3]];
    }
    for (int c = 0; c < dk; ++c) dkey[row * dk + c] = ak[c];
    for (int c = 0; c < dv; ++c) dval[row * dv + c] = av[c];
}
