//! The shared inference layer: the model cache (loaded models placed on devices, each under
//! its memory budget) and one scheduler per device (per-model queues, batching across tenants,
//! fair shares of that device's run threads).
//!
//! `wasi:nn` `compute` comes here with a deployment's [`Model`] (a reference to model bytes):
//! [`Inference::loaded`] finds it in the cache or loads it, [`Inference::run`] queues the
//! job and waits for its outputs. Everything below works on the backend seam
//! ([`crate::backends::LoadedModel`]), never on a particular backend.

mod batch;
pub mod cache;
mod deployed;
pub mod scheduler;
mod stats;

use std::sync::Arc;
use std::time::Duration;

pub use cache::{DeviceBudget, LoadError, ModelCache, Placed, Room};
pub use deployed::{Model, ModelSet};
pub use scheduler::{RunError, Scheduler, Submission};

use crate::backends::tensor::Tensor;
use crate::backends::{InferenceError, Placement};

/// A device models are placed on, with its budget and run threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The name metrics and status show (`cpu`, `cuda:0`).
    pub name: Arc<str>,
    pub placement: Placement,
    /// Whether models go here before the CPU: a GPU (tests also mark CPU stand-ins).
    pub accelerator: bool,
    /// The models' memory budget on it, in bytes.
    pub memory_bytes: u64,
    /// Run threads: batches that may execute on it at once.
    pub runs: usize,
}

impl Device {
    /// The CPU, with `runs` run threads and `memory_bytes` for models.
    pub fn cpu(runs: usize, memory_bytes: u64) -> Self {
        Self {
            name: Arc::from("cpu"),
            placement: Placement::Cpu,
            accelerator: false,
            memory_bytes,
            runs,
        }
    }
}

/// How the inference layer runs, resolved from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceOptions {
    /// Intra-op threads of one CPU run.
    pub threads: usize,
    /// Most rows in one batch (1: no batching).
    pub max_batch_size: u32,
    /// Longest a job waits for company before its batch runs.
    pub max_delay: Duration,
    /// Where models go, in the configuration's order (at least one).
    pub devices: Vec<Device>,
}

impl InferenceOptions {
    /// Runs × threads ≤ cores: one intra-op thread per run and one run per core. Runs, not
    /// threads, are what the scheduler shares fairly between tenants, and batching (not
    /// intra-op parallelism) is what makes one run do more work; see `docs/config.md`.
    pub fn split(cores: usize, runs: usize, threads: usize) -> (usize, usize) {
        let cores = cores.max(1);
        let threads = if threads == 0 { 1 } else { threads };
        let runs = if runs == 0 {
            (cores / threads).max(1)
        } else {
            runs
        };
        (runs, threads)
    }
}

/// The process's inference layer.
#[derive(Debug)]
pub struct Inference {
    cache: ModelCache,
    /// One scheduler per device, in the cache's device order.
    schedulers: Vec<Scheduler>,
    options: InferenceOptions,
}

/// A deployment's registration with every device's scheduler (see [`Scheduler::register`]).
#[derive(Debug)]
pub struct Registrations(#[allow(dead_code)] Vec<scheduler::Registration>);

impl Inference {
    pub fn new(options: InferenceOptions) -> Self {
        assert!(!options.devices.is_empty(), "inference needs a device");
        let cache = ModelCache::with_devices(
            options
                .devices
                .iter()
                .map(|d| DeviceBudget {
                    name: Arc::clone(&d.name),
                    placement: d.placement,
                    accelerator: d.accelerator,
                    budget: d.memory_bytes,
                })
                .collect(),
        );
        let schedulers = options
            .devices
            .iter()
            .map(|d| Scheduler::new(d.runs, &d.name))
            .collect();
        Self {
            cache,
            schedulers,
            options,
        }
    }

    pub fn options(&self) -> &InferenceOptions {
        &self.options
    }

    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Each device and its scheduler, in the configuration's order.
    pub fn schedulers(&self) -> impl Iterator<Item = (&Device, &Scheduler)> {
        self.options.devices.iter().zip(&self.schedulers)
    }

    /// Registers a deployment of `tenant` that has models with every device's scheduler, for
    /// as long as the registration lives.
    pub fn register(&self, tenant: &str) -> Registrations {
        Registrations(self.schedulers.iter().map(|s| s.register(tenant)).collect())
    }

    /// Jobs queued now on every device, by tenant.
    pub fn queued(&self) -> Vec<(String, u32)> {
        let mut all: std::collections::BTreeMap<String, u32> = Default::default();
        for scheduler in &self.schedulers {
            for (tenant, queued) in scheduler.queued() {
                *all.entry(tenant).or_default() += queued;
            }
        }
        all.into_iter().collect()
    }

    /// Seconds of runs each tenant has had, by tenant and device.
    pub fn compute_seconds(&self) -> Vec<(String, Arc<str>, f64)> {
        let mut all = Vec::new();
        for (device, scheduler) in self.schedulers() {
            let seconds = scheduler.compute_seconds().into_iter();
            all.extend(seconds.map(|(tenant, s)| (tenant, Arc::clone(&device.name), s)));
        }
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    /// Forgets a deleted tenant's compute time on every device.
    pub fn forget_tenant(&self, tenant: &str) {
        for scheduler in &self.schedulers {
            scheduler.forget_tenant(tenant);
        }
    }

    /// The schedulers' measurements of the models loaded on their devices.
    pub fn model_stats(&self) -> Vec<(crate::backends::models::ModelKey, Arc<stats::ModelStats>)> {
        let mut all = Vec::new();
        for (device, scheduler) in self.schedulers.iter().enumerate() {
            all.extend(scheduler.model_stats(&self.cache.loaded_keys_on(device)));
        }
        all.sort_unstable_by_key(|(key, _)| (key.digest.to_string(), key.format.name()));
        all
    }

    /// `model` loaded: from the cache, or loaded now (off the async workers) for `tenant`,
    /// unloading idle models if the budget needs it (its own before other tenants').
    pub async fn loaded(
        self: &Arc<Self>,
        model: &Arc<Model>,
        tenant: &Arc<str>,
    ) -> Result<Placed, InferenceError> {
        if let Some(loaded) = self.cache.get(&model.key) {
            return Ok(loaded);
        }
        let (inference, model, tenant) = (Arc::clone(self), Arc::clone(model), Arc::clone(tenant));
        tokio::task::spawn_blocking(move || {
            inference
                .cache
                .load(model.key, &*model.source, Room::MakeRoom, &tenant)
                .map_err(|e| e.to_inference())?
                .ok_or_else(|| InferenceError::runtime("the model could not be loaded"))
        })
        .await
        .map_err(|e| InferenceError::runtime(format!("model load task failed: {e}")))?
    }

    /// Runs `inputs` on `model` as `submission`'s tenant, on the device it is loaded on,
    /// batched with other queued jobs of the model where they agree. Dropping the future
    /// before it ends (the request's deadline passed, its client left) takes the job off its
    /// queue or stops its run.
    pub async fn run(
        &self,
        model: &Model,
        loaded: Placed,
        submission: Submission,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, RunError> {
        let ticket =
            self.schedulers[loaded.device].submit(model.key, loaded.model, submission, inputs)?;
        ticket.wait().await.map_err(RunError::Failed)
    }

    /// The default batching of a submission.
    pub fn batching(&self) -> (u32, Duration) {
        (self.options.max_batch_size, self.options.max_delay)
    }

    /// The most runs that have executed at the same moment on any one device since start.
    pub fn peak_concurrent_runs(&self) -> usize {
        let peaks = self.schedulers.iter().map(Scheduler::peak_concurrent_runs);
        peaks.max().unwrap_or(0)
    }

    /// Runs executing now, on every device together.
    pub fn runs_in_flight(&self) -> usize {
        self.schedulers.iter().map(Scheduler::runs_in_flight).sum()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod split_tests {
    use super::InferenceOptions;

    #[test]
    fn runs_times_threads_fit_the_cores() {
        assert_eq!(InferenceOptions::split(2, 0, 0), (2, 1));
        assert_eq!(InferenceOptions::split(16, 0, 4), (4, 4));
        assert_eq!(InferenceOptions::split(2, 0, 4), (1, 4));
        assert_eq!(
            InferenceOptions::split(8, 3, 0),
            (3, 1),
            "a set value is kept"
        );
    }
}
