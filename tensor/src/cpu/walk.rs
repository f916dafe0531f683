//! Walking N strided operands of one shape together, in row-major order of that shape.
//!
//! Every elementwise kernel reduces to: for each output index `i` (row-major), read operand `j`
//! at `offset_j + Σ index_d * stride_j[d]`. Doing that per element is slow, so `Walk` first
//! merges adjacent dimensions that are laid out row-major for *every* operand (a contiguous
//! tensor collapses to one dimension), then hands out *runs*: stretches along the innermost
//! remaining dimension where each operand advances by a fixed stride. Kernels then loop over a
//! run with plain slices when the stride is 1 (vectorised), or with a stride otherwise.
//!
//! A walk can start at any linear index, so the output can be split into chunks for `rayon`.

use crate::layout::Layout;

/// The merged dimensions and strides of `N` operands that share a shape.
pub(crate) struct Walk<const N: usize> {
    shape: Vec<usize>,
    strides: [Vec<usize>; N],
    offsets: [usize; N],
    numel: usize,
}

/// One run: it covers output indices `start..start+len`; operand `j` is read at
/// `offsets[j] + t * strides[j]` for `t` in `0..len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run<const N: usize> {
    pub start: usize,
    pub len: usize,
    pub offsets: [usize; N],
    pub strides: [usize; N],
}

impl<const N: usize> Walk<N> {
    /// All `layouts` must have the same shape.
    pub fn new(layouts: [&Layout; N]) -> Self {
        let shape0 = layouts[0].shape();
        debug_assert!(layouts.iter().all(|l| l.shape() == shape0));
        let numel = layouts[0].numel();
        // Keep dimensions of size > 1, innermost first, merging into the previous (inner) one
        // when every operand has stride[outer] == stride[inner] * size[inner].
        let mut shape: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
        for d in (0..shape0.len()).rev() {
            let size = shape0[d];
            if size == 1 {
                continue;
            }
            let merge = !shape.is_empty()
                && (0..N).all(|j| {
                    let last = shape.len() - 1;
                    layouts[j].strides()[d] == strides[j][last] * shape[last]
                });
            if merge {
                *shape.last_mut().unwrap() *= size;
            } else {
                shape.push(size);
                for j in 0..N {
                    strides[j].push(layouts[j].strides()[d]);
                }
            }
        }
        shape.reverse();
        for s in strides.iter_mut() {
            s.reverse();
        }
        let offsets = std::array::from_fn(|j| layouts[j].offset());
        Walk { shape, strides, offsets, numel }
    }

    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Calls `f` for each run covering output indices `begin..end`, in order.
    pub fn runs(&self, begin: usize, end: usize, mut f: impl FnMut(Run<N>)) {
        if begin >= end {
            return;
        }
        let rank = self.shape.len();
        if rank == 0 {
            f(Run { start: 0, len: 1, offsets: self.offsets, strides: [0; N] });
            return;
        }
        let inner = self.shape[rank - 1];
        let inner_strides: [usize; N] = std::array::from_fn(|j| self.strides[j][rank - 1]);
        // The multi-index of `begin` over the outer dimensions, and the operands' offsets there.
        let mut index = vec![0; rank - 1];
        let mut rest = begin / inner;
        for d in (0..rank - 1).rev() {
            index[d] = rest % self.shape[d];
            rest /= self.shape[d];
        }
        let mut base: [usize; N] = std::array::from_fn(|j| {
            self.offsets[j] + (0..rank - 1).map(|d| index[d] * self.strides[j][d]).sum::<usize>()
        });
        let mut pos = begin;
        let mut within = begin % inner;
        while pos < end {
            let len = (inner - within).min(end - pos);
            let offsets = std::array::from_fn(|j| base[j] + within * inner_strides[j]);
            f(Run { start: pos, len, offsets, strides: inner_strides });
            pos += len;
            within = 0;
            // Advance the outer multi-index by one, carrying.
            for d in (0..rank - 1).rev() {
                index[d] += 1;
                for (j, b) in base.iter_mut().enumerate() {
                    *b += self.strides[j][d];
                }
                if index[d] < self.shape[d] {
                    break;
                }
                for (j, b) in base.iter_mut().enumerate() {
                    *b -= self.shape[d] * self.strides[j][d];
                }
                index[d] = 0;
            }
        }
    }
}
