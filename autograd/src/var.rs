//! `Var`: a tensor value plus, when it was computed on a recording tape, its node there.
//!
//! Every method computes the value with `tensor` and, if any input is tracked, records one node
//! with what its backward rule needs. Inputs that are not tracked (constants, inputs on an
//! inference tape) get no gradient and cost nothing to record.

use tensor::{bail, BinaryOp, KeyVisibility, ReduceOp, Result, Tensor, UnaryOp};

use crate::op::{NodeId, Op};
use crate::tape::Tape;

#[derive(Clone)]
struct Tracked {
    tape: Tape,
    node: NodeId,
    generation: u64,
}

/// A value in a differentiable computation.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    tracked: Option<Tracked>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}{})", self.value, if self.tracked.is_some() { ", tracked" } else { "" })
    }
}

/// The `Var` method of every unary op of `tensor`'s table (`exp`, `gelu`, `add_scalar`, ...).
macro_rules! var_unary_methods {
    ($($(#[$doc:meta])* $name:ident $method:ident($($c:ident = $sample:expr)?) { $($fields:tt)* })*) => {
        impl Var {$(
            $(#[$doc])*
            pub fn $method(&self $(, $c: f32)?) -> Result<Var> { self.unary(UnaryOp::$name $(($c))?) }
        )*}
    };
}
tensor::unary_op_table!(var_unary_methods);

/// The `Var` method of every binary op of `tensor`'s table (`add`, `maximum`, `gt`, ...).
macro_rules! var_binary_methods {
    ($($(#[$doc:meta])* $name:ident $method:ident { $($fields:tt)* })*) => {
        impl Var {$(
            $(#[$doc])*
            pub fn $method(&self, rhs: &Var) -> Result<Var> { self.binary(rhs, BinaryOp::$name) }
        )*}
    };
}
tensor::binary_op_table!(var_binary_methods);

/// The `Var` methods of every reduction (`sum`, `sum_keepdim`, `max`, ...).
macro_rules! var_reduce_methods {
    ($($(#[$doc:meta])* $name:ident $method:ident $keepdim:ident { $($fields:tt)* })*) => {
        impl Var {$(
            $(#[$doc])*
            pub fn $method(&self, axis: usize) -> Result<Var> { self.reduce(axis, ReduceOp::$name, false) }
            $(#[$doc])*
            /// The axis stays, with size 1.
            pub fn $keepdim(&self, axis: usize) -> Result<Var> { self.reduce(axis, ReduceOp::$name, true) }
        )*}
    };
}
tensor::reduce_op_table!(var_reduce_methods);

impl Var {
    /// A value that needs no gradient.
    pub fn constant(value: Tensor) -> Var {
        Var { value, tracked: None }
    }

    pub(crate) fn on_tape(value: Tensor, tape: Tape, node: NodeId) -> Var {
        let generation = tape.generation();
        Var { value, tracked: Some(Tracked { tape, node, generation }) }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// True when gradients will flow through this value.
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// The tape this value is recorded on, if any.
    pub fn tape(&self) -> Option<Tape> {
        self.tracked.as_ref().map(|t| t.tape.clone())
    }

    /// The same value, cut off from the tape.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    pub(crate) fn raw_node(&self) -> Option<(u64, NodeId)> {
        self.tracked.as_ref().map(|t| (t.generation, t.node))
    }

    /// This var's node on `tape`, `None` if untracked; an error if it belongs to another tape
    /// or to one whose backward has already run.
    pub(crate) fn node_on(&self, tape: &Tape) -> Result<Option<NodeId>> {
        node_on(self.tracked.as_ref(), tape)
    }

    /// Records `make(input nodes)` with output `value` if any input is tracked.
    fn record(inputs: &[&Var], value: Tensor, make: impl FnOnce(Vec<Option<NodeId>>) -> Op) -> Result<Var> {
        let tracked: Vec<Option<&Tracked>> = inputs.iter().map(|v| v.tracked.as_ref()).collect();
        Var::record_tracked(&tracked, value, make)
    }

    /// [`Var::record`] from the inputs' tape entries (for ops that consumed their inputs).
    fn record_tracked(
        inputs: &[Option<&Tracked>],
        value: Tensor,
        make: impl FnOnce(Vec<Option<NodeId>>) -> Op,
    ) -> Result<Var> {
        let tracked = Var::record_node(inputs, value.shape(), make)?;
        Ok(Var { value, tracked })
    }

    /// Records `make(input nodes)`, of output shape `shape`, if any input is tracked: the
    /// output's tape entry, for an output whose value is never made.
    fn record_node(
        inputs: &[Option<&Tracked>],
        shape: &[usize],
        make: impl FnOnce(Vec<Option<NodeId>>) -> Op,
    ) -> Result<Option<Tracked>> {
        let Some(tape) = inputs.iter().flatten().next().map(|t| t.tape.clone()) else {
            return Ok(None);
        };
        let nodes = inputs.iter().map(|t| node_on(*t, &tape)).collect::<Result<Vec<_>>>()?;
        let node = tape.push(make(nodes), shape.to_vec());
        let generation = tape.generation();
        Ok(Some(Tracked { tape, node, generation }))
    }

    /// Records an op of one tracked input.
    fn record1(&self, value: Tensor, make: impl FnOnce(NodeId) -> Op) -> Result<Var> {
        Var::record(&[self], value, |n| make(n[0].expect("single tracked input")))
    }

    // ---- elementwise ----

    /// Any [`UnaryOp`]; ops whose output is piecewise constant (`step`) give constants.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let output = self.value.unary(op)?;
        if !op.is_differentiable() {
            return Ok(Var::constant(output)); // zero gradient
        }
        let (keep_input, keep_output) = op.keeps();
        let input = keep_input.then(|| self.value.clone());
        let kept_output = keep_output.then(|| output.clone());
        self.record1(output, |x| Op::Unary { x, op, input, output: kept_output })
    }

    pub fn sub_scalar(&self, c: f32) -> Result<Var> {
        self.add_scalar(-c)
    }

    /// Any [`BinaryOp`] with broadcasting. Comparisons return constants (zero gradient).
    pub fn binary(&self, rhs: &Var, op: BinaryOp) -> Result<Var> {
        let value = self.value.binary(&rhs.value, op)?;
        if !op.is_differentiable() {
            return Ok(Var::constant(value));
        }
        let inputs = op.needs_inputs().then(|| (self.value.clone(), rhs.value.clone()));
        Var::record(&[self, rhs], value, |n| Op::Binary {
            lhs: n[0],
            rhs: n[1],
            op,
            inputs,
            shapes: (self.shape().to_vec(), rhs.shape().to_vec()),
        })
    }

    /// `cond != 0 ? on_true : on_false` with broadcasting; `cond` is a constant.
    pub fn where_cond(cond: &Tensor, on_true: &Var, on_false: &Var) -> Result<Var> {
        let value = cond.where_cond(&on_true.value, &on_false.value)?;
        Var::record(&[on_true, on_false], value, |n| Op::Where {
            cond: cond.clone(),
            t: n[0],
            f: n[1],
            t_shape: on_true.shape().to_vec(),
            f_shape: on_false.shape().to_vec(),
        })
    }

    /// `value` where `mask != 0`, else `self`.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Var> {
        let fill = Var::constant(Tensor::scalar(value).to_device(&self.value.device())?);
        let mask = mask.broadcast_to(self.shape())?;
        Var::where_cond(&mask, &fill, self)
    }

    // ---- reductions ----

    pub fn reduce(&self, axis: usize, op: ReduceOp, keepdim: bool) -> Result<Var> {
        let output = self.value.reduce(axis, op, true)?;
        let value = if keepdim { output.clone() } else { output.squeeze(axis)? };
        self.record1(value, |x| Op::Reduce { x, op, axis, keepdim, input: self.value.clone(), output })
    }

    pub fn mean(&self, axis: usize) -> Result<Var> {
        let n = self.value.dim(axis)? as f32;
        self.sum(axis)?.div_scalar(n)
    }
    pub fn mean_keepdim(&self, axis: usize) -> Result<Var> {
        let n = self.value.dim(axis)? as f32;
        self.sum_keepdim(axis)?.div_scalar(n)
    }
    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&self) -> Result<Var> {
        self.flatten()?.sum(0)
    }
    /// Mean of all elements, shape `[]`.
    pub fn mean_all(&self) -> Result<Var> {
        self.flatten()?.mean(0)
    }

    // ---- fused ops ----

    pub fn softmax(&self, axis: usize) -> Result<Var> {
        let output = self.value.softmax(axis)?;
        self.record1(output.clone(), |x| Op::Softmax { x, axis, output })
    }

    /// Layer norm over the last axis, `(x - μ)/√(σ²+ε) ⊙ weight + bias`.
    pub fn layer_norm(&self, weight: &Var, bias: &Var, eps: f32) -> Result<Var> {
        let parts = self.value.layer_norm_with_stats(&weight.value, &bias.value, eps)?;
        Var::record(&[self, weight, bias], parts.y, |n| Op::LayerNorm {
            x: n[0],
            weight: n[1],
            bias: n[2],
            input: self.value.clone(),
            weight_value: weight.value.clone(),
            mean: parts.mean,
            rstd: parts.rstd,
        })
    }

    /// Batched matrix product over the last two axes.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.matmul(&rhs.value)?;
        Var::record(&[self, rhs], value, |n| Op::Matmul {
            lhs: n[0],
            rhs: n[1],
            bias: None,
            residual: None,
            a: self.value.clone(),
            b: rhs.value.clone(),
            lhs_times: None,
        })
    }

    /// `self · rhs + bias` (`bias` `[n]`, added to every row): a linear layer, as one node.
    /// See [`Var::matmul_plus`].
    pub fn matmul_bias(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        self.matmul_plus(rhs, Some(bias), None)
    }

    /// `self · rhs + bias + residual`, each term where given (`bias` `[n]`, added to every
    /// row; `residual` of the product's shape): a linear layer added to the residual stream,
    /// as one node. The same values and gradients as [`Var::matmul`] then [`Var::add`]s,
    /// without their tensors of the output's size ([`Tensor::matmul_plus`]).
    pub fn matmul_plus(&self, rhs: &Var, bias: Option<&Var>, residual: Option<&Var>) -> Result<Var> {
        let value = self.value.matmul_plus(&rhs.value, bias.map(|b| &b.value), residual.map(|r| &r.value))?;
        let inputs = (self.tracked.as_ref(), self.value.clone(), None);
        let tracked = Var::record_matmul(value.shape(), inputs, rhs, (bias, residual))?;
        Ok(Var { value, tracked })
    }

    /// GELU of `self · rhs + bias` (`bias` `[n]` where given): an MLP's hidden layer, made as
    /// each part of the product is stored ([`Tensor::matmul_plus_gelu`]) with GELU's derivative
    /// beside it; the product itself is recorded (as [`Var::matmul_plus`] would) but never
    /// stored. Feed the activation to the next layer with [`GeluOfLinear::matmul_plus`], whose
    /// backward multiplies the gradient by the saved derivative as it makes it: GELU then
    /// costs no pass of its own over the hidden layer, forward or backward (on the CPU each
    /// was about 1.5 % of a `step-2k` step), and its backward no `erf` at all.
    pub fn matmul_plus_gelu(&self, rhs: &Var, bias: Option<&Var>) -> Result<GeluOfLinear> {
        let (activation, derivative) = self.value.matmul_plus_gelu(&rhs.value, bias.map(|b| &b.value))?;
        let inputs = (self.tracked.as_ref(), self.value.clone(), None);
        let product = Var::record_matmul(activation.shape(), inputs, rhs, (bias, None))?;
        Ok(GeluOfLinear { product, activation, derivative })
    }

    /// Records `a · rhs + bias + residual` of shape `shape` for `lhs` the left operand's tape
    /// entry and `a` its value, or an activation of it whose derivative is `times`.
    fn record_matmul(
        shape: &[usize],
        (lhs, a, times): (Option<&Tracked>, Tensor, Option<Tensor>),
        rhs: &Var,
        (bias, residual): (Option<&Var>, Option<&Var>),
    ) -> Result<Option<Tracked>> {
        let terms = [bias, residual].into_iter().flatten().map(|v| v.tracked.as_ref());
        let inputs: Vec<Option<&Tracked>> = [lhs, rhs.tracked.as_ref()].into_iter().chain(terms).collect();
        Var::record_node(&inputs, shape, |n| {
            let mut rest = n[2..].iter().copied();
            Op::Matmul {
                lhs: n[0],
                rhs: n[1],
                bias: bias.and_then(|_| rest.next().flatten()),
                residual: residual.and_then(|_| rest.next().flatten()),
                a,
                b: rhs.value.clone(),
                lhs_times: times,
            }
        })
    }

    /// [`Tensor::rotate_pairs`] (rotary position encoding) as one node that keeps only the
    /// tables: its backward is the rotation by the opposite angle.
    pub fn rotate_pairs(&self, cos: &Tensor, sin: &Tensor) -> Result<Var> {
        let value = self.value.rotate_pairs(cos, sin)?;
        self.record1(value, |x| Op::RotatePairs { x, cos: cos.clone(), sin: sin.clone() })
    }

    /// [`Var::rotate_pairs`] taking `self` by value: when nothing else holds its value (the
    /// rotation's backward needs none), the rotation is written over it.
    pub fn rotate_pairs_owned(self, cos: &Tensor, sin: &Tensor) -> Result<Var> {
        let Var { value, tracked } = self;
        let value = value.rotate_pairs_owned(cos, sin)?;
        Var::record_tracked(&[tracked.as_ref()], value, |n| Op::RotatePairs {
            x: n[0].expect("single tracked input"),
            cos: cos.clone(),
            sin: sin.clone(),
        })
    }

    /// Fused attention of queries `self` `[B, H, L, D]` to keys `k` `[B, H, N, D]` and values
    /// `v` `[B, H, N, Dv]`, seeing the keys `visibility` allows: `[B, H, L, Dv]`, one node on
    /// the tape, with no `[B, H, L, N]` tensor in the forward or the backward.
    pub fn attention(&self, k: &Var, v: &Var, visibility: &KeyVisibility) -> Result<Var> {
        let parts = self.value.attention_with_stats(&k.value, &v.value, visibility)?;
        let out = parts.out.clone();
        Var::record(&[self, k, v], out, |n| Op::Attention {
            q: n[0],
            k: n[1],
            v: n[2],
            values: [self.value.clone(), k.value.clone(), v.value.clone()],
            parts,
            visibility: visibility.clone(),
        })
    }

    // ---- views ----

    pub fn transpose(&self, a: usize, b: usize) -> Result<Var> {
        self.record1(self.value.transpose(a, b)?, |x| Op::Transpose { x, a, b })
    }
    /// Swaps the last two axes.
    pub fn t(&self) -> Result<Var> {
        let r = self.value.rank();
        if r < 2 {
            bail!("t", "needs at least 2 axes, got {:?}", self.shape());
        }
        self.transpose(r - 2, r - 1)
    }
    pub fn permute(&self, dims: &[usize]) -> Result<Var> {
        self.record1(self.value.permute(dims)?, |x| Op::Permute { x, dims: dims.to_vec() })
    }
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Var> {
        let full = self.value.dim(axis)?;
        self.record1(self.value.narrow(axis, start, len)?, |x| Op::Narrow { x, axis, start, full })
    }
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        self.record1(self.value.broadcast_to(shape)?, |x| Op::Broadcast { x, shape: self.shape().to_vec() })
    }
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        self.record1(self.value.reshape(shape)?, |x| Op::Reshape { x, shape: self.shape().to_vec() })
    }
    pub fn flatten(&self) -> Result<Var> {
        self.reshape(&[self.value.numel()])
    }
    pub fn unsqueeze(&self, axis: usize) -> Result<Var> {
        self.record1(self.value.unsqueeze(axis)?, |x| Op::Reshape { x, shape: self.shape().to_vec() })
    }
    pub fn squeeze(&self, axis: usize) -> Result<Var> {
        self.record1(self.value.squeeze(axis)?, |x| Op::Reshape { x, shape: self.shape().to_vec() })
    }
    pub fn contiguous(&self) -> Result<Var> {
        self.record1(self.value.contiguous()?, |x| Op::Reshape { x, shape: self.shape().to_vec() })
    }

    // ---- indexing ----

    pub fn cat(parts: &[&Var], axis: usize) -> Result<Var> {
        let values: Vec<&Tensor> = parts.iter().map(|p| &p.value).collect();
        let value = Tensor::cat(&values, axis)?;
        let sizes = parts.iter().map(|p| p.shape()[axis]).collect();
        Var::record(parts, value, |inputs| Op::Cat { inputs, axis, sizes })
    }

    /// `self` with entries `start..start + len` of `axis` replaced by `src` (`len` its size
    /// there): `cat(self[..start], src, self[start + len..])` without copying the kept parts.
    /// Consumes `self`, so that when nothing else holds its value (a fresh op output, as
    /// usual), the write happens in place.
    pub fn overwrite_narrow(self, axis: usize, start: usize, src: &Var) -> Result<Var> {
        let len = src.value.dim(axis)?;
        let Var { mut value, tracked } = self;
        value.write_narrow(axis, start, &src.value)?;
        // `self`'s place on the tape, without its value.
        let target = Var { value: Tensor::scalar(0.0), tracked };
        Var::record(&[&target, src], value, |n| Op::Overwrite { x: n[0], src: n[1], axis, start, len })
    }

    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Var> {
        let size = self.value.dim(axis)?;
        let value = self.value.index_select(axis, indices)?;
        self.record1(value, |x| Op::IndexSelect { x, axis, indices: indices.to_vec(), size })
    }

    /// Embedding lookup in the table `self` (`[vocab, dim]`); result `ids_shape + [dim]`.
    pub fn embedding(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Var> {
        if self.value.rank() != 2 {
            bail!("embedding", "table must be [vocab, dim], got {:?}", self.shape());
        }
        if ids.len() != ids_shape.iter().product::<usize>() {
            bail!("embedding", "{} ids do not fill shape {ids_shape:?}", ids.len());
        }
        let dim = self.shape()[1];
        self.index_select(0, ids)?.reshape(&[ids_shape, &[dim]].concat())
    }

    /// [`Var::embedding`] plus `rows` `[N, dim]` broadcast over the leading axes of
    /// `ids_shape` (`[.., N]`): each token's embedding plus its position's, as one node
    /// ([`Tensor::embedding_plus`]), without a tensor of the lookup alone.
    pub fn embedding_plus(&self, ids: &[usize], ids_shape: &[usize], rows: &Var) -> Result<Var> {
        let value = self.value.embedding_plus(ids, ids_shape, &rows.value)?;
        let vocab = self.value.shape()[0];
        let rows_shape = rows.shape().to_vec();
        Var::record(&[self, rows], value, |n| Op::EmbeddingPlus {
            table: n[0],
            rows: n[1],
            ids: ids.to_vec(),
            vocab,
            rows_shape,
        })
    }

    /// `out[.., i, ..] = self[.., indices[.., i, ..], ..]` along `axis`.
    pub fn gather(&self, axis: usize, indices: &[usize], index_shape: &[usize]) -> Result<Var> {
        let size = self.value.dim(axis)?;
        let value = self.value.gather(axis, indices, index_shape)?;
        self.record1(value, |x| Op::Gather { x, axis, indices: indices.to_vec(), size })
    }
}

/// The node of a tape entry on `tape`, `None` if untracked; an error if it belongs to another
/// tape or to one whose backward has already run.
fn node_on(tracked: Option<&Tracked>, tape: &Tape) -> Result<Option<NodeId>> {
    match tracked {
        None => Ok(None),
        Some(t) if !t.tape.same(tape) => {
            bail!("autograd", "a value from another tape was used")
        }
        Some(t) if t.generation != tape.generation() => {
            bail!("autograd", "a value from a tape whose backward already ran was used")
        }
        Some(t) => Ok(Some(t.node)),
    }
}

/// GELU of a linear layer's output `y`, made with it by [`Var::matmul_plus_gelu`]: `y`'s tape
/// entry (its value is never stored), the activation `GELU(y)` and its derivative `GELU'(y)`.
/// The gradient reaches `y` through [`GeluOfLinear::matmul_plus`] (the next layer's product),
/// or through [`GeluOfLinear::into_var`] for any other use.
pub struct GeluOfLinear {
    product: Option<Tracked>,
    activation: Tensor,
    derivative: Tensor,
}

impl GeluOfLinear {
    /// The activation, `GELU(y)`.
    pub fn value(&self) -> &Tensor {
        &self.activation
    }

    /// `GELU(y) · rhs + bias + residual`, each term where given, as one node whose left
    /// operand's gradient `(g rhsᵀ) ⊙ GELU'(y)` goes to `y`, the saved derivative applied as the
    /// product is made ([`Tensor::matmul_pair_scaled`]). The same values and gradients as
    /// [`GeluOfLinear::into_var`] then [`Var::matmul_plus`].
    pub fn matmul_plus(&self, rhs: &Var, bias: Option<&Var>, residual: Option<&Var>) -> Result<Var> {
        let value =
            self.activation.matmul_plus(&rhs.value, bias.map(|b| &b.value), residual.map(|r| &r.value))?;
        let lhs = (self.product.as_ref(), self.activation.clone(), Some(self.derivative.clone()));
        let tracked = Var::record_matmul(value.shape(), lhs, rhs, (bias, residual))?;
        Ok(Var { value, tracked })
    }

    /// The activation as a node of its own, whose backward multiplies by the saved derivative.
    pub fn into_var(self) -> Result<Var> {
        let GeluOfLinear { product, activation, derivative } = self;
        let x = |n: Vec<Option<NodeId>>| n[0].expect("single tracked input");
        Var::record_tracked(&[product.as_ref()], activation, |n| Op::Times { x: x(n), by: derivative })
    }
}
