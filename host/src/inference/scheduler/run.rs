//! The run threads: each takes the next batch, runs it on the backend, and settles its
//! tenants' accounts.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::Outputs;
use super::queues::{Batch, Job, Pick, Shared};
use crate::backends::tensor::Tensor;
use crate::backends::{InferenceError, RunControl};
use crate::inference::batch;

/// One run thread: takes the next batch, runs it, repeats until the scheduler is dropped.
pub(super) fn work(shared: &Shared) {
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
        // Answers go out once the run is counted, so a client that got its answer sees the
        // run (and its compute time) in the metrics.
        for (job, result) in ran.replies {
            let _ = job.reply.send(result);
        }
        // A thread waiting on a batch's delay, or an exclusive model, may be able to go now.
        shared.wake.notify_one();
    }
}

struct Ran {
    elapsed: Duration,
    unbatchable: bool,
    /// Each job with its result, to send once the run is counted.
    replies: Vec<(Job, Outputs)>,
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
    Ran {
        elapsed,
        unbatchable,
        replies,
    }
}
