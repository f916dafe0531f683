// Shared by every kernel: the layout of a strided operand, passed by value.
// Element i (row-major in `shape`) of a tensor lives at offset + sum_d index_d * strides[d].
#define MAX_RANK 8
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
