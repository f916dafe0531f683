//! Arithmetic on tensors: elementwise ops with broadcasting, reductions, softmax, layer norm
//! and matmul. Each method checks shapes, axes and devices, works out the output shape, and
//! hands the backend layouts it can trust (see [`crate::backend`]).

use crate::backend::{BinaryOp, LayerNormSaved, Owned, ReduceOp, UnaryOp};
use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::layout::{broadcast_shape, Layout};
use crate::tensor::Tensor;

/// Output of [`Tensor::layer_norm_with_stats`].
pub struct LayerNormParts {
    pub y: Tensor,
    /// Per-row mean, shape: the input's without its last axis.
    pub mean: Tensor,
    /// Per-row `1/√(var+ε)`, same shape as `mean`.
    pub rstd: Tensor,
}

impl Tensor {
    /// Any [`UnaryOp`] applied elementwise.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let s = self.kernels().unary(self.operand()?, op)?;
        Ok(Tensor::from_output(s, self.shape()))
    }

    // The method of each unary and binary op (`exp`, `gelu`, `add_scalar`, `add`, `maximum`,
    // ...) is generated from its entry in `crate::op_table`.

    /// `x - c` (exactly `x + (-c)`).
    pub fn sub_scalar(&self, c: f32) -> Result<Tensor> {
        self.add_scalar(-c)
    }

    /// Any [`BinaryOp`], broadcasting both operands to a common shape (numpy rules).
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        self.same_device(name, rhs)?;
        let shape = broadcast_shape(name, self.shape(), rhs.shape())?;
        let la = self.layout.broadcast_to(&shape)?;
        let lb = rhs.layout.broadcast_to(&shape)?;
        let s = self.kernels().binary(self.operand_as(&la)?, rhs.operand_as(&lb)?, op)?;
        Ok(Tensor::from_output(s, &shape))
    }

    /// `self != 0 ? on_true : on_false`, all three broadcast to one shape.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        self.same_device("where_cond", on_true)?;
        self.same_device("where_cond", on_false)?;
        let shape = broadcast_shape("where_cond", self.shape(), on_true.shape())?;
        let shape = broadcast_shape("where_cond", &shape, on_false.shape())?;
        let (lc, lt, lf) = (
            self.layout.broadcast_to(&shape)?,
            on_true.layout.broadcast_to(&shape)?,
            on_false.layout.broadcast_to(&shape)?,
        );
        let s = self.kernels().where_cond(
            self.operand_as(&lc)?,
            on_true.operand_as(&lt)?,
            on_false.operand_as(&lf)?,
        )?;
        Ok(Tensor::from_output(s, &shape))
    }

    /// `value` where `mask != 0`, else `self`; `mask` broadcasts to `self`'s shape.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        let fill = Tensor::scalar(value).to_device(&self.device())?;
        let mask =
            mask.broadcast_to(self.shape()).map_err(|e| crate::Error::new("masked_fill", e.message))?;
        mask.where_cond(&fill, self)
    }

    /// Reduces `axis` with `op`, keeping it as size 1 when `keepdim`.
    pub fn reduce(&self, axis: usize, op: ReduceOp, keepdim: bool) -> Result<Tensor> {
        self.layout.check_axis(op.name(), axis)?;
        let s = self.kernels().reduce(self.operand()?, axis, op)?;
        let mut shape = self.shape().to_vec();
        shape[axis] = 1;
        let out = Tensor::from_output(s, &shape);
        if keepdim {
            Ok(out)
        } else {
            out.squeeze(axis)
        }
    }

    // `sum`, `max`, `min`, `log_sum_exp` and their `_keepdim` forms are generated from
    // `crate::op_table`'s reduction table.

    pub fn mean(&self, axis: usize) -> Result<Tensor> {
        self.mean_keepdim(axis)?.squeeze(axis)
    }
    pub fn mean_keepdim(&self, axis: usize) -> Result<Tensor> {
        let n = self.dim(axis)?;
        self.reduce(axis, ReduceOp::Sum, true)?.div_scalar(n as f32)
    }
    /// Sum of every element, as a tensor of shape `[]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten()?.sum(0)
    }
    /// Mean of every element, as a tensor of shape `[]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flatten()?.mean(0)
    }

    /// Sums a broadcast result back down to `shape`: the adjoint of `broadcast_to(shape)`.
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.len()).unwrap_or(usize::MAX);
        if lead == usize::MAX || broadcast_shape("sum_to_shape", shape, self.shape())? != self.shape() {
            bail!("sum_to_shape", "{} is not a broadcast of {}", fmt_shape(self.shape()), fmt_shape(shape));
        }
        let mut out = self.clone();
        for _ in 0..lead {
            // A leading axis of one (a batch of one) is dropped as a view, not summed over.
            out = if out.shape()[0] == 1 { out.squeeze(0)? } else { out.sum(0)? };
        }
        for (axis, &d) in shape.iter().enumerate() {
            if d == 1 && out.shape()[axis] != 1 {
                out = out.sum_keepdim(axis)?;
            }
        }
        Ok(out)
    }

    /// Softmax along `axis`.
    pub fn softmax(&self, axis: usize) -> Result<Tensor> {
        self.layout.check_axis("softmax", axis)?;
        self.along_last(axis, |x| {
            let s = x.kernels().softmax(x.operand()?)?;
            Ok(Tensor::from_output(s, x.shape()))
        })
    }

    /// Given `self = softmax(x)` along `axis` and the gradient `dy` of the output, the gradient
    /// of `x`: `y ⊙ (dy - Σ dy ⊙ y)`.
    pub fn softmax_backward(&self, dy: &Tensor, axis: usize) -> Result<Tensor> {
        self.layout.check_axis("softmax_backward", axis)?;
        self.same_device("softmax_backward", dy)?;
        same_shape("softmax_backward", self, dy)?;
        let (y, g) = (self.move_axis_last(axis)?, dy.move_axis_last(axis)?);
        let s = y.kernels().softmax_backward(y.operand()?, g.operand()?)?;
        Tensor::from_output(s, y.shape()).move_last_axis_back(axis)
    }

    /// Layer norm over the last axis with weight and bias of the last axis's size.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(self.layer_norm_with_stats(weight, bias, eps)?.y)
    }

    /// Layer norm, also returning the per-row mean and `1/σ` that its backward needs.
    pub fn layer_norm_with_stats(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<LayerNormParts> {
        self.check_norm_params("layer_norm", weight, Some(bias))?;
        let out = self.kernels().layer_norm(self.operand()?, weight.operand()?, bias.operand()?, eps)?;
        let rows_shape = &self.shape()[..self.rank() - 1];
        Ok(LayerNormParts {
            y: Tensor::from_output(out.y, self.shape()),
            mean: Tensor::from_output(out.mean, rows_shape),
            rstd: Tensor::from_output(out.rstd, rows_shape),
        })
    }

    /// The fused layer-norm backward: `(dx, dweight, dbias)` from the input `self`, the weight,
    /// the saved `mean` and `rstd`, and the output gradient `dy`.
    pub fn layer_norm_backward(
        &self,
        weight: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = self.check_layer_norm_backward(weight, (mean, rstd), dy)?;
        let (mean, rstd) = (mean.contiguous()?, rstd.contiguous()?);
        let saved = LayerNormSaved {
            input: self.operand()?,
            weight: weight.operand()?,
            mean: mean.operand()?,
            rstd: rstd.operand()?,
        };
        let g = self.kernels().layer_norm_backward(saved, dy.operand()?)?;
        Ok((
            Tensor::from_output(g.dx, self.shape()),
            Tensor::from_output(g.dweight, &[c]),
            Tensor::from_output(g.dbias, &[c]),
        ))
    }

    /// [`Tensor::layer_norm_backward`] with `dx` added to `acc` (a gradient the input already
    /// has): `(acc + dx, dweight, dbias)`. Where `acc` is contiguous and not shared, the
    /// kernel adds into it as it makes each row of `dx` (on devices that can), instead of
    /// making `dx` and then the sum.
    pub fn layer_norm_backward_add(
        &self,
        mut acc: Tensor,
        (weight, mean, rstd): (&Tensor, &Tensor, &Tensor),
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        same_shape("layer_norm_backward_add", self, &acc)?;
        self.same_device("layer_norm_backward_add", &acc)?;
        let c = self.check_layer_norm_backward(weight, (mean, rstd), dy)?;
        if acc.is_contiguous() {
            let (mean, rstd) = (mean.contiguous()?, rstd.contiguous()?);
            let kernels = self.kernels();
            if let Some(owned) = Owned::of(&mut acc) {
                let saved = LayerNormSaved {
                    input: self.operand()?,
                    weight: weight.operand()?,
                    mean: mean.operand()?,
                    rstd: rstd.operand()?,
                };
                if let Some((dw, db)) = kernels.layer_norm_backward_add(owned, saved, dy.operand()?)? {
                    return Ok((acc, Tensor::from_output(dw, &[c]), Tensor::from_output(db, &[c])));
                }
            }
        }
        let (dx, dw, db) = self.layer_norm_backward(weight, mean, rstd, dy)?;
        Ok((acc.add(&dx)?, dw, db))
    }

    /// The layer-norm backward's operands fit the input `self`: the weight's channels, `dy`'s
    /// shape, one `mean` and `rstd` per row, one device. Returns the channel count.
    fn check_layer_norm_backward(
        &self,
        weight: &Tensor,
        (mean, rstd): (&Tensor, &Tensor),
        dy: &Tensor,
    ) -> Result<usize> {
        let op = "layer_norm_backward";
        let c = self.check_norm_params(op, weight, None)?;
        same_shape(op, self, dy)?;
        for t in [mean, rstd, dy] {
            self.same_device(op, t)?;
        }
        let rows_shape = &self.shape()[..self.rank() - 1];
        if mean.shape() != rows_shape || rstd.shape() != rows_shape {
            bail!(
                op,
                "mean {} and rstd {} must have shape {}",
                fmt_shape(mean.shape()),
                fmt_shape(rstd.shape()),
                fmt_shape(rows_shape)
            );
        }
        Ok(c)
    }

    fn check_norm_params(&self, op: &'static str, weight: &Tensor, bias: Option<&Tensor>) -> Result<usize> {
        if self.rank() == 0 {
            bail!(op, "input must have at least one axis");
        }
        let c = self.shape()[self.rank() - 1];
        for (name, t) in [("weight", Some(weight)), ("bias", bias)] {
            let Some(t) = t else { continue };
            self.same_device(op, t)?;
            if t.shape() != [c] {
                bail!(
                    op,
                    "{name} has shape {}, expected [{c}] for input {}",
                    fmt_shape(t.shape()),
                    fmt_shape(self.shape())
                );
            }
        }
        Ok(c)
    }

    /// Matrix product over the last two axes, batch axes broadcast: `[..., m, k] x [..., k, n]`.
    /// Transposed and otherwise strided operands are used in place, without copies.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (la, lb, shape) = self.matmul_layouts(rhs)?;
        let s = self.kernels().matmul(self.operand_as(&la)?, rhs.operand_as(&lb)?)?;
        Ok(Tensor::from_output(s, &shape))
    }

    /// `self · rhs + bias`, `bias` `[n]` added to every row of the `[..., m, n]` product: a
    /// linear layer's output. The same as `self.matmul(rhs)?.add(bias)`, to the bit; see
    /// [`Tensor::matmul_plus`].
    pub fn matmul_bias(&self, rhs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.matmul_plus(rhs, Some(bias), None)
    }

    /// `self · rhs + bias + residual`, each term where given: `bias` `[n]` added to every row
    /// of the `[..., m, n]` product, `residual` of the product's shape added to it (a linear
    /// layer's output added to the residual stream). On the CPU the terms go in as each tile of
    /// the product is stored, so no other tensor of the output's size is made; the result is
    /// the same as the product, then `add(bias)`, then `add(residual)`, to the bit.
    pub fn matmul_plus(
        &self,
        rhs: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if bias.is_none() && residual.is_none() {
            return self.matmul(rhs);
        }
        let (la, lb, shape) = self.matmul_layouts(rhs)?;
        let n = shape[shape.len() - 1];
        if let Some(bias) = bias {
            self.same_device("matmul_plus", bias)?;
            if bias.shape() != [n] {
                bail!(
                    "matmul_plus",
                    "bias of shape {} for a product of shape {}",
                    fmt_shape(bias.shape()),
                    fmt_shape(&shape)
                );
            }
        }
        if let Some(residual) = residual {
            self.same_device("matmul_plus", residual)?;
            if residual.shape() != shape.as_slice() {
                bail!(
                    "matmul_plus",
                    "residual of shape {} for a product of shape {}",
                    fmt_shape(residual.shape()),
                    fmt_shape(&shape)
                );
            }
        }
        let (bias_op, residual_op) =
            (bias.map(|t| t.operand()).transpose()?, residual.map(|t| t.operand()).transpose()?);
        if let Some(s) =
            self.kernels().matmul_plus(self.operand_as(&la)?, rhs.operand_as(&lb)?, bias_op, residual_op)?
        {
            return Ok(Tensor::from_output(s, &shape));
        }
        let mut y = self.matmul(rhs)?;
        if let Some(bias) = bias {
            y = y.add(bias)?;
        }
        match residual {
            Some(residual) => y.add(residual),
            None => Ok(y),
        }
    }

    /// `(GELU(y), GELU'(y))` for `y = self·rhs + bias` (the bias `[n]` where given): an MLP's
    /// hidden layer and the factor its backward multiplies the gradient by
    /// ([`Tensor::matmul_pair_scaled`]). Devices that can apply both as they store each part of
    /// the product do (the CPU's linear layers), without storing `y` or reading it back; the
    /// numbers are those of [`Tensor::matmul_plus`] then GELU and its derivative.
    pub fn matmul_plus_gelu(&self, rhs: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (la, lb, shape) = self.matmul_layouts(rhs)?;
        if let Some(bias) = bias {
            self.same_device("matmul_plus_gelu", bias)?;
            if bias.shape() != [shape[shape.len() - 1]] {
                bail!(
                    "matmul_plus_gelu",
                    "bias of shape {} for a product of shape {}",
                    fmt_shape(bias.shape()),
                    fmt_shape(&shape)
                );
            }
        }
        let bias_op = bias.map(|t| t.operand()).transpose()?;
        if let Some((activations, derivatives)) =
            self.kernels().matmul_plus_gelu(self.operand_as(&la)?, rhs.operand_as(&lb)?, bias_op)?
        {
            return Ok((Tensor::from_output(activations, &shape), Tensor::from_output(derivatives, &shape)));
        }
        let y = self.matmul_plus(rhs, bias, None)?;
        Ok((y.gelu()?, y.unary(UnaryOp::GeluDerivative)?))
    }

    /// `self + a·b`, where `self` has the product's shape. Written over `self` when no other
    /// tensor shares its storage and the device adds such a product in place (on the CPU, a
    /// linear layer's product), so no tensor of the product's size is made: the gradient of
    /// an input that several linear layers read (`q`, `k` and `v` of one normed input) is
    /// summed this way.
    pub fn matmul_add(mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.same_device("matmul_add", a)?;
        let (la, lb, shape) = a.matmul_layouts(b)?;
        if self.shape() != shape.as_slice() {
            bail!("matmul_add", "{} + a product of shape {}", fmt_shape(self.shape()), fmt_shape(&shape));
        }
        if let Some(c) = Owned::of(&mut self) {
            if a.kernels().matmul_add(c, a.operand_as(&la)?, b.operand_as(&lb)?)? {
                return Ok(self);
            }
        }
        self.add(&a.matmul(b)?)
    }

    /// `(a·b, c·d)`: the same as two [`Tensor::matmul`] calls, to the bit, computed together
    /// where the device shares its threads between the two (on the CPU, a linear layer's
    /// backward: its input's gradient `dy W` and its weight's `dyᵀ x`, whose fixed halves
    /// otherwise leave one thread waiting whenever the machine slows the other).
    pub fn matmul_pair(first: (&Tensor, &Tensor), second: (&Tensor, &Tensor)) -> Result<(Tensor, Tensor)> {
        Tensor::pair("matmul_pair", first, second, None)
    }

    /// `((a·b) ⊙ by, c·d)`: [`Tensor::matmul_pair`] where the first product is the gradient
    /// of an activation's output and `by` the activation's derivative at its input (as
    /// [`Tensor::matmul_plus_gelu`] saves it), so the first result is the gradient of the
    /// input. Devices that can multiply as they store each part of the product do (the CPU's
    /// linear layers), without a pass over it of its own; the numbers are the product's then
    /// the multiplication's.
    pub fn matmul_pair_scaled(
        (a, b): (&Tensor, &Tensor),
        second: (&Tensor, &Tensor),
        by: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        Tensor::pair("matmul_pair_scaled", (a, b), second, Some(by))
    }

    /// [`Tensor::matmul_pair`], the first product times `by` where that is given.
    fn pair(
        name: &'static str,
        (a, b): (&Tensor, &Tensor),
        (c, d): (&Tensor, &Tensor),
        by: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (la, lb, first) = a.matmul_layouts(b)?;
        let (lc, ld, second) = c.matmul_layouts(d)?;
        a.same_device(name, c)?;
        if let Some(by) = by {
            a.same_device(name, by)?;
            if by.shape() != first.as_slice() {
                bail!(
                    name,
                    "factors of shape {} for a product of shape {}",
                    fmt_shape(by.shape()),
                    fmt_shape(&first)
                );
            }
        }
        let pair = a.kernels().matmul_pair(
            None,
            (a.operand_as(&la)?, b.operand_as(&lb)?),
            (c.operand_as(&lc)?, d.operand_as(&ld)?),
            by.map(|t| t.operand()).transpose()?,
        )?;
        match pair {
            Some((Some(x), y)) => Ok((Tensor::from_output(x, &first), Tensor::from_output(y, &second))),
            Some((None, _)) => bail!(name, "the device returned no first product"),
            None => {
                let product = a.matmul(b)?;
                let first = match by {
                    Some(by) => product.mul(by)?,
                    None => product,
                };
                Ok((first, c.matmul(d)?))
            }
        }
    }

    /// `(self + a·b, c·d)`: [`Tensor::matmul_add`] and [`Tensor::matmul`] computed together as
    /// in [`Tensor::matmul_pair`] (the gradient of an input that several linear layers read,
    /// with one of their weights' gradients).
    pub fn matmul_add_pair(
        mut self,
        (a, b): (&Tensor, &Tensor),
        (c, d): (&Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        self.same_device("matmul_add_pair", a)?;
        let (la, lb, first) = a.matmul_layouts(b)?;
        let (lc, ld, second) = c.matmul_layouts(d)?;
        a.same_device("matmul_add_pair", c)?;
        if self.shape() != first.as_slice() {
            bail!(
                "matmul_add_pair",
                "{} + a product of shape {}",
                fmt_shape(self.shape()),
                fmt_shape(&first)
            );
        }
        if let Some(acc) = Owned::of(&mut self) {
            let pair = a.kernels().matmul_pair(
                Some(acc),
                (a.operand_as(&la)?, b.operand_as(&lb)?),
                (c.operand_as(&lc)?, d.operand_as(&ld)?),
                None,
            )?;
            match pair {
                Some((None, y)) => return Ok((self, Tensor::from_output(y, &second))),
                Some((Some(_), _)) => bail!("matmul_add_pair", "the device made a fresh first product"),
                None => {}
            }
        }
        Ok((self.matmul_add(a, b)?, c.matmul(d)?))
    }

    /// The operands' layouts broadcast to a common batch, and the product's shape.
    fn matmul_layouts(&self, rhs: &Tensor) -> Result<(Layout, Layout, Vec<usize>)> {
        self.same_device("matmul", rhs)?;
        let (a, b) = (self.shape(), rhs.shape());
        if a.len() < 2 || b.len() < 2 {
            bail!("matmul", "{} x {}: both operands need at least 2 axes", fmt_shape(a), fmt_shape(b));
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            bail!("matmul", "{} x {}: inner dims {k} != {k2}", fmt_shape(a), fmt_shape(b));
        }
        let batch = broadcast_shape("matmul", &a[..a.len() - 2], &b[..b.len() - 2]).map_err(|_| {
            crate::Error::new(
                "matmul",
                format!("{} x {}: batch axes do not broadcast", fmt_shape(a), fmt_shape(b)),
            )
        })?;
        let la = self.layout.broadcast_to(&[batch.clone(), vec![m, k]].concat())?;
        let lb = rhs.layout.broadcast_to(&[batch.clone(), vec![k, n]].concat())?;
        Ok((la, lb, [batch, vec![m, n]].concat()))
    }

    /// Runs `f` with `axis` moved last, then moves it back.
    fn along_last(&self, axis: usize, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        f(&self.move_axis_last(axis)?)?.move_last_axis_back(axis)
    }

    /// A view with `axis` moved to the end.
    fn move_axis_last(&self, axis: usize) -> Result<Tensor> {
        if axis + 1 == self.rank() {
            return Ok(self.clone());
        }
        let mut dims: Vec<usize> = (0..self.rank()).filter(|&d| d != axis).collect();
        dims.push(axis);
        self.permute(&dims)
    }

    /// The inverse of [`Tensor::move_axis_last`].
    fn move_last_axis_back(&self, axis: usize) -> Result<Tensor> {
        let last = self.rank() - 1;
        if axis == last {
            return Ok(self.clone());
        }
        let dims: Vec<usize> = (0..self.rank())
            .map(|d| match d.cmp(&axis) {
                std::cmp::Ordering::Less => d,
                std::cmp::Ordering::Equal => last,
                std::cmp::Ordering::Greater => d - 1,
            })
            .collect();
        self.permute(&dims)
    }
}

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!(op, "shapes {} and {} differ", fmt_shape(a.shape()), fmt_shape(b.shape()));
    }
    Ok(())
}
