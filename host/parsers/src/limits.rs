//! Per-tenant limits as the operator sets them: defaults in the configuration (`[limits]`),
//! overrides per tenant (the admin API's `limits` object). Every value is checked (non-zero)
//! when set. Where each is enforced, and what a request gets when it hits one, is in the
//! host's `limits` module.

use serde::{Deserialize, Serialize};

macro_rules! limits {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr;)*) => {
        /// The limits one tenant's requests run under.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Limits {
            $($(#[doc = $doc])* pub $name: $ty,)*
        }

        impl Default for Limits {
            fn default() -> Self {
                Self { $($name: $default,)* }
            }
        }

        /// Per-tenant overrides of the default [`Limits`]; unset fields use the default.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitOverrides {
            $(#[serde(default, skip_serializing_if = "Option::is_none")]
            #[doc = concat!("`", stringify!($name), "`, if overridden.")]
            pub $name: Option<$ty>,)*
        }

        impl Limits {
            /// These limits with `overrides` applied.
            pub fn with(&self, overrides: &LimitOverrides) -> Self {
                Self { $($name: overrides.$name.unwrap_or(self.$name),)* }
            }

            /// Refuses zero values, naming the first one.
            pub fn check(&self) -> Result<(), String> {
                $(if self.$name == 0 {
                    return Err(format!("limit '{}' must be at least 1", stringify!($name)));
                })*
                Ok(())
            }
        }
    };
}

limits! {
    /// Linear memory of one instance, in bytes.
    memory_bytes: u64 = 256 << 20;
    /// Tables per instance.
    tables: u32 = 20;
    /// Elements per table.
    table_elements: u32 = 100_000;
    /// Core instances per request (a component instantiates several).
    instances: u32 = 50;
    /// Guest CPU time per request, in milliseconds (measured in 10 ms epoch ticks).
    cpu_ms: u64 = 10_000;
    /// Wall-clock time per request, in milliseconds.
    timeout_ms: u64 = 30_000;
    /// Requests of this tenant running at once.
    concurrent_requests: u32 = 32;
    /// Requests of this tenant waiting for a slot; beyond this, `503`.
    queued_requests: u32 = 64;
    /// Request body size, in bytes.
    request_body_bytes: u64 = 16 << 20;
    /// Response body size, in bytes.
    response_body_bytes: u64 = 64 << 20;
    /// Bytes the host copies for the guest in one `wasi:nn` call (tensor data in or out).
    nn_bytes_per_call: u64 = 64 << 20;
    /// Bytes the host copies for the guest over one request.
    nn_bytes_per_request: u64 = 256 << 20;
    /// `wasi:nn` calls per request.
    nn_calls_per_request: u32 = 10_000;
    /// `wasi:nn` resources (tensors, graphs, execution contexts, errors) one request holds at
    /// once.
    nn_resources_per_request: u32 = 1_000;
    /// Dimensions of one tensor.
    tensor_rank: u32 = 8;
    /// Elements of one tensor.
    tensor_elements: u64 = 1 << 26;
    /// Guest stdout + stderr bytes per minute; the excess is dropped and counted.
    log_bytes_per_minute: u64 = 64 << 10;
    /// `wasi:nn` runs of this tenant waiting for a run thread; beyond this, the request is
    /// stopped with `503 overloaded`.
    nn_queued_runs: u32 = 64;
    /// The tenant's weight in the fair sharing of run threads: under contention, tenants get
    /// compute time in proportion to their weights.
    compute_weight: u32 = 1;
    /// Measured memory of the models of one deployment, in bytes; beyond it, `507
    /// model_quota_exceeded`. The default stands for the whole models budget
    /// (`[models] memory_bytes`), which also bounds any value set here.
    model_bytes: u64 = i64::MAX as u64;
    /// Bytes of blobs (components, models) the tenant's stored deployments hold, counting an
    /// upload in progress; beyond it, `507 storage_quota_exceeded`.
    storage_bytes: u64 = 10 << 30;
}
