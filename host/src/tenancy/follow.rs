//! Following the store's change log, so that servers sharing a database behave as one: what
//! another server wrote (a tenant created, changed or deleted, a deployment activated, a
//! certificate uploaded) reaches this one as soon as the database notifies it, and within a
//! poll interval when a notification is lost.
//!
//! Each poll asks the store for the changes since the revision this server has applied and
//! refreshes every tenant they name: the tenant's record is read again and, when its active
//! version is not the one running here, that version is built (blobs fetched, component
//! compiled, models loaded) before the tenant's routing entry is switched, so requests never
//! see a half-applied change. A tenant whose record is at the generation this server already
//! holds (its own writes) is left alone. A server that fell behind what the log keeps reloads
//! every tenant.
//!
//! While the store cannot be reached, the server keeps serving what it has and reports itself
//! behind (`GET /v1/status`); it catches up once the store answers again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::Notify;

use super::certificates::restore_certificate;
use super::restore::load_version;
use super::{Refusal, Tenancy, Tenant, blocking};
use crate::clock::now;
use crate::store::record_store::{Change, Changes};

/// How far this server has followed the change log.
#[derive(Debug, Default)]
pub struct Progress {
    /// The revision applied: every change up to it is served here.
    applied: AtomicU64,
    /// The store's revision at the last successful poll.
    latest: AtomicU64,
    /// When the last poll succeeded, in seconds since the Unix epoch.
    polled: AtomicU64,
    /// Why the last poll failed, until one succeeds.
    error: ArcSwapOption<String>,
}

impl Progress {
    pub(super) fn new(revision: u64) -> Self {
        Self {
            applied: revision.into(),
            latest: revision.into(),
            polled: now().into(),
            error: ArcSwapOption::empty(),
        }
    }
}

/// What `GET /v1/status` answers.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The change-log revision this server serves.
    pub revision: u64,
    /// The store's revision when it was last read.
    pub store_revision: u64,
    /// Whether this server may not serve the latest changes: the store could not be read at
    /// the last poll, or changes it read are not applied yet.
    pub behind: bool,
    /// Seconds since the Unix epoch of the last successful read of the store.
    pub last_poll: u64,
    /// Why the last read of the store failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Tenancy {
    /// How far this server has followed the store's changes.
    pub fn status(&self) -> Status {
        let progress = &self.progress;
        let (revision, latest) = (
            progress.applied.load(Ordering::Acquire),
            progress.latest.load(Ordering::Acquire),
        );
        let error = progress.error.load_full().map(|e| (*e).clone());
        Status {
            revision,
            store_revision: latest,
            behind: error.is_some() || revision < latest,
            last_poll: progress.polled.load(Ordering::Acquire),
            error,
        }
    }

    /// Applies the store's changes as soon as the store says there are some (a database
    /// notification) and every `interval` in any case, until `stopped` turns true. Spawn it
    /// once [`Tenancy::open`] has read the store.
    pub async fn follow(
        self: Arc<Self>,
        interval: Duration,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let wake = Arc::new(Notify::new());
        let listening = self.platform.store.records.listen(Arc::downgrade(&wake));
        tracing::info!(
            listening,
            poll_interval_ms = interval.as_millis() as u64,
            "following other servers' changes"
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = wake.notified() => {}
                _ = stopped.changed() => return,
            }
            if *stopped.borrow() {
                return;
            }
            match self.catch_up().await {
                Ok(()) => self.progress.error.store(None),
                Err(e) => {
                    let reason = format!("{e:#}");
                    if self.progress.error.load().is_none() {
                        tracing::warn!(error = %reason, "cannot follow the store's changes; serving what this server has");
                    }
                    self.progress.error.store(Some(Arc::new(reason)));
                }
            }
        }
    }

    /// One poll: reads the changes since the applied revision and applies them.
    async fn catch_up(&self) -> anyhow::Result<()> {
        let applied = self.progress.applied.load(Ordering::Acquire);
        let records = Arc::clone(&self.platform.store.records);
        let changes = tokio::task::spawn_blocking(move || records.changes_since(applied))
            .await
            .map_err(|e| anyhow::anyhow!("the store poll failed: {e}"))??;
        let (names, revision) = match changes {
            Changes::Since { changes, revision } => {
                let names: BTreeSet<String> = changes
                    .into_iter()
                    .map(|change| match change {
                        Change::Tenant(name) | Change::Certificate(name) => name,
                        Change::Deployment { tenant, .. } => tenant,
                    })
                    .collect();
                (names, revision)
            }
            Changes::Reload { revision } => {
                tracing::info!(
                    applied,
                    revision,
                    "fell behind the store's change log: reloading every tenant"
                );
                let records = Arc::clone(&self.platform.store.records);
                let mut names: BTreeSet<String> =
                    tokio::task::spawn_blocking(move || records.tenant_names())
                        .await
                        .map_err(|e| anyhow::anyhow!("the store poll failed: {e}"))??
                        .into_iter()
                        .collect();
                names.extend(self.tenants.iter().map(|t| t.key().clone()));
                (names, revision)
            }
        };
        self.progress.latest.store(revision, Ordering::Release);
        self.progress.polled.store(now(), Ordering::Release);
        for name in names {
            self.refresh(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot apply the changes to tenant '{name}': {e}"))?;
        }
        self.progress.applied.store(revision, Ordering::Release);
        Ok(())
    }

    /// Before a write through this server to tenant `name`: what other servers changed about
    /// it is applied first, so that an operator may write through any server right after a
    /// change through another (a write racing another server's still gets `409 conflict`).
    /// Call it before taking the changes lock.
    pub(super) async fn up_to_date(&self, name: &str) -> Result<(), Refusal> {
        if self.platform.store.records.shared() {
            self.refresh(name).await?;
        }
        Ok(())
    }

    /// Makes tenant `name` here what the store says it is.
    async fn refresh(&self, name: &str) -> Result<(), Refusal> {
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        let (stored, certificate) = blocking(move || {
            let records = &*platform.store.records;
            let stored = records.tenant(&store_name)?;
            Ok((stored, restore_certificate(records, &store_name)))
        })
        .await?;
        let current = self.tenants.get(name).map(|t| Arc::clone(t.value()));
        let Some(stored) = stored else {
            // Deleted by another server.
            let _changing = self.changes.lock().await;
            if let Some(tenant) = current
                && self.same_tenant(name, &tenant).is_ok()
            {
                tracing::info!(tenant = %name, "tenant deleted by another server");
                self.forget(name, &tenant);
            }
            return Ok(());
        };
        if let Some(tenant) = &current
            && tenant.generation() >= stored.generation
        {
            // This server's own write, or one it has already applied; a certificate changes
            // without a new generation.
            tenant.certificate.store(certificate.map(Arc::new));
            return Ok(());
        }
        let running = current
            .as_ref()
            .and_then(|t| t.live.load().as_ref().map(|live| live.version));
        let record = Arc::new(stored.value);
        // Built before the switch, outside the lock: requests keep the old version meanwhile.
        let built = match record.active {
            Some(version) if Some(version) != running => {
                let platform = Arc::clone(&self.platform);
                let tenant_record = Arc::clone(&record);
                let slot = self.deploy_slot_blocking().await;
                Some(
                    self.within_deploy_timeout(blocking(move || {
                        let _slot = slot;
                        load_version(&platform, &tenant_record, version)
                    }))
                    .await,
                )
            }
            _ => None,
        };
        let _changing = self.changes.lock().await;
        let now_held = self.tenants.get(name).map(|t| Arc::clone(t.value()));
        if let Some(tenant) = &now_held
            && tenant.generation() >= stored.generation
        {
            return Ok(()); // A newer write got here first.
        }
        let (live, failed) = match built {
            Some(Ok(live)) => (Some(Arc::new(live)), None),
            Some(Err(refusal)) => (None, Some(refusal.to_string())),
            None => (
                now_held
                    .as_ref()
                    .and_then(|t| t.live.load_full())
                    .filter(|live| Some(live.version) == record.active),
                None,
            ),
        };
        tracing::info!(tenant = %name, active = ?record.active, generation = stored.generation.0, "tenant changed by another server");
        if let Some(reason) = &failed {
            tracing::error!(tenant = %name, version = ?record.active, reason = %reason, "cannot build the active deployment another server activated; the tenant answers 503 until one is activated");
        }
        // The new entry first, then what only the old record had: a host name that stays with
        // the tenant is never unrouted, even for a moment.
        self.insert((*record).clone(), stored.generation, live, certificate);
        if let Some(old) = now_held.map(|t| t.record.load_full()) {
            for host in old.hosts.iter().filter(|h| !record.hosts.contains(h)) {
                self.hosts
                    .remove_if(host, |_, owner| **owner == *record.name);
            }
            if old.token_sha256 != record.token_sha256 {
                self.tokens
                    .remove_if(&old.token_sha256, |_, owner| *owner == record.name);
            }
        }
        if let Some(reason) = failed
            && let Some(tenant) = self.tenants.get(name)
        {
            tenant.unavailable.store(Some(Arc::new(reason)));
        }
        Ok(())
    }

    /// A deploy slot, waiting for one: changes from other servers are applied in turn, never
    /// refused.
    async fn deploy_slot_blocking(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.platform.deploy_slots)
            .acquire_owned()
            .await
            .ok()
    }

    /// Removes a tenant's host names and token from routing.
    fn unroute(&self, tenant: &Tenant) {
        let record = tenant.record.load_full();
        for host in &record.hosts {
            self.hosts
                .remove_if(host, |_, owner| **owner == *record.name);
        }
        self.tokens
            .remove_if(&record.token_sha256, |_, owner| *owner == record.name);
    }

    /// Drops a deleted tenant from this server: routing, its deployment (requests in flight
    /// finish), metrics and queues. Call with the changes lock held.
    pub(super) fn forget(&self, name: &str, tenant: &Tenant) {
        self.unroute(tenant);
        self.tenants.remove(name);
        tenant.live.store(None);
        self.platform.metrics.forget_tenant(name);
        self.platform.builder.inference().forget_tenant(name);
    }
}
