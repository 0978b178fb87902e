//! The crate's error type: every failure a user can cause (a wrong shape at the public API, a bad file, a bad
//! argument) is an `Err` with a one-line message, never a panic.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tensor shapes that do not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// A file that is missing, unreadable, truncated or malformed; the message names the file and what is wrong.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A bad value for an option or argument.
    #[error("invalid argument: {0}")]
    Arg(String),
    /// A GPU-side failure: no usable CUDA device (and why), a kernel that does not load, a launch the device or
    /// the emulator refuses, a kernel fault the emulator caught.
    #[error("device error: {0}")]
    Device(String),
    /// Training produced a non-finite loss, gradient norm or weight; the message names the step.
    #[error("{0}")]
    Diverged(String),
}

impl Error {
    /// A [`Error::File`] for `path` with message `msg`.
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns `Err(Error::Shape(..))` with a formatted message.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Shape(format!($($arg)*))) };
}
