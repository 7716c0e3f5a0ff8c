//! The shared inference layer: the model cache (loaded models under a memory budget) and the
//! scheduler (per-model queues, batching across tenants, fair shares of the run threads).
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

pub use cache::{LoadError, ModelCache, Room};
pub use deployed::{Model, ModelSet};
pub use scheduler::{RunError, Scheduler, Submission};

use crate::backends::tensor::Tensor;
use crate::backends::{InferenceError, LoadedModel, Placement};

/// How the inference layer runs, resolved from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceOptions {
    /// Run threads: batches that may execute at once.
    pub runs: usize,
    /// Intra-op threads of one run.
    pub threads: usize,
    /// Most rows in one batch (1: no batching).
    pub max_batch_size: u32,
    /// Longest a job waits for company before its batch runs.
    pub max_delay: Duration,
    /// The models' memory budget, in bytes.
    pub memory_bytes: u64,
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
    scheduler: Scheduler,
    options: InferenceOptions,
}

impl Inference {
    pub fn new(options: InferenceOptions) -> Self {
        Self {
            cache: ModelCache::new(options.memory_bytes, Placement::Cpu),
            scheduler: Scheduler::new(options.runs),
            options,
        }
    }

    pub fn options(&self) -> &InferenceOptions {
        &self.options
    }

    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// `model` loaded: from the cache, or loaded now (off the async workers) for `tenant`,
    /// unloading idle models if the budget needs it (its own before other tenants').
    pub async fn loaded(
        self: &Arc<Self>,
        model: &Arc<Model>,
        tenant: &Arc<str>,
    ) -> Result<Arc<dyn LoadedModel>, InferenceError> {
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

    /// Runs `inputs` on `model` as `submission`'s tenant, batched with other queued jobs of
    /// the model where they agree. Dropping the future before it ends (the request's deadline
    /// passed, its client left) takes the job off its queue or stops its run.
    pub async fn run(
        &self,
        model: &Model,
        loaded: Arc<dyn LoadedModel>,
        submission: Submission,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, RunError> {
        let ticket = self
            .scheduler
            .submit(model.key, loaded, submission, inputs)?;
        ticket.wait().await.map_err(RunError::Failed)
    }

    /// The default batching of a submission.
    pub fn batching(&self) -> (u32, Duration) {
        (self.options.max_batch_size, self.options.max_delay)
    }

    pub fn peak_concurrent_runs(&self) -> usize {
        self.scheduler.peak_concurrent_runs()
    }

    pub fn runs_in_flight(&self) -> usize {
        self.scheduler.runs_in_flight()
    }
}

#[cfg(test)]
mod tests {
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
