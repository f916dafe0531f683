//! Errors of the model, data and command-line tools.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nn(#[from] nn::Error),
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
    #[error("not enough memory: {0}")]
    Memory(String),
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
