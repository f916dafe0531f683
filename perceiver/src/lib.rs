//! # perceiver: Perceiver AR end to end
//!
//! The model ([`model`]) with a config that expresses both published variants ([`config`]),
//! loading of perceiver-io reference dumps ([`import`]), and the `perceiver` binary.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod devices;
pub mod distributed;
pub mod error;
pub mod generate;
pub mod import;
pub mod memory;
pub mod model;
pub mod models;
pub mod perceiver_io;
pub mod plot;
pub mod presets;
pub mod run_dir;
pub mod snapshot;
pub mod sparse_transformer;
pub mod train;
pub mod verify;

pub use config::PerceiverArConfig;
pub use error::{Error, Result};
pub use model::{Input, PerceiverAr};
