//! A tensor layout as a kernel argument (the `Layout` struct of `kernels/common.cl`).

use tensor::{bail, Layout, Result};

pub use crate::program::MAX_RANK;

/// Mirrors `typedef struct { int rank; int offset; int shape[8]; int strides[8]; } Layout;`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayoutArg {
    rank: i32,
    offset: i32,
    shape: [i32; MAX_RANK],
    strides: [i32; MAX_RANK],
}

// SAFETY: a plain `repr(C)` struct of i32s with no padding, the same layout as the OpenCL C
// struct it is passed as.
unsafe impl ocl::OclPrm for LayoutArg {}

fn int(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| tensor::Error::new(op, format!("{v} exceeds the OpenCL kernels' 32-bit indices")))
}

impl LayoutArg {
    /// From explicit parts.
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Result<Self> {
        if shape.len() > MAX_RANK {
            bail!("opencl", "rank {} exceeds the kernels' maximum of {MAX_RANK}", shape.len());
        }
        let mut arg =
            LayoutArg { rank: shape.len() as i32, offset: int("opencl", offset)?, ..Default::default() };
        for (d, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            arg.shape[d] = int("opencl", n)?;
            arg.strides[d] = int("opencl", s)?;
        }
        Ok(arg)
    }

    pub fn of(layout: &Layout) -> Result<Self> {
        Self::new(layout.shape(), layout.strides(), layout.offset())
    }
}

/// `layout` with `axis` replaced by `len` entries of stride 0: position(i) is then the start of
/// the fiber along `axis` that output element i belongs to.
pub fn fiber_starts(layout: &Layout, axis: usize, len: usize) -> Result<LayoutArg> {
    let mut shape = layout.shape().to_vec();
    let mut strides = layout.strides().to_vec();
    shape[axis] = len;
    strides[axis] = 0;
    LayoutArg::new(&shape, &strides, layout.offset())
}

/// Rows of the last axis: a layout over all axes but the last, plus the last axis's size and
/// stride.
pub fn rows(layout: &Layout) -> Result<(LayoutArg, i32, i32, usize)> {
    let r = layout.rank();
    let (cols, stride) = if r == 0 { (1, 1) } else { (layout.shape()[r - 1], layout.strides()[r - 1]) };
    let outer = if r == 0 { &[][..] } else { &layout.shape()[..r - 1] };
    let outer_strides = if r == 0 { &[][..] } else { &layout.strides()[..r - 1] };
    let n_rows = outer.iter().product();
    Ok((
        LayoutArg::new(outer, outer_strides, layout.offset())?,
        int("opencl", cols)?,
        int("opencl", stride)?,
        n_rows,
    ))
}

pub fn i32_of(v: usize) -> Result<i32> {
    int("opencl", v)
}

/// Mirrors the `Visibility` struct of `kernels/attention.cl`: which keys each query sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VisibilityArg {
    causal: i32,
    offset: i32,
    pos_rows: i32,
    hidden_rows: i32,
    keys: i32,
    pattern_rows: i32,
}

// SAFETY: a plain `repr(C)` struct of i32s with no padding, the same layout as the OpenCL C
// struct it is passed as.
unsafe impl ocl::OclPrm for VisibilityArg {}

impl VisibilityArg {
    /// The scalars of `vis` for `keys` keys; the position and hidden tables go as buffers.
    pub fn new(vis: &tensor::KeyVisibility, keys: usize) -> Result<Self> {
        let rows = |len: Option<usize>| len.map_or(Ok(0), |len| int("opencl", len / keys.max(1)));
        Ok(VisibilityArg {
            causal: vis.causal.is_some() as i32,
            offset: int("opencl", vis.causal.unwrap_or(0))?,
            pos_rows: rows(vis.key_positions.as_ref().map(|p| p.len()))?,
            hidden_rows: rows(vis.hidden_keys.as_ref().map(|h| h.len()))?,
            keys: int("opencl", keys)?,
            pattern_rows: int("opencl", vis.pattern.as_ref().map_or(0, |p| p.len()))?,
        })
    }
}
