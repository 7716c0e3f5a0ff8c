//! Per-tenant limits: what one tenant's requests may use, so no tenant can crash, starve or
//! slow down another.
//!
//! The operator sets defaults in the configuration (`[limits]`) and overrides them per tenant
//! (the admin API's `limits` object). Every value is checked (non-zero) when set. Where each
//! limit is enforced, and the status a request gets when it hits one:
//!
//! | limit | enforced by | when hit |
//! |---|---|---|
//! | `memory_bytes`, `tables`, `table_elements`, `instances` | the store's resource limiter | trap, `500 memory_limit` / `500 instance_limit` |
//! | `cpu_ms` (guest CPU time) | epoch deadline callback, 10 ms ticks | trap, `500 cpu_time_limit` |
//! | `timeout_ms` (wall clock) | the request task | `504 timeout` |
//! | `concurrent_requests`, `queued_requests` | per-tenant gate before the guest runs | `503 overloaded` + `Retry-After` |
//! | `request_body_bytes` | Content-Length check, then the streamed body | `413 request_too_large` |
//! | `response_body_bytes` | the streamed response | response cut off, logged |
//! | `nn_bytes_per_call`, `nn_bytes_per_request`, `nn_calls_per_request`, `nn_resources_per_request` | the `wasi:nn` host | trap, `500 nn_limit` |
//! | `tensor_rank` | `wasi:nn` `tensor.new` (the dimension list is what the host holds) | trap, `500 nn_limit` |
//! | `nn_queued_runs` | the scheduler, when a `compute` is queued | trap, `503 overloaded` + `Retry-After` |
//! | `compute_weight` | the scheduler's fair shares (not a limit that stops a request) | — |
//! | `model_bytes` | deployment uploads: the measured memory of the deployment's models | `507 model_quota_exceeded` |
//! | `tensor_elements` | `wasi:nn` compute, before the backend | `invalid-argument` error value |
//! | `log_bytes_per_minute` | guest stdout/stderr | excess dropped and counted |
//! | `storage_bytes` | deployment uploads, counted while they stream | `507 storage_quota_exceeded` |

pub use corral_parsers::limits::{LimitOverrides, Limits};

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::ErrorCode;

/// Which limit stopped a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// `memory_bytes` (or the table limits).
    Memory,
    /// `instances` per request.
    Instances,
    /// `cpu_ms` per request.
    CpuTime,
    /// `nn_calls_per_request`.
    NnCalls,
    /// `nn_bytes_per_call` or `nn_bytes_per_request`.
    NnBytes,
    /// `nn_resources_per_request`.
    NnResources,
    /// `tensor_rank`.
    NnRank,
    /// The tenant's queue of inference jobs is full (`nn_queued_runs`).
    NnQueue,
    /// `request_body_bytes`.
    RequestBody,
}

impl LimitHit {
    /// The error code clients see.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Memory => ErrorCode::MemoryLimit,
            Self::Instances => ErrorCode::InstanceLimit,
            Self::CpuTime => ErrorCode::CpuTimeLimit,
            Self::NnCalls | Self::NnBytes | Self::NnResources | Self::NnRank => ErrorCode::NnLimit,
            Self::NnQueue => ErrorCode::Overloaded,
            Self::RequestBody => ErrorCode::RequestTooLarge,
        }
    }

    /// What the guest (and the client) is told: the limit and its value.
    pub fn describe(self, limits: &Limits) -> String {
        match self {
            Self::Memory => format!(
                "the service exceeded its memory limit of {} bytes (or its table limits)",
                limits.memory_bytes
            ),
            Self::Instances => format!(
                "the service exceeded its limit of {} instances per request",
                limits.instances
            ),
            Self::CpuTime => format!(
                "the service exceeded its CPU time limit of {} ms for one request",
                limits.cpu_ms
            ),
            Self::NnCalls => format!(
                "the service exceeded its limit of {} wasi:nn calls per request",
                limits.nn_calls_per_request
            ),
            Self::NnBytes => format!(
                "the service exceeded its wasi:nn data limits ({} bytes per call, {} per request)",
                limits.nn_bytes_per_call, limits.nn_bytes_per_request
            ),
            Self::NnResources => format!(
                "the service exceeded its limit of {} live wasi:nn resources per request",
                limits.nn_resources_per_request
            ),
            Self::NnRank => format!(
                "the service made a wasi:nn tensor with more than its limit of {} dimensions",
                limits.tensor_rank
            ),
            Self::NnQueue => format!(
                "this service has {} inference runs waiting, as many as it may; retry shortly",
                limits.nn_queued_runs
            ),
            Self::RequestBody => format!(
                "the request body is larger than this service's limit of {} bytes",
                limits.request_body_bytes
            ),
        }
    }
}

/// Which limit, if any, stopped a request. Shared between the store and the request handler.
#[derive(Debug, Default)]
pub(crate) struct Outcome(AtomicU8);

impl Outcome {
    const HITS: [LimitHit; 9] = [
        LimitHit::Memory,
        LimitHit::Instances,
        LimitHit::CpuTime,
        LimitHit::NnCalls,
        LimitHit::NnBytes,
        LimitHit::NnResources,
        LimitHit::NnRank,
        LimitHit::NnQueue,
        LimitHit::RequestBody,
    ];

    /// Records `hit` (the first one wins) and returns the trap to stop the guest with.
    pub fn trap(&self, hit: LimitHit, limits: &Limits) -> wasmtime::Error {
        self.record(hit);
        wasmtime::format_err!("{}", hit.describe(limits))
    }

    /// Records `hit` unless an earlier limit was hit first.
    pub fn record(&self, hit: LimitHit) {
        let code = Self::HITS.iter().position(|h| *h == hit).unwrap_or(0) as u8 + 1;
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The first limit hit, if any.
    pub fn hit(&self) -> Option<LimitHit> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Self::HITS.get(usize::from(n) - 1).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let defaults = Limits::default();
        let overrides: LimitOverrides =
            serde_json::from_str(r#"{"cpu_ms": 50, "memory_bytes": 1048576}"#).unwrap();
        let limits = defaults.with(&overrides);
        assert_eq!(limits.cpu_ms, 50);
        assert_eq!(limits.memory_bytes, 1 << 20);
        assert_eq!(limits.timeout_ms, defaults.timeout_ms);
        assert_eq!(
            serde_json::to_value(&overrides).unwrap(),
            serde_json::json!({"cpu_ms": 50, "memory_bytes": 1048576})
        );
    }

    #[test]
    fn unknown_names_and_zero_values_are_refused() {
        assert!(serde_json::from_str::<LimitOverrides>(r#"{"cpu": 5}"#).is_err());
        let zero = Limits::default().with(&LimitOverrides {
            queued_requests: Some(0),
            ..LimitOverrides::default()
        });
        assert!(zero.check().unwrap_err().contains("queued_requests"));
    }

    #[test]
    fn the_first_limit_hit_is_the_one_reported() {
        let outcome = Outcome::default();
        assert_eq!(outcome.hit(), None);
        let limits = Limits::default();
        let trap = outcome.trap(LimitHit::CpuTime, &limits);
        assert!(trap.to_string().contains("CPU time"));
        outcome.record(LimitHit::Memory);
        assert_eq!(outcome.hit(), Some(LimitHit::CpuTime));
    }
}
