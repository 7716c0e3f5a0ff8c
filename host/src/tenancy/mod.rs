//! Tenants and their deployments: the registry the data plane routes by and the control plane
//! changes.
//!
//! Guarantees:
//! - a host name belongs to at most one tenant; a tenant token names exactly one tenant;
//! - a deployment is validated whole (component compiles and links, every model loads)
//!   before anything is written that could activate it, so a bad upload changes nothing;
//! - activation is one atomic pointer swap: a request holds the deployment it started on
//!   until it finishes, and the next request sees the new one;
//! - every change is durable in the store before it is visible, and a restart restores every
//!   tenant and its active deployment;
//! - control-plane changes are serialized; requests never wait on them.

mod certificates;
mod deploy;
mod deployment;
mod follow;
pub mod hostname;
mod registry;
mod restore;
mod tenants;
pub mod tokens;

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;

pub use crate::deployment::Validation;
pub(crate) use crate::error::Refusal;
pub use deployment::{LiveDeployment, Platform};
pub use registry::{Route, TenantBounds, Unavailable};
pub use tenants::TenantUpdate;

use crate::store::records::TenantRecord;
use crate::store::{Digest, Generation};
use crate::tls::certs::Certificate;

/// A tenant as the server holds it.
#[derive(Debug)]
struct Tenant {
    record: ArcSwap<TenantRecord>,
    /// The store's generation of `record`: every write of it is a compare-and-swap on it.
    generation: std::sync::atomic::AtomicU64,
    live: ArcSwapOption<LiveDeployment>,
    /// Why the active deployment could not be restored, if it could not.
    unavailable: ArcSwapOption<String>,
    bounds: ArcSwap<TenantBounds>,
    /// The tenant's own TLS certificate, served for its host names.
    certificate: ArcSwapOption<Certificate>,
}

impl Tenant {
    fn generation(&self) -> Generation {
        Generation(self.generation.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Call with the changes lock held, after a write of `record`.
    fn set_generation(&self, generation: Generation) {
        self.generation
            .store(generation.0, std::sync::atomic::Ordering::Release);
    }
}

/// The tenants of this process.
#[derive(Debug)]
pub struct Tenancy {
    platform: Arc<Platform>,
    tenants: DashMap<String, Arc<Tenant>>,
    /// Normalized host name → tenant name.
    hosts: DashMap<String, Arc<str>>,
    /// Token hash → tenant name.
    tokens: DashMap<Digest, String>,
    changes: tokio::sync::Mutex<()>,
    /// Set once [`Tenancy::restore`] has ended.
    restored: std::sync::atomic::AtomicBool,
    /// How far the store's change log is applied here ([`Tenancy::follow`]).
    progress: follow::Progress,
}

impl Tenancy {
    /// The tenant `name` if it is still `before` (not deleted, or deleted and recreated, while
    /// a change was being validated).
    fn same_tenant(&self, name: &str, before: &Arc<Tenant>) -> Result<Arc<Tenant>, Refusal> {
        let now = self.tenant(name)?;
        if !Arc::ptr_eq(&now, before) {
            return Err(Refusal::conflict(format!(
                "tenant '{name}' was deleted while the change was being validated"
            )));
        }
        Ok(now)
    }

    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, Refusal> {
        self.tenants
            .get(name)
            .map(|t| Arc::clone(t.value()))
            .ok_or_else(|| Refusal::not_found(format!("no tenant named '{name}'")))
    }
}

/// Runs store or build work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Refusal::Internal(anyhow::anyhow!("background task failed: {e}")))?
}
