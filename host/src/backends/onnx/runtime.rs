//! Finding and starting ONNX Runtime once per process.
//!
//! The native library is not linked at build time: it comes from the PyPI `onnxruntime` wheel,
//! which `cargo xtask setup` unpacks into `.corral/onnxruntime/` in the repository, or from
//! wherever `ORT_DYLIB_PATH` points.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

use crate::config::OnnxSettings;

/// The file `cargo xtask setup` installs, relative to the repository root.
pub const PROJECT_LIBRARY: &str = ".corral/onnxruntime/libonnxruntime.so";

/// The process-wide ONNX Runtime: its environment and the CPU memory description inputs use.
#[derive(Debug)]
pub struct OnnxRuntime {
    environment: Environment,
    pub(super) memory: MemoryInfo<'static>,
}

static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();
static SETTINGS: OnceLock<OnnxSettings> = OnceLock::new();

impl OnnxRuntime {
    /// Sets how sessions are built (threads, spinning). Call once, before the first session;
    /// later calls are ignored (the process keeps the settings it started with).
    pub fn configure(settings: OnnxSettings) {
        if SETTINGS.set(settings).is_err() {
            tracing::debug!("ONNX Runtime settings were already set");
        }
    }

    /// Loads the library and creates the environment on first use; later calls return the same
    /// runtime (ONNX Runtime can be loaded only once per process).
    pub fn global() -> anyhow::Result<&'static OnnxRuntime> {
        RUNTIME
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn start() -> anyhow::Result<Self> {
        let library = find_library()?;
        let environment = ort::init_from(&library)
            .with_context(|| format!("cannot load ONNX Runtime from {}", library.display()))?
            .with_name("corral")
            .with_telemetry(false)
            .build()
            .with_context(|| format!("cannot start ONNX Runtime from {}", library.display()))?;
        let memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .context("cannot describe CPU memory to ONNX Runtime")?;
        let settings = SETTINGS.get_or_init(OnnxSettings::default);
        let run_memory = match settings.run_memory_bytes {
            0 => crate::backends::memory_available() / 2,
            bytes => bytes,
        };
        super::ffi::register_run_arena(
            &environment,
            usize::try_from(run_memory).unwrap_or(usize::MAX),
        )
        .context("cannot create ONNX Runtime's run memory arena")?;
        tracing::info!(library = %library.display(), run_memory, "ONNX Runtime loaded");
        Ok(Self {
            environment,
            memory,
        })
    }

    /// A session for model bytes, as Corral serves them. The model is parsed as ONNX only
    /// (never as ONNX Runtime's own format, which the upload check does not read), and any
    /// external data it still names would be looked up under [`EXTERNAL_DATA_FOLDER`], where
    /// nothing can exist: the upload check refuses such models, and this makes sure that a
    /// model that slipped past it reads no file of the server's.
    pub(super) fn session_from_memory(&self, bytes: &[u8]) -> ort::Result<Session> {
        self.session_in(bytes, Path::new(EXTERNAL_DATA_FOLDER))
    }

    /// [`OnnxRuntime::session_from_memory`] with external data resolved under `folder`: only
    /// tests use another folder, to show what the defence stops.
    pub(super) fn session_in(&self, bytes: &[u8], folder: &Path) -> ort::Result<Session> {
        let settings = SETTINGS.get_or_init(OnnxSettings::default);
        let mut builder = Session::builder(&self.environment)?
            .with_config_entry("session.load_model_format", "ONNX")?
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder.to_string_lossy(),
            )?
            .with_env_allocators()?
            .with_intra_op_spinning(settings.intra_op_spinning)?;
        if settings.intra_op_threads > 0 {
            builder = builder.with_intra_threads(settings.intra_op_threads)?;
        }
        if settings.inter_op_threads > 0 {
            builder = builder.with_inter_threads(settings.inter_op_threads)?;
        }
        builder.commit_from_memory(bytes)
    }
}

/// Run options that hand the memory a run freed back to the system when it ends (the shared
/// arena otherwise keeps its largest run's memory for good).
pub(super) fn run_options() -> ort::Result<ort::session::RunOptions> {
    let mut options = ort::session::RunOptions::new()?;
    options.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
    Ok(options)
}

/// Where ONNX Runtime looks for a model's external data: a path under `/dev/null`, a character
/// device, can never name a file, whatever the working directory holds.
pub const EXTERNAL_DATA_FOLDER: &str = "/dev/null";

/// Finds `libonnxruntime.so`: `ORT_DYLIB_PATH` if set, else `.corral/onnxruntime/` in the
/// current directory, the executable's directory, or any directory above either.
pub fn find_library() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "ORT_DYLIB_PATH is set to {}, but there is no file there; point it at libonnxruntime.so \
                 (from the PyPI onnxruntime wheel: onnxruntime/capi/libonnxruntime.so.*) or unset it",
                path.display()
            );
        }
        return Ok(path);
    }
    let mut roots = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        roots.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        roots.push(dir);
    }
    let candidates: Vec<PathBuf> = roots
        .iter()
        .flat_map(|root| root.ancestors().map(|dir| dir.join(PROJECT_LIBRARY)))
        .collect();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "ONNX Runtime library not found. Run `cargo xtask setup` in the Corral repository (it installs \
         {PROJECT_LIBRARY} from the PyPI onnxruntime wheel), or set ORT_DYLIB_PATH to a libonnxruntime.so. \
         Looked for {PROJECT_LIBRARY} in and above: {}",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
