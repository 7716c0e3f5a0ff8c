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

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::batch::{self, BatchKey};
use super::stats::ModelStats;
use crate::backends::models::ModelKey;
use crate::backends::tensor::Tensor;
use crate::backends::{Concurrency, InferenceError, LoadedModel, RunControl};

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

struct Job {
    key: ModelKey,
    tenant: Arc<str>,
    weight: f64,
    inputs: Vec<(String, Tensor)>,
    /// The job's batch key and rows, when it may join a batch.
    batch: Option<(BatchKey, u32)>,
    max_batch: u32,
    max_delay: Duration,
    enqueued: Instant,
    control: Arc<RunControl>,
    reply: oneshot::Sender<Outputs>,
    _keep_alive: Option<Arc<dyn Any + Send + Sync>>,
}

impl Job {
    fn rows(&self) -> u32 {
        self.batch.as_ref().map_or(1, |(_, rows)| *rows)
    }
}

#[derive(Default)]
struct TenantQueue {
    vtime: f64,
    /// Job ids in arrival order; ids already taken (by a batch or a cancellation) are skipped.
    pending: VecDeque<u64>,
    queued: u32,
    /// Runs started on this tenant's turn and not yet ended.
    running: usize,
}

struct ModelQueue {
    model: Arc<dyn LoadedModel>,
    pending: VecDeque<u64>,
    running: usize,
    stats: Arc<ModelStats>,
    /// A batch's outputs could not be split: the model does not keep its batch axis.
    unbatchable: bool,
}

#[derive(Default)]
struct State {
    next_id: u64,
    jobs: HashMap<u64, Job>,
    tenants: HashMap<Arc<str>, TenantQueue>,
    models: HashMap<ModelKey, ModelQueue>,
    /// The virtual time of the last run started.
    vclock: f64,
    /// Seconds of runs, by tenant (their share of each batch).
    compute_seconds: HashMap<Arc<str>, f64>,
    /// Tenants with a deployment that has models: registrations by tenant.
    registered: HashMap<Arc<str>, usize>,
    /// Run threads.
    runs: usize,
    /// Runs executing now.
    running: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stats: DashMap<ModelKey, Arc<ModelStats>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

/// A batch taken off the queues, to run on one thread.
struct Batch {
    key: ModelKey,
    /// The tenant whose turn it was.
    turn: Arc<str>,
    model: Arc<dyn LoadedModel>,
    stats: Arc<ModelStats>,
    jobs: Vec<Job>,
    /// What the run was charged when it started.
    estimate: Duration,
}

enum Pick {
    Run(Batch),
    /// Nothing to run now; something may be at this time (a batch's delay ends).
    Wait(Option<Instant>),
}

impl State {
    fn pick(&mut self, now: Instant) -> Pick {
        let mut order: Vec<(f64, u64, Arc<str>)> = Vec::new();
        for (name, tenant) in &mut self.tenants {
            while let Some(&id) = tenant.pending.front() {
                if self.jobs.contains_key(&id) {
                    break;
                }
                tenant.pending.pop_front();
            }
            if let Some(&head) = tenant.pending.front() {
                order.push((tenant.vtime, head, Arc::clone(name)));
            }
        }
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut wait_until: Option<Instant> = None;
        let last_thread = self.runs.saturating_sub(self.running) <= 1;
        for (_, head, tenant) in order {
            let key = self.jobs[&head].key;
            let queue = &self.models[&key];
            if queue.model.concurrency() == Concurrency::Exclusive && queue.running > 0 {
                continue;
            }
            // On the last free thread, a tenant already running (with others on the server)
            // gets only a batch that ends quickly.
            let others = self.registered.len() > usize::from(self.registered.contains_key(&tenant));
            let per_row = queue.stats.per_row();
            // Rows that fit in `limit` at the model's best measured time per row.
            let rows_within = |limit: Duration, per_row: Duration| {
                (limit.as_secs_f64() / per_row.as_secs_f64().max(1e-9))
                    .floor()
                    .clamp(1.0, f64::from(u32::MAX)) as u32
            };
            // A batch runs within BATCH_RUN (at least one row; one row until the model has a
            // measured run): a large batch of a slow model would hold its thread, and every
            // request in it, for the whole batch.
            let mut row_cap = per_row.map_or(1, |p| rows_within(BATCH_RUN, p));
            if last_thread && others && self.runs > 1 && self.tenants[&tenant].running > 0 {
                match per_row {
                    Some(per_row) if per_row <= LAST_THREAD_RUN => {
                        row_cap = row_cap.min(rows_within(LAST_THREAD_RUN, per_row));
                    }
                    _ => continue,
                }
            }
            let (ids, rows, cap, ready_at) = self.gather(queue, head, row_cap);
            if rows < cap && now < ready_at {
                wait_until = Some(wait_until.map_or(ready_at, |t| t.min(ready_at)));
                continue;
            }
            return Pick::Run(self.take(key, &ids, tenant));
        }
        Pick::Wait(wait_until)
    }

    /// The jobs that run with `head`: `head` first, then the model's other queued jobs in
    /// arrival order that batch with it, within the cap. Returns them, their rows, the cap, and
    /// when the batch stops waiting for company.
    ///
    /// When several threads are free, the model's compatible queue is shared among them
    /// instead of all going to the first: runs side by side of smaller batches, rather than one
    /// large batch while the other threads idle.
    fn gather(&self, queue: &ModelQueue, head: u64, row_cap: u32) -> (Vec<u64>, u32, u32, Instant) {
        let first = &self.jobs[&head];
        let mut ids = vec![head];
        let mut rows = first.rows();
        let mut delay = first.max_delay;
        let mut oldest = first.enqueued;
        let Some((key, _)) = first.batch.as_ref().filter(|_| !queue.unbatchable) else {
            return (ids, rows, rows, oldest);
        };
        let compatible = |id: &u64| {
            self.jobs
                .get(id)
                .filter(|job| *id != head && job.max_batch > 1)
                .and_then(|job| job.batch.as_ref().filter(|(other, _)| other == key))
                .map(|(_, rows)| (*id, *rows))
        };
        let mut cap = first.max_batch.min(queue.stats.cap()).min(row_cap);
        let queued_rows: u32 = queue
            .pending
            .iter()
            .filter_map(compatible)
            .fold(rows, |sum, (_, r)| sum.saturating_add(r));
        let free = self.runs.saturating_sub(self.running).max(1) as u32;
        let share = cap.min(queued_rows.div_ceil(free).max(rows));
        for (id, job_rows) in queue.pending.iter().filter_map(compatible) {
            if rows >= share {
                break;
            }
            let job = &self.jobs[&id];
            let job_cap = cap.min(job.max_batch);
            if rows.saturating_add(job_rows) > job_cap.min(share) {
                continue;
            }
            cap = job_cap;
            rows += job_rows;
            delay = delay.min(job.max_delay);
            oldest = oldest.min(job.enqueued);
            ids.push(id);
        }
        (ids, rows, cap.max(rows), oldest + delay)
    }

    /// Takes `ids` off the queues as one batch and charges their tenants its estimated time.
    fn take(&mut self, key: ModelKey, ids: &[u64], turn: Arc<str>) -> Batch {
        let jobs: Vec<Job> = ids.iter().filter_map(|id| self.jobs.remove(id)).collect();
        let queue = self
            .models
            .get_mut(&key)
            .expect("a queued job's model has a queue");
        queue.pending.retain(|id| !ids.contains(id));
        queue.running += 1;
        self.running += 1;
        let rows: u32 = jobs.iter().map(Job::rows).sum();
        let estimate = queue.stats.estimate(rows);
        let (model, stats) = (Arc::clone(&queue.model), Arc::clone(&queue.stats));
        if let Some(tenant) = self.tenants.get_mut(&turn) {
            self.vclock = self.vclock.max(tenant.vtime);
            tenant.running += 1;
        }
        for job in &jobs {
            if let Some(tenant) = self.tenants.get_mut(&job.tenant) {
                tenant.queued -= 1;
            }
        }
        self.charge(&jobs, rows, estimate.as_secs_f64());
        Batch {
            key,
            turn,
            model,
            stats,
            jobs,
            estimate,
        }
    }

    /// Adds `seconds` of a run of `rows` rows to the virtual times of its jobs' tenants, each
    /// its rows' share over its weight.
    fn charge(&mut self, jobs: &[Job], rows: u32, seconds: f64) {
        for job in jobs {
            if let Some(tenant) = self.tenants.get_mut(&job.tenant) {
                tenant.vtime += seconds * f64::from(job.rows()) / f64::from(rows) / job.weight;
            }
        }
    }

    /// Forgets queues with nothing in them: a model's (so the cache may unload it) and a
    /// tenant's without a debt to remember.
    fn tidy(&mut self, key: &ModelKey) {
        if self
            .models
            .get(key)
            .is_some_and(|q| q.pending.is_empty() && q.running == 0)
        {
            self.models.remove(key);
        }
        let vclock = self.vclock;
        for tenant in self.tenants.values_mut() {
            if tenant.queued == 0 {
                tenant.pending.clear();
            }
        }
        self.tenants
            .retain(|_, t| t.queued > 0 || t.running > 0 || t.vtime > vclock);
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
    /// Starts `runs` run threads.
    pub fn new(runs: usize) -> Self {
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
        for n in 0..runs {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("corral-run-{n}"))
                .spawn(move || work(&shared))
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

/// One run thread: takes the next batch, runs it, repeats until the scheduler is dropped.
fn work(shared: &Shared) {
    loop {
        let batch = {
            let mut state = shared.state();
            loop {
                if state.closed {
                    return;
                }
                let now = Instant::now();
                match state.pick(now) {
                    Pick::Run(batch) => break batch,
                    Pick::Wait(Some(at)) => {
                        state = shared
                            .wake
                            .wait_timeout(state, at.saturating_duration_since(now))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    Pick::Wait(None) => {
                        state = shared
                            .wake
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
            }
        };
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak.fetch_max(now, Ordering::Relaxed);
        let (key, estimate, turn) = (batch.key, batch.estimate, Arc::clone(&batch.turn));
        let shares: Vec<(Arc<str>, u32, f64)> = batch
            .jobs
            .iter()
            .map(|j| (Arc::clone(&j.tenant), j.rows(), j.weight))
            .collect();
        let ran = execute(batch);
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut state = shared.state();
        if let Some(queue) = state.models.get_mut(&key) {
            queue.running -= 1;
            queue.unbatchable |= ran.unbatchable;
        }
        state.running -= 1;
        if let Some(tenant) = state.tenants.get_mut(&turn) {
            tenant.running -= 1;
        }
        // Correct the estimate the tenants were charged, and count their compute time.
        let rows: u32 = shares.iter().map(|s| s.1).sum();
        let actual = ran.elapsed.as_secs_f64();
        let correction = actual - estimate.as_secs_f64();
        for (tenant, job_rows, weight) in &shares {
            let share = f64::from(*job_rows) / f64::from(rows.max(1));
            if let Some(t) = state.tenants.get_mut(tenant) {
                t.vtime += correction * share / weight;
            }
            *state.compute_seconds.entry(Arc::clone(tenant)).or_default() += actual * share;
        }
        state.tidy(&key);
        drop(state);
        // A thread waiting on a batch's delay, or an exclusive model, may be able to go now.
        shared.wake.notify_one();
    }
}

struct Ran {
    elapsed: Duration,
    unbatchable: bool,
}

/// Runs a batch: one job as it is; several stacked into one run, split back, and retried one
/// by one if the batched run fails.
fn execute(batch: Batch) -> Ran {
    let started = Instant::now();
    for job in &batch.jobs {
        batch
            .stats
            .queue
            .observe(started.saturating_duration_since(job.enqueued));
    }
    let rows: u32 = batch.jobs.iter().map(Job::rows).sum();
    let mut unbatchable = false;
    // Whether the run's time says something about its batch size (a failed batch retried
    // one by one does not).
    let mut measured = true;
    let model = &batch.model;
    // Results are sent once the run is recorded, so a client that got its answer sees the
    // run in the metrics.
    let mut replies: Vec<(Job, Outputs)> = Vec::with_capacity(batch.jobs.len());
    if batch.jobs.len() == 1 {
        let mut job = batch.jobs.into_iter().next().expect("one job");
        let result = model.run(std::mem::take(&mut job.inputs), &job.control);
        replies.push((job, result));
    } else {
        let mut jobs = batch.jobs;
        let inputs: Vec<Vec<(String, Tensor)>> = jobs
            .iter_mut()
            .map(|j| std::mem::take(&mut j.inputs))
            .collect();
        let controls: Vec<&RunControl> = jobs.iter().map(|j| &*j.control).collect();
        let group = RunControl::group(&controls);
        let job_rows: Vec<u32> = jobs.iter().map(Job::rows).collect();
        let parts = batch::stack(&inputs)
            .and_then(|stacked| model.run(stacked, &group))
            .and_then(|outputs| {
                batch::split(outputs, &job_rows).inspect_err(|_| unbatchable = true)
            });
        match parts {
            Ok(parts) => replies.extend(jobs.into_iter().zip(parts.into_iter().map(Ok))),
            Err(_) if group.is_stopped() => {
                replies.extend(
                    jobs.into_iter()
                        .map(|j| (j, Err(InferenceError::stopped()))),
                );
            }
            Err(e) => {
                measured = false;
                tracing::debug!(error = %e, jobs = jobs.len(), "a batched run failed: each job runs alone");
                for (job, inputs) in jobs.into_iter().zip(inputs) {
                    let result = model.run(inputs, &job.control);
                    replies.push((job, result));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if measured {
        batch.stats.record(rows, elapsed);
    }
    for (job, result) in replies {
        let _ = job.reply.send(result);
    }
    Ran {
        elapsed,
        unbatchable,
    }
}
