//! Errors: every failing op says which op it was and what about its inputs was wrong.
//!
//! Library code returns [`Result`]; shape, index and device mistakes are errors, never panics.
//! Messages read like `matmul: [8,256,64] x [8,32,256]: inner dims 64 != 32`.

use std::fmt;

/// A tensor operation that could not be carried out, with the op's name and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The op that failed, e.g. `matmul` or `narrow`.
    pub op: &'static str,
    /// What was wrong, naming shapes, axes and indices.
    pub message: String,
}

impl Error {
    pub fn new(op: &'static str, message: impl Into<String>) -> Self {
        Error { op, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] for `op`, formatting the message like `format!`.
#[macro_export]
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::new($op, format!($($arg)*)))
    };
}

/// Formats a shape the way error messages print it: `[8,256,64]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}
