//! The elementwise ops, each defined once.
//!
//! One entry of [`unary_op_table!`](crate::unary_op_table) or
//! [`binary_op_table!`](crate::binary_op_table) says everything about an op
//! ([`reduce_op_table!`](crate::reduce_op_table) does the same for reductions, whose kernels
//! each device writes out):
//!
//! | field | what it is | who uses it |
//! |---|---|---|
//! | doc comment, `Name method(c = sample)` | the enum variant (with an `f32` constant when `c` is given), the `Tensor` and `Var` method | `tensor`, `autograd` |
//! | `simd` | the CPU kernel on eight lanes ([`wide::f32x8`]) | [`crate::cpu`] |
//! | `exact` | the definition in `f64` | [`crate::reference`], so every test |
//! | `opencl` | the same as an OpenCL C expression | the `gpu` crate's generated `apply_unary` / `apply_binary` |
//! | `keeps` (unary) | what the derivative reads: `input`, `output`, `both` or `none`; the tape keeps only that | `autograd` |
//! | `grad` | the derivative rule, written with tensor ops, or `constant` (nothing flows back) | `autograd`'s backward |
//! | `domain` (unary) | where tests draw inputs, and the kinks finite differences must avoid | the kernel, gradient and device tests |
//! | `tolerance` (unary) | how far the `f32` kernel may be from `exact` (0: bit for bit) | the kernel tests |
//!
//! The tables are macros that hand their entries to a *callback* macro, so each crate expands
//! them into what it needs: here the enums, their methods, the `Tensor` methods, the SIMD
//! dispatch and the OpenCL source; in `autograd` the `Var` methods. Adding a unary op is one
//! entry below (plus a SIMD helper in [`crate::cpu::math`] when it needs a new transcendental).
//! A field left out fails to compile, and the test lists are [`UnaryOp::ALL`] and
//! [`BinaryOp::ALL`], so a new op is tested on every device the day it is added.
//! The recipe, step by step, is in `docs/guide.md`.

use wide::{f32x8, CmpEq, CmpGe, CmpGt};

use crate::cpu::math;
use crate::error::Result;
use crate::tensor::Tensor;

/// Where the tests of a unary op draw their inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Domain {
    /// Inputs are drawn from `[low, high)`.
    pub low: f32,
    pub high: f32,
    /// Points where the op is not differentiable (gradient checks keep inputs away from them).
    pub kinks: &'static [f32],
}

impl Domain {
    /// Any real input (tests use `[-2, 2)`).
    pub const REAL: Domain = Domain { low: -2.0, high: 2.0, kinks: &[] };
    /// Positive inputs only (log, sqrt, 1/x; tests use `[0.5, 3)`).
    pub const POSITIVE: Domain = Domain { low: 0.5, high: 3.0, kinks: &[] };

    /// Any real input, with kinks.
    pub const fn kinked(kinks: &'static [f32]) -> Domain {
        Domain { kinks, ..Domain::REAL }
    }
}

/// Every unary op: `Name method(c = sample)` gives the variant (carrying the constant `c`
/// when present), the method, and the constant the tests use.
#[macro_export]
macro_rules! unary_op_table {
    ($callback:ident) => {
        $callback! {
            /// A copy: makes a strided view contiguous.
            Identity identity() {
                simd: |x| x,
                exact: |x| x,
                opencl: "x",
                keeps: none,
                grad: { |g, _x, _y| Ok(g.clone()) },
                domain: Domain::REAL, tolerance: 0.0,
            }
            Neg neg() {
                simd: |x| -x,
                exact: |x| -x,
                opencl: "-x",
                keeps: none,
                grad: { |g, _x, _y| g.neg() },
                domain: Domain::REAL, tolerance: 0.0,
            }
            /// `e^x`; `d/dx = e^x = y`.
            Exp exp() {
                simd: math::exp,
                exact: |x| x.exp(),
                opencl: "exp(x)",
                keeps: output,
                grad: { |g, _x, y| g.mul(y) },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// Natural logarithm; `d/dx = 1/x`.
            Log log() {
                simd: math::ln,
                exact: |x| x.ln(),
                opencl: "log(x)",
                keeps: input,
                grad: { |g, x, _y| g.div(x) },
                domain: Domain::POSITIVE, tolerance: 1e-6,
            }
            /// `√x`; `d/dx = 1/(2√x) = 0.5/y`.
            Sqrt sqrt() {
                simd: |x| x.sqrt(),
                exact: |x| x.sqrt(),
                opencl: "sqrt(x)",
                keeps: output,
                grad: { |g, _x, y| g.mul_scalar(0.5)?.div(y) },
                domain: Domain::POSITIVE, tolerance: 0.0,
            }
            /// `x²`; `d/dx = 2x`.
            Square square() {
                simd: |x| x * x,
                exact: |x| x * x,
                opencl: "x * x",
                keeps: input,
                grad: { |g, x, _y| g.mul(x)?.mul_scalar(2.0) },
                domain: Domain::REAL, tolerance: 0.0,
            }
            /// `1/x`; `d/dx = -1/x² = -y²`.
            Recip recip() {
                simd: |x| f32x8::ONE / x,
                exact: |x| 1.0 / x,
                opencl: "1.0f / x",
                keeps: output,
                grad: { |g, _x, y| g.mul(&y.square()?)?.neg() },
                domain: Domain::POSITIVE, tolerance: 0.0,
            }
            /// `tanh x`; `d/dx = 1 - y²`.
            Tanh tanh() {
                simd: math::tanh,
                exact: |x| x.tanh(),
                opencl: "tanh(x)",
                keeps: output,
                grad: { |g, _x, y| g.mul(&y.square()?.scalar_sub(1.0)?) },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// `σ(x) = 1/(1 + e^-x)`; `d/dx = y(1 - y)`.
            Sigmoid sigmoid() {
                simd: math::sigmoid,
                exact: |x| 1.0 / (1.0 + (-x).exp()),
                opencl: "1.0f / (1.0f + exp(-x))",
                keeps: output,
                grad: { |g, _x, y| g.mul(&y.mul(&y.scalar_sub(1.0)?)?) },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// `max(x, 0)`; `d/dx = [x > 0]`.
            Relu relu() {
                simd: |x| x.max(f32x8::ZERO),
                exact: |x| x.max(0.0),
                opencl: "fmax(x, 0.0f)",
                keeps: input,
                grad: { |g, x, _y| g.mul(&x.step()?) },
                domain: Domain::kinked(&[0.0]), tolerance: 0.0,
            }
            /// `relu(x)²`, the "squared ReLU" of the Perceiver AR paper's MLP; `d/dx = 2 relu(x)`.
            SquaredRelu squared_relu() {
                simd: |x| {
                    let r = x.max(f32x8::ZERO);
                    r * r
                },
                exact: |x| x.max(0.0).powi(2),
                opencl: "fmax(x, 0.0f) * fmax(x, 0.0f)",
                keeps: input,
                grad: { |g, x, _y| g.mul(&x.relu()?)?.mul_scalar(2.0) },
                // Smooth, but its second derivative jumps at 0.
                domain: Domain::kinked(&[0.0]), tolerance: 0.0,
            }
            /// Exact GELU: `x Φ(x) = ½ x (1 + erf(x/√2))`; `d/dx = Φ(x) + x φ(x)`.
            Gelu gelu() {
                simd: math::gelu,
                exact: |x| x * phi(x),
                opencl: "0.5f * x * (1.0f + erf(x * 0.70710678118654752f))",
                keeps: input,
                grad: { |g, x, _y| g.gelu_backward(x) },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// The derivative of exact GELU, `Φ(x) + x φ(x)`; its own derivative is
            /// `φ(x) (2 - x²)`.
            GeluDerivative gelu_derivative() {
                simd: math::gelu_derivative,
                exact: |x| phi(x) + x * normal_density(x),
                opencl: "0.5f * (1.0f + erf(x * 0.70710678118654752f)) + x * 0.3989422804014327f * exp(-0.5f * x * x)",
                keeps: input,
                grad: { |g, x, _y| g.mul(&gelu_second_derivative(x)?) },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// `1` where `x > 0`, else `0` (the derivative of ReLU). Piecewise constant.
            Step step() {
                simd: |x| x.cmp_gt(f32x8::ZERO).blend(f32x8::ONE, f32x8::ZERO),
                exact: |x| (x > 0.0) as u8 as f64,
                opencl: "x > 0.0f ? 1.0f : 0.0f",
                keeps: none,
                grad: { constant },
                domain: Domain::kinked(&[0.0]), tolerance: 0.0,
            }
            /// SiLU (swish): `x σ(x)`; `d/dx = σ(x) + y (1 - σ(x)) = σ(x)(1 - y) + y`.
            Silu silu() {
                simd: |x| x * math::sigmoid(x),
                exact: |x| x / (1.0 + (-x).exp()),
                opencl: "x / (1.0f + exp(-x))",
                keeps: both,
                grad: { |g, x, y| {
                    let s = x.sigmoid()?;
                    g.mul(&s.mul(&y.scalar_sub(1.0)?)?.add(y)?)
                } },
                domain: Domain::REAL, tolerance: 1e-6,
            }
            /// `x + c`.
            AddScalar add_scalar(c = 0.75) {
                simd: |x| x + f32x8::splat(c),
                exact: |x| x + c as f64,
                opencl: "x + c",
                keeps: none,
                grad: { |g, _x, _y| Ok(g.clone()) },
                domain: Domain::REAL, tolerance: 0.0,
            }
            /// `c x`.
            MulScalar mul_scalar(c = -1.5) {
                simd: |x| x * f32x8::splat(c),
                exact: |x| x * c as f64,
                opencl: "x * c",
                keeps: none,
                grad: { |g, _x, _y| g.mul_scalar(c) },
                domain: Domain::REAL, tolerance: 0.0,
            }
            /// `x / c`.
            DivScalar div_scalar(c = 3.0) {
                simd: |x| x / f32x8::splat(c),
                exact: |x| x / c as f64,
                opencl: "x / c",
                keeps: none,
                grad: { |g, _x, _y| g.div_scalar(c) },
                domain: Domain::REAL, tolerance: 0.0,
            }
            /// `max(x, c)`; `d/dx = [x > c]`.
            MaxScalar max_scalar(c = 0.25) {
                simd: |x| x.max(f32x8::splat(c)),
                exact: |x| x.max(c as f64),
                opencl: "fmax(x, c)",
                keeps: input,
                grad: { |g, x, _y| g.mul(&x.sub_scalar(c)?.step()?) },
                domain: Domain::kinked(&[0.25]), tolerance: 0.0,
            }
            /// `c - x`.
            ScalarSub scalar_sub(c = 2.0) {
                simd: |x| f32x8::splat(c) - x,
                exact: |x| c as f64 - x,
                opencl: "c - x",
                keeps: none,
                grad: { |g, _x, _y| g.neg() },
                domain: Domain::REAL, tolerance: 0.0,
            }
        }
    };
}

/// Every binary op (inputs `a`, `b` of one broadcast shape). Comparisons give `1.0` or `0.0`.
/// `grad` gives `∂L/∂a` and `∂L/∂b` from `g = ∂L/∂y`, each computed only when needed and
/// before broadcast dimensions are summed away; `needs_inputs: false` says the rules never read
/// `a` or `b` (only their shapes), so the tape does not keep them. Ops are exactly rounded
/// unless they state a `tolerance`.
#[macro_export]
macro_rules! binary_op_table {
    ($callback:ident) => {
        $callback! {
            /// `a + b`; `∂ = (1, 1)`.
            Add add {
                simd: |a, b| a + b, exact: |a, b| a + b, opencl: "a + b", needs_inputs: false,
                grad: { a: |g, _a, _b| Ok(g.clone()), b: |g, _a, _b| Ok(g.clone()) },
            }
            /// `a - b`; `∂ = (1, -1)`.
            Sub sub {
                simd: |a, b| a - b, exact: |a, b| a - b, opencl: "a - b", needs_inputs: false,
                grad: { a: |g, _a, _b| Ok(g.clone()), b: |g, _a, _b| g.neg() },
            }
            /// `a b`; `∂ = (b, a)`.
            Mul mul {
                simd: |a, b| a * b, exact: |a, b| a * b, opencl: "a * b", needs_inputs: true,
                grad: { a: |g, _a, b| g.mul(b), b: |g, a, _b| g.mul(a) },
            }
            /// `a / b`; `∂ = (1/b, -a/b²)`.
            Div div {
                simd: |a, b| a / b, exact: |a, b| a / b, opencl: "a / b", needs_inputs: true,
                grad: { a: |g, _a, b| g.div(b), b: |g, a, b| g.mul(a)?.div(&b.square()?)?.neg() },
            }
            /// Elementwise maximum; `∂ = ([a > b], [b > a])`, a tie sends half to each.
            Max maximum {
                simd: |a, b| a.max(b), exact: |a, b| a.max(b), opencl: "fmax(a, b)", needs_inputs: true,
                grad: { a: |g, a, b| g.mul(&winner(a, b)?), b: |g, a, b| g.mul(&winner(b, a)?) },
            }
            /// Elementwise minimum; `∂ = ([a < b], [b < a])`, a tie sends half to each.
            Min minimum {
                simd: |a, b| a.min(b), exact: |a, b| a.min(b), opencl: "fmin(a, b)", needs_inputs: true,
                grad: { a: |g, a, b| g.mul(&winner(b, a)?), b: |g, a, b| g.mul(&winner(a, b)?) },
            }
            /// `a · GELU'(b)`: GELU's backward in one pass, the incoming gradient `a` times the
            /// derivative at the input `b` (see `gelu_derivative`), so no tensor of `GELU'(b)`
            /// is made. `∂ = (GELU'(b), a φ(b) (2 - b²))`. Not exactly rounded (erf and exp):
            /// within `tolerance` of the definition.
            GeluBackward gelu_backward {
                simd: |a, b| a * math::gelu_derivative(b),
                exact: |a, b| a * (phi(b) + b * normal_density(b)),
                opencl: "a * (0.5f * (1.0f + erf(b * 0.70710678118654752f)) + b * 0.3989422804014327f * exp(-0.5f * b * b))",
                needs_inputs: true,
                grad: {
                    a: |g, _a, b| g.gelu_backward(b),
                    b: |g, a, b| g.mul(a)?.mul(&gelu_second_derivative(b)?),
                },
                tolerance: 1e-6,
            }
            /// `1` where `a > b`, else `0`.
            Gt gt {
                simd: |a, b| a.cmp_gt(b).blend(f32x8::ONE, f32x8::ZERO),
                exact: |a, b| (a > b) as u8 as f64, opencl: "a > b ? 1.0f : 0.0f", needs_inputs: false,
                grad: { constant },
            }
            /// `1` where `a >= b`, else `0`.
            Ge ge {
                simd: |a, b| a.cmp_ge(b).blend(f32x8::ONE, f32x8::ZERO),
                exact: |a, b| (a >= b) as u8 as f64, opencl: "a >= b ? 1.0f : 0.0f", needs_inputs: false,
                grad: { constant },
            }
            /// `1` where `a == b`, else `0`.
            Eq eq {
                simd: |a, b| a.cmp_eq(b).blend(f32x8::ONE, f32x8::ZERO),
                exact: |a, b| (a == b) as u8 as f64, opencl: "a == b ? 1.0f : 0.0f", needs_inputs: false,
                grad: { constant },
            }
        }
    };
}

/// Every reduction along one axis: `Name method keepdim_method`, and its definition on the
/// values of one fiber. (Their kernels differ in more than one expression, so each device
/// writes them out; the OpenCL code is the variant's position, as a `REDUCE_*` define.)
#[macro_export]
macro_rules! reduce_op_table {
    ($callback:ident) => {
        $callback! {
            /// Sum along `axis`.
            Sum sum sum_keepdim { exact: |v| v.iter().sum() }
            /// The largest entry along `axis` (NaN if any is NaN).
            Max max max_keepdim { exact: |v| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max) }
            /// The smallest entry along `axis`.
            Min min min_keepdim { exact: |v| v.iter().cloned().fold(f64::INFINITY, f64::min) }
            /// `log Σ exp(x)` along `axis`, computed as `m + log Σ exp(x - m)` with `m` the maximum.
            LogSumExp log_sum_exp log_sum_exp_keepdim {
                exact: |v| {
                    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m + v.iter().map(|y| (y - m).exp()).sum::<f64>().ln()
                }
            }
        }
    };
}

/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal CDF `Φ(x)` in f64.
fn phi(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The standard normal density `φ(x)` in f64.
fn normal_density(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// GELU's second derivative `φ(x) (2 - x²)`, composed from differentiable ops.
fn gelu_second_derivative(x: &Tensor) -> Result<Tensor> {
    let density = x.square()?.mul_scalar(-0.5)?.exp()?.mul_scalar(FRAC_1_SQRT_2PI)?;
    density.mul(&x.square()?.scalar_sub(2.0)?)
}

/// `1` where `a > b`, `½` where `a == b`, `0` elsewhere.
fn winner(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.gt(b)?.add(&a.eq(b)?.mul_scalar(0.5)?)
}

/// OpenCL C source of `signature` as a `switch` over op codes: one `case` per
/// `(code, expression, name)`.
fn opencl_switch(signature: &str, cases: &[(i32, &str, &str)]) -> String {
    let mut s = format!("inline float {signature} {{\n    switch (op) {{\n");
    for (code, expr, name) in cases {
        s.push_str(&format!("        case {code}: return {expr};  // {name}\n"));
    }
    s.push_str("    }\n    return NAN;\n}\n");
    s
}

fn exact_reduce<F: Fn(&[f64]) -> f64>(f: F) -> F {
    f
}

/// The type of an op's constant (`f32`), for the variants that carry one.
macro_rules! scalar_type {
    ($c:ident) => {
        f32
    };
}

/// The constant of an op that has one, else 0.
macro_rules! scalar_or_zero {
    () => {
        0.0
    };
    ($c:ident) => {
        $c
    };
}

/// `(input, output)` flags of a `keeps` field.
macro_rules! keeps {
    (none) => {
        (false, false)
    };
    (input) => {
        (true, false)
    };
    (output) => {
        (false, true)
    };
    (both) => {
        (true, true)
    };
}

/// Whether a `grad` field lets gradients through.
macro_rules! has_gradient {
    ({ constant }) => {
        false
    };
    ({ $($rule:tt)* }) => {
        true
    };
}

/// Gives closures their argument types (a generic bound, unlike a `dyn` annotation, lets the
/// compiler infer the closure's signature).
fn unary_rule<F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>>(f: F) -> F {
    f
}
fn exact_unary<F: Fn(f64) -> f64>(f: F) -> F {
    f
}
fn exact_binary<F: Fn(f64, f64) -> f64>(f: F) -> F {
    f
}

/// A derivative rule, or `None` for ops whose output is piecewise constant.
macro_rules! unary_grad {
    ({ constant }, $g:ident, $x:ident, $y:ident) => {
        None
    };
    ({ $rule:expr }, $g:ident, $x:ident, $y:ident) => {
        Some(unary_rule($rule)($g, $x, $y))
    };
}

macro_rules! define_unary_ops {
    ($(
        $(#[$doc:meta])*
        $name:ident $method:ident($($c:ident = $sample:expr)?) {
            simd: $simd:expr,
            exact: $exact:expr,
            opencl: $opencl:literal,
            keeps: $keeps:ident,
            grad: $grad:tt,
            domain: $domain:expr, tolerance: $tolerance:expr $(,)?
        }
    )*) => {
        /// Elementwise ops of one input; the `*Scalar` forms combine each element with a
        /// constant. Defined in [`unary_op_table!`](crate::unary_op_table).
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum UnaryOp {
            $( $(#[$doc])* $name $((scalar_type!($c)))?, )*
        }

        /// The ops' positions in the table: their codes in the OpenCL kernels.
        #[allow(dead_code)]
        enum UnaryCode { $($name,)* }

        impl UnaryOp {
            /// Every op, the constant forms with the table's sample constant: the list the
            /// tests iterate over.
            pub const ALL: &'static [UnaryOp] = &[$(UnaryOp::$name $(($sample))?,)*];

            /// The method name (`"gelu"`, `"add_scalar"`).
            pub fn name(self) -> &'static str {
                match self { $(UnaryOp::$name { .. } => stringify!($method),)* }
            }

            /// The op's position in the table (its code in the OpenCL kernels).
            pub fn code(self) -> i32 {
                match self { $(UnaryOp::$name { .. } => UnaryCode::$name as i32,)* }
            }

            /// The constant of the `*Scalar` forms, 0 for the others.
            pub fn scalar(self) -> f32 {
                match self { $(UnaryOp::$name $(($c))? => scalar_or_zero!($($c)?),)* }
            }

            /// The definition, in f64 (the reference every kernel is held to).
            pub fn exact(self, x: f64) -> f64 {
                match self { $(UnaryOp::$name $(($c))? => exact_unary($exact)(x),)* }
            }

            /// Where tests draw inputs.
            pub fn domain(self) -> Domain {
                match self { $(UnaryOp::$name { .. } => $domain,)* }
            }

            /// How far the f32 kernels may be from [`UnaryOp::exact`], absolute and relative
            /// (0: bit for bit).
            pub fn tolerance(self) -> f32 {
                match self { $(UnaryOp::$name { .. } => $tolerance,)* }
            }

            /// `∂L/∂x` from the gradient `g` of the output, the input `x` and the output `y`;
            /// `None` when the output is piecewise constant (no gradient flows).
            #[allow(unused_variables)] // the constant, in rules that do not need it
            pub fn backward(self, g: &Tensor, x: &Tensor, y: &Tensor) -> Option<Result<Tensor>> {
                match self { $(UnaryOp::$name $(($c))? => unary_grad!($grad, g, x, y),)* }
            }

            /// Whether a gradient flows through the op.
            pub fn is_differentiable(self) -> bool {
                match self { $(UnaryOp::$name { .. } => has_gradient!($grad),)* }
            }

            /// Which of `(input, output)` the derivative reads, so the tape keeps only those.
            pub fn keeps(self) -> (bool, bool) {
                match self { $(UnaryOp::$name { .. } => keeps!($keeps),)* }
            }

            /// OpenCL C source of `float apply_unary(int op, float x, float c)`, one `case` per
            /// op with the codes of [`UnaryOp::code`].
            pub fn opencl_source() -> String {
                let cases = [$((UnaryCode::$name as i32, $opencl, stringify!($method)),)*];
                opencl_switch("apply_unary(int op, float x, float c)", &cases)
            }
        }

        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $method(&self $(, $c: f32)?) -> Result<Tensor> {
                    self.unary(UnaryOp::$name $(($c))?)
                }
            )*
        }

        /// Applies `op` to a contiguous slice, eight lanes at a time.
        pub(crate) fn unary_slice(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
            if op == UnaryOp::Identity {
                return dst.copy_from_slice(src);
            }
            if math::map_sixteen(op, src, dst) {
                return;
            }
            match op { $(UnaryOp::$name $(($c))? => math::map(src, dst, $simd),)* }
        }
    };
}

/// Both derivative rules of a binary op, or `None` for comparisons.
macro_rules! binary_grad {
    ({ constant }, $g:ident, $a:ident, $b:ident, $need:ident) => {
        None
    };
    ({ a: $ga:expr, b: $gb:expr $(,)? }, $g:ident, $a:ident, $b:ident, $need:ident) => {{
        let (ga, gb) = (unary_rule($ga), unary_rule($gb));
        Some(($need.0.then(|| ga($g, $a, $b)), $need.1.then(|| gb($g, $a, $b))))
    }};
}

/// The result of [`BinaryOp::backward`]: `∂L/∂a` and `∂L/∂b`, each when asked for.
pub type BinaryGrads = (Option<Result<Tensor>>, Option<Result<Tensor>>);

macro_rules! define_binary_ops {
    ($(
        $(#[$doc:meta])*
        $name:ident $method:ident {
            simd: $simd:expr, exact: $exact:expr, opencl: $opencl:literal, needs_inputs: $needs:literal,
            grad: $grad:tt $(, tolerance: $tolerance:expr)? $(,)?
        }
    )*) => {
        /// Elementwise ops of two inputs of the same (broadcast) shape. Defined in
        /// [`binary_op_table!`](crate::binary_op_table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BinaryOp {
            $($(#[$doc])* $name,)*
        }

        impl BinaryOp {
            /// Every op: the list the tests iterate over.
            pub const ALL: &'static [BinaryOp] = &[$(BinaryOp::$name,)*];

            /// The method name (`"add"`, `"maximum"`), also used in error messages.
            pub fn name(self) -> &'static str {
                match self { $(BinaryOp::$name => stringify!($method),)* }
            }

            /// The op's position in the table (its code in the OpenCL kernels).
            pub fn code(self) -> i32 {
                self as i32
            }

            /// The definition, in f64.
            pub fn exact(self, a: f64, b: f64) -> f64 {
                match self { $(BinaryOp::$name => exact_binary($exact)(a, b),)* }
            }

            /// How far (absolute and relative) the kernels may be from [`BinaryOp::exact`]:
            /// zero for the exactly rounded ops, which is all but those that say otherwise.
            pub fn tolerance(self) -> f32 {
                match self { $(BinaryOp::$name => [$($tolerance,)? 0.0][0],)* }
            }

            /// `(∂L/∂a, ∂L/∂b)` from the output gradient `g` (of the broadcast shape) and the
            /// inputs, each only when `need` asks for it; `None` for comparisons (piecewise
            /// constant: no gradient flows).
            pub fn backward(self, g: &Tensor, a: &Tensor, b: &Tensor, need: (bool, bool)) -> Option<BinaryGrads> {
                match self { $(BinaryOp::$name => binary_grad!($grad, g, a, b, need),)* }
            }

            /// Whether gradients flow through the op.
            pub fn is_differentiable(self) -> bool {
                match self { $(BinaryOp::$name => has_gradient!($grad),)* }
            }

            /// Whether the derivative reads the inputs' values (`add` and `sub` need only their
            /// shapes, so the tape need not keep the inputs alive).
            pub fn needs_inputs(self) -> bool {
                match self { $(BinaryOp::$name => $needs,)* }
            }

            /// OpenCL C source of `float apply_binary(int op, float a, float b)`.
            pub fn opencl_source() -> String {
                let cases = [$((BinaryOp::$name as i32, $opencl, stringify!($method)),)*];
                opencl_switch("apply_binary(int op, float a, float b)", &cases)
            }
        }

        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $method(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.binary(rhs, BinaryOp::$name)
                }
            )*
        }

        /// Applies `op` pairwise to two contiguous slices, eight lanes at a time (sixteen for GELU's
        /// backward on AVX-512).
        pub(crate) fn binary_slice(op: BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
            if math::map2_sixteen(op, a, b, dst) {
                return;
            }
            match op { $(BinaryOp::$name => math::map2(a, b, dst, $simd),)* }
        }
    };
}

macro_rules! define_reduce_ops {
    ($($(#[$doc:meta])* $name:ident $method:ident $keepdim:ident { exact: $exact:expr })*) => {
        /// Reductions along one axis. Defined in [`reduce_op_table!`](crate::reduce_op_table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ReduceOp {
            $($(#[$doc])* $name,)*
        }

        impl ReduceOp {
            /// Every reduction.
            pub const ALL: &'static [ReduceOp] = &[$(ReduceOp::$name,)*];

            /// The method name (`"sum"`, `"log_sum_exp"`), also used in error messages.
            pub fn name(self) -> &'static str {
                match self { $(ReduceOp::$name => stringify!($method),)* }
            }

            /// The definition on the values of one fiber, in f64.
            pub fn exact(self, values: &[f64]) -> f64 {
                match self { $(ReduceOp::$name => exact_reduce($exact)(values),)* }
            }
        }

        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $method(&self, axis: usize) -> Result<Tensor> {
                    self.reduce(axis, ReduceOp::$name, false)
                }
                $(#[$doc])*
                /// The axis stays, with size 1.
                pub fn $keepdim(&self, axis: usize) -> Result<Tensor> {
                    self.reduce(axis, ReduceOp::$name, true)
                }
            )*
        }
    };
}

unary_op_table!(define_unary_ops);
binary_op_table!(define_binary_ops);
reduce_op_table!(define_reduce_ops);
