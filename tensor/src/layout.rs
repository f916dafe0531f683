//! Layout: how a logical n-dimensional index maps to a position in flat storage.
//!
//! A tensor of shape `[d0, d1, ..., dk]` with strides `[s0, ..., sk]` (in elements) and an
//! offset `o` keeps element `(i0, ..., ik)` at `o + i0*s0 + ... + ik*sk`. Every view is a new
//! `Layout` over the same storage, so views cost nothing:
//!
//! - transpose/permute reorder `shape` and `strides` together;
//! - narrow (slice) moves `offset` forward and shrinks one dimension;
//! - broadcast gives a size-1 (or new) dimension stride 0, so every index reads the same element;
//! - reshape of row-major data recomputes strides; of other data it needs a copy.
//!
//! A layout is *contiguous* when its strides are the row-major strides of its shape, so the
//! elements are a plain slice `storage[offset..offset + numel]` in index order.

use crate::bail;
use crate::error::{fmt_shape, Result};

/// Shape, strides (in elements) and offset of a view into flat storage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of `shape`: the last dimension moves fastest.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The shape two broadcastable shapes broadcast to (numpy rules: align on the right; each pair
/// of dimensions must be equal or one of them 1).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!(op, "shapes {} and {} do not broadcast", fmt_shape(a), fmt_shape(b)),
        };
    }
    Ok(out)
}

impl Layout {
    /// Row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    /// A layout from explicit parts. Nothing here promises it fits any storage: a kernel only
    /// ever sees a layout through an [`Operand`](crate::backend::Operand), which checks that.
    pub fn from_parts(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of logical elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are `storage[offset..offset+numel]` in row-major order.
    /// Size-1 dimensions may have any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The last storage position this layout can touch plus one (the offset when it has no
    /// elements).
    pub fn storage_extent(&self) -> usize {
        self.checked_extent().unwrap_or(usize::MAX)
    }

    /// [`Layout::storage_extent`], or `None` when the layout is malformed (as many strides as
    /// axes is required) or its positions overflow: what a kernel's bounds rest on.
    pub fn checked_extent(&self) -> Option<usize> {
        if self.shape.len() != self.strides.len() {
            return None;
        }
        if self.shape.contains(&0) {
            // No element is read, but kernels still slice `storage[offset..]`.
            return Some(self.offset);
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            last = last.checked_add((d - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    /// True when no two indices reach the same storage position (no broadcast axis, no axes
    /// that interleave), so writing through the layout sets each element once. Checked
    /// sufficiently: ordered by stride, each axis must step past everything the axes with
    /// smaller strides span.
    pub fn is_one_to_one(&self) -> bool {
        let mut axes: Vec<(usize, usize)> =
            self.strides.iter().copied().zip(self.shape.iter().copied()).filter(|&(_, d)| d > 1).collect();
        if self.shape.contains(&0) {
            return true;
        }
        axes.sort_unstable();
        let mut span = 0usize; // the largest position offset the smaller axes reach
        for (stride, d) in axes {
            if stride <= span {
                return false;
            }
            match (d - 1).checked_mul(stride).and_then(|x| x.checked_add(span)) {
                Some(s) => span = s,
                None => return false,
            }
        }
        true
    }

    /// Storage position of a multi-index. The caller has checked the index is in bounds.
    pub fn position(&self, index: &[usize]) -> usize {
        self.offset + index.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>()
    }

    pub(crate) fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis >= self.rank() {
            bail!(op, "axis {axis} out of range for shape {}", fmt_shape(&self.shape));
        }
        Ok(())
    }

    /// Swaps two axes (a view).
    pub fn transpose(&self, a: usize, b: usize) -> Result<Layout> {
        self.check_axis("transpose", a)?;
        self.check_axis("transpose", b)?;
        let mut out = self.clone();
        out.shape.swap(a, b);
        out.strides.swap(a, b);
        Ok(out)
    }

    /// Reorders the axes: output axis `i` is input axis `dims[i]` (a view).
    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        let valid = dims.len() == self.rank()
            && dims.iter().all(|&d| d < self.rank() && !std::mem::replace(&mut seen[d], true));
        if !valid {
            bail!("permute", "{dims:?} is not a permutation of the axes of {}", fmt_shape(&self.shape));
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    /// Keeps `len` entries of `axis` starting at `start` (a view).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_axis("narrow", axis)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[axis]) {
            bail!(
                "narrow",
                "range {start}..{} out of bounds for axis {axis} of size {} in {}",
                start.saturating_add(len),
                self.shape[axis],
                fmt_shape(&self.shape)
            );
        }
        let mut out = self.clone();
        if len > 0 {
            out.offset += start * self.strides[axis];
        }
        out.shape[axis] = len;
        Ok(out)
    }

    /// Broadcasts to `shape` (numpy rules): new leading axes and size-1 axes get stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let err = || {
            crate::Error::new(
                "broadcast_to",
                format!("cannot broadcast {} to {}", fmt_shape(&self.shape), fmt_shape(shape)),
            )
        };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &d) in shape.iter().enumerate().skip(lead) {
            let (own, stride) = (self.shape[i - lead], self.strides[i - lead]);
            strides[i] = if own == d {
                stride
            } else if own == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// The same elements under a new shape, if that is possible without moving data: true for
    /// contiguous layouts and, more generally, when each group of merged or split axes is itself
    /// laid out row-major. Returns `None` when a copy is needed.
    pub fn reshape_view(&self, shape: &[usize]) -> Option<Layout> {
        if shape.iter().product::<usize>() != self.numel() {
            return None;
        }
        if self.is_contiguous() {
            return Some(Layout {
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            });
        }
        // Walk both shapes, matching groups of old axes to groups of new axes with equal
        // products; each old group must be row-major within itself.
        let old: Vec<(usize, usize)> =
            self.shape.iter().zip(&self.strides).filter(|(d, _)| **d != 1).map(|(&d, &s)| (d, s)).collect();
        let mut strides = vec![0; shape.len()];
        let (mut oi, mut ni) = (0, 0);
        while ni < shape.len() {
            if shape[ni] == 1 {
                strides[ni] = 0;
                ni += 1;
                continue;
            }
            // Grow an old group and a new group until their products agree.
            let (o0, n0) = (oi, ni);
            let (mut op, mut np) = (old.get(oi)?.0, shape[ni]);
            oi += 1;
            ni += 1;
            while op != np {
                if op < np {
                    op *= old.get(oi)?.0;
                    oi += 1;
                } else {
                    np *= *shape.get(ni)?;
                    ni += 1;
                }
            }
            // The old group must be row-major inside: stride[j] = stride[j+1] * size[j+1].
            for j in o0..oi - 1 {
                if old[j].1 != old[j + 1].1 * old[j + 1].0 {
                    return None;
                }
            }
            // Assign strides to the new group from its innermost axis outwards.
            let mut stride = old[oi - 1].1;
            for k in (n0..ni).rev() {
                strides[k] = stride;
                stride *= shape[k];
            }
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// Inserts a size-1 axis at `axis` (a view).
    pub fn unsqueeze(&self, axis: usize) -> Result<Layout> {
        if axis > self.rank() {
            bail!("unsqueeze", "axis {axis} out of range for shape {}", fmt_shape(&self.shape));
        }
        let mut out = self.clone();
        out.shape.insert(axis, 1);
        out.strides.insert(axis, 0);
        Ok(out)
    }

    /// Removes a size-1 axis (a view).
    pub fn squeeze(&self, axis: usize) -> Result<Layout> {
        self.check_axis("squeeze", axis)?;
        if self.shape[axis] != 1 {
            bail!(
                "squeeze",
                "axis {axis} of {} has size {}, not 1",
                fmt_shape(&self.shape),
                self.shape[axis]
            );
        }
        let mut out = self.clone();
        out.shape.remove(axis);
        out.strides.remove(axis);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: every index's position, all distinct.
    fn distinct_positions(l: &Layout) -> bool {
        let mut seen = std::collections::HashSet::new();
        let n = l.numel();
        (0..n).all(|mut i| {
            let mut index = vec![0; l.rank()];
            for d in (0..l.rank()).rev() {
                index[d] = i % l.shape()[d];
                i /= l.shape()[d];
            }
            seen.insert(l.position(&index))
        })
    }

    #[test]
    fn one_to_one_layouts_are_told_from_overlapping_ones() {
        let c = Layout::contiguous(&[2, 3, 4]);
        let cases = [
            (c.clone(), true),
            (c.permute(&[2, 0, 1]).unwrap(), true),
            (c.narrow(2, 1, 2).unwrap(), true),
            (Layout::contiguous(&[3, 1]).broadcast_to(&[3, 5]).unwrap(), false),
            (Layout::from_parts(vec![3, 4], vec![2, 1], 0), false), // rows overlap
            (Layout::from_parts(vec![3, 2], vec![1, 3], 0), true),  // interleaved but disjoint
            (Layout::from_parts(vec![2, 2], vec![1, 1], 0), false),
            (Layout::from_parts(vec![0, 5], vec![0, 0], 0), true),
        ];
        for (l, want) in cases {
            assert_eq!(l.is_one_to_one(), want, "{:?} {:?}", l.shape(), l.strides());
            if want {
                assert!(distinct_positions(&l));
            } else {
                assert!(!distinct_positions(&l));
            }
        }
    }
}
