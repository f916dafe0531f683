//! # nn: layers, losses, optimizers and checkpoints
//!
//! Everything a model is built from, on top of the autograd tape. A model owns a
//! [`ParamStore`] (every trainable tensor under a dotted name) and layers that hold parameter
//! ids. A forward pass runs in a [`Ctx`]: the tape that records it (or an inference tape), the
//! store, a training flag and the random stream for dropout.
//!
//! Reading order: [`params`], [`ctx`], [`linear`], [`layer_norm`], [`embedding`], [`mlp`],
//! [`rotary`], [`attention`], [`perceiver_layers`], [`position`], [`loss`], [`optim`],
//! [`checkpoint`].

pub mod attention;
pub mod checkpoint;
pub mod ctx;
pub mod dropout;
pub mod embedding;
pub mod error;
pub mod layer_norm;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod params;
pub mod perceiver_layers;
pub mod position;
pub mod rotary;

pub use ctx::Ctx;
pub use error::{Error, Result};
pub use params::{Builder, Param, ParamStore};
