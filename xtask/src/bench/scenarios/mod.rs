//! The benchmark scenarios, one file each with its measurement and its section of
//! `docs/benchmarks.md`: the full run's seven (sections 1 to 7), the inference scheduler's
//! four, which `--only` runs alone and which keep their own section, and the cluster's, the
//! image preprocessing's and the profile's, which `--cluster`, `--preprocess` and `--profile`
//! run alone, each into a section of its own.

pub(super) mod batching;
pub(super) mod churn;
pub(super) mod cluster;
pub(super) mod cold_start;
pub(super) mod density;
pub(super) mod fixed;
pub(super) mod instantiation;
pub(super) mod neighbour;
pub(super) mod overhead;
pub(super) mod preprocess;
pub(super) mod profile;
pub(super) mod python;
pub(super) mod sessions;
pub(super) mod threads;

use serde_json::Value;

use super::Kit;
use crate::Result;
use batching::batching;
use churn::churn;
use neighbour::neighbour;
use threads::threads;

/// The scheduler's scenarios, by the name `--only` takes.
pub(super) const SCENARIOS: &[&str] = &["batching", "neighbour", "churn", "threads"];

/// Runs one of the scheduler's scenarios by name.
pub(super) fn scenario(kit: &mut Kit, name: &str) -> Result<Value> {
    match name {
        "batching" => batching(kit),
        "neighbour" => neighbour(kit),
        "churn" => churn(kit),
        "threads" => threads(kit),
        _ => Err(format!(
            "unknown scenario {name}; the scheduler's are: {}",
            SCENARIOS.join(", ")
        )),
    }
}
