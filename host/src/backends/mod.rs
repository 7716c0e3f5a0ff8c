//! Inference backends: shared model sessions that many instances run at once.
//!
//! A backend turns model bytes into a session once and then serves every `compute` from every
//! instance on that one session, off the async runtime. Guest mistakes come back as
//! [`InferenceError`]s with a `wasi:nn`-style kind, never as panics.

pub mod models;
pub mod onnx;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch;

use std::fmt;

/// What went wrong, in the terms `wasi:nn` reports to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The guest passed something the model cannot take (name, type, shape, length).
    InvalidArgument,
    /// The model file is not something the backend can load.
    InvalidEncoding,
    /// The backend failed while running.
    RuntimeError,
    /// The request is valid `wasi:nn` but Corral does not do it (or not for this model).
    UnsupportedOperation,
    /// No model with that name in this deployment.
    NotFound,
    /// Refused by policy.
    Security,
}

/// A failure to hand back to the guest as a `wasi:nn` error value.
#[derive(Clone, Debug)]
pub struct InferenceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl InferenceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RuntimeError, message)
    }
}

impl fmt::Display for InferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for InferenceError {}
