// Shared by every kernel: the layout of a strided operand, passed by value.
// Element i (row-major in `shape`) of a tensor lives at offset + sum_d index_d * strides[d].
// MAX_RANK, ROW_GROUP, TILE and the REDUCE_* codes are defined by the compiler options
// (gpu/src/program.rs), from the Rust constants.
typedef struct {
    int rank;
    int offset;
    int shape[MAX_RANK];
    int strides[MAX_RANK];
} Layout;

// Storage position of the i-th element (row-major) of layout l.
inline int position(const Layout l, int i) {
    int pos = l.offset;
    for (int d = l.rank - 1; d >= 0; --d) {
        int s = l.shape[d];
        pos += (i % s) * l.strides[d];
        i /= s;
    }
    return pos;
}

// Row kernels use one work-group of ROW_GROUP work-items per row: work-item l handles columns
// l, l + ROW_GROUP, ... (neighbouring work-items read neighbouring addresses), then the group
// combines its partial results through local memory.

inline float group_sum(float v, __local float* scratch) {
    int l = get_local_id(0);
    scratch[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_GROUP / 2; s > 0; s >>= 1) {
        if (l < s) scratch[l] += scratch[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float group_max(float v, __local float* scratch) {
    int l = get_local_id(0);
    scratch[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_GROUP / 2; s > 0; s >>= 1) {
        if (l < s) scratch[l] = fmax(scratch[l], scratch[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float group_min(float v, __local float* scratch) {
    return -group_max(-v, scratch);
}
