//! What the scheduler measures per loaded model: run times by batch size (which set the
//! model's batch cap and the cost a run is charged before it ends), and the histograms
//! `/metrics` shows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::metrics::{CountHistogram, Histogram, ModelSeries};

/// Batch sizes are measured in power-of-two classes: 1, 2–3, 4–7, ... 256 and more.
const CLASSES: usize = 9;
/// Runs a class needs before its time per row is trusted.
const MIN_SAMPLES: u32 = 8;
/// How much slower per row a larger class must be before it is capped away.
const SLOWER: f64 = 1.05;
/// Weight of a new run in a class's moving average.
const ALPHA: f64 = 0.1;
/// What a run is charged before any run of the model has been measured.
const UNMEASURED: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, Default)]
struct Class {
    /// Moving average of seconds per row.
    per_row: f64,
    samples: u32,
}

/// One model's measurements.
#[derive(Debug)]
pub struct ModelStats {
    classes: Mutex<[Class; CLASSES]>,
    /// Largest batch (in rows) worth running, from the measurements; `u32::MAX` until a larger
    /// batch has been measured slower per row than a smaller one.
    cap: AtomicU32,
    pub batch_size: CountHistogram,
    pub queue: Histogram,
    pub compute: Histogram,
}

impl Default for ModelStats {
    fn default() -> Self {
        Self {
            classes: Mutex::new([Class::default(); CLASSES]),
            cap: AtomicU32::new(u32::MAX),
            batch_size: CountHistogram::default(),
            queue: Histogram::default(),
            compute: Histogram::default(),
        }
    }
}

fn class(rows: u32) -> usize {
    (rows.max(1).ilog2() as usize).min(CLASSES - 1)
}

impl ModelStats {
    /// Records a run of `rows` rows that took `elapsed` (stacking and splitting included).
    pub fn record(&self, rows: u32, elapsed: Duration) {
        self.compute.observe(elapsed);
        self.batch_size.observe(u64::from(rows));
        let per_row = elapsed.as_secs_f64() / f64::from(rows.max(1));
        let mut classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
        let c = &mut classes[class(rows)];
        c.per_row = if c.samples == 0 {
            per_row
        } else {
            c.per_row + ALPHA * (per_row - c.per_row)
        };
        c.samples = c.samples.saturating_add(1);
        // The cap: below the first class that runs slower per row than a smaller one.
        let mut best = f64::INFINITY;
        let mut cap = u32::MAX;
        for (k, c) in classes.iter().enumerate() {
            if c.samples < MIN_SAMPLES {
                continue;
            }
            if c.per_row > best * SLOWER {
                cap = (1u32 << k) - 1;
                break;
            }
            best = best.min(c.per_row);
        }
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// The largest batch, in rows, that the measurements say is worth running.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// The time per row of the fastest measured batch size: what one more row costs at best;
    /// `None` before any run was measured.
    pub fn per_row(&self) -> Option<Duration> {
        let classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
        classes
            .iter()
            .filter(|c| c.samples > 0)
            .map(|c| c.per_row)
            .min_by(f64::total_cmp)
            .map(Duration::from_secs_f64)
    }

    /// What a run of `rows` rows is expected to take: the nearest measured class's time per
    /// row, times the rows.
    pub fn estimate(&self, rows: u32) -> Duration {
        let classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted = class(rows);
        let nearest = (0..CLASSES)
            .filter(|&k| classes[k].samples > 0)
            .min_by_key(|&k| k.abs_diff(wanted));
        match nearest {
            Some(k) => Duration::from_secs_f64(classes[k].per_row * f64::from(rows.max(1))),
            None => UNMEASURED,
        }
    }
}

impl ModelSeries for ModelStats {
    fn batch_size(&self) -> &CountHistogram {
        &self.batch_size
    }

    fn queue(&self) -> &Histogram {
        &self.queue
    }

    fn compute(&self) -> &Histogram {
        &self.compute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_size_that_runs_slower_per_row_is_capped_away() {
        let stats = ModelStats::default();
        for _ in 0..MIN_SAMPLES {
            stats.record(1, Duration::from_millis(10));
            stats.record(2, Duration::from_millis(12)); // 6 ms per row: better
        }
        assert_eq!(stats.cap(), u32::MAX, "larger batches are faster per row");
        for _ in 0..MIN_SAMPLES {
            stats.record(4, Duration::from_millis(40)); // 10 ms per row: worse than 6
        }
        assert_eq!(stats.cap(), 3, "batches of 4 or more are slower per row");
        let estimate = stats.estimate(2).as_secs_f64();
        assert!((estimate - 0.012).abs() < 1e-6, "{estimate}");
    }

    #[test]
    fn unmeasured_models_are_charged_a_nominal_run() {
        assert_eq!(ModelStats::default().estimate(8), UNMEASURED);
    }
}
