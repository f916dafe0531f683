//! Batched matrix product on the CPU: a linear layer's `x Wᵀ` and `dy W` (one matrix, its
//! batch axes folded into rows) through [`gemm`], everything else through
//! `matrixmultiply::sgemm`.
//!
//! `sgemm` takes a row stride and a column stride for each operand, so any 2-D view works as
//! is: a transposed operand is the same data with its two strides swapped, and a broadcast
//! batch axis is stride 0. Nothing is copied before the product.
//!
//! [`gemm`] splits its own work. Otherwise work is split with `rayon` around single-threaded
//! `sgemm` calls (matrixmultiply's own threading stays off, so threads are never nested): one
//! task per batch matrix when there are at least as many batches as threads, otherwise each
//! matrix's rows (or, where it is wider than tall, its columns) are cut into blocks so that
//! every thread gets work. Each task writes its own part of the output. Products of at most
//! [`FEW_ROWS`] rows skip `sgemm` and its packing ([`few_rows`]).

use rayon::prelude::*;

use super::few_rows::{self, Strided, FEW_ROWS};
use super::gemm::{self, Terms};
use super::parallel::{SendPtr, PARALLEL_MIN_FLOPS};
use super::tile::Epilogue;
use crate::backend::MatmulSpec;
use crate::layout::Layout;

/// Row (or column) blocks are at least this tall, so each `sgemm` still packs full panels.
const MIN_ROWS_PER_TASK: usize = 32;

/// `spec` must be [`MatmulSpec::of`] the two layouts, and each layout must lie inside its
/// slice: both hold for the operands of [`crate::backend::BackendStorage::matmul`].
pub(crate) fn matmul((a, la): (&[f32], &Layout), (b, lb): (&[f32], &Layout), spec: &MatmulSpec) -> Vec<f32> {
    debug_assert_eq!(MatmulSpec::of(la, lb).as_ref().ok(), Some(spec));
    if let Some((fa, fb, folded)) = fold_batch(la, lb, spec) {
        return matmul((a, &fa), (b, &fb), &folded);
    }
    let MatmulSpec { batch, m, k, n } = spec;
    let (m, k, n) = (*m, *k, *n);
    let batches: usize = batch.iter().product();
    if batches * m * n == 0 || k == 0 {
        return super::pool::zeroed(batches * m * n);
    }
    // sgemm with beta = 0 writes every output element, so old contents do not matter.
    let mut out = super::pool::uninit(batches * m * n);
    let rank = la.rank();
    let (sa, sb) = (la.strides(), lb.strides());
    let (rsa, csa) = (sa[rank - 2] as isize, sa[rank - 1] as isize);
    let (rsb, csb) = (sb[rank - 2] as isize, sb[rank - 1] as isize);
    // Storage offset of batch matrix `i` in each operand.
    let batch_offset = |i: usize, l: &Layout| -> usize {
        let mut rest = i;
        let mut off = l.offset();
        for d in (0..batch.len()).rev() {
            off += (rest % batch[d]) * l.strides()[d];
            rest /= batch[d];
        }
        off
    };
    let threads = rayon::current_num_threads();
    // Matrix i of each operand, as a strided view.
    let operands = |i: usize| {
        let a = Strided {
            data: a,
            offset: batch_offset(i, la),
            row_stride: sa[rank - 2],
            col_stride: sa[rank - 1],
        };
        let b = Strided {
            data: b,
            offset: batch_offset(i, lb),
            row_stride: sb[rank - 2],
            col_stride: sb[rank - 1],
        };
        (a, b)
    };
    if m <= FEW_ROWS {
        // Few rows are bound by reading the right operand from memory, which two threads do
        // faster than one once it is a 256 x 256 weight or larger (when the caller runs on a
        // pool thread; waking the pool from outside costs more than that).
        let parallel = batches * m * n * k >= PARALLEL_MIN_FLOPS / 4 && threads > 1;
        if batches == 1 && m == 1 && parallel {
            // One row: split its columns across the threads.
            let (a, b) = operands(0);
            let block = n.div_ceil(threads).next_multiple_of(16);
            out.par_chunks_mut(block).enumerate().for_each(|(t, c)| {
                few_rows::product((1, k, c.len()), a, b, 0.0, (t * block, c, n));
            });
        } else if parallel {
            out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| {
                let (a, b) = operands(i);
                few_rows::product((m, k, n), a, b, 0.0, (0, c, n));
            });
        } else {
            for (i, c) in out.chunks_mut(m * n).enumerate() {
                let (a, b) = operands(i);
                few_rows::product((m, k, n), a, b, 0.0, (0, c, n));
            }
        }
        return out;
    }
    if let Some((shape, a_one, b_one)) = gemm_operands((a, la), (b, lb), spec) {
        gemm::product(shape, a_one, b_one, &mut out);
        return out;
    }
    // A single matrix is cut across the threads by rows or by columns. Each task packs its
    // share of one operand and all of the other: cutting rows, every task packs all of `b`
    // (`k·n`); cutting columns, all of `a` (`m·k`). So columns are cut where `m < n` (a weight
    // gradient `[256, 2048]·[2048, 1024]` would otherwise pack the 8 MB `b` once per thread).
    let split_columns = batches == 1 && m < n;
    let extent = if split_columns { n } else { m };
    let blocks = if batches * m * n * k < PARALLEL_MIN_FLOPS || batches >= threads {
        1
    } else {
        threads.div_ceil(batches).min(extent.div_ceil(MIN_ROWS_PER_TASK)).max(1)
    };
    let per_block = extent.div_ceil(blocks);
    let per_block = if split_columns { per_block.next_multiple_of(16) } else { per_block };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (i, blk) = (t / blocks, t % blocks);
        let s0 = blk * per_block;
        let len = per_block.min(extent - s0.min(extent));
        if len == 0 {
            return;
        }
        let (oa, ob) = (batch_offset(i, la), batch_offset(i, lb));
        // This task's rows s0..s0+len (or columns s0..s0+len) of output matrix i.
        let (rows, cols) = if split_columns { (m, len) } else { (len, n) };
        let (oa, ob, oc) = if split_columns {
            (oa, ob + s0 * csb as usize, s0)
        } else {
            (oa + s0 * rsa as usize, ob, s0 * n)
        };
        // SAFETY: both operands are `Operand`s, whose layouts lie inside their storage (checked
        // when the tensor layer made them), and `spec` is `MatmulSpec::of` those layouts, so
        // matrix i of `a` is m x k and of `b` k x n at the strides sgemm is given: every
        // element it reads (rows s0..s0+len of matrix i of `a` and all of `b`, or all of `a`
        // and columns s0..s0+len of `b`) is in bounds. Task (i, blk) writes only its rows (or
        // columns) of output matrix i, which no other task writes, and `out` lives until every
        // task has finished (the parallel loop below joins before we return it). beta = 0, so
        // sgemm never reads `out`.
        unsafe {
            let c = out_ptr.get().add(i * m * n + oc);
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                1.0,
                a.as_ptr().add(oa),
                rsa,
                csa,
                b.as_ptr().add(ob),
                rsb,
                csb,
                0.0,
                c,
                n as isize,
                1,
            );
        }
    };
    let tasks = batches * blocks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    out
}

/// `a·b + bias + residual`, each term where given (`bias` one value per column of the
/// product, `residual` the product's shape; both contiguous): a linear layer's output, added
/// to the residual stream. Where [`gemm`] takes the product the terms are added to each tile
/// as it is stored, else to the finished product in place; either way the same roundings as
/// adding them afterwards one after the other, without passes of their own or more tensors of
/// the output's size.
pub(crate) fn matmul_plus(
    a: (&[f32], &Layout),
    b: (&[f32], &Layout),
    terms: Terms,
    spec: &MatmulSpec,
) -> Vec<f32> {
    let batches: usize = spec.batch.iter().product();
    assert!(terms.bias.is_none_or(|b| b.len() == spec.n), "a bias per column of the product");
    assert!(
        terms.residual.is_none_or(|r| r.len() == batches * spec.m * spec.n),
        "a residual of the product's size"
    );
    if let Some((shape, a_one, b_one)) = gemm_operands(a, b, spec) {
        let mut out = super::pool::uninit(shape.0 * shape.2);
        gemm::product_plus(shape, a_one, b_one, terms, &mut out);
        return out;
    }
    let mut out = matmul(a, b, spec);
    if terms.bias.is_none() && terms.residual.is_none() {
        return out;
    }
    let n = spec.n.max(1);
    super::parallel::for_each_rows(&mut out, n, |first, rows| {
        let residual = terms.residual.map(|r| &r[first * n..first * n + rows.len()]);
        let epilogue = Epilogue::Linear { beta: 1.0, bias: terms.bias, residual };
        epilogue.apply((rows.len() / n, spec.n), (rows, n));
    });
    out
}

/// `c += a·b` written over `c` (`[batch…, m, n]`, contiguous) where the product is one that
/// [`gemm`] takes: a layer input's gradient that several linear layers add to. Returns whether
/// it did; otherwise `c` is unchanged.
pub(crate) fn matmul_add(
    (c, lc): (&mut [f32], &Layout),
    a: (&[f32], &Layout),
    b: (&[f32], &Layout),
    spec: &MatmulSpec,
) -> bool {
    let Some(((m, k, n), a, b)) = gemm_operands(a, b, spec) else { return false };
    if !lc.is_contiguous() || lc.numel() != m * n {
        return false;
    }
    gemm::product_add((m, k, n), a, b, &mut c[lc.offset()..lc.offset() + m * n]);
    true
}

/// The product as the one matrix [`gemm`] takes, `(m, k, n)` and both operands, when it is
/// one (its batch folded into rows, or a batch of one) with more than a few rows.
fn gemm_operands<'a>(
    (a, la): (&'a [f32], &Layout),
    (b, lb): (&'a [f32], &Layout),
    spec: &MatmulSpec,
) -> Option<((usize, usize, usize), Strided<'a>, Strided<'a>)> {
    let folded = fold_batch(la, lb, spec);
    let (la, lb, spec) = match &folded {
        Some((fa, fb, folded)) => (fa, fb, folded),
        None => (la, lb, spec),
    };
    if spec.batch.iter().any(|&d| d != 1) || spec.m <= FEW_ROWS {
        return None;
    }
    let matrix = |data, l: &Layout| {
        let (rank, strides) = (l.rank(), l.strides());
        Strided { data, offset: l.offset(), row_stride: strides[rank - 2], col_stride: strides[rank - 1] }
    };
    let (shape, a) = ((spec.m, spec.k, spec.n), matrix(a, la));
    gemm::applies(shape, &a).then(|| (shape, a, matrix(b, lb)))
}

/// A product with a shared right operand (stride 0 on every batch axis, as a weight is) whose
/// left operand's batch axes and rows step through memory as one axis, as one matrix product
/// with `batch · m` rows: the same numbers in the same output order, but the shared operand is
/// packed once instead of once per batch matrix. `None` when the layouts do not allow it.
fn fold_batch(la: &Layout, lb: &Layout, spec: &MatmulSpec) -> Option<(Layout, Layout, MatmulSpec)> {
    let nb = spec.batch.len();
    if nb == 0 || lb.strides()[..nb].iter().any(|&s| s != 0) {
        return None;
    }
    // Rows of the left operand, then its batch axes from the innermost out, must each step
    // by the size of the axis inside them.
    let (sa, shape) = (la.strides(), la.shape());
    let mut step = sa[nb];
    let mut extent = spec.m;
    for d in (0..nb).rev() {
        if shape[d] != 1 && sa[d] != step * extent {
            return None;
        }
        step = if shape[d] == 1 { step } else { sa[d] };
        extent = shape[d];
    }
    let rows = spec.batch.iter().product::<usize>() * spec.m;
    let fa = Layout::from_parts(vec![rows, spec.k], vec![sa[nb], sa[nb + 1]], la.offset());
    let sb = lb.strides();
    let fb = Layout::from_parts(vec![spec.k, spec.n], vec![sb[nb], sb[nb + 1]], lb.offset());
    Some((fa, fb, MatmulSpec { batch: vec![], m: rows, k: spec.k, n: spec.n }))
}
