//! # tensor: strided f32 tensors and the kernels under them
//!
//! This crate is the bottom of the stack. A [`Tensor`] is reference-counted flat storage plus a
//! [`Layout`] (shape, strides in elements, offset), so transposes, slices and broadcasts are
//! free views. Every op works for any strides and returns a fresh contiguous tensor.
//!
//! Reading order for the course:
//! 1. [`layout`]: how an index becomes a position; views as layout arithmetic.
//! 2. [`tensor`] and [`view`]: the `Tensor` type and its views.
//! 3. [`ops`] and [`indexing`]: what you can compute, with shape checks and clear errors;
//!    [`op_table`]: every elementwise op defined once (kernel, f64 definition, OpenCL,
//!    derivative, test domain).
//! 4. [`backend`]: the device trait that ops dispatch to; the CPU is its first implementation.
//! 5. [`cpu`]: the kernels: a strided walker, `wide` SIMD math, `rayon` splitting, `sgemm`.
//! 6. [`reference`](mod@reference): naive kernels written from the definitions, which the tests hold the fast
//!    ones to.

pub mod adamw;
pub mod attention;
pub mod backend;
pub mod cpu;
pub mod error;
pub mod indexing;
pub mod layout;
pub mod op_table;
pub mod ops;
pub mod reference;
pub mod rotary;
pub mod sparse_pattern;
pub mod tensor;
pub mod view;

pub use adamw::AdamWStep;
pub use attention::{AttentionParts, KeyVisibility};
pub use backend::{
    BackendDevice, BackendStorage, BinaryOp, Device, DynStorage, MatmulSpec, Operand, Owned, ReduceOp,
    Storage, UnaryOp,
};
pub use error::{Error, Result};
pub use layout::Layout;
pub use op_table::Domain;
pub use ops::LayerNormParts;
pub use sparse_pattern::{Reach, SparsePart, SparsePattern};
pub use tensor::Tensor;
