//! Start-up: every tenant read from the store, then every active deployment built in
//! parallel while the server already answers (`503 deployment_unavailable` until a tenant's is
//! built).

use std::sync::Arc;

use dashmap::DashMap;

use super::certificates::restore_certificate;
use super::deploy::check_trust;
use super::{LiveDeployment, Platform, Refusal, Tenancy, Validation, blocking};
use crate::store::records::TenantRecord;
use crate::store::stored_deployments;

impl Tenancy {
    /// Restores every tenant from the store and activates their active deployments. A
    /// deployment that no longer builds is logged and left inactive (its tenant answers 503);
    /// other tenants are not held back by it. Blocking.
    pub fn open(platform: Arc<Platform>) -> anyhow::Result<Self> {
        // Read before the tenants: a change made while they are read is applied again by
        // `follow`, never missed.
        let revision = platform.store.records.revision()?;
        let tenancy = Self {
            platform,
            tenants: DashMap::new(),
            hosts: DashMap::new(),
            tokens: DashMap::new(),
            changes: tokio::sync::Mutex::new(()),
            restored: std::sync::atomic::AtomicBool::new(false),
            progress: super::follow::Progress::new(revision),
        };
        let store = &tenancy.platform.store;
        let records = &*store.records;
        for name in records.tenant_names()? {
            let stored = match records.tenant(&name) {
                Ok(Some(stored)) => stored,
                // Removed since it was listed: nothing to restore.
                Ok(None) => continue,
                Err(e) => {
                    // One unreadable record must not keep every other tenant down.
                    tracing::error!(tenant = %name, error = ?e, "cannot read the tenant record; the tenant is not served, and no blob is collected");
                    store.blobs.keep_all();
                    continue;
                }
            };
            // Every stored deployment holds its blobs, active or not.
            match stored_deployments(records, &name) {
                Ok(deployments) => {
                    for deployment in deployments {
                        store.blobs.refer(deployment.blobs());
                    }
                }
                Err(e) => {
                    tracing::error!(tenant = %name, error = ?e, "cannot read the tenant's deployments; no blob is collected until they read again");
                    store.blobs.keep_all();
                }
            }
            // Active deployments are built by `restore`, in parallel, once the server serves.
            let certificate = restore_certificate(records, &name);
            let record = stored.value;
            tracing::info!(tenant = %name, hosts = ?record.hosts, active = ?record.active, certificate = certificate.is_some(), "tenant read");
            tenancy.insert(record, stored.generation, None, certificate);
        }
        // Blobs of refused uploads, deleted tenants and collected deployments that a crash
        // (or an older version of Corral) left behind.
        match store.blobs.sweep() {
            Ok((0, _)) => {}
            Ok((blobs, bytes)) => tracing::info!(blobs, bytes, "unused blobs collected"),
            Err(e) => tracing::error!(error = ?e, "cannot collect unused blobs"),
        }
        Ok(tenancy)
    }

    /// Builds every tenant's active deployment, `parallel` at a time, each within the deploy
    /// timeout. Until its own is built a tenant answers `503 deployment_unavailable`
    /// ("restoring"); one that cannot be built keeps answering it, with the reason in its
    /// status, and holds up no other. Returns when every build has ended.
    pub async fn restore(self: Arc<Self>, parallel: usize) {
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut builds = tokio::task::JoinSet::new();
        let pending: Vec<(String, u32)> = self
            .tenants
            .iter()
            .filter_map(|t| Some((t.key().clone(), t.value().record.load().active?)))
            .collect();
        for (name, version) in pending {
            let tenancy = Arc::clone(&self);
            let slots = Arc::clone(&slots);
            builds.spawn(async move {
                let Ok(slot) = slots.acquire_owned().await else {
                    return;
                };
                tenancy.restore_one(&name, version, slot).await;
            });
        }
        while builds.join_next().await.is_some() {}
        self.restored
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(tenants = self.tenants.len(), "every tenant restored");
    }

    /// Builds one tenant's active deployment; `slot` is held until the build has really
    /// ended, even past the deploy timeout.
    async fn restore_one(&self, name: &str, version: u32, slot: tokio::sync::OwnedSemaphorePermit) {
        let Ok(tenant) = self.tenant(name) else {
            return;
        };
        let record = tenant.record.load_full();
        let platform = Arc::clone(&self.platform);
        let built = self
            .within_deploy_timeout(blocking(move || {
                let _slot = slot;
                load_version(&platform, &record, version)
            }))
            .await;
        // Activated, rolled back or deleted meanwhile: what the operator did since wins.
        let _changing = self.changes.lock().await;
        let Ok(tenant) = self.same_tenant(name, &tenant) else {
            return;
        };
        if tenant.record.load().active != Some(version) || tenant.live.load().is_some() {
            return;
        }
        match built {
            Ok(live) => {
                tracing::info!(tenant = %name, version, "deployment restored");
                tenant.live.store(Some(Arc::new(live)));
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                tracing::error!(tenant = %name, version, reason = %reason, "cannot restore the active deployment; the tenant answers 503 until one is activated");
                tenant.unavailable.store(Some(Arc::new(reason)));
            }
        }
    }

    /// Whether the restore at start has ended (for `/readyz`).
    pub fn restored(&self) -> bool {
        self.restored.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Builds a stored version for restore, checking the tenant's trust again: a record changed
/// while the server was stopped never serves TorchScript the operator has not trusted.
pub(super) fn load_version(
    platform: &Platform,
    tenant: &TenantRecord,
    version: u32,
) -> Result<LiveDeployment, Refusal> {
    let name = &tenant.name;
    let record = platform
        .store
        .records
        .deployment(name, version)?
        .ok_or_else(|| Refusal::not_found(format!("version {version} has no record")))?;
    check_trust(name, tenant, &record)?;
    Ok(platform.build(name, &record, Validation::Restore)?)
}
