//! # autograd: a tape that records tensor ops and runs them backward
//!
//! Reverse-mode differentiation in three ideas:
//!
//! 1. **Record.** Every op on a [`Var`] computes its value with `tensor` and appends a node to
//!    the [`Tape`]: which op, which input nodes, and the tensors its derivative will need.
//!    Nodes are appended in execution order, so the tape is already a topological order.
//! 2. **Sweep.** [`Tape::backward`] seeds `∂loss/∂loss = 1` and walks the nodes in reverse. Each
//!    node turns the gradient of its output into gradients of its inputs (the chain rule, one
//!    rule per op, all in [`backward`]), and those are *added* into the inputs' slots, so a
//!    value used twice receives both contributions. A node's saved tensors and its gradient
//!    are dropped as soon as it has been processed.
//! 3. **Collect.** Gradients of parameters come back keyed by their stable [`ParamId`], ready
//!    for an optimizer; gradients of other leaves by their `Var`.
//!
//! Broadcasting in the forward pass becomes summation in the backward pass
//! ([`tensor::Tensor::sum_to_shape`]). An inference tape ([`Tape::inference`]) records nothing,
//! so layers have a single code path for training and generation.
//!
//! [`gradcheck`] compares every rule against central finite differences.

pub mod backward;
pub mod gradcheck;
mod op;
mod param;
mod tape;
mod var;

pub use gradcheck::{check_gradients, GradCheck, GradCheckReport};
pub use param::ParamId;
pub use tape::{Gradients, Tape};
pub use var::{GeluOfLinear, Var};

/// Autograd errors are tensor errors: they name the op and the shapes.
pub use tensor::{Error, Result};
