//! A finite-difference gradient check for every differentiable op, on random shapes, with
//! inputs that reach the op as contiguous tensors or as transposed, sliced and broadcast views
//! (the view is applied on the tape, so its own backward rule is checked too).
//!
//! Inputs are kept away from kinks (ReLU at 0, ties of max/min) and singularities (log, sqrt,
//! 1/x at 0), where a finite difference does not measure a derivative.

use autograd::{check_gradients, GradCheck, Var};
use proptest::prelude::*;
use tensor::{BinaryOp, Result, Tensor, UnaryOp};
use tests::{shape, uniform, uniform_avoiding, viewed, viewed_no_broadcast, Recipe, Viewed};

fn cases() -> ProptestConfig {
    tests::proptest_config(64)
}

/// Gradient-checks `f` applied to the views of `inputs` (the bases are what gets perturbed).
fn check(inputs: &[&Viewed], config: &GradCheck, f: impl Fn(&[Var]) -> Result<Var>) -> Result<()> {
    let bases: Vec<Tensor> = inputs.iter().map(|v| v.base.clone()).collect();
    let views: Vec<Viewed> = inputs.iter().map(|v| (*v).clone()).collect();
    check_gradients(
        |vars| {
            let xs = vars.iter().zip(&views).map(|(v, r)| r.apply_var(v)).collect::<Result<Vec<_>>>()?;
            f(&xs)
        },
        &bases,
        config,
    )?;
    Ok(())
}

/// A contiguous input of uniform values in [-1, 1].
fn plain(shape: &[usize], seed: u64) -> Viewed {
    Viewed { base: uniform(shape, -1.0, 1.0, seed), recipe: Recipe::Contiguous, shape: shape.to_vec() }
}

/// A `[6, 5]` weight as a linear layer holds it: stored `[out, in]`, used transposed.
fn weight_t(seed: u64) -> Viewed {
    Viewed { base: uniform(&[5, 6], -1.0, 1.0, seed), recipe: Recipe::Transposed(0, 1), shape: vec![6, 5] }
}

fn default() -> GradCheck {
    GradCheck::default()
}

/// Smallest |a - b| over the broadcast pair (to skip near-ties of max/min).
fn min_gap(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().to_vec().unwrap().iter().fold(f32::INFINITY, |m, d| m.min(d.abs()))
}

fn small() -> impl Strategy<Value = Vec<usize>> {
    shape(1..=3, 1..=4)
}

proptest! {
    #![proptest_config(cases())]

    /// Every differentiable unary op of `tensor::op_table`, on inputs drawn from the op's own
    /// domain and kept 0.05 away from its kinks.
    #[test]
    fn every_unary_op(x in small().prop_flat_map(|s| viewed(s, 0.0, 1.0))) {
        for &op in UnaryOp::ALL.iter().filter(|op| op.is_differentiable()) {
            let dom = op.domain();
            let seed = x.base.to_vec().unwrap()[0].to_bits() as u64;
            let base = uniform_avoiding(x.base.shape(), dom.low, dom.high, dom.kinks, 0.05, seed);
            let input = Viewed { base, ..x.clone() };
            check(&[&input], &default(), |v| v[0].unary(op)).map_err(|e| TestCaseError::fail(format!("{}: {e}", op.name())))?;
        }
    }

    /// Ops whose output is piecewise constant record nothing: no gradient flows through them.
    #[test]
    fn constant_ops_pass_no_gradient(x in small().prop_flat_map(|s| viewed(s, -2.0, 2.0))) {
        let tape = autograd::Tape::new();
        let v = tape.leaf(&x.tensor());
        for &op in UnaryOp::ALL.iter().filter(|op| !op.is_differentiable()) {
            prop_assert!(!v.unary(op).unwrap().is_tracked(), "{}", op.name());
        }
        for &op in BinaryOp::ALL.iter().filter(|op| !op.is_differentiable()) {
            prop_assert!(!v.binary(&v, op).unwrap().is_tracked(), "{}", op.name());
        }
    }

    /// Rotary's pair rotation: one node whose backward rotates back (for tables holding each
    /// pair's value twice, rotation or not, the adjoint is the same formula with `-sin`), on
    /// views, over part of the channels.
    #[test]
    fn rotate_pairs(x in shape(1..=3, 1..=3).prop_flat_map(|s| viewed([s, vec![6]].concat(), -2.0, 2.0)), dims in 1usize..4, seed in any::<u64>()) {
        let rows = x.shape[..x.shape.len() - 1].to_vec();
        let table = |k: u64| {
            let half = uniform(&[rows.clone(), vec![dims, 1]].concat(), -1.0, 1.0, seed + k);
            let pairs = half.broadcast_to(&[rows.clone(), vec![dims, 2]].concat()).unwrap().contiguous().unwrap();
            pairs.reshape(&[rows.clone(), vec![2 * dims]].concat()).unwrap()
        };
        let (cos, sin) = (table(0), table(1));
        check(&[&x], &default(), |v| v[0].rotate_pairs(&cos, &sin)).map_err(|e| TestCaseError::fail(format!("rotate_pairs: {e}")))?;
    }

    #[test]
    fn broadcasting_binary_ops(
        (a, b) in small().prop_flat_map(|s| {
            // b has the same rank with some axes 1, or drops the leading axis.
            let bs: Vec<usize> = s.iter().enumerate().map(|(i, &d)| if i % 2 == 0 { d } else { 1 }).collect();
            (viewed(s, -2.0, 2.0), viewed(bs, 0.5, 2.0))
        }),
        swap in any::<bool>(),
    ) {
        let (a, b) = if swap { (&b, &a) } else { (&a, &b) };
        type Op = fn(&Var, &Var) -> Result<Var>;
        let ops: [(&str, Op); 3] = [("add", |a, b| a.add(b)), ("sub", |a, b| a.sub(b)), ("mul", |a, b| a.mul(b))];
        for (name, op) in ops {
            check(&[a, b], &default(), |v| op(&v[0], &v[1])).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
        // Divide by the input kept in [0.5, 2].
        let (num, den) = if swap { (b, a) } else { (a, b) };
        check(&[num, den], &default(), |v| v[0].div(&v[1])).map_err(|e| TestCaseError::fail(format!("div: {e}")))?;
    }

    /// GELU's fused backward `g · GELU'(x)`, itself differentiated (a second derivative, as
    /// in a gradient of a gradient), in both inputs.
    #[test]
    fn gelu_backward(a in small().prop_flat_map(|s| (viewed(s.clone(), -2.0, 2.0), viewed(s, -3.0, 3.0)))) {
        let (g, x) = a;
        check(&[&g, &x], &default(), |v| v[0].gelu_backward(&v[1])).map_err(|e| TestCaseError::fail(format!("gelu_backward: {e}")))?;
    }

    #[test]
    fn max_and_min_of_two(a in small().prop_flat_map(|s| (viewed(s.clone(), -2.0, 2.0), viewed(s, -2.0, 2.0)))) {
        let (a, b) = a;
        prop_assume!(min_gap(&a.tensor(), &b.tensor()) > 0.03);
        check(&[&a, &b], &default(), |v| v[0].maximum(&v[1])).map_err(|e| TestCaseError::fail(format!("maximum: {e}")))?;
        check(&[&a, &b], &default(), |v| v[0].minimum(&v[1])).map_err(|e| TestCaseError::fail(format!("minimum: {e}")))?;
    }

    #[test]
    fn reductions(x in small().prop_flat_map(|s| viewed_no_broadcast(s, -2.0, 2.0)), axis in 0usize..3) {
        let axis = axis % x.shape.len();
        check(&[&x], &default(), |v| v[0].sum(axis)).map_err(|e| TestCaseError::fail(format!("sum: {e}")))?;
        check(&[&x], &default(), |v| v[0].sum_keepdim(axis)).map_err(|e| TestCaseError::fail(format!("sum_keepdim: {e}")))?;
        check(&[&x], &default(), |v| v[0].mean(axis)).map_err(|e| TestCaseError::fail(format!("mean: {e}")))?;
        check(&[&x], &default(), |v| v[0].log_sum_exp(axis)).map_err(|e| TestCaseError::fail(format!("log_sum_exp: {e}")))?;
        check(&[&x], &default(), |v| v[0].sum_all()).map_err(|e| TestCaseError::fail(format!("sum_all: {e}")))?;
        check(&[&x], &default(), |v| v[0].mean_all()).map_err(|e| TestCaseError::fail(format!("mean_all: {e}")))?;
        // max/min: only where the winner is clear (a near-tie has no derivative).
        let t = x.tensor();
        let sorted_gap = {
            let top = t.max_keepdim(axis).unwrap();
            let others = t.sub(&top).unwrap().to_vec().unwrap();
            others.iter().filter(|d| **d != 0.0).fold(f32::INFINITY, |m, d| m.min(d.abs()))
        };
        let low_gap = {
            let bottom = t.min_keepdim(axis).unwrap();
            t.sub(&bottom).unwrap().to_vec().unwrap().iter().filter(|d| **d != 0.0).fold(f32::INFINITY, |m, d| m.min(d.abs()))
        };
        if sorted_gap > 0.03 {
            check(&[&x], &default(), |v| v[0].max(axis)).map_err(|e| TestCaseError::fail(format!("max: {e}")))?;
        }
        if low_gap > 0.03 {
            check(&[&x], &default(), |v| v[0].min_keepdim(axis)).map_err(|e| TestCaseError::fail(format!("min: {e}")))?;
        }
    }

    #[test]
    fn softmax_along_any_axis(x in small().prop_flat_map(|s| viewed(s, -3.0, 3.0)), axis in 0usize..3) {
        let axis = axis % x.shape.len();
        check(&[&x], &default(), |v| v[0].softmax(axis))?;
    }

    #[test]
    fn layer_norm_input_weight_and_bias(x in shape(1..=3, 3..=6).prop_flat_map(|s| viewed_no_broadcast(s, -2.0, 2.0)), seed in any::<u64>()) {
        let c = x.shape[x.shape.len() - 1];
        // A row of nearly equal values has a huge, fast-changing gradient (1/σ): skip those.
        let t = x.tensor();
        let centered = t.sub(&t.mean_keepdim(t.rank() - 1).unwrap()).unwrap();
        let var = centered.square().unwrap().mean(t.rank() - 1).unwrap().to_vec().unwrap();
        prop_assume!(var.iter().all(|&v| v > 0.25));
        let w = Viewed { base: uniform(&[c], 0.5, 1.5, seed), recipe: Recipe::Contiguous, shape: vec![c] };
        let b = Viewed { base: uniform(&[c], -0.5, 0.5, seed ^ 1), recipe: Recipe::Contiguous, shape: vec![c] };
        check(&[&x, &w, &b], &default(), |v| v[0].layer_norm(&v[1], &v[2], 1e-5))?;
    }

    /// An input read by several products (a normed input feeding the q, k and v projections),
    /// with enough rows for the CPU's GEMM: after the first, each product's gradient is added
    /// into the input's in place (`Tensor::matmul_add`).
    #[test]
    fn input_read_by_several_products(seed in any::<u64>(), rows in 5usize..24) {
        let (x, w1, w2) = (plain(&[2, rows, 6], seed), plain(&[6, 5], seed + 1), plain(&[6, 5], seed + 2));
        // The second weight as a linear layer holds it: stored [out, in], used transposed.
        let w3 = weight_t(seed + 3);
        check(&[&x, &w1, &w2, &w3], &default(), |v| {
            v[0].matmul(&v[1])?.add(&v[0].matmul(&v[2])?)?.mul(&v[0].matmul(&v[3])?)
        })?;
    }

    /// An MLP's hidden layer with GELU made by its product (`Var::matmul_plus_gelu`) and fed
    /// to the next layer, whose backward applies GELU's derivative (`GeluOfLinear::
    /// matmul_plus`): with biases and a residual or none, few rows or enough for the CPU's
    /// GEMM; and the activation as a node of its own (`GeluOfLinear::into_var`).
    #[test]
    fn linear_gelu_linear(seed in any::<u64>(), rows in 1usize..24) {
        let (x, w1, b1) = (plain(&[2, rows, 6], seed), weight_t(seed + 1), plain(&[5], seed + 2));
        let (w2, b2, r) = (plain(&[5, 3], seed + 3), plain(&[3], seed + 4), plain(&[2, rows, 3], seed + 5));
        check(&[&x, &w1, &b1, &w2, &b2, &r], &default(), |v| {
            v[0].matmul_plus_gelu(&v[1], Some(&v[2]))?.matmul_plus(&v[3], Some(&v[4]), Some(&v[5]))
        })?;
        check(&[&x, &w1, &w2], &default(), |v| v[0].matmul_plus_gelu(&v[1], None)?.matmul_plus(&v[2], None, None))?;
        check(&[&x, &w1, &b1], &default(), |v| v[0].matmul_plus_gelu(&v[1], Some(&v[2]))?.into_var())?;
    }

    /// A linear layer with its bias, and with a residual, as one node (`Var::matmul_plus`):
    /// alone (few rows, or enough for the CPU's GEMM), and with its input read by a second
    /// one, whose input gradient the tape adds in place.
    #[test]
    fn linear_with_bias_and_residual(seed in any::<u64>(), rows in 1usize..24) {
        let (x, w1, w2, b1, b2) = (plain(&[2, rows, 6], seed), weight_t(seed + 1), weight_t(seed + 2), plain(&[5], seed + 3), plain(&[5], seed + 4));
        check(&[&x, &w1, &b1], &default(), |v| v[0].matmul_bias(&v[1], &v[2]))?;
        let r = plain(&[2, rows, 5], seed + 5);
        check(&[&x, &w1, &b1, &r], &default(), |v| v[0].matmul_plus(&v[1], Some(&v[2]), Some(&v[3])))?;
        check(&[&x, &w1, &r], &default(), |v| v[0].matmul_plus(&v[1], None, Some(&v[2]))?.mul(&v[2]))?;
        check(&[&x, &w1, &b1, &w2, &b2], &default(), |v| {
            v[0].matmul_bias(&v[1], &v[2])?.mul(&v[0].matmul_bias(&v[3], &v[4])?)
        })?;
    }

    #[test]
    fn batched_matmul_with_strided_and_broadcast_operands(
        (a, b, bt) in (shape(0..=2, 1..=3), 1usize..5, 1usize..5, 1usize..5, any::<bool>()).prop_flat_map(|(batch, m, k, n, shared)| {
            let a_shape = [batch.clone(), vec![m, k]].concat();
            let b_shape = if shared { vec![k, n] } else { [batch, vec![k, n]].concat() };
            // Also a right operand that is a transposed view, the way attention uses K.
            let bt = any::<u64>().prop_map(move |seed| Viewed {
                base: uniform(&[n, k], -1.0, 1.0, seed),
                recipe: Recipe::Transposed(0, 1),
                shape: vec![k, n],
            });
            (viewed(a_shape, -1.0, 1.0), viewed(b_shape, -1.0, 1.0), bt)
        }),
    ) {
        check(&[&a, &b], &default(), |v| v[0].matmul(&v[1]))?;
        check(&[&a, &bt], &default(), |v| v[0].matmul(&v[1]))?;
    }

    #[test]
    fn views_on_the_tape(x in shape(2..=3, 1..=4).prop_flat_map(|s| viewed(s, -1.0, 1.0)), axis in 0usize..3, start in 0usize..4) {
        let r = x.shape.len();
        let axis = axis % r;
        let start = start % x.shape[axis];
        let len = x.shape[axis] - start;
        check(&[&x], &default(), |v| v[0].transpose(0, r - 1))?;
        check(&[&x], &default(), |v| v[0].permute(&(0..r).rev().collect::<Vec<_>>()))?;
        check(&[&x], &default(), |v| v[0].narrow(axis, start, len))?;
        // Several (overlapping) narrows of one tensor: their gradients add into its rows.
        check(&[&x], &default(), |v| {
            let parts = [v[0].narrow(axis, start, len)?, v[0].narrow(axis, 0, len)?, v[0].narrow(axis, start, 1)?];
            Var::cat(&parts.iter().collect::<Vec<_>>(), axis)
        })?;
        check(&[&x], &default(), |v| v[0].unsqueeze(0)?.broadcast_to(&[[2].as_slice(), &x.shape].concat()))?;
        check(&[&x], &default(), |v| v[0].reshape(&[usize::MAX]))?;
        check(&[&x], &default(), |v| v[0].unsqueeze(1)?.squeeze(1))?;
        check(&[&x], &default(), |v| v[0].contiguous())?;
        check(&[&x], &default(), |v| v[0].flatten())?;
    }

    #[test]
    fn cat_of_views(a in small().prop_flat_map(|s| (viewed(s.clone(), -1.0, 1.0), viewed(s, -1.0, 1.0))), axis in 0usize..3) {
        let (a, b) = a;
        let axis = axis % a.shape.len();
        check(&[&a, &b], &default(), |v| Var::cat(&[&v[0], &v[1], &v[0]], axis))?;
    }

    /// Part of one tensor overwritten by another (the keys of Perceiver AR's cross layer): the
    /// written entries' gradient reaches `src`, the rest `x`; on fresh outputs (in place) and
    /// on views (copied first), with `x` scaled so it is an op's output.
    #[test]
    fn overwrite_narrow(a in small().prop_flat_map(|s| (viewed(s.clone(), -1.0, 1.0), viewed(s, -1.0, 1.0))), axis in 0usize..3, start in 0usize..3) {
        let (a, b) = a;
        let axis = axis % a.shape.len();
        let size = a.shape[axis];
        let (start, len) = (start % size, (size - start % size).min(2));
        check(&[&a, &b], &default(), |v| v[0].mul_scalar(1.5)?.overwrite_narrow(axis, start, &v[1].narrow(axis, 0, len)?))?;
        check(&[&a, &b], &default(), |v| v[0].clone().overwrite_narrow(axis, start, &v[1].narrow(axis, 0, len)?))?;
    }

    #[test]
    fn index_select_embedding_and_gather(x in shape(2..=2, 2..=5).prop_flat_map(|s| viewed(s, -1.0, 1.0)), picks in prop::collection::vec(0usize..8, 1..6)) {
        let (rows, cols) = (x.shape[0], x.shape[1]);
        let row_ids: Vec<usize> = picks.iter().map(|p| p % rows).collect();
        check(&[&x], &default(), |v| v[0].index_select(0, &row_ids))?;
        let col_ids: Vec<usize> = picks.iter().map(|p| p % cols).collect();
        check(&[&x], &default(), |v| v[0].index_select(1, &col_ids))?;
        check(&[&x], &default(), |v| v[0].embedding(&row_ids, &[1, row_ids.len()]))?;
        // Plus rows per position: the table's own (its gradient gets both parts) and another.
        let n = row_ids.len();
        check(&[&x], &default(), |v| v[0].embedding_plus(&row_ids, &[1, n], &v[0].index_select(0, &vec![0; n])?))?;
        let positions = Viewed { base: uniform(&[2, n, cols], -1.0, 1.0, 9), recipe: Recipe::Contiguous, shape: vec![2, n, cols] };
        check(&[&x, &positions], &default(), |v| v[0].embedding_plus(&row_ids, &[1, n], &v[1].narrow(0, 1, 1)?.squeeze(0)?))?;
        let gathered: Vec<usize> = (0..rows * 2).map(|i| picks[i % picks.len()] % cols).collect();
        check(&[&x], &default(), |v| v[0].gather(1, &gathered, &[rows, 2]))?;
    }

    #[test]
    fn where_and_masked_fill(a in small().prop_flat_map(|s| (viewed(s.clone(), -1.0, 1.0), viewed(s, -1.0, 1.0))), seed in any::<u64>()) {
        let (a, b) = a;
        let cond = uniform(&a.shape, -1.0, 1.0, seed).gt(&Tensor::scalar(0.0)).unwrap();
        check(&[&a, &b], &default(), |v| Var::where_cond(&cond, &v[0], &v[1]))?;
        check(&[&a], &default(), |v| v[0].masked_fill(&cond, -3.0))?;
    }
}

#[test]
fn a_wrong_rule_is_caught() {
    // The checker must fail when the analytic gradient is wrong: `detach` hides x from the
    // tape, so the analytic gradient of x*detach(x) is x, not 2x.
    let x = uniform(&[3, 2], 0.5, 1.5, 1);
    let err = check_gradients(|v| v[0].mul(&v[0].detach()), &[x], &GradCheck::default()).unwrap_err();
    assert!(err.to_string().contains("analytic"), "{err}");
}
