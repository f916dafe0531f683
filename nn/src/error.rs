//! Errors of the layers, optimizers and checkpoint files, each naming what was wrong.

use std::path::PathBuf;

/// What went wrong, with the file, tensor name, shape or option involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    /// A parameter that is missing, extra, or of the wrong shape or type.
    #[error("{0}")]
    Param(String),
    /// An invalid configuration value.
    #[error("invalid config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
