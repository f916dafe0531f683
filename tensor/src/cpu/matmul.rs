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
    let threads = rayon::current_num_threads();
    // Matrix i of each operand, as a strided view.
    let operands = |i: usize| {
        let matrix = |data, l: &Layout| {
            let (rank, s) = (l.rank(), l.strides());
            let offset = batch_offset(batch, i, l);
            Strided { data, offset, row_stride: s[rank - 2], col_stride: s[rank - 1] }
        };
        (matrix(a, la), matrix(b, lb))
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
    let blocks = Blocks::new((a, la), (b, lb), spec, &mut out);
    match blocks.tasks() {
        1 => blocks.run(0),
        tasks => (0..tasks).into_par_iter().for_each(|t| blocks.run(t)),
    }
    out
}

/// Storage offset of batch matrix `i` of a layout over the batch axes `batch`.
fn batch_offset(batch: &[usize], i: usize, l: &Layout) -> usize {
    let mut rest = i;
    let mut off = l.offset();
    for d in (0..batch.len()).rev() {
        off += (rest % batch[d]) * l.strides()[d];
        rest /= batch[d];
    }
    off
}

/// A product cut into blocks for single-threaded `sgemm` calls, each writing its own part of
/// the output: one task per batch matrix when there are at least as many batches as threads,
/// otherwise each matrix's rows (or columns) cut so that every thread gets work.
struct Blocks<'a> {
    a: (&'a [f32], &'a Layout),
    b: (&'a [f32], &'a Layout),
    spec: &'a MatmulSpec,
    split_columns: bool,
    blocks: usize,
    per_block: usize,
    /// The output, `batches · m · n` floats, borrowed for as long as the blocks live.
    out: SendPtr,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Blocks<'a> {
    /// `spec` must be [`MatmulSpec::of`] the layouts, which lie inside their slices (as for
    /// [`matmul`]), with no empty axis and `k > 0`; `out` holds the product.
    fn new(
        a: (&'a [f32], &'a Layout),
        b: (&'a [f32], &'a Layout),
        spec: &'a MatmulSpec,
        out: &'a mut [f32],
    ) -> Self {
        let MatmulSpec { batch, m, k, n } = spec;
        let batches: usize = batch.iter().product();
        assert_eq!(out.len(), batches * m * n, "product output length");
        assert!(!out.is_empty() && *k > 0, "an empty product has no blocks");
        let threads = rayon::current_num_threads();
        // A single matrix is cut across the threads by rows or by columns. Each task packs its
        // share of one operand and all of the other: cutting rows, every task packs all of `b`
        // (`k·n`); cutting columns, all of `a` (`m·k`). So columns are cut where `m < n` (a
        // weight gradient `[256, 2048]·[2048, 1024]` would otherwise pack the 8 MB `b` once
        // per thread).
        let split_columns = batches == 1 && m < n;
        let extent = if split_columns { *n } else { *m };
        let blocks = if batches * m * n * k < PARALLEL_MIN_FLOPS || batches >= threads {
            1
        } else {
            threads.div_ceil(batches).min(extent.div_ceil(MIN_ROWS_PER_TASK)).max(1)
        };
        let per_block = extent.div_ceil(blocks);
        let per_block = if split_columns { per_block.next_multiple_of(16) } else { per_block };
        let out_ptr = SendPtr(out.as_mut_ptr());
        Blocks { a, b, spec, split_columns, blocks, per_block, out: out_ptr, _out: std::marker::PhantomData }
    }

    /// How many `sgemm` calls the product takes.
    fn tasks(&self) -> usize {
        self.spec.batch.iter().product::<usize>() * self.blocks
    }

    /// Task `t`: its rows (or columns) of one output matrix. Each task is to run once.
    fn run(&self, t: usize) {
        let MatmulSpec { batch, m, k, n } = self.spec;
        let ((a, la), (b, lb)) = (self.a, self.b);
        let rank = la.rank();
        let (sa, sb) = (la.strides(), lb.strides());
        let (rsa, csa) = (sa[rank - 2] as isize, sa[rank - 1] as isize);
        let (rsb, csb) = (sb[rank - 2] as isize, sb[rank - 1] as isize);
        let extent = if self.split_columns { *n } else { *m };
        let (i, blk) = (t / self.blocks, t % self.blocks);
        let s0 = blk * self.per_block;
        let len = self.per_block.min(extent - s0.min(extent));
        if len == 0 {
            return;
        }
        let (oa, ob) = (batch_offset(batch, i, la), batch_offset(batch, i, lb));
        // This task's rows s0..s0+len (or columns s0..s0+len) of output matrix i.
        let (rows, cols) = if self.split_columns { (*m, len) } else { (len, *n) };
        let (oa, ob, oc) = if self.split_columns {
            (oa, ob + s0 * csb as usize, s0)
        } else {
            (oa + s0 * rsa as usize, ob, s0 * n)
        };
        // SAFETY: both operands are `Operand`s, whose layouts lie inside their storage (checked
        // when the tensor layer made them), and `spec` is `MatmulSpec::of` those layouts, so
        // matrix i of `a` is m x k and of `b` k x n at the strides sgemm is given: every
        // element it reads (rows s0..s0+len of matrix i of `a` and all of `b`, or all of `a`
        // and columns s0..s0+len of `b`) is in bounds. Task (i, blk) writes only its rows (or
        // columns) of output matrix i, which no other task writes, inside `out` (`batches·m·n`
        // floats, checked in `new`), which `self` borrows mutably for its whole life. beta = 0,
        // so sgemm never reads `out`.
        unsafe {
            let c = self.out.get().add(i * m * n + oc);
            matrixmultiply::sgemm(
                rows,
                *k,
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
                *n as isize,
                1,
            );
        }
    }
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

/// GELU of [`matmul_plus`] and GELU' of it (an MLP's hidden layer and the factor of its
/// backward), made as the product is stored where it is one that [`gemm`] takes; `None`,
/// with nothing computed, elsewhere.
pub(crate) fn matmul_plus_gelu(
    a: (&[f32], &Layout),
    b: (&[f32], &Layout),
    terms: Terms,
    spec: &MatmulSpec,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let (shape, a, b) = gemm_operands(a, b, spec)?;
    let len = shape.0 * shape.2;
    let (mut activations, mut derivatives) = (super::pool::uninit(len), super::pool::uninit(len));
    gemm::product_plus_gelu(shape, a, b, terms, (&mut activations, &mut derivatives));
    Some((activations, derivatives))
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

/// One product's operands for [`matmul_pair`]: `a`, `b` and [`MatmulSpec::of`] their layouts.
pub(crate) type Product<'a> = ((&'a [f32], &'a Layout), (&'a [f32], &'a Layout), &'a MatmulSpec);

/// `first` and `second` in one pass over the threads, where `first` takes [`gemm`] and
/// `second` takes `sgemm` blocks (a linear layer's backward: its input's gradient `dy W` and its
/// weight's `dyᵀ x`). Each thread first runs its share of the blocks, then takes `first`'s
/// tiles as they come (see [`gemm::Before`]). `first` is added into `acc` where given (as
/// [`matmul_add`]; then the first result is `None`), or multiplied elementwise by `times`
/// (contiguous, of `first`'s size) where that is given. The same numbers as [`matmul`] (or
/// [`matmul_add`]) of each alone, then the multiplication. `None`, with nothing computed,
/// where the products do not take those two paths, `acc` is not laid out as `first`'s
/// output, or both `acc` and `times` are given.
pub(crate) fn matmul_pair(
    acc: Option<(&mut [f32], &Layout)>,
    (a, b, first): Product,
    (c, d, second): Product,
    times: Option<&[f32]>,
) -> Option<(Option<Vec<f32>>, Vec<f32>)> {
    let (shape, a, b) = gemm_operands(a, b, first)?;
    let folded = fold_batch(c.1, d.1, second);
    let (c, d, second) = match &folded {
        Some((fc, fd, folded)) => ((c.0, fc), (d.0, fd), folded),
        None => (c, d, second),
    };
    let MatmulSpec { batch, m, k, n } = second;
    let second_len = batch.iter().product::<usize>() * m * n;
    if second_len == 0 || *k == 0 || *m <= FEW_ROWS {
        return None;
    }
    if gemm_operands(c, d, second).is_some() {
        return None;
    }
    let len = shape.0 * shape.2;
    if acc.as_ref().is_some_and(|(_, l)| !l.is_contiguous() || l.numel() != len) {
        return None;
    }
    if times.is_some_and(|x| x.len() != len || acc.is_some()) {
        return None;
    }
    let terms = Terms { times, ..Terms::default() };
    let mut second_out = super::pool::uninit(second_len);
    let blocks = Blocks::new(c, d, second, &mut second_out);
    let before = gemm::Before { tasks: blocks.tasks(), run: &|t| blocks.run(t) };
    let first_out = match acc {
        Some((acc, l)) => {
            gemm::product_after(shape, a, b, (1.0, &mut acc[l.offset()..l.offset() + len], terms), before);
            None
        }
        None => {
            let mut out = super::pool::uninit(len);
            gemm::product_after(shape, a, b, (0.0, &mut out, terms), before);
            Some(out)
        }
    };
    Some((first_out, second_out))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear layer's backward products, `dy W` (GEMM) and `dyᵀ x` (`sgemm` blocks, cut by
    /// rows or by columns), made together give the bits of each made alone, added in place
    /// or not, on one thread, two or three; products that do not take those two paths, and an
    /// accumulator not laid out as the product, are left to the caller untouched. The first
    /// product multiplied by given factors as it is made gives the bits of the product then
    /// the multiplication (and is refused beside an accumulator).
    #[test]
    fn pairs_give_the_bits_of_each_product_alone() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let same = |x: &[f32], y: &[f32]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        };
        // (tokens, inputs, outputs): rows of dW cut (outputs >= inputs) or columns (fewer).
        for (t, i, o) in [(300, 40, 70), (200, 90, 30), (64, 33, 17), (20, 8, 8), (30, 9, 3)] {
            let dy: Vec<f32> = (0..t * o).map(value).collect();
            let w: Vec<f32> = (0..o * i).map(|j| value(j + 7)).collect();
            let x: Vec<f32> = (0..t * i).map(|j| value(j + 13)).collect();
            let acc0: Vec<f32> = (0..t * i).map(|j| value(j + 21)).collect();
            // dx = dy · W ([t, o]·[o, i]); dWᵀ's product dyᵀ · x ([o, t]·[t, i]).
            let (l_dy, l_w, l_x) =
                (Layout::contiguous(&[t, o]), Layout::contiguous(&[o, i]), Layout::contiguous(&[t, i]));
            let l_dy_t = l_dy.transpose(0, 1).unwrap();
            let first = MatmulSpec::of(&l_dy, &l_w).unwrap();
            let second = MatmulSpec::of(&l_dy_t, &l_x).unwrap();
            let dx_alone = matmul((&dy, &l_dy), (&w, &l_w), &first);
            let dw_alone = matmul((&dy, &l_dy_t), (&x, &l_x), &second);
            let by: Vec<f32> = (0..t * i).map(|j| 4.0 * value(j + 29)).collect();
            let scaled_alone: Vec<f32> = dx_alone.iter().zip(&by).map(|(x, b)| x * b).collect();
            let mut added_alone = acc0.clone();
            let in_place = matmul_add((&mut added_alone, &l_x), (&dy, &l_dy), (&w, &l_w), &first);
            let pools: Vec<_> = [1, 2, 3]
                .iter()
                .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap())
                .collect();
            for pool in &pools {
                let fresh = pool.install(|| {
                    matmul_pair(
                        None,
                        ((&dy, &l_dy), (&w, &l_w), &first),
                        ((&dy, &l_dy_t), (&x, &l_x), &second),
                        None,
                    )
                });
                let mut acc = acc0.clone();
                let added = pool.install(|| {
                    matmul_pair(
                        Some((&mut acc, &l_x)),
                        ((&dy, &l_dy), (&w, &l_w), &first),
                        ((&dy, &l_dy_t), (&x, &l_x), &second),
                        None,
                    )
                });
                if t.min(o) <= FEW_ROWS || !gemm::applies((t, o, i), &Strided::contiguous(&dy, o)) {
                    assert!(
                        fresh.is_none() && added.is_none() && same(&acc, &acc0),
                        "({t},{i},{o}) left to the caller"
                    );
                    continue;
                }
                let scaled = pool.install(|| {
                    matmul_pair(
                        None,
                        ((&dy, &l_dy), (&w, &l_w), &first),
                        ((&dy, &l_dy_t), (&x, &l_x), &second),
                        Some(&by),
                    )
                });
                let (dx_scaled, dw_scaled) = scaled.expect("a pair");
                assert!(same(&dx_scaled.expect("a first product"), &scaled_alone), "({t},{i},{o}) scaled");
                assert!(same(&dw_scaled, &dw_alone), "({t},{i},{o}) dW beside the scaled product");
                let mut acc_scaled = acc0.clone();
                let both = matmul_pair(
                    Some((&mut acc_scaled, &l_x)),
                    ((&dy, &l_dy), (&w, &l_w), &first),
                    ((&dy, &l_dy_t), (&x, &l_x), &second),
                    Some(&by),
                );
                assert!(
                    both.is_none() && same(&acc_scaled, &acc0),
                    "({t},{i},{o}) factors beside an accumulator"
                );
                let (dx, dw) = fresh.expect("a pair");
                assert!(same(&dx.expect("a fresh first product"), &dx_alone), "({t},{i},{o}) dx");
                assert!(same(&dw, &dw_alone), "({t},{i},{o}) dW");
                let (none, dw) = added.expect("a pair");
                assert!(
                    in_place && none.is_none() && same(&acc, &added_alone),
                    "({t},{i},{o}) dx added in place"
                );
                assert!(same(&dw, &dw_alone), "({t},{i},{o}) dW beside the addition");
            }
            // The first product through sgemm (a transposed left operand), or an accumulator
            // of the wrong size: nothing is computed.
            let spec = MatmulSpec::of(&l_dy_t, &l_dy).unwrap();
            assert!(matmul_pair(
                None,
                ((&dy, &l_dy_t), (&dy, &l_dy), &spec),
                ((&dy, &l_dy_t), (&x, &l_x), &second),
                None,
            )
            .is_none());
            let mut short = vec![0.0; t * i - 1];
            let l_short = Layout::contiguous(&[t * i - 1]);
            assert!(matmul_pair(
                Some((&mut short, &l_short)),
                ((&dy, &l_dy), (&w, &l_w), &first),
                ((&dy, &l_dy_t), (&x, &l_x), &second),
                None,
            )
            .is_none());
        }
    }
}
