//! Every derivative rule, in one match.
//!
//! The elementwise ops are the exception that proves the rule: each one's derivative is
//! written next to its forward definition in `tensor::op_table` (one entry per op: kernel,
//! definition, OpenCL, derivative), and the `Unary` and `Binary` arms below call it.
//!
//! Notation: the node computed `y = f(x, ...)`; `g = ∂L/∂y` arrives from later nodes; each rule
//! returns `∂L/∂x = g · ∂y/∂x` for every input that needs it. Where an input was broadcast
//! in the forward pass, its gradient is summed back to its own shape (`sum_to_shape`).

use tensor::{ReduceOp, Result, Tensor};

use crate::op::{NodeId, Op};

/// Gradients of the inputs of `op`, given the gradient `g` of its output.
pub(crate) fn backward_rule(op: Op, g: Tensor) -> Result<Vec<(NodeId, Tensor)>> {
    let mut out = Vec::new();
    match op {
        Op::Leaf { .. } => unreachable!("leaves are collected by the sweep"),

        // Elementwise ops: each rule is written next to its op in `tensor::op_table`.
        Op::Unary { x, op, input, output } => {
            // What the rule does not read was not kept: `g` stands in.
            let (input, output) = (input.unwrap_or_else(|| g.clone()), output.unwrap_or_else(|| g.clone()));
            let gx = op.backward(&g, &input, &output).expect("only differentiable ops are recorded")?;
            out.push((x, gx));
        }

        Op::Binary { lhs, rhs, op, inputs, shapes: (a_shape, b_shape) } => {
            // Ops whose rules never read the inputs (add, sub) did not keep them: any tensor
            // stands in.
            let (a, b) = inputs.unwrap_or_else(|| (g.clone(), g.clone()));
            let (ga, gb) = op
                .backward(&g, &a, &b, (lhs.is_some(), rhs.is_some()))
                .expect("only differentiable ops are recorded");
            if let (Some(n), Some(ga)) = (lhs, ga) {
                out.push((n, ga?.sum_to_shape(&a_shape)?));
            }
            if let (Some(n), Some(gb)) = (rhs, gb) {
                out.push((n, gb?.sum_to_shape(&b_shape)?));
            }
        }

        Op::Where { cond, t, f, t_shape, f_shape } => {
            // The chosen branch gets g, the other nothing.
            let zero = Tensor::scalar(0.0).to_device(&g.device())?;
            if let Some(n) = t {
                out.push((n, cond.where_cond(&g, &zero)?.sum_to_shape(&t_shape)?));
            }
            if let Some(n) = f {
                out.push((n, cond.where_cond(&zero, &g)?.sum_to_shape(&f_shape)?));
            }
        }

        Op::Reduce { x, op, axis, keepdim, input, output } => {
            let g = if keepdim { g } else { g.unsqueeze(axis)? };
            let gx = match op {
                // ∂(Σ x)/∂x_i = 1: g spreads over the axis.
                ReduceOp::Sum => g.broadcast_to(input.shape())?,
                // ∂max/∂x_i = [x_i = max], shared evenly between ties.
                ReduceOp::Max | ReduceOp::Min => {
                    let hit = input.eq(&output)?;
                    let count = hit.sum_keepdim(axis)?;
                    hit.mul(&g.div(&count)?)?
                }
                // ∂ lse/∂x_i = e^{x_i - lse} = softmax(x)_i
                ReduceOp::LogSumExp => input.sub(&output)?.exp()?.mul(&g)?,
            };
            out.push((x, gx));
        }

        // dx = y ⊙ (g - Σ g ⊙ y)
        Op::Softmax { x, axis, output } => out.push((x, output.softmax_backward(&g, axis)?)),

        Op::LayerNorm { x, weight, bias, input, weight_value, mean, rstd } => {
            // Fused: dx = r (g w - mean(g w) - x̂ mean(g w x̂)), dw = Σ g x̂, db = Σ g.
            let (dx, dw, db) = input.layer_norm_backward(&weight_value, &mean, &rstd, &g)?;
            for (n, t) in [(x, dx), (weight, dw), (bias, db)] {
                if let Some(n) = n {
                    out.push((n, t));
                }
            }
        }

        Op::Matmul { lhs, rhs, bias, residual, a, b, lhs_times } => {
            // y = a b (+ c + r): da = g bᵀ, db = aᵀ g (transposes are views; batch broadcasts
            // summed), dc = Σ g over every row, dr = g. Where a = f(x) and the left node is x's,
            // dx = da ⊙ f'(x), the derivative saved as `lhs_times`.
            out.extend(terms_gradients((bias, residual), &g)?);
            let g_bt = (&g, &b.t()?);
            // The product's shape, which `a` has unless it was broadcast over the batch.
            let unbroadcast = g.shape()[..g.rank() - 1] == a.shape()[..a.rank() - 1];
            let times = |da: Tensor| match &lhs_times {
                Some(by) => da.mul(by),
                None => Ok(da),
            };
            // Both gradients are products: made together (see `Tensor::matmul_pair`), the
            // derivative applied as the first is made where there is one.
            match (lhs, rhs) {
                (Some(l), Some(r)) => {
                    let db = RhsGradient::of(&a, &b, &g)?;
                    let (da, db_product) = match &lhs_times {
                        Some(by) if unbroadcast => Tensor::matmul_pair_scaled(g_bt, (&db.lhs, &db.rhs), by)?,
                        _ => {
                            let (da, db_product) = Tensor::matmul_pair(g_bt, (&db.lhs, &db.rhs))?;
                            (times(da.sum_to_shape(a.shape())?)?, db_product)
                        }
                    };
                    out.push((l, da));
                    out.push((r, db.finish(db_product)?));
                }
                (Some(l), None) => out.push((l, times(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?)?)),
                (None, Some(r)) => {
                    let db = RhsGradient::of(&a, &b, &g)?;
                    let product = db.lhs.matmul(&db.rhs)?;
                    out.push((r, db.finish(product)?));
                }
                (None, None) => {}
            }
        }

        Op::Times { x, by } => out.push((x, g.mul(&by)?)),

        // An orthogonal rotation: its adjoint rotates by the opposite angle.
        // (Written over `g` where nothing else holds it.)
        Op::RotatePairs { x, cos, sin } => out.push((x, g.rotate_pairs_owned(&cos, &sin.neg()?)?)),

        // Fused: p recomputed from the saved log-sum-exp; dv = pᵀ g, ds = p ⊙ (g vᵀ − Δ),
        // dq = ds k, dk = dsᵀ q (tensor/src/attention.rs). The node is consumed, so the keys
        // and values are handed over: where nothing else holds them, dk and dv take their place.
        Op::Attention { q, k, v, values: [qv, kv, vv], parts, visibility } => {
            let (dq, dk, dv) = qv.attention_backward_over_keys(kv, vv, &parts, &g, &visibility)?;
            for (n, t) in [(q, dq), (k, dk), (v, dv)] {
                if let Some(n) = n {
                    out.push((n, t));
                }
            }
        }

        // Views: move the gradient back through the inverse view.
        Op::Transpose { x, a, b } => out.push((x, g.transpose(a, b)?)),
        Op::Permute { x, dims } => {
            let mut inverse = vec![0; dims.len()];
            for (i, &d) in dims.iter().enumerate() {
                inverse[d] = i;
            }
            out.push((x, g.permute(&inverse)?));
        }
        Op::Narrow { x, axis, start, full } => {
            // Zeros outside the kept range.
            let len = g.shape()[axis];
            let pad = |n: usize| -> Result<Option<Tensor>> {
                if n == 0 {
                    return Ok(None);
                }
                let mut shape = g.shape().to_vec();
                shape[axis] = n;
                Ok(Some(Tensor::zeros(&shape).to_device(&g.device())?))
            };
            let (before, after) = (pad(start)?, pad(full - start - len)?);
            let gx = match (&before, &after) {
                // The whole axis was kept: the gradient passes as it is.
                (None, None) => g,
                _ => {
                    let parts: Vec<&Tensor> =
                        [before.as_ref(), Some(&g), after.as_ref()].into_iter().flatten().collect();
                    Tensor::cat(&parts, axis)?
                }
            };
            out.push((x, gx));
        }
        Op::Broadcast { x, shape } => out.push((x, g.sum_to_shape(&shape)?)),
        Op::Reshape { x, shape } => out.push((x, g.reshape(&shape)?)),
        Op::Cat { inputs, axis, sizes } => {
            let mut start = 0;
            for (n, size) in inputs.into_iter().zip(sizes) {
                if let Some(n) = n {
                    out.push((n, g.narrow(axis, start, size)?));
                }
                start += size;
            }
        }
        // The written entries came from `src`: their gradient goes there (copied out first, so
        // that zeroing them in `g` for `x` happens in place), the rest to `x`.
        Op::Overwrite { x, src, axis, start, len } => {
            if let Some(n) = src {
                out.push((n, g.narrow(axis, start, len)?.unary(tensor::UnaryOp::Identity)?));
            }
            if let Some(n) = x {
                let mut gx = g;
                let mut zeros_shape = gx.shape().to_vec();
                zeros_shape[axis] = len;
                gx.write_narrow(axis, start, &Tensor::zeros(&zeros_shape).to_device(&gx.device())?)?;
                out.push((n, gx));
            }
        }
        // The lookup's rule for the table, the broadcast add's for the rows.
        Op::EmbeddingPlus { table, rows, ids, vocab, rows_shape } => {
            if let Some(n) = rows {
                out.push((n, g.sum_to_shape(&rows_shape)?));
            }
            if let Some(n) = table {
                out.push((n, g.embedding_backward(&ids, vocab)?));
            }
        }
        // The adjoints of picking are adding back into place.
        Op::IndexSelect { x, axis, indices, size } => out.push((x, g.index_add(axis, &indices, size)?)),
        Op::Gather { x, axis, indices, size } => out.push((x, g.scatter_add(axis, &indices, size)?)),
    }
    Ok(out)
}

/// The gradients of the terms added to a product, `y = a b + c + r`, given `g = dy`
/// `[..., n]`: the residual `r` gets `g`, the bias `c` `[n]` gets `g` summed over every row.
pub(crate) fn terms_gradients(
    (bias, residual): (Option<NodeId>, Option<NodeId>),
    g: &Tensor,
) -> Result<Vec<(NodeId, Tensor)>> {
    let mut out = Vec::new();
    if let Some(n) = residual {
        out.push((n, g.clone()));
    }
    if let Some(n) = bias {
        out.push((n, g.sum_to_shape(&[g.shape()[g.rank() - 1]])?));
    }
    Ok(out)
}

/// The gradient of `b` in `y = a b`, given `g = dy`, as the product that makes it and what
/// is then done to that product: `aᵀ g`, its batch broadcasts summed.
pub(crate) struct RhsGradient {
    pub lhs: Tensor,
    pub rhs: Tensor,
    finish: Finish,
}

/// What [`RhsGradient`]'s product becomes the gradient by.
enum Finish {
    Nothing,
    Transpose,
    SumTo(Vec<usize>),
}

impl RhsGradient {
    pub(crate) fn of(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<Self> {
        if b.rank() == 2 && a.rank() >= 2 {
            // A shared weight: fold the batch into rows, one product instead of many.
            let k = a.shape()[a.rank() - 1];
            let n_out = g.shape()[g.rank() - 1];
            let (a, g) = (a.reshape(&[usize::MAX, k])?, g.reshape(&[usize::MAX, n_out])?);
            Ok(if b.t()?.is_contiguous() {
                // b = Wᵀ, a view of a weight stored [out, in] (Linear): db = (gᵀ a)ᵀ is the
                // same sums, computed in W's own layout, so the transpose's rule hands W a
                // contiguous gradient and the optimizer copies nothing.
                RhsGradient { lhs: g.t()?, rhs: a, finish: Finish::Transpose }
            } else {
                RhsGradient { lhs: a.t()?, rhs: g, finish: Finish::Nothing }
            })
        } else {
            Ok(RhsGradient { lhs: a.t()?, rhs: g.clone(), finish: Finish::SumTo(b.shape().to_vec()) })
        }
    }

    /// The gradient, from the product `lhs · rhs`.
    pub(crate) fn finish(self, product: Tensor) -> Result<Tensor> {
        match self.finish {
            Finish::Nothing => Ok(product),
            Finish::Transpose => product.t(),
            Finish::SumTo(shape) => product.sum_to_shape(&shape),
        }
    }
}
