//! Finding and starting ONNX Runtime once per process.
//!
//! The native library is not linked at build time: it comes from the PyPI `onnxruntime` wheel,
//! which `cargo xtask setup` unpacks into `.corral/onnxruntime/` in the repository, or from
//! wherever `ORT_DYLIB_PATH` points. When a GPU is among the devices, the library is the GPU
//! build (the `onnxruntime-gpu` wheel, which `cargo xtask setup --gpu` unpacks into
//! `.corral/onnxruntime-gpu/` with NVIDIA's CUDA 13 and cuDNN 9 libraries in its `nvidia/`),
//! and its CUDA execution provider is checked, with every library it needs, before the server
//! starts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

use crate::backends::Placement;
use crate::config::OnnxSettings;

/// The file `cargo xtask setup` installs, relative to the repository root.
pub const PROJECT_LIBRARY: &str = ".corral/onnxruntime/libonnxruntime.so";

/// The GPU build `cargo xtask setup --gpu` installs, relative to the repository root.
pub const PROJECT_GPU_LIBRARY: &str = ".corral/onnxruntime-gpu/libonnxruntime.so";

/// What the CUDA execution provider needs beside `libonnxruntime.so`.
const CUDA_PROVIDER: [&str; 2] = [
    "libonnxruntime_providers_shared.so",
    "libonnxruntime_providers_cuda.so",
];

/// Folders to find NVIDIA's CUDA and cuDNN libraries in, before the system's library path
/// (`:`-separated).
pub const CUDA_LIBRARY_PATH: &str = "CORRAL_CUDA_LIBRARY_PATH";

/// A GPU sessions may be placed on, and the most memory one session's arena may take there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaArena {
    pub ordinal: u32,
    pub limit_bytes: u64,
}

/// The process-wide ONNX Runtime: its environment and the CPU memory description inputs use.
#[derive(Debug)]
pub struct OnnxRuntime {
    environment: Environment,
    pub(super) memory: MemoryInfo<'static>,
}

static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();
static SETTINGS: OnceLock<OnnxSettings> = OnceLock::new();
static GPUS: OnceLock<Vec<CudaArena>> = OnceLock::new();

impl OnnxRuntime {
    /// Sets how sessions are built (threads, spinning) and the GPUs they may be placed on
    /// (none: the CPU build of the library is loaded). Call once, before the first session;
    /// later calls are ignored (the process keeps the settings it started with).
    pub fn configure(settings: OnnxSettings, gpus: Vec<CudaArena>) {
        // Each set on its own: settings fixed earlier (a session made first) must not keep
        // the GPU list from being set.
        let settings_kept = SETTINGS.set(settings).is_err();
        let gpus_kept = GPUS.set(gpus).is_err();
        if settings_kept || gpus_kept {
            tracing::debug!("ONNX Runtime settings were already set");
        }
    }

    /// Checks, before anything is loaded, that the library found for GPUs has the CUDA
    /// execution provider and that NVIDIA's libraries it needs load; an error names what is
    /// missing and how to install it.
    pub fn check_cuda() -> anyhow::Result<()> {
        let library = find_library_for(true)?;
        cuda_provider_beside(&library)?;
        preload_cuda_libraries(&library)
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
        let gpus = !GPUS.get_or_init(Vec::new).is_empty();
        let library = find_library_for(gpus)?;
        if gpus {
            cuda_provider_beside(&library)?;
            preload_cuda_libraries(&library)?;
        }
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
    ///
    /// On a GPU, the session runs on ONNX Runtime's CUDA execution provider (failing, rather
    /// than falling back to the CPU, if it cannot start): its memory arena is capped at the
    /// device's budget and grows by what is asked, and convolution algorithms are chosen by
    /// cuDNN's heuristics (`HEURISTIC`: no benchmarking of every algorithm on a shape's first
    /// run, which a tenant's many shapes and batch sizes would pay again and again).
    pub(super) fn session_from_memory(
        &self,
        bytes: &[u8],
        placement: Placement,
    ) -> ort::Result<Session> {
        self.session_in(bytes, Path::new(EXTERNAL_DATA_FOLDER), placement)
    }

    /// [`OnnxRuntime::session_from_memory`] with external data resolved under `folder`: only
    /// tests use another folder, to show what the defence stops.
    pub(super) fn session_in(
        &self,
        bytes: &[u8],
        folder: &Path,
        placement: Placement,
    ) -> ort::Result<Session> {
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
        if let Placement::Cuda(ordinal) = placement {
            let arena = GPUS
                .get()
                .and_then(|gpus| gpus.iter().find(|g| g.ordinal == ordinal))
                .ok_or_else(|| {
                    ort::Error::new(format!(
                        "cuda:{ordinal} is not among the devices ONNX Runtime was configured with"
                    ))
                })?;
            let cuda = ort::ep::CUDA::default()
                .with_device_id(i32::try_from(ordinal).unwrap_or(i32::MAX))
                .with_memory_limit(usize::try_from(arena.limit_bytes).unwrap_or(usize::MAX))
                .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested)
                .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([cuda])?;
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

/// Finds `libonnxruntime.so`: `ORT_DYLIB_PATH` if set, else [`PROJECT_LIBRARY`] (or, for
/// `gpu`, [`PROJECT_GPU_LIBRARY`]) in the current directory, the executable's directory, or any
/// directory above either.
pub fn find_library_for(gpu: bool) -> anyhow::Result<PathBuf> {
    let (project, wheel, setup) = if gpu {
        (
            PROJECT_GPU_LIBRARY,
            "onnxruntime-gpu",
            "cargo xtask setup --gpu",
        )
    } else {
        (PROJECT_LIBRARY, "onnxruntime", "cargo xtask setup")
    };
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
        .flat_map(|root| root.ancestors().map(|dir| dir.join(project)))
        .collect();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "ONNX Runtime library not found. Run `{setup}` in the Corral repository (it installs \
         {project} from the PyPI {wheel} wheel), or set ORT_DYLIB_PATH to a libonnxruntime.so. \
         Looked for {project} in and above: {}",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The CUDA execution provider's libraries beside `library`; an error saying that it is the
/// CPU build otherwise.
pub fn cuda_provider_beside(library: &Path) -> anyhow::Result<()> {
    let folder = library.parent().unwrap_or(Path::new("."));
    for needed in CUDA_PROVIDER {
        if !folder.join(needed).is_file() {
            bail!(
                "{} is ONNX Runtime without its CUDA execution provider ({needed} is not beside \
                 it: it is the CPU build). Run `cargo xtask setup --gpu` (it installs the PyPI \
                 onnxruntime-gpu wheel into {}), or point ORT_DYLIB_PATH at the GPU build's \
                 libonnxruntime.so",
                library.display(),
                Path::new(PROJECT_GPU_LIBRARY)
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display()
            );
        }
    }
    Ok(())
}

/// Loads NVIDIA's CUDA 13 and cuDNN 9 libraries that the CUDA execution provider links to,
/// dependencies first: from [`CUDA_LIBRARY_PATH`]'s folders, then the folders in `nvidia/`
/// beside `library` (where `cargo xtask setup --gpu` puts them), then the system's library
/// path. Loaded first,
/// they are the ones the provider finds. An error names the first that cannot load.
pub fn preload_cuda_libraries(library: &Path) -> anyhow::Result<()> {
    let mut folders: Vec<PathBuf> = std::env::var_os(CUDA_LIBRARY_PATH)
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    let nvidia = library.parent().unwrap_or(Path::new(".")).join("nvidia");
    let mut installed: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    installed.retain(|path| path.is_dir());
    installed.sort();
    folders.push(nvidia);
    folders.extend(installed);
    let needed = ort::ep::cuda::CUDA_DYLIBS
        .iter()
        .chain(ort::ep::cuda::CUDNN_DYLIBS);
    for name in needed {
        let found = folders.iter().map(|f| f.join(name)).find(|p| p.is_file());
        let loaded = match &found {
            Some(path) => ort::util::preload_dylib(path),
            None => ort::util::preload_dylib(*name),
        };
        loaded.map_err(|e| {
            let looked = folders
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            anyhow::anyhow!(
                "the CUDA execution provider needs {name}, which cannot be loaded ({}); looked \
                 in {looked} and the system's library path. `cargo xtask setup --gpu` installs \
                 NVIDIA's CUDA 13 and cuDNN 9 libraries there, or set {CUDA_LIBRARY_PATH} to \
                 the folders that hold them",
                crate::backends::cuda::loader_error(&e)
            )
        })?;
    }
    Ok(())
}
