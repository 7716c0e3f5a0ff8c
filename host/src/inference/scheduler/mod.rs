//! The scheduler: every `compute` of every tenant is a job in its model's queue, and a fixed
//! set of run threads (`[inference] runs`) takes them.
//!
//! - **Fair shares.** When a thread is free, the next run goes to the tenant with the least
//!   virtual time among those with jobs queued (weighted fair queuing on compute time): each
//!   run charges its tenants their part of its time divided by their `compute_weight`,
//!   estimated when it starts and corrected when it ends. A tenant that was idle starts at the
//!   current virtual time, so idling banks no credit; a tenant that flooded keeps its debt.
//! - **Batching.** The chosen job's model takes with it every other queued job of that model
//!   (any tenant) that agrees on all but the batch axis, up to the batch cap: the smallest
//!   `max_batch_size` among them, what the model's measured run times allow (no batch size
//!   slower per row than a smaller one), and the rows that run within [`BATCH_RUN`]. With
//!   `max_delay_us = 0` nothing waits for company: a batch is what queued while the threads
//!   were busy. A batched run that fails is retried one job at a time, so an error is only
//!   ever its own request's.
//! - **The last thread stays quick.** Runs are not preempted, so a tenant holding every thread
//!   with long runs would make any other tenant's next job wait for one of them to end. While
//!   another tenant has a deployment with models ([`Scheduler::register`]), a tenant that
//!   already has a run executing may take the last free thread only for a batch its model's
//!   measured run times say ends within [`LAST_THREAD_RUN`] (a model not yet measured, or
//!   slower than that per row, leaves it free). A tenant with nothing running may always
//!   take it; alone on the server, a tenant may use every thread for anything.
//! - **Bounds.** A tenant's queued jobs are bounded (`limits.nn_queued_runs`); a job whose
//!   request ended (deadline, client gone) leaves the queue at once, or stops its run.

mod queues;
mod run;

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::batch;
use super::stats::ModelStats;
use crate::backends::models::ModelKey;
use crate::backends::tensor::Tensor;
use crate::backends::{InferenceError, LoadedModel, RunControl};
use queues::{Job, ModelQueue, Shared, State};

type Outputs = Result<Vec<(String, Tensor)>, InferenceError>;

/// The longest batch a tenant with runs executing may start on the last free thread.
pub const LAST_THREAD_RUN: Duration = Duration::from_millis(30);

/// The longest batch the scheduler forms (by the model's measured time per row; a single row
/// may take longer): on CPUs a larger batch of a slow model gains little per row and holds
/// every request in it, and its thread, for the whole run.
pub const BATCH_RUN: Duration = Duration::from_millis(50);

/// Who a job is for and how it may be scheduled: from its tenant's limits and its
/// deployment's batching settings.
#[derive(Clone)]
pub struct Submission {
    pub tenant: Arc<str>,
    /// `limits.compute_weight`.
    pub weight: u32,
    /// `limits.nn_queued_runs`.
    pub queue_bound: u32,
    pub max_batch_size: u32,
    pub max_delay: Duration,
    /// The batch axis the deployment declares for a model whose format declares none.
    pub batch_axis: Option<usize>,
    /// Lives until the job's run has ended, even when its request was dropped first.
    pub keep_alive: Option<Arc<dyn Any + Send + Sync>>,
}

/// Why a job was not run.
#[derive(Debug)]
pub enum RunError {
    /// The tenant already has `nn_queued_runs` jobs waiting.
    QueueFull,
    /// The run failed, or was stopped; the guest gets this.
    Failed(InferenceError),
}

/// The run threads and their queues. Dropping it stops the threads once their runs end;
/// jobs still queued fail.
pub struct Scheduler {
    shared: Arc<Shared>,
    runs: usize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

/// A deployment's registration with the scheduler (see [`Scheduler::register`]).
pub struct Registration {
    tenant: Arc<str>,
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.state();
        if let Some(count) = state.registered.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                state.registered.remove(&self.tenant);
            }
        }
        drop(state);
        // A tenant alone now may take every thread.
        shared.wake.notify_all();
    }
}

/// A queued or running job, as its request waits for it. Dropping it before the result came
/// (the request ended) takes the job off its queue, or stops its run.
pub struct Ticket {
    id: u64,
    key: ModelKey,
    control: Arc<RunControl>,
    reply: Option<oneshot::Receiver<Outputs>>,
    shared: Arc<Shared>,
}

impl Ticket {
    pub async fn wait(mut self) -> Outputs {
        let reply = self.reply.as_mut().expect("a ticket is waited on once");
        let result = reply.await;
        self.reply = None;
        result.unwrap_or_else(|_| Err(InferenceError::runtime("the scheduler is shutting down")))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.reply.is_none() {
            return;
        }
        let mut state = self.shared.state();
        if let Some(job) = state.jobs.remove(&self.id) {
            if let Some(tenant) = state.tenants.get_mut(&job.tenant) {
                tenant.queued -= 1;
            }
            if let Some(queue) = state.models.get_mut(&self.key) {
                queue.pending.retain(|id| *id != self.id);
            }
            state.tidy(&self.key);
            drop(state);
            tracing::debug!("a queued inference job was dropped: its request ended");
        } else {
            drop(state);
            self.control.stop();
        }
    }
}

impl Scheduler {
    /// Starts `runs` run threads for `device`, named for it: `corral-run-0` on the CPU,
    /// `cuda0-run-0` on a GPU (a thread's name holds 15 bytes).
    pub fn new(runs: usize, device: &str) -> Self {
        let runs = runs.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                runs,
                ..State::default()
            }),
            wake: Condvar::new(),
            stats: DashMap::new(),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let prefix = match device {
            "cpu" => "corral".to_owned(),
            gpu => gpu.replace(':', ""),
        };
        for n in 0..runs {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("{prefix}-run-{n}"))
                .spawn(move || run::work(&shared))
                .expect("cannot start an inference thread");
        }
        Self { shared, runs }
    }

    pub fn runs(&self) -> usize {
        self.runs
    }

    /// Queues a job of `model` for `submission`'s tenant. Refused when the tenant's queue is
    /// full.
    pub fn submit(
        &self,
        key: ModelKey,
        model: Arc<dyn LoadedModel>,
        submission: Submission,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Ticket, RunError> {
        let batch = if submission.max_batch_size > 1 {
            batch::batch_key(model.signature(), &inputs, submission.batch_axis)
        } else {
            None
        };
        let control = Arc::new(RunControl::default());
        let (reply, receiver) = oneshot::channel();
        let mut state = self.shared.state();
        if state.closed {
            return Err(RunError::Failed(InferenceError::runtime(
                "the scheduler is shutting down",
            )));
        }
        let vclock = state.vclock;
        let tenant = state
            .tenants
            .entry(Arc::clone(&submission.tenant))
            .or_default();
        if tenant.queued >= submission.queue_bound {
            return Err(RunError::QueueFull);
        }
        if tenant.queued == 0 {
            tenant.vtime = tenant.vtime.max(vclock);
        }
        tenant.queued += 1;
        let id = state.next_id;
        state.next_id += 1;
        if let Some(tenant) = state.tenants.get_mut(&submission.tenant) {
            tenant.pending.push_back(id);
        }
        let stats = Arc::clone(&self.shared.stats.entry(key).or_default());
        state
            .models
            .entry(key)
            .or_insert_with(|| ModelQueue {
                model,
                pending: VecDeque::new(),
                running: 0,
                stats,
                unbatchable: false,
            })
            .pending
            .push_back(id);
        state.jobs.insert(
            id,
            Job {
                key,
                tenant: submission.tenant,
                weight: f64::from(submission.weight.max(1)),
                inputs,
                batch,
                max_batch: submission.max_batch_size.max(1),
                max_delay: submission.max_delay,
                enqueued: Instant::now(),
                control: Arc::clone(&control),
                reply,
                _keep_alive: submission.keep_alive,
            },
        );
        drop(state);
        self.shared.wake.notify_one();
        Ok(Ticket {
            id,
            key,
            control,
            reply: Some(receiver),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Registers a deployment of `tenant` that has models, for as long as the registration
    /// lives: while another tenant is registered, `tenant` may not hold every run thread.
    pub fn register(&self, tenant: &str) -> Registration {
        let tenant: Arc<str> = Arc::from(tenant);
        *self
            .shared
            .state()
            .registered
            .entry(Arc::clone(&tenant))
            .or_default() += 1;
        Registration {
            tenant,
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Jobs queued now, by tenant.
    pub fn queued(&self) -> Vec<(String, u32)> {
        let state = self.shared.state();
        let mut all: Vec<(String, u32)> = state
            .tenants
            .iter()
            .filter(|(_, t)| t.queued > 0)
            .map(|(name, t)| (name.to_string(), t.queued))
            .collect();
        all.sort_unstable();
        all
    }

    /// Seconds of runs each tenant has had (its share of each batch), by tenant.
    pub fn compute_seconds(&self) -> Vec<(String, f64)> {
        let state = self.shared.state();
        let mut all: Vec<(String, f64)> = state
            .compute_seconds
            .iter()
            .map(|(name, s)| (name.to_string(), *s))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets a deleted tenant's compute time.
    pub fn forget_tenant(&self, tenant: &str) {
        self.shared.state().compute_seconds.remove(tenant);
    }

    /// Measurements of the models in `live`; the others' are dropped.
    pub fn model_stats(
        &self,
        live: &std::collections::HashSet<ModelKey>,
    ) -> Vec<(ModelKey, Arc<ModelStats>)> {
        self.shared.stats.retain(|key, _| live.contains(key));
        let mut all: Vec<(ModelKey, Arc<ModelStats>)> = self
            .shared
            .stats
            .iter()
            .map(|e| (*e.key(), Arc::clone(e.value())))
            .collect();
        all.sort_unstable_by_key(|(key, _)| (key.digest.to_string(), key.format.name()));
        all
    }

    /// Runs executing now (stopped runs count until they have ended).
    pub fn runs_in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The most runs that have executed at the same moment since start.
    pub fn peak_concurrent_runs(&self) -> usize {
        self.shared.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.closed = true;
        // Queued jobs fail now (their senders drop); running ones finish.
        state.jobs.clear();
        state.models.retain(|_, q| q.running > 0);
        drop(state);
        self.shared.wake.notify_all();
    }
}
