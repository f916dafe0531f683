// Batched matrix product out[b] = a[b] @ bm[b], tiled in local memory.
//
// Each work-group computes a TILE x TILE block of one output matrix; it walks the k dimension
// in TILE-wide steps, staging a TILE x TILE block of each operand in local memory so that every
// element loaded from global memory is reused TILE times. Operands are strided: element (i, p)
// of a is at a_batch + i*rsa + p*csa, so a transposed operand is just swapped strides.
// `la`/`lb` are layouts over the batch axes only (giving each batch matrix's base offset).

__kernel void matmul(Layout la, int rsa, int csa, __global const float* a,
                     Layout lb, int rsb, int csb, __global const float* b,
                     __global float* out, int m, int k, int n) {
    __local float ta[TILE][TILE];
    __local float tb[TILE][TILE];
    int col = get_global_id(0), row = get_global_id(1), batch = get_global_id(2);
    int lc = get_local_id(0), lr = get_local_id(1);
    int a0 = position(la, batch), b0 = position(lb, batch);
    float acc = 0.0f;
    for (int t = 0; t < k; t += TILE) {
        int ac = t + lc, br = t + lr;
        ta[lr][lc] = (row < m && ac < k) ? a[a0 + row * rsa + ac * csa] : 0.0f;
        tb[lr][lc] = (br < k && col < n) ? b[b0 + br * rsb + col * csb] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int p = 0; p < TILE; ++p) acc += ta[lr][p] * tb[p][lc];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < m && col < n) out[(batch * m + row) * n + col] = acc;
}
