//! The scheduler's state: jobs, tenants' and models' queues, and how the next batch is picked
//! (fair shares, batch gathering, the last thread kept quick).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::{BATCH_RUN, LAST_THREAD_RUN, Outputs};
use crate::backends::models::ModelKey;
use crate::backends::tensor::Tensor;
use crate::backends::{Concurrency, LoadedModel, RunControl};
use crate::inference::batch::BatchKey;
use crate::inference::stats::ModelStats;

pub(super) struct Job {
    pub(super) key: ModelKey,
    pub(super) tenant: Arc<str>,
    pub(super) weight: f64,
    pub(super) inputs: Vec<(String, Tensor)>,
    /// The job's batch key and rows, when it may join a batch.
    pub(super) batch: Option<(BatchKey, u32)>,
    pub(super) max_batch: u32,
    pub(super) max_delay: Duration,
    pub(super) enqueued: Instant,
    pub(super) control: Arc<RunControl>,
    pub(super) reply: oneshot::Sender<Outputs>,
    pub(super) _keep_alive: Option<Arc<dyn Any + Send + Sync>>,
}

impl Job {
    pub(super) fn rows(&self) -> u32 {
        self.batch.as_ref().map_or(1, |(_, rows)| *rows)
    }
}

#[derive(Default)]
pub(super) struct TenantQueue {
    pub(super) vtime: f64,
    /// Job ids in arrival order; ids already taken (by a batch or a cancellation) are skipped.
    pub(super) pending: VecDeque<u64>,
    pub(super) queued: u32,
    /// Runs started on this tenant's turn and not yet ended.
    pub(super) running: usize,
}

pub(super) struct ModelQueue {
    pub(super) model: Arc<dyn LoadedModel>,
    pub(super) pending: VecDeque<u64>,
    pub(super) running: usize,
    pub(super) stats: Arc<ModelStats>,
    /// A batch's outputs could not be split: the model does not keep its batch axis.
    pub(super) unbatchable: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) next_id: u64,
    pub(super) jobs: HashMap<u64, Job>,
    pub(super) tenants: HashMap<Arc<str>, TenantQueue>,
    pub(super) models: HashMap<ModelKey, ModelQueue>,
    /// The virtual time of the last run started.
    pub(super) vclock: f64,
    /// Seconds of runs, by tenant (their share of each batch).
    pub(super) compute_seconds: HashMap<Arc<str>, f64>,
    /// Tenants with a deployment that has models: registrations by tenant.
    pub(super) registered: HashMap<Arc<str>, usize>,
    /// Run threads.
    pub(super) runs: usize,
    /// Runs executing now.
    pub(super) running: usize,
    pub(super) closed: bool,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) wake: Condvar,
    pub(super) stats: DashMap<ModelKey, Arc<ModelStats>>,
    pub(super) in_flight: AtomicUsize,
    pub(super) peak: AtomicUsize,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch taken off the queues, to run on one thread.
pub(super) struct Batch {
    pub(super) key: ModelKey,
    /// The tenant whose turn it was.
    pub(super) turn: Arc<str>,
    pub(super) model: Arc<dyn LoadedModel>,
    pub(super) stats: Arc<ModelStats>,
    pub(super) jobs: Vec<Job>,
    /// What the run was charged when it started.
    pub(super) estimate: Duration,
}

pub(super) enum Pick {
    Run(Batch),
    /// Nothing to run now; something may be at this time (a batch's delay ends).
    Wait(Option<Instant>),
}

impl State {
    pub(super) fn pick(&mut self, now: Instant) -> Pick {
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
    pub(super) fn gather(
        &self,
        queue: &ModelQueue,
        head: u64,
        row_cap: u32,
    ) -> (Vec<u64>, u32, u32, Instant) {
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
    pub(super) fn take(&mut self, key: ModelKey, ids: &[u64], turn: Arc<str>) -> Batch {
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
    pub(super) fn charge(&mut self, jobs: &[Job], rows: u32, seconds: f64) {
        for job in jobs {
            if let Some(tenant) = self.tenants.get_mut(&job.tenant) {
                tenant.vtime += seconds * f64::from(job.rows()) / f64::from(rows) / job.weight;
            }
        }
    }

    /// Forgets queues with nothing in them: a model's (so the cache may unload it) and a
    /// tenant's without a debt to remember.
    pub(super) fn tidy(&mut self, key: &ModelKey) {
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
