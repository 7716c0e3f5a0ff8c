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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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

    /// A run that [`RunControl::stop`] ended.
    pub fn stopped() -> Self {
        Self::runtime("the run was stopped: its request ended (deadline passed or client left)")
    }
}

impl fmt::Display for InferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for InferenceError {}

/// A run's off switch. The request side calls [`RunControl::stop`] when the run's result is no
/// longer wanted (its request passed its deadline, or its client left); the backend stops the
/// run as soon as it can: ONNX Runtime at its next kernel boundary (run options' terminate
/// flag), TorchScript before it starts.
#[derive(Default)]
pub struct RunControl {
    stopped: AtomicBool,
    /// What stops a run already inside ONNX Runtime.
    onnx: Mutex<Option<Arc<ort::session::RunOptions>>>,
}

impl fmt::Debug for RunControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunControl")
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl RunControl {
    /// Asks the run to stop; harmless once it has ended.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let onnx = self.onnx.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(options) = onnx.as_ref()
            && let Err(e) = options.terminate()
        {
            tracing::warn!(error = %e, "cannot terminate an ONNX Runtime run");
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Ties ONNX Runtime run options to this switch: a stop from now on (or one that already
    /// happened) sets their terminate flag.
    fn attach_onnx(&self, options: Arc<ort::session::RunOptions>) -> ort::Result<()> {
        let mut onnx = self.onnx.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_stopped() {
            options.terminate()?;
        }
        *onnx = Some(options);
        Ok(())
    }
}
