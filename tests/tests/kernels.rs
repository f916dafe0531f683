//! Every optimised kernel against the naive reference kernels of `tensor::reference`, on
//! random shapes and on strided inputs (transposed, sliced, broadcast views).
//!
//! Tolerances, stated per family:
//! - add/sub/mul/div/max/min/comparisons, copies, index ops: exact (f32 ops are correctly
//!   rounded; the reference computes in f64 and rounds once, which gives the same value);
//! - exp, log, sqrt, tanh, sigmoid, GELU and friends: `1e-6 + 1e-6·|want|`;
//! - sums, log-sum-exp, softmax: `1e-5` absolute on inputs in [-2, 2];
//! - layer norm: `2e-5` absolute (its outputs are O(1));
//! - matmul: `1e-5·k` absolute on inputs in [-1, 1] (k products accumulated in f32).
//!
//! The fixed-size cases at the end are large enough to take the multi-threaded paths.

use proptest::prelude::*;
use tensor::{reference, BinaryOp, ReduceOp, Tensor, UnaryOp};
use tests::{assert_close, shape, uniform, viewed, viewed_no_broadcast};

fn cases() -> ProptestConfig {
    tests::proptest_config(48)
}

/// `(atol, rtol)` of a unary op's kernel against its f64 definition (from `tensor::op_table`).
fn unary_tolerance(op: UnaryOp) -> (f32, f32) {
    (op.tolerance(), op.tolerance())
}

/// Products big enough to be split across threads, through each way of splitting: the linear
/// layers' own GEMM (left operand with contiguous rows), and `sgemm` cut by rows (a transposed
/// left operand, taller than wide) or by columns (wider than tall, or a right operand too big
/// for the GEMM to pack), against the triple loop; and with a bias and a residual, the bits of
/// the product then the adds.
#[test]
fn products_split_across_threads_match_the_triple_loop() {
    for (m, k, n, transposed_a) in [
        (150, 200, 300, false),
        (300, 600, 100, false),
        (300, 200, 100, true),
        (100, 300, 260, true),
        (40, 1100, 300, false),
    ] {
        let a = if transposed_a {
            uniform(&[k, m], -1.0, 1.0, 1).t().unwrap()
        } else {
            uniform(&[m, k], -1.0, 1.0, 1)
        };
        let b = uniform(&[n, k], -1.0, 1.0, 2).t().unwrap();
        let product = a.matmul(&b).unwrap();
        assert_close(&product, &reference::matmul(&a, &b).unwrap(), 1e-5 * k as f32, 0.0);
        let (bias, residual) = (uniform(&[n], -1.0, 1.0, 3), uniform(&[m, n], -1.0, 1.0, 4));
        let want = product.add(&bias).unwrap().add(&residual).unwrap();
        assert_close(&a.matmul_plus(&b, Some(&bias), Some(&residual)).unwrap(), &want, 0.0, 0.0);
    }
}

/// Lookups, their adjoint and concatenations big enough to be split across threads, against
/// their definitions: rows copied from the table, gradient rows added into their token's row
/// in order (so bit for bit, repeated tokens included), parts placed side by side.
#[test]
fn copies_split_across_threads_match_their_definitions() {
    let (tokens, width, rows) = (300, 1000, 700);
    let table = uniform(&[tokens, width], -1.0, 1.0, 3);
    let ids: Vec<usize> = (0..rows).map(|i| (i * 37) % tokens).collect();
    let (t, looked_up) = (table.to_vec().unwrap(), table.index_select(0, &ids).unwrap().to_vec().unwrap());
    for (j, &i) in ids.iter().enumerate() {
        assert_eq!(&looked_up[j * width..(j + 1) * width], &t[i * width..(i + 1) * width], "row {j}");
    }
    let g = uniform(&[rows, width], -1.0, 1.0, 4);
    let (gv, back) = (g.to_vec().unwrap(), g.index_add(0, &ids, tokens).unwrap().to_vec().unwrap());
    let mut want = vec![0.0f32; tokens * width];
    for (j, &i) in ids.iter().enumerate() {
        for c in 0..width {
            want[i * width + c] += gv[j * width + c];
        }
    }
    assert!(back.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "index_add");
    let a = uniform(&[600, 500], -1.0, 1.0, 5).t().unwrap();
    let b = uniform(&[500, 300], -1.0, 1.0, 6);
    let (av, bv) = (a.to_vec().unwrap(), b.to_vec().unwrap());
    let c = Tensor::cat(&[&a, &b], 1).unwrap().to_vec().unwrap();
    for r in 0..500 {
        assert_eq!(&c[r * 900..r * 900 + 600], &av[r * 600..(r + 1) * 600], "row {r} of the strided part");
        assert_eq!(
            &c[r * 900 + 600..(r + 1) * 900],
            &bv[r * 300..(r + 1) * 300],
            "row {r} of the second part"
        );
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn unary_ops_match_reference(x in shape(1..=4, 1..=6).prop_flat_map(|s| viewed(s, 0.05, 4.0)), neg in any::<bool>()) {
        // Positive inputs keep log, sqrt and 1/x defined; `neg` flips them for the others.
        let x = if neg { x.tensor().neg().unwrap() } else { x.tensor() };
        for &op in UnaryOp::ALL {
            if neg && op.domain().low > 0.0 { continue; }
            let (atol, rtol) = unary_tolerance(op);
            assert_close(&x.unary(op).unwrap(), &reference::unary(&x, op), atol, rtol);
        }
    }

    /// The fused AdamW step equals its composition from elementwise ops bit for bit, with and
    /// without weight decay, early (large bias corrections) and late, on strided inputs.
    #[test]
    fn adamw_step_matches_its_composition(
        x in shape(1..=3, 1..=40).prop_flat_map(|s| viewed(s, -2.0, 2.0)),
        seed in any::<u64>(), decay in any::<bool>(), t in 1i32..2000,
    ) {
        let x = x.tensor();
        let like = |s: u64, lo: f32| uniform(x.shape(), lo, 1.0, s);
        // Moments as a run would have them: m of either sign, v not negative.
        let (m, v) = (like(seed + 1, -1.0).mul_scalar(0.1).unwrap(), like(seed + 2, 0.0).mul_scalar(0.01).unwrap());
        // The gradient a strided view: the last entries of a wider tensor's rows.
        let last = x.rank() - 1;
        let mut wide = x.shape().to_vec();
        wide[last] += 1;
        let g = uniform(&wide, -1.0, 1.0, seed).narrow(last, 1, x.shape()[last]).unwrap();
        let step = tensor::AdamWStep {
            lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
            decay: if decay { 1.0 - 3e-3 * 0.01 } else { 1.0 },
            c1: 1.0 - 0.9f32.powi(t), c2: 1.0 - 0.999f32.powi(t),
        };
        let fused = x.adamw_step(&g, &m, &v, &step).unwrap();
        let composed = x.adamw_step_composed(&g, &m, &v, &step).unwrap();
        for (f, c) in fused.iter().zip(&composed) {
            assert_close(f, c, 0.0, 0.0);
        }
        // In place: over unshared copies (written over), over `x` itself (strided, or shared
        // with the test's handle: replaced instead); the same bits every way.
        let mut unshared = [x.contiguous().unwrap(), m.contiguous().unwrap(), v.contiguous().unwrap()];
        let mut held = [x.clone(), m.clone(), v.clone()];
        for [x, m, v] in [&mut unshared, &mut held] {
            x.adamw_step_in_place(&g, m, v, &step).unwrap();
            for (got, want) in [&*x, &*m, &*v].into_iter().zip(&fused) {
                assert_close(got, want, 0.0, 0.0);
            }
        }
    }

    /// Rotary's one-pass pair rotation equals its composition bit for bit, on strided inputs
    /// and broadcast tables (rows shared across the leading axes), rotating part or all of the
    /// channels.
    #[test]
    fn rotate_pairs_matches_its_composition(
        x in shape(1..=3, 1..=4).prop_flat_map(|s| viewed([s, vec![8]].concat(), -2.0, 2.0)),
        half in 1usize..5, shared in any::<bool>(), seed in any::<u64>(),
    ) {
        let lead = &x.shape[..x.shape.len() - 1];
        let rows: Vec<usize> = if shared { vec![1; lead.len()] } else { lead.to_vec() };
        let table_shape = [rows, vec![2 * half]].concat();
        let (cos, sin) = (uniform(&table_shape, -1.0, 1.0, seed), uniform(&table_shape, -1.0, 1.0, seed + 1));
        let x = x.tensor();
        assert_close(&x.rotate_pairs(&cos, &sin).unwrap(), &x.rotate_pairs_composed(&cos, &sin).unwrap(), 0.0, 0.0);
    }

    #[test]
    fn binary_ops_broadcast_like_reference(
        s in shape(1..=4, 1..=5),
        drop in 0usize..4,
        a in any::<u64>(),
        b in any::<u64>(),
        transpose in any::<bool>(),
    ) {
        // rhs has some axes of size 1 (and maybe fewer axes), lhs is maybe transposed.
        let lhs = uniform(&s, -2.0, 2.0, a);
        let lhs = if transpose && s.len() >= 2 { lhs.t().unwrap() } else { lhs };
        let mut rs: Vec<usize> = lhs.shape().iter().enumerate().map(|(i, &d)| if i % 2 == 1 { 1 } else { d }).collect();
        rs.drain(..drop.min(rs.len()));
        let rhs = uniform(&rs, 0.5, 2.0, b);
        for &op in BinaryOp::ALL {
            let tol = op.tolerance();
            assert_close(&lhs.binary(&rhs, op).unwrap(), &reference::binary(&lhs, &rhs, op).unwrap(), tol, tol);
            assert_close(&rhs.binary(&lhs, op).unwrap(), &reference::binary(&rhs, &lhs, op).unwrap(), tol, tol);
        }
    }

    #[test]
    fn reductions_match_reference(x in shape(1..=4, 1..=7).prop_flat_map(|s| viewed(s, -2.0, 2.0)), axis in 0usize..4) {
        let t = x.tensor();
        let axis = axis % t.rank();
        for (op, atol) in [(ReduceOp::Sum, 1e-5), (ReduceOp::Max, 0.0), (ReduceOp::Min, 0.0), (ReduceOp::LogSumExp, 1e-5)] {
            assert_close(&t.reduce(axis, op, true).unwrap(), &reference::reduce(&t, axis, op), atol, 0.0);
        }
    }

    #[test]
    fn softmax_matches_reference(x in shape(1..=4, 1..=7).prop_flat_map(|s| viewed(s, -4.0, 4.0)), axis in 0usize..4) {
        let t = x.tensor();
        let axis = axis % t.rank();
        assert_close(&t.softmax(axis).unwrap(), &reference::softmax(&t, axis), 1e-6, 1e-5);
    }

    #[test]
    fn layer_norm_matches_reference(x in shape(1..=3, 1..=9).prop_flat_map(|s| viewed_no_broadcast(s, -3.0, 3.0)), seed in any::<u64>()) {
        // Broadcast inputs can make a row constant; see `layer_norm_of_a_constant_row_is_the_bias`.
        // A short row whose values nearly agree is ill-conditioned (the output's relative error is
        // the inputs' rounding times mean² / variance), hence the relative tolerance as well: a
        // row of two channels differed from the f64 reference by 3e-5 relative.
        let t = x.tensor();
        let c = t.shape()[t.rank() - 1];
        let w = uniform(&[c], 0.5, 1.5, seed);
        let b = uniform(&[c], -0.5, 0.5, seed ^ 1);
        assert_close(&t.layer_norm(&w, &b, 1e-5).unwrap(), &reference::layer_norm(&t, &w, &b, 1e-5), 2e-5, 1e-4);
    }

    /// The layer-norm backward that adds `dx` into a gradient the input already has gives the
    /// bits of `dx` made alone and then added, written over an unshared gradient or beside a
    /// shared or strided one; `dw` and `db` are unchanged.
    #[test]
    fn layer_norm_backward_add_equals_backward_then_add(x in shape(1..=3, 1..=9).prop_flat_map(|s| viewed_no_broadcast(s, -3.0, 3.0)), seed in any::<u64>()) {
        let t = x.tensor();
        let c = t.shape()[t.rank() - 1];
        let (w, b) = (uniform(&[c], 0.5, 1.5, seed), uniform(&[c], -0.5, 0.5, seed ^ 1));
        let stats = t.layer_norm_with_stats(&w, &b, 1e-5).unwrap();
        let dy = uniform(t.shape(), -1.0, 1.0, seed ^ 2);
        let acc = uniform(t.shape(), -1.0, 1.0, seed ^ 3);
        let (dx, dw, db) = t.layer_norm_backward(&w, &stats.mean, &stats.rstd, &dy).unwrap();
        let want = acc.add(&dx).unwrap();
        let held = acc.clone();
        let strided = uniform(&[t.shape(), &[2]].concat(), -1.0, 1.0, seed ^ 3).narrow(t.rank(), 0, 1).unwrap().squeeze(t.rank()).unwrap();
        let want_strided = strided.add(&dx).unwrap();
        for (acc, want) in [(acc.contiguous().unwrap().add_scalar(0.0).unwrap(), &want), (held, &want), (strided, &want_strided)] {
            let (sum, dw2, db2) = t.layer_norm_backward_add(acc, (&w, &stats.mean, &stats.rstd), &dy).unwrap();
            assert_close(&sum, want, 0.0, 0.0);
            assert_close(&dw2, &dw, 0.0, 0.0);
            assert_close(&db2, &db, 0.0, 0.0);
        }
    }

    /// A product with a bias and a residual added as part of it gives the bits of the product
    /// then the adds: through the linear layers' GEMM (rows from 5 up, contiguous), `sgemm` (a
    /// transposed left operand, a batched right one), few rows, a bias read through a strided
    /// view, a transposed residual, and the single-threaded and split sizes.
    #[test]
    fn matmul_plus_equals_matmul_then_adds(
        batch in shape(0..=2, 1..=3),
        m in 1usize..40, k in 1usize..40, n in 1usize..70,
        ta in any::<bool>(), bcast in any::<bool>(), strided_bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let a_shape = [batch.clone(), if ta { vec![k, m] } else { vec![m, k] }].concat();
        let b_shape = [if bcast { vec![] } else { batch.clone() }, vec![n, k]].concat();
        let a = uniform(&a_shape, -1.0, 1.0, seed);
        let a = if ta { a.t().unwrap() } else { a };
        let b = uniform(&b_shape, -1.0, 1.0, seed ^ 7).t().unwrap();
        let bias = if strided_bias {
            uniform(&[n, 2], -1.0, 1.0, seed ^ 9).narrow(1, 1, 1).unwrap().squeeze(1).unwrap()
        } else {
            uniform(&[n], -1.0, 1.0, seed ^ 9)
        };
        let product = a.matmul(&b).unwrap();
        let with_bias = product.add(&bias).unwrap();
        assert_close(&a.matmul_bias(&b, &bias).unwrap(), &with_bias, 0.0, 0.0);
        let shape = product.shape().to_vec();
        let residual = if strided_bias {
            let r = shape.len();
            uniform(&[&shape[..r - 2], &[shape[r - 1], shape[r - 2]]].concat(), -1.0, 1.0, seed ^ 11).transpose(r - 2, r - 1).unwrap()
        } else {
            uniform(&shape, -1.0, 1.0, seed ^ 11)
        };
        assert_close(&a.matmul_plus(&b, Some(&bias), Some(&residual)).unwrap(), &with_bias.add(&residual).unwrap(), 0.0, 0.0);
        assert_close(&a.matmul_plus(&b, None, Some(&residual)).unwrap(), &product.add(&residual).unwrap(), 0.0, 0.0);
    }

    /// GELU and its derivative made by the product as it stores the output
    /// (`Tensor::matmul_plus_gelu`), and a product multiplied by factors as it is made
    /// (`Tensor::matmul_pair_scaled`, the gradient of GELU's input), give the bits of the
    /// product then the ops: through the linear layers' GEMM (rows from 5 up, contiguous) and
    /// through `sgemm` (a transposed left operand, a batched right one), with a bias or none,
    /// the factors contiguous or a transposed view.
    #[test]
    fn gelu_in_products_equals_the_op_after(
        batch in shape(0..=2, 1..=3),
        m in 1usize..40, k in 1usize..40, n in 1usize..70,
        ta in any::<bool>(), bcast in any::<bool>(), biased in any::<bool>(), seed in any::<u64>(),
    ) {
        let a_shape = [batch.clone(), if ta { vec![k, m] } else { vec![m, k] }].concat();
        let b_shape = [if bcast { vec![] } else { batch.clone() }, vec![n, k]].concat();
        let a = uniform(&a_shape, -1.0, 1.0, seed);
        let a = if ta { a.t().unwrap() } else { a };
        let b = uniform(&b_shape, -1.0, 1.0, seed ^ 7).t().unwrap();
        let bias = biased.then(|| uniform(&[n], -2.0, 2.0, seed ^ 9));
        let (activations, derivatives) = a.matmul_plus_gelu(&b, bias.as_ref()).unwrap();
        let y = a.matmul_plus(&b, bias.as_ref(), None).unwrap();
        assert_close(&activations, &y.gelu().unwrap(), 0.0, 0.0);
        assert_close(&derivatives, &y.unary(UnaryOp::GeluDerivative).unwrap(), 0.0, 0.0);
        // Backward: dy [.., m, n] times the weight [n, k] is the gradient of GELU's output,
        // `x` [.., m, k] its input; the second product is the weight's gradient.
        let dy = uniform(&[batch.clone(), vec![m, n]].concat(), -1.0, 1.0, seed ^ 11);
        let w = uniform(&[n, k], -1.0, 1.0, seed ^ 13);
        let x = if ta {
            uniform(&[batch.clone(), vec![k, m]].concat(), -4.0, 4.0, seed ^ 15).t().unwrap()
        } else {
            uniform(&[batch.clone(), vec![m, k]].concat(), -4.0, 4.0, seed ^ 15)
        };
        let rows = |v: &Tensor, c: usize| v.reshape(&[usize::MAX, c]).unwrap();
        let (dy_t, x_rows) = (rows(&dy, n).t().unwrap(), rows(&x.contiguous().unwrap(), k));
        // The derivative at `x` as the forward saves it (a transposed view where `x` is one).
        let by = x.unary(UnaryOp::GeluDerivative).unwrap();
        let by = if ta { by.t().unwrap().contiguous().unwrap().t().unwrap() } else { by };
        let (dx, dw) = Tensor::matmul_pair_scaled((&dy, &w), (&dy_t, &x_rows), &by).unwrap();
        assert_close(&dx, &dy.matmul(&w).unwrap().gelu_backward(&x).unwrap(), 0.0, 0.0);
        assert_close(&dw, &dy_t.matmul(&x_rows).unwrap(), 0.0, 0.0);
    }

    /// Two products made together (`Tensor::matmul_pair`, `matmul_add_pair`) give the bits of
    /// each made alone: a linear layer's backward (`dy W` and `dyᵀ x`, which the CPU shares its
    /// threads between), and any other pair, which it makes one after the other.
    #[test]
    fn matmul_pairs_equal_each_product_alone(
        batch in shape(0..=2, 1..=3),
        t in 1usize..40, i in 1usize..40, o in 1usize..40, seed in any::<u64>(),
    ) {
        let dy = uniform(&[batch.clone(), vec![t, o]].concat(), -1.0, 1.0, seed);
        let w = uniform(&[o, i], -1.0, 1.0, seed ^ 1);
        let x = uniform(&[batch.clone(), vec![t, i]].concat(), -1.0, 1.0, seed ^ 2);
        let rows = |v: &Tensor, c: usize| v.reshape(&[usize::MAX, c]).unwrap();
        let (dy_t, x_rows) = (rows(&dy, o).t().unwrap(), rows(&x, i));
        let (dx, dw) = Tensor::matmul_pair((&dy, &w), (&dy_t, &x_rows)).unwrap();
        assert_close(&dx, &dy.matmul(&w).unwrap(), 0.0, 0.0);
        assert_close(&dw, &dy_t.matmul(&x_rows).unwrap(), 0.0, 0.0);
        // Added into a gradient that nothing else holds (in place), or that a copy shares.
        let acc = uniform(dx.shape(), -1.0, 1.0, seed ^ 3);
        let alone = Tensor::from_vec(acc.to_vec().unwrap(), acc.shape()).unwrap().matmul_add(&dy, &w).unwrap();
        let (sum, dw2) = Tensor::from_vec(acc.to_vec().unwrap(), acc.shape()).unwrap().matmul_add_pair((&dy, &w), (&dy_t, &x_rows)).unwrap();
        assert_close(&sum, &alone, 0.0, 0.0);
        assert_close(&dw2, &dw, 0.0, 0.0);
        let (shared_sum, _) = acc.clone().matmul_add_pair((&dy, &w), (&dy_t, &x_rows)).unwrap();
        assert_close(&shared_sum, &acc.add(&dy.matmul(&w).unwrap()).unwrap(), 0.0, 0.0);
        // Other pairs: the weight gradient first, a transposed first operand.
        let (p, q) = Tensor::matmul_pair((&dy_t, &x_rows), (&x_rows.t().unwrap(), &rows(&dy, o))).unwrap();
        assert_close(&p, &dw, 0.0, 0.0);
        assert_close(&q, &x_rows.t().unwrap().matmul(&rows(&dy, o)).unwrap(), 0.0, 0.0);
    }

    #[test]
    fn matmul_matches_triple_loop(
        batch in shape(0..=2, 1..=3),
        m in 1usize..9, k in 1usize..9, n in 1usize..9,
        ta in any::<bool>(), tb in any::<bool>(), bcast in any::<bool>(), seed in any::<u64>(),
    ) {
        // Operands may be transposed views, and rhs may drop its batch axes (broadcast).
        let a_shape = [batch.clone(), if ta { vec![k, m] } else { vec![m, k] }].concat();
        let b_batch = if bcast { vec![] } else { batch.clone() };
        let b_shape = [b_batch, if tb { vec![n, k] } else { vec![k, n] }].concat();
        let a = uniform(&a_shape, -1.0, 1.0, seed);
        let b = uniform(&b_shape, -1.0, 1.0, seed ^ 7);
        let a = if ta { a.t().unwrap() } else { a };
        let b = if tb { b.t().unwrap() } else { b };
        assert_close(&a.matmul(&b).unwrap(), &reference::matmul(&a, &b).unwrap(), 1e-5 * k as f32, 0.0);
    }

    #[test]
    fn index_select_and_index_add_are_adjoint(s in shape(1..=3, 1..=5), axis in 0usize..3, seed in any::<u64>(), picks in prop::collection::vec(0usize..5, 0..7)) {
        let axis = axis % s.len();
        let x = uniform(&s, -1.0, 1.0, seed).t().unwrap_or_else(|_| uniform(&s, -1.0, 1.0, seed));
        let size = x.shape()[axis];
        let idx: Vec<usize> = picks.iter().map(|p| p % size).collect();
        let y = x.index_select(axis, &idx).unwrap();
        // Each picked slice equals the narrowed source.
        for (j, &i) in idx.iter().enumerate() {
            prop_assert_eq!(y.narrow(axis, j, 1).unwrap().to_vec().unwrap(), x.narrow(axis, i, 1).unwrap().to_vec().unwrap());
        }
        // <index_select(x), g> == <x, index_add(g)> for any g.
        let g = uniform(y.shape(), -1.0, 1.0, seed ^ 3);
        let lhs: f64 = y.to_vec().unwrap().iter().zip(g.to_vec().unwrap()).map(|(a, b)| (*a as f64) * b as f64).sum();
        let back = g.index_add(axis, &idx, size).unwrap();
        let rhs: f64 = x.to_vec().unwrap().iter().zip(back.to_vec().unwrap()).map(|(a, b)| (*a as f64) * b as f64).sum();
        prop_assert!((lhs - rhs).abs() < 1e-4, "{} vs {}", lhs, rhs);
    }

    #[test]
    fn gather_and_scatter_add_are_adjoint(rows in 1usize..5, cols in 1usize..6, k in 1usize..5, seed in any::<u64>()) {
        let x = uniform(&[cols, rows], -1.0, 1.0, seed).t().unwrap(); // [rows, cols], strided
        let idx: Vec<usize> = (0..rows * k).map(|i| (i * 7 + seed as usize) % cols).collect();
        let y = x.gather(1, &idx, &[rows, k]).unwrap();
        for r in 0..rows { for j in 0..k {
            prop_assert_eq!(y.get(&[r, j]).unwrap(), x.get(&[r, idx[r * k + j]]).unwrap());
        }}
        let g = uniform(&[rows, k], -1.0, 1.0, seed ^ 5);
        let back = g.scatter_add(1, &idx, cols).unwrap();
        let lhs: f64 = y.to_vec().unwrap().iter().zip(g.to_vec().unwrap()).map(|(a, b)| (*a as f64) * b as f64).sum();
        let rhs: f64 = x.to_vec().unwrap().iter().zip(back.to_vec().unwrap()).map(|(a, b)| (*a as f64) * b as f64).sum();
        prop_assert!((lhs - rhs).abs() < 1e-4);
    }

    #[test]
    fn cat_places_parts_in_order(s in shape(1..=3, 1..=4), axis in 0usize..3, extra in 1usize..4, seed in any::<u64>()) {
        let axis = axis % s.len();
        let a = uniform(&s, -1.0, 1.0, seed);
        let mut s2 = s.clone();
        s2[axis] = extra;
        // The second part is a transposed (strided) view when it has two axes.
        let b = if s2.len() >= 2 {
            let mut swapped = s2.clone();
            swapped.swap(s2.len() - 2, s2.len() - 1);
            uniform(&swapped, -1.0, 1.0, seed ^ 9).t().unwrap()
        } else {
            uniform(&s2, -1.0, 1.0, seed ^ 9)
        };
        let c = Tensor::cat(&[&a, &b], axis).unwrap();
        prop_assert_eq!(c.narrow(axis, 0, s[axis]).unwrap().to_vec().unwrap(), a.to_vec().unwrap());
        prop_assert_eq!(c.narrow(axis, s[axis], b.shape()[axis]).unwrap().to_vec().unwrap(), b.to_vec().unwrap());
    }

    #[test]
    fn where_and_masked_fill_pick_elementwise(s in shape(1..=3, 1..=5), seed in any::<u64>()) {
        let c = uniform(&s, -1.0, 1.0, seed).gt(&Tensor::scalar(0.0)).unwrap();
        let t = uniform(&s, -1.0, 1.0, seed ^ 1);
        let f = uniform(&[s[s.len() - 1]], -1.0, 1.0, seed ^ 2); // broadcast
        let w = c.where_cond(&t, &f).unwrap();
        let m = t.masked_fill(&c, -9.0).unwrap();
        let (cv, tv, wv, mv) = (c.to_vec().unwrap(), t.to_vec().unwrap(), w.to_vec().unwrap(), m.to_vec().unwrap());
        let fv = f.broadcast_to(&s).unwrap().to_vec().unwrap();
        for i in 0..cv.len() {
            prop_assert_eq!(wv[i], if cv[i] != 0.0 { tv[i] } else { fv[i] });
            prop_assert_eq!(mv[i], if cv[i] != 0.0 { -9.0 } else { tv[i] });
        }
    }

    #[test]
    fn argmax_and_topk_find_the_largest(rows in 1usize..5, cols in 1usize..9, k in 0usize..9, seed in any::<u64>()) {
        let x = uniform(&[rows, cols], -1.0, 1.0, seed);
        let k = k % (cols + 1);
        let arg = x.argmax(1).unwrap();
        let (vals, idx) = x.topk(k).unwrap();
        prop_assert_eq!(vals.shape(), &[rows, k]);
        for r in 0..rows {
            let row: Vec<f32> = x.narrow(0, r, 1).unwrap().to_vec().unwrap();
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            prop_assert_eq!(row[arg[r]], sorted[0]);
            for j in 0..k {
                prop_assert_eq!(vals.get(&[r, j]).unwrap(), sorted[j]);
                prop_assert_eq!(row[idx[r * k + j]], sorted[j]);
            }
        }
        // argmax along axis 0 too.
        let arg0 = x.argmax(0).unwrap();
        for c in 0..cols {
            let col: Vec<f32> = (0..rows).map(|r| x.get(&[r, c]).unwrap()).collect();
            prop_assert!(col.iter().all(|&v| v <= col[arg0[c]]));
        }
    }
}

#[test]
fn layer_norm_of_a_constant_row_is_the_bias() {
    // Var = 0, so y = (x - mean) / sqrt(eps) * w + b: the rounding residue of x - mean (one ulp
    // of x) is amplified by 1/sqrt(eps) = 316, as in every f32 implementation. Within 1e-3.
    let x = Tensor::full(1.7, &[3, 64]);
    let w = uniform(&[64], 0.5, 1.5, 1);
    let b = uniform(&[64], -0.5, 0.5, 2);
    let want = b.broadcast_to(&[3, 64]).unwrap().contiguous().unwrap();
    assert_close(&x.layer_norm(&w, &b, 1e-5).unwrap(), &want, 1e-3, 0.0);
}

#[test]
fn embedding_looks_up_rows_and_scatters_back() {
    let table = uniform(&[10, 4], -1.0, 1.0, 3);
    let ids = [3, 1, 3, 9, 0, 1];
    let e = table.embedding(&ids, &[2, 3]).unwrap();
    assert_eq!(e.shape(), &[2, 3, 4]);
    for (j, &i) in ids.iter().enumerate() {
        let row: Vec<f32> = (0..4).map(|c| e.get(&[j / 3, j % 3, c]).unwrap()).collect();
        assert_eq!(row, table.narrow(0, i, 1).unwrap().to_vec().unwrap());
    }
    let g = Tensor::ones(&[2, 3, 4]);
    let back = g.embedding_backward(&ids, 10).unwrap();
    let counts = [1.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    for (v, &n) in counts.iter().enumerate() {
        assert_eq!(back.narrow(0, v, 1).unwrap().to_vec().unwrap(), vec![n; 4]);
    }
    let err = table.embedding(&[10], &[1]).unwrap_err().to_string();
    assert!(err.contains("index 10 out of range") && err.contains("[10,4]"), "{err}");
}

/// A lookup plus rows added as it goes (`Tensor::embedding_plus`) gives the bits of the lookup
/// then the broadcast add: rows contiguous or a transposed view, a table read through a view,
/// ids of one or two leading axes, sizes on one thread and across the pool; bad shapes and ids
/// are named.
#[test]
fn embedding_plus_equals_the_lookup_then_the_add() {
    for (vocab, dim, ids_shape) in [(10, 4, vec![2, 3]), (7, 33, vec![5]), (300, 256, vec![3, 2, 200])] {
        let table = uniform(&[dim, vocab], -1.0, 1.0, 3).t().unwrap(); // [vocab, dim], a view
        let n = *ids_shape.last().unwrap();
        let count: usize = ids_shape.iter().product();
        let ids: Vec<usize> = (0..count).map(|i| (i * 7919 + 3) % vocab).collect();
        for rows in [uniform(&[n, dim], -2.0, 2.0, 5), uniform(&[dim, n], -2.0, 2.0, 7).t().unwrap()] {
            let got = table.embedding_plus(&ids, &ids_shape, &rows).unwrap();
            let want = table.embedding(&ids, &ids_shape).unwrap().add(&rows).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_close(&got, &want, 0.0, 0.0);
        }
    }
    let (table, rows) = (uniform(&[10, 4], -1.0, 1.0, 3), uniform(&[3, 4], -1.0, 1.0, 4));
    let err = table.embedding_plus(&[1, 2], &[1, 2], &rows).unwrap_err().to_string();
    assert_eq!(err, "embedding_plus: rows of shape [3,4] for ids of shape [1,2] into a table of shape [10,4]: need [2, 4]");
    let err = table.embedding_plus(&[1, 10, 2], &[1, 3], &rows).unwrap_err().to_string();
    assert!(err.contains("index 10 out of range") && err.contains("[10,4]"), "{err}");
}

/// Sizes above the parallel threshold, with strided inputs, so the rayon paths are checked.
#[test]
fn large_inputs_take_parallel_paths_and_agree() {
    let x = uniform(&[300, 257], -2.0, 2.0, 1).t().unwrap(); // [257, 300], strided
    for op in [UnaryOp::Exp, UnaryOp::Gelu, UnaryOp::Tanh, UnaryOp::Neg] {
        let (atol, rtol) = unary_tolerance(op);
        assert_close(&x.unary(op).unwrap(), &reference::unary(&x, op), atol, rtol);
    }
    let bias = uniform(&[300], -1.0, 1.0, 2);
    assert_close(&x.add(&bias).unwrap(), &reference::binary(&x, &bias, BinaryOp::Add).unwrap(), 0.0, 0.0);
    for axis in 0..2 {
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::LogSumExp] {
            assert_close(&x.reduce(axis, op, true).unwrap(), &reference::reduce(&x, axis, op), 1e-4, 1e-6);
        }
        assert_close(&x.softmax(axis).unwrap(), &reference::softmax(&x, axis), 1e-6, 1e-5);
    }
    let (w, b) = (uniform(&[300], 0.5, 1.5, 3), uniform(&[300], -0.5, 0.5, 4));
    assert_close(&x.layer_norm(&w, &b, 1e-5).unwrap(), &reference::layer_norm(&x, &w, &b, 1e-5), 2e-5, 0.0);
    // One big matrix (split by rows), a few batches, a transposed operand, a broadcast weight.
    let a = uniform(&[3, 130, 70], -1.0, 1.0, 5);
    let bt = uniform(&[3, 90, 70], -1.0, 1.0, 6).t().unwrap();
    assert_close(&a.matmul(&bt).unwrap(), &reference::matmul(&a, &bt).unwrap(), 1e-3, 0.0);
    let big = uniform(&[600, 64], -1.0, 1.0, 7);
    let wt = uniform(&[64, 80], -1.0, 1.0, 8);
    assert_close(&big.matmul(&wt).unwrap(), &reference::matmul(&big, &wt).unwrap(), 1e-3, 0.0);
    // Few rows, large enough to be split across threads: one row against a transposed weight
    // (by columns), and batches of two rows against row-major matrices.
    let row = uniform(&[1, 300], -1.0, 1.0, 9);
    let w = uniform(&[200, 300], -1.0, 1.0, 10).t().unwrap();
    assert_close(&row.matmul(&w).unwrap(), &reference::matmul(&row, &w).unwrap(), 1e-3, 0.0);
    let rows = uniform(&[3, 2, 300], -1.0, 1.0, 11);
    let mats = uniform(&[3, 300, 200], -1.0, 1.0, 12);
    assert_close(&rows.matmul(&mats).unwrap(), &reference::matmul(&rows, &mats).unwrap(), 1e-3, 0.0);
}

#[test]
fn results_do_not_depend_on_layout() {
    // The same values, contiguous or transposed, give bit-identical results.
    let x = uniform(&[64, 48], -3.0, 3.0, 11);
    let xt = x.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!xt.is_contiguous());
    for &op in UnaryOp::ALL {
        let bits = |t: &Tensor| {
            t.unary(op).unwrap().to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert!(bits(&x) == bits(&xt), "{op:?} differs between layouts");
    }
}

#[test]
fn kernel_errors_name_op_and_shapes() {
    let a = Tensor::zeros(&[8, 256, 64]);
    let b = Tensor::zeros(&[8, 32, 256]);
    assert_eq!(a.matmul(&b).unwrap_err().to_string(), "matmul: [8,256,64] x [8,32,256]: inner dims 64 != 32");
    let e = a.matmul_bias(&a.t().unwrap(), &Tensor::zeros(&[64])).unwrap_err().to_string();
    assert_eq!(e, "matmul_plus: bias of shape [64] for a product of shape [8,256,256]");
    let e = a.matmul_plus(&a.t().unwrap(), None, Some(&a)).unwrap_err().to_string();
    assert_eq!(e, "matmul_plus: residual of shape [8,256,64] for a product of shape [8,256,256]");
    let e = Tensor::matmul_pair((&a, &a.t().unwrap()), (&a, &b)).unwrap_err().to_string();
    assert_eq!(e, "matmul: [8,256,64] x [8,32,256]: inner dims 64 != 32");
    let e = a.matmul_plus_gelu(&a.t().unwrap(), Some(&Tensor::zeros(&[64]))).unwrap_err().to_string();
    assert_eq!(e, "matmul_plus_gelu: bias of shape [64] for a product of shape [8,256,256]");
    let e =
        Tensor::matmul_pair_scaled((&a, &a.t().unwrap()), (&a, &a.t().unwrap()), &a).unwrap_err().to_string();
    assert_eq!(e, "matmul_pair_scaled: factors of shape [8,256,64] for a product of shape [8,256,256]");
    let e = a.clone().matmul_add_pair((&a, &a.t().unwrap()), (&a, &a.t().unwrap())).unwrap_err().to_string();
    assert_eq!(e, "matmul_add_pair: [8,256,64] + a product of shape [8,256,256]");
    let e = Tensor::zeros(&[2, 3]).add(&Tensor::zeros(&[4])).unwrap_err().to_string();
    assert_eq!(e, "add: shapes [2,3] and [4] do not broadcast");
    let e = Tensor::zeros(&[2, 3]).sum(2).unwrap_err().to_string();
    assert_eq!(e, "sum: axis 2 out of range for shape [2,3]");
    let e = Tensor::zeros(&[2, 3])
        .layer_norm(&Tensor::ones(&[4]), &Tensor::zeros(&[3]), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("layer_norm: weight has shape [4]"), "{e}");
    let e = Tensor::cat(&[&Tensor::zeros(&[2, 3]), &Tensor::zeros(&[2, 4])], 0).unwrap_err().to_string();
    assert!(e.starts_with("cat:"), "{e}");
    let e = Tensor::zeros(&[2, 3]).index_select(1, &[5]).unwrap_err().to_string();
    assert_eq!(e, "index_select: index 5 out of range for axis 1 of size 3 in [2,3]");
    let e = Tensor::zeros(&[2, 3]).topk(4).unwrap_err().to_string();
    assert!(e.starts_with("topk:"), "{e}");
}
