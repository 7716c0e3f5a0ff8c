//! Inference backends behind one seam: a [`Backend`] turns model bytes into a [`LoadedModel`]
//! placed on a device, and a loaded model states what it takes and gives ([`Signature`]), how
//! many runs it allows at once ([`Concurrency`]) and how much memory it holds, and runs a
//! batch. Everything above this seam (the scheduler, the model cache, `wasi:nn`) works on
//! these traits only: a new backend or device is an implementation here, nothing more.
//!
//! Guest mistakes come back as [`InferenceError`]s with a `wasi:nn`-style kind, never as panics.

pub mod cuda;
pub mod models;
pub mod onnx;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch;

/// Memory the process may use: its cgroup's limit if one is set, else the machine's.
pub fn memory_available() -> u64 {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| text.trim().parse::<u64>().ok());
    let machine = physical_memory();
    cgroup.map_or(machine, |limit| limit.min(machine))
}

/// The machine's physical memory, in bytes (4 GiB if it cannot be read).
pub fn physical_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| {
            let kib = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .map_or(4 << 30, |kib| kib * 1024)
}

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use models::ModelFormat;
use tensor::{ElementType, Tensor};

/// Where a model is loaded and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    Cpu,
    /// The NVIDIA GPU with this CUDA ordinal.
    Cuda(u32),
}

impl Placement {
    /// The name configuration, metrics and status use (`cpu`, `cuda:0`).
    pub fn name(self) -> String {
        match self {
            Self::Cpu => "cpu".to_owned(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// Whether this is an accelerator (placed before the CPU).
    pub fn is_accelerator(self) -> bool {
        !matches!(self, Self::Cpu)
    }
}

impl From<corral_parsers::config::DeviceName> for Placement {
    fn from(name: corral_parsers::config::DeviceName) -> Self {
        match name {
            corral_parsers::config::DeviceName::Cpu => Self::Cpu,
            corral_parsers::config::DeviceName::Cuda(n) => Self::Cuda(n),
        }
    }
}

/// One input or output as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// `None` when the model's element type is one `wasi:nn` cannot express.
    pub ty: Option<ElementType>,
    /// Dimensions; `None` is a dynamic one.
    pub shape: Vec<Option<u32>>,
}

/// What a loaded model takes and gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// Declared inputs, in the model's order; empty when the format declares none
    /// (TorchScript: inputs are positional, in the order the guest gives them).
    pub inputs: Vec<TensorSpec>,
    /// Declared outputs; empty when the format declares none.
    pub outputs: Vec<TensorSpec>,
    /// The axis along which requests may be stacked into one run: the leading axis when every
    /// input and output has a dynamic leading dimension, else `None` (the model runs one
    /// request at a time).
    pub batch_axis: Option<usize>,
}

impl Signature {
    /// The batch axis a model with these inputs and outputs has: 0 when every one of them
    /// (at least one of each) has a dynamic leading dimension.
    pub fn leading_batch_axis(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Option<usize> {
        let dynamic_lead = |spec: &TensorSpec| matches!(spec.shape.first(), Some(None));
        (!inputs.is_empty()
            && !outputs.is_empty()
            && inputs.iter().all(dynamic_lead)
            && outputs.iter().all(dynamic_lead))
        .then_some(0)
    }
}

/// How many runs of one loaded model may execute at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// Any number: runs share the model (one copy of its weights) from many threads.
    Shared,
    /// One at a time.
    Exclusive,
}

/// A model loaded by a [`Backend`]: shared by every deployment and request that uses its
/// bytes, run from the scheduler's threads (blocking calls, never on an async worker).
pub trait LoadedModel: Send + Sync + fmt::Debug {
    fn signature(&self) -> &Signature;

    fn concurrency(&self) -> Concurrency;

    /// Memory the model holds while loaded, in bytes, as measured when it was loaded.
    fn resident_bytes(&self) -> u64;

    fn placement(&self) -> Placement;

    /// Runs the model on named inputs (one request's, or a batch stacked along the batch
    /// axis) until it ends or `control` stops it. Inputs are checked against the signature
    /// first: a guest mistake is an [`ErrorKind::InvalidArgument`] naming the input.
    fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        control: &RunControl,
    ) -> Result<Vec<(String, Tensor)>, InferenceError>;
}

/// A model format's loader.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Loads model bytes onto `placement`. Blocking and possibly slow. Bytes the backend
    /// cannot load are an [`ErrorKind::InvalidEncoding`] naming the reason.
    fn load(
        &self,
        bytes: &[u8],
        placement: Placement,
    ) -> Result<Arc<dyn LoadedModel>, InferenceError>;
}

/// The backend for `format` in this build, configured with `threads` intra-op threads per run.
pub fn backend(format: ModelFormat) -> Result<&'static dyn Backend, InferenceError> {
    match format {
        ModelFormat::Onnx => Ok(&onnx::OnnxBackend),
        #[cfg(feature = "torch")]
        ModelFormat::Pytorch => Ok(&torch::TorchBackend),
        #[cfg(not(feature = "torch"))]
        ModelFormat::Pytorch => Err(InferenceError::new(
            ErrorKind::UnsupportedOperation,
            "this Corral was built without the TorchScript backend (cargo feature `torch`)",
        )),
    }
}

/// Bytes the allocator has handed out and not taken back: glibc's `mallinfo2` (arena bytes in
/// use plus mmapped blocks). Both backends allocate their weights through it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn allocated_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics (under its own locks); it has no
    // preconditions and returns a plain struct.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks as u64).saturating_add(info.hblkhd as u64)
}

/// Elsewhere, the process's resident memory (from `/proc/self/statm`, 4 KiB pages).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocated_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Measures a load: the growth of the allocator's bytes in use across it (what the loaded
/// model keeps; the file's bytes were allocated before and are not counted), at least the
/// file's size (its weights are in memory once loaded, whatever else was freed meanwhile).
/// Loads are measured one at a time so that two loads do not count each other.
pub fn measured_load<T>(file_bytes: usize, load: impl FnOnce() -> T) -> (T, u64) {
    static MEASURING: Mutex<()> = Mutex::new(());
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    let before = allocated_bytes();
    let loaded = load();
    let grown = allocated_bytes().saturating_sub(before);
    (loaded, grown.max(file_bytes as u64))
}

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
///
/// A batch's control is a [`RunControl::group`] of its requests' controls: it stops only when
/// every one of them has, so one request leaving never cuts the others' run short.
#[derive(Default)]
pub struct RunControl {
    stopped: AtomicBool,
    /// What stops a run already inside ONNX Runtime.
    onnx: Mutex<Option<Arc<ort::session::RunOptions>>>,
    /// The batch this request's run is part of, told when this one stops.
    group: Mutex<Option<Arc<Group>>>,
}

/// The members of a batch still wanting its result.
struct Group {
    members: AtomicUsize,
    control: Arc<RunControl>,
}

impl Group {
    fn leave(&self) {
        if self.members.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.control.stop();
        }
    }
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
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let onnx = self.onnx.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(options) = onnx.as_ref()
                && let Err(e) = options.terminate()
            {
                tracing::warn!(error = %e, "cannot terminate an ONNX Runtime run");
            }
        }
        let group = self
            .group
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(group) = group {
            group.leave();
        }
    }

    /// A control for one run on behalf of all of `members`: it stops once every member has
    /// been stopped (at once, if they all already were).
    pub fn group(members: &[&RunControl]) -> Arc<RunControl> {
        let control = Arc::new(RunControl::default());
        let group = Arc::new(Group {
            members: AtomicUsize::new(members.len()),
            control: Arc::clone(&control),
        });
        for member in members {
            let mut slot = member.group.lock().unwrap_or_else(PoisonError::into_inner);
            if member.is_stopped() {
                group.leave();
            } else {
                *slot = Some(Arc::clone(&group));
            }
        }
        control
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
