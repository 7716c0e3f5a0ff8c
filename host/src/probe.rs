//! In-process measurements for `cargo xtask bench` (its `bench_probe` example): the parts of a
//! request that no HTTP load generator can see, measured with the code `corral serve` runs.
//!
//! - [`NativeModel`]: ONNX Runtime (or libtorch) on its own, through Corral's session wrapper,
//!   without the sandbox, the scheduler or HTTP: the ceiling the served numbers are compared
//!   with.
//! - [`Instantiation`]: the per-request work before a guest's handler runs (a store with the
//!   tenant's limits, then an instance from the pooling allocator).
//! - [`shared_sessions`] and [`separate_sessions`]: what one model costs in memory loaded once
//!   for many tenants, or once per tenant.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backends::models::{ModelFile, ModelFormat, ModelKey};
use crate::backends::tensor::{ElementType, Tensor, TensorBytes};
use crate::backends::{LoadedModel, Placement, RunControl, backend};
use crate::config::{Config, EngineSettings};
use crate::engine::log::GuestOutput;
use crate::engine::{RequestSandbox, Service, compile, new_engine};
use crate::inference::{Inference, ModelCache, Room};
use crate::limits::{Limits, Outcome};
use crate::metrics::TenantCounters;
use crate::nn::NnCtx;
use crate::store::Digest;

/// One model file loaded on its own, outside the model cache: one session, on the CPU or a GPU.
pub struct NativeModel {
    model: Arc<dyn LoadedModel>,
}

impl NativeModel {
    /// Loads the model at `path` (its format from the extension), each run using `threads`
    /// intra-op threads (`0`: ONNX Runtime's default, one per core). The thread count is the
    /// process's: the first model loaded sets it.
    pub fn load(path: &Path, threads: usize) -> anyhow::Result<Self> {
        Self::load_on(path, threads, "cpu")
    }

    /// [`NativeModel::load`] onto `device` (`cpu`, `cuda:N`), as `corral serve` places a model
    /// there (a GPU's session arena capped at 90% of the card, as its default budget).
    pub fn load_on(path: &Path, threads: usize, device: &str) -> anyhow::Result<Self> {
        use crate::backends::onnx::{CudaArena, OnnxRuntime};
        let placement =
            Placement::from(crate::config::DeviceName::parse(device).map_err(anyhow::Error::msg)?);
        let gpus = match placement {
            Placement::Cuda(ordinal) => {
                let driver = crate::backends::cuda::driver().map_err(anyhow::Error::msg)?;
                let gpu = driver.gpu(ordinal).map_err(anyhow::Error::msg)?;
                OnnxRuntime::check_cuda()?;
                vec![CudaArena {
                    ordinal,
                    limit_bytes: gpu.memory_bytes / 10 * 9,
                }]
            }
            Placement::Cpu => Vec::new(),
        };
        OnnxRuntime::configure(
            crate::config::OnnxSettings {
                intra_op_threads: threads,
                ..Default::default()
            },
            gpus,
        );
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let model = backend(ModelFormat::from_path(path)?)
            .and_then(|b| b.load(&bytes, placement))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self { model })
    }

    /// Runs the model once on one `f32` input named `input`, of `shape`, whose little-endian
    /// bytes are `data` (copied into the tensor, as a request's body is). The outputs are
    /// dropped.
    pub fn run_f32(&self, input: &str, shape: &[u32], data: &[u8]) -> anyhow::Result<()> {
        let tensor = Tensor {
            shape: shape.to_vec(),
            ty: ElementType::F32,
            bytes: TensorBytes::Host(data.to_vec()),
        };
        self.model
            .run(vec![(input.to_owned(), tensor)], &RunControl::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// A component ready to be instantiated per request as `corral serve` does: compiled,
/// linked to `wasi:http` and `wasi:nn` over its models, pre-instantiated, with default limits.
pub struct Instantiation {
    service: Service,
    sandbox: RequestSandbox,
}

impl Instantiation {
    /// Compiles the component at `component` and loads `(name, path)` models for it.
    pub fn new(component: &Path, models: &[(String, PathBuf)]) -> anyhow::Result<Self> {
        let engine = new_engine(&EngineSettings::default())?;
        let compiled = compile(&engine, component)?;
        let inference = Arc::new(Inference::new(crate::server::inference_options(
            &Config::default(),
        )?));
        let models = crate::dev::load_files(&inference, models)?;
        let nn = NnCtx::new(Arc::new(models), inference, "probe");
        let service = Service::new(&engine, &compiled, nn)?;
        let sandbox = RequestSandbox {
            limits: Arc::new(Limits::default()),
            stdout: GuestOutput::Discard,
            stderr: GuestOutput::Discard,
            outgoing_hosts: Arc::from(Vec::new()),
            counters: Arc::new(TenantCounters::default()),
        };
        Ok(Self { service, sandbox })
    }

    /// Creates one request's store and instance, then drops them (returning the slot to the
    /// pool, as the end of a request does). Returns how long the store and the instance took.
    pub async fn once(&self) -> anyhow::Result<(Duration, Duration)> {
        let t0 = Instant::now();
        let outcome = Arc::new(Outcome::default());
        let mut store = self
            .service
            .new_store(&self.sandbox, &outcome, "probe", None);
        let t1 = Instant::now();
        self.service.pre().instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        drop(store);
        Ok((t1 - t0, t2 - t1))
    }
}

/// Loaded copies of a model, held until this is dropped.
pub struct Sessions {
    _held: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Asks one model cache for the model at `path` `count` times, as `count` tenants deploying
/// the same file do: one session, shared.
pub fn shared_sessions(path: &Path, count: usize) -> anyhow::Result<Sessions> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let source = ModelFile {
        path: path.to_path_buf(),
        digest: Digest::of(&bytes),
    };
    let key = ModelKey {
        digest: source.digest,
        format: ModelFormat::from_path(path)?,
    };
    let cache = ModelCache::new(u64::MAX, Placement::Cpu);
    let mut held: Vec<Arc<dyn std::any::Any + Send + Sync>> = Vec::with_capacity(count);
    for _ in 0..count {
        let resident = cache
            .load(key, &source, Room::MakeRoom, "")
            .map_err(|e| anyhow::anyhow!("{}", e.to_inference()))?;
        held.push(Arc::new(resident));
    }
    Ok(Sessions { _held: held })
}

/// Loads the model at `path` `count` times, each its own session: what a server without
/// session sharing holds for `count` tenants.
pub fn separate_sessions(path: &Path, count: usize) -> anyhow::Result<Sessions> {
    let held = (0..count)
        .map(|_| {
            let model = NativeModel::load(path, 0)?.model;
            Ok(Arc::new(model) as Arc<dyn std::any::Any + Send + Sync>)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Sessions { _held: held })
}
