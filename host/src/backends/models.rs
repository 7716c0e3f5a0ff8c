//! Models by content: one session per distinct model file, shared by every name that refers to
//! it, and the bounded pool that runs them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use anyhow::{Context, bail};
use dashmap::DashMap;
use tokio::sync::Semaphore;

use super::onnx::{OnnxRuntime, OnnxSession};
use super::tensor::Tensor;
#[cfg(feature = "torch")]
use super::torch::TorchSession;
use super::{InferenceError, RunControl};
use crate::metrics::Histogram;

/// The sha256 of a model file's bytes: a model's identity everywhere in Corral.
pub type ModelDigest = crate::store::Digest;

/// Model file formats Corral can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    /// TorchScript (`torch.jit.save`), the `wasi:nn` encoding `pytorch`.
    Pytorch,
}

impl ModelFormat {
    /// The format a file name implies: `*.onnx`, or `*.pt` / `*.torchscript`.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match Self::from_extension(extension) {
            Some(format) => Ok(format),
            None => bail!(
                "{}: unknown model format; Corral serves ONNX (*.onnx) and TorchScript \
                 (*.pt, *.torchscript) models",
                path.display()
            ),
        }
    }

    /// The format a file extension implies.
    pub fn from_extension(extension: &str) -> Option<Self> {
        let extension = extension.to_ascii_lowercase();
        match extension.as_str() {
            "onnx" => Some(Self::Onnx),
            "pt" | "torchscript" => Some(Self::Pytorch),
            _ => None,
        }
    }

    /// The format named by a `format` field (`onnx`, `pytorch` or `torchscript`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "onnx" => Some(Self::Onnx),
            "pytorch" | "torchscript" => Some(Self::Pytorch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Pytorch => "pytorch",
        }
    }
}

/// A loaded model, shared by every deployment and request that uses its bytes.
#[derive(Debug)]
pub enum Session {
    Onnx(OnnxSession),
    #[cfg(feature = "torch")]
    Torch(TorchSession),
}

impl Session {
    /// Loads `bytes` as `format`. Blocking.
    pub fn load(bytes: &[u8], format: ModelFormat) -> Result<Self, InferenceError> {
        match format {
            ModelFormat::Onnx => {
                super::onnx::check_self_contained(bytes).map_err(|e| {
                    InferenceError::new(super::ErrorKind::InvalidEncoding, e.to_string())
                })?;
                let runtime =
                    OnnxRuntime::global().map_err(|e| InferenceError::runtime(format!("{e:#}")))?;
                Ok(Self::Onnx(OnnxSession::load(runtime, bytes)?))
            }
            #[cfg(feature = "torch")]
            ModelFormat::Pytorch => Ok(Self::Torch(TorchSession::load(bytes)?)),
            #[cfg(not(feature = "torch"))]
            ModelFormat::Pytorch => Err(InferenceError::new(
                super::ErrorKind::UnsupportedOperation,
                "this Corral was built without the TorchScript backend (cargo feature `torch`)",
            )),
        }
    }

    /// Runs the model on named inputs until it ends or `control` stops it. Blocking; many
    /// runs may share one session at once.
    pub fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        control: &RunControl,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        if control.is_stopped() {
            return Err(InferenceError::stopped());
        }
        match self {
            Self::Onnx(session) => session.run(inputs, control),
            #[cfg(feature = "torch")]
            Self::Torch(session) => session.run(inputs),
        }
    }
}

/// Loaded sessions by model digest. Sessions live while some deployment holds them.
#[derive(Debug, Default)]
pub struct SessionPool {
    /// The session and the size of its model file.
    sessions: DashMap<(ModelDigest, ModelFormat), (Weak<Session>, u64)>,
    /// One lock per model being loaded, so two deployments of the same new bytes load it once
    /// while loads of different models proceed side by side. Held only on the blocking pool,
    /// never across an await; lookups of live sessions do not take it.
    loading: DashMap<(ModelDigest, ModelFormat), Arc<std::sync::Mutex<()>>>,
}

impl SessionPool {
    /// Returns the live session for these bytes, loading it if there is none. Blocking.
    pub fn load(
        &self,
        bytes: &[u8],
        format: ModelFormat,
    ) -> Result<(ModelDigest, Arc<Session>), InferenceError> {
        let digest = ModelDigest::of(bytes);
        if let Some(session) = self.get(digest, format) {
            return Ok((digest, session));
        }
        let key = (digest, format);
        let lock = Arc::clone(&self.loading.entry(key).or_default());
        let loaded = {
            let _loading = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match self.get(digest, format) {
                Some(session) => Ok(session),
                None => Session::load(bytes, format).map(|session| {
                    let session = Arc::new(session);
                    self.sessions
                        .insert(key, (Arc::downgrade(&session), bytes.len() as u64));
                    self.sessions.retain(|_, (weak, _)| weak.strong_count() > 0);
                    session
                }),
            }
        };
        // The last loader of these bytes forgets their lock (the map holds one reference,
        // `lock` the other), so the map holds only loads in progress.
        drop(lock);
        self.loading
            .remove_if(&key, |_, lock| Arc::strong_count(lock) == 1);
        Ok((digest, loaded?))
    }

    /// Loads in progress (for tests: the per-model locks do not outlive their loads).
    pub fn loads_in_progress(&self) -> usize {
        self.loading.len()
    }

    /// The digests of every live session.
    pub fn live_digests(&self) -> std::collections::HashSet<ModelDigest> {
        self.sessions
            .iter()
            .filter(|entry| entry.value().0.strong_count() > 0)
            .map(|entry| entry.key().0)
            .collect()
    }

    /// The live session for a digest, if some deployment holds one.
    pub fn get(&self, digest: ModelDigest, format: ModelFormat) -> Option<Arc<Session>> {
        self.sessions
            .get(&(digest, format))
            .and_then(|entry| entry.0.upgrade())
    }

    /// Number of sessions alive now.
    pub fn live_sessions(&self) -> usize {
        self.sessions
            .iter()
            .filter(|entry| entry.value().0.strong_count() > 0)
            .count()
    }

    /// Bytes of the model files behind the live sessions.
    pub fn live_session_bytes(&self) -> u64 {
        self.sessions
            .iter()
            .filter(|entry| entry.value().0.strong_count() > 0)
            .map(|entry| entry.value().1)
            .sum()
    }
}

/// A model a guest can load by name.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub digest: ModelDigest,
    session: Arc<Session>,
}

impl Model {
    pub fn new(name: impl Into<String>, digest: ModelDigest, session: Arc<Session>) -> Self {
        Self {
            name: name.into(),
            digest,
            session,
        }
    }
}

/// The named models of one deployment.
#[derive(Debug, Default)]
pub struct ModelSet {
    by_name: HashMap<String, Arc<Model>>,
}

impl ModelSet {
    /// Loads `(name, path)` pairs, sharing sessions through `pool`. Errors name the model and
    /// the file.
    pub fn load_files(
        pool: &SessionPool,
        models: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        for (name, path) in models {
            if by_name.contains_key(name) {
                bail!("model name '{name}' is given twice");
            }
            let format = ModelFormat::from_path(path)?;
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read model '{name}' from {}", path.display()))?;
            let (digest, session) = pool
                .load(&bytes, format)
                .with_context(|| format!("cannot load model '{name}' from {}", path.display()))?;
            tracing::info!(model = %name, %digest, path = %path.display(), "model loaded");
            by_name.insert(
                name.clone(),
                Arc::new(Model {
                    name: name.clone(),
                    digest,
                    session,
                }),
            );
        }
        Ok(Self { by_name })
    }

    /// Adds a model; `false` (and nothing changed) when the name is taken.
    pub fn insert(&mut self, model: Model) -> bool {
        if self.by_name.contains_key(&model.name) {
            return false;
        }
        self.by_name.insert(model.name.clone(), Arc::new(model));
        true
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Runs inference off the async workers, at most `limit` runs at once; callers beyond that
/// wait their turn without holding a thread. The bound holds for runs actually executing: a
/// run whose request was abandoned is told to stop, and keeps its slot until it has.
///
/// One tenant holds at most half the slots (its [`TenantShare`]), so another tenant always
/// finds one, whatever the first one's models do.
#[derive(Debug)]
pub struct InferencePool {
    permits: Arc<Semaphore>,
    /// Slots one tenant may hold at once.
    share_limit: usize,
    /// Each tenant's share, alive while some deployment of the tenant holds it.
    shares: DashMap<String, Weak<Semaphore>>,
    runs: Arc<RunCounters>,
    /// Run times by model digest.
    compute_times: DashMap<ModelDigest, Arc<Histogram>>,
}

/// The part of the pool's slots one tenant may hold at once.
#[derive(Clone, Debug)]
pub struct TenantShare(Arc<Semaphore>);

#[derive(Debug, Default)]
struct RunCounters {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one executing run for as long as it lives.
struct Running<'a>(&'a RunCounters);

impl<'a> Running<'a> {
    fn start(counters: &'a RunCounters) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak.fetch_max(now, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stops a run when the future waiting for it is dropped before it ended.
struct StopOnDrop(Option<Arc<RunControl>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(control) = self.0.take() {
            control.stop();
        }
    }
}

impl InferencePool {
    /// The default bound on runs at once: twice the CPU count, at least 4.
    pub fn default_limit() -> usize {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        (2 * cpus).max(4)
    }

    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            share_limit: (limit / 2).max(1),
            shares: DashMap::new(),
            runs: Arc::default(),
            compute_times: DashMap::new(),
        }
    }

    /// The share of `tenant`: every deployment of one tenant gets the same one.
    pub fn share(&self, tenant: &str) -> TenantShare {
        let share = {
            let mut entry = self.shares.entry(tenant.to_owned()).or_default();
            if let Some(share) = entry.upgrade() {
                return TenantShare(share);
            }
            let share = Arc::new(Semaphore::new(self.share_limit));
            *entry = Arc::downgrade(&share);
            share
        };
        // Forget the shares of tenants with no deployment left.
        self.shares.retain(|_, share| share.strong_count() > 0);
        TenantShare(share)
    }

    /// A share of every slot, for a process that serves one service only.
    pub fn whole(&self) -> TenantShare {
        TenantShare(Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)))
    }

    /// Slots one tenant may hold at once: half the pool, at least one.
    pub fn share_limit(&self) -> usize {
        self.share_limit
    }

    /// Run-time histograms by model digest, of the models in `live`; the others' (models no
    /// deployment holds any more) are dropped.
    pub fn compute_times(
        &self,
        live: &std::collections::HashSet<ModelDigest>,
    ) -> Vec<(String, Arc<Histogram>)> {
        self.compute_times.retain(|digest, _| live.contains(digest));
        let mut all: Vec<(String, Arc<Histogram>)> = self
            .compute_times
            .iter()
            .map(|e| (e.key().to_string(), Arc::clone(e.value())))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The most runs that have been executing at the same moment since start.
    pub fn peak_concurrent_runs(&self) -> usize {
        self.runs.peak.load(Ordering::Relaxed)
    }

    /// Runs executing now (including stopped runs that have not yet returned).
    pub fn runs_in_flight(&self) -> usize {
        self.runs.in_flight.load(Ordering::Relaxed)
    }

    /// Runs `model` on `inputs` on the blocking pool, within `share`. `keep_alive` lives until
    /// the run ends, even when the caller is dropped first (a request's slot stays taken while
    /// its abandoned run still uses the CPU). Dropping the returned future before the run
    /// ends (the request's deadline passed, its client left) stops the run.
    pub async fn run(
        &self,
        share: &TenantShare,
        model: Arc<Model>,
        inputs: Vec<(String, Tensor)>,
        keep_alive: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        let closed = |_| InferenceError::runtime("the inference pool is shutting down");
        let share = Arc::clone(&share.0).acquire_owned().await.map_err(closed)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let runs = Arc::clone(&self.runs);
        let times = Arc::clone(&self.compute_times.entry(model.digest).or_default());
        let control = Arc::new(RunControl::default());
        let mut stop = StopOnDrop(Some(Arc::clone(&control)));
        let result = tokio::task::spawn_blocking(move || {
            let _slots = (share, permit);
            let _keep_alive = keep_alive;
            let _running = Running::start(&runs);
            let started = std::time::Instant::now();
            let result = model.session.run(inputs, &control);
            let elapsed = started.elapsed();
            times.observe(elapsed);
            tracing::debug!(model = %model.name, run_us = elapsed.as_micros() as u64, "inference run");
            result
        })
        .await;
        stop.0 = None; // The run has ended: nothing to stop.
        result.map_err(|e| InferenceError::runtime(format!("inference task failed: {e}")))?
    }
}
