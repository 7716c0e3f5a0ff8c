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

mod deployment;
pub mod records;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;

pub use deployment::{LiveDeployment, Platform, Validation};
use records::{CertificateRecord, DeploymentRecord, ModelRef, TenantRecord};

use crate::backends::models::ModelFormat;
use crate::engine::log::{GuestOutput, LogBudget};
use crate::engine::{RequestSandbox, Service};
use crate::http::bounds::Gate;
use crate::limits::{LimitOverrides, Limits};
use crate::store::Digest;
use crate::tls::certs::{self, CertInfo, Certificate};

/// Why a control-plane request was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The tenant, version or other named thing does not exist.
    NotFound(String),
    /// The change conflicts with existing state (e.g. a host owned by another tenant).
    Conflict(String),
    /// The request or an uploaded artifact is invalid; `code` says which way.
    Invalid { code: &'static str, message: String },
    /// The caller may not do this (`403`), e.g. deploy code its tenant is not trusted with.
    Forbidden { code: &'static str, message: String },
    /// Corral cannot take this on now (`503` with `Retry-After`), e.g. every deploy slot is
    /// validating another upload.
    Busy { code: &'static str, message: String },
    /// The change would take the tenant past a quota (`507`).
    Quota { code: &'static str, message: String },
    /// Corral itself failed (I/O, a host bug).
    Internal(anyhow::Error),
}

impl Refusal {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

/// A tenant as the server holds it.
#[derive(Debug)]
struct Tenant {
    record: ArcSwap<TenantRecord>,
    live: ArcSwapOption<LiveDeployment>,
    /// Why the active deployment could not be restored, if it could not.
    unavailable: ArcSwapOption<String>,
    bounds: ArcSwap<TenantBounds>,
    /// The tenant's own TLS certificate, served for its host names.
    certificate: ArcSwapOption<Certificate>,
}

/// What a tenant's requests run under: its effective limits, its admission gate and its
/// guest-output budget. Replaced whole when the operator changes the limits; requests in
/// flight keep the one they started with.
#[derive(Debug)]
pub struct TenantBounds {
    pub sandbox: RequestSandbox,
    pub gate: Arc<Gate>,
}

/// Why an active deployment does not serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// It is being built after a restart.
    Restoring,
    /// Its restore failed, for this reason.
    Failed(String),
}

/// What a request's host name resolves to.
#[derive(Debug)]
pub enum Route {
    /// No tenant serves this host.
    UnknownHost,
    /// The tenant exists but has no active deployment.
    NoDeployment { tenant: Arc<str> },
    /// The tenant's active deployment cannot serve now: being restored, or its restore failed.
    Unavailable { tenant: Arc<str>, restoring: bool },
    Serve {
        tenant: Arc<str>,
        deployment: Arc<LiveDeployment>,
        bounds: Arc<TenantBounds>,
    },
}

/// A tenant's deployments, oldest first, and which one is active.
#[derive(Debug)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentRecord>,
    pub active: Option<u32>,
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
}

impl Tenancy {
    /// Restores every tenant from the store and activates their active deployments. A
    /// deployment that no longer builds is logged and left inactive (its tenant answers 503);
    /// other tenants are not held back by it. Blocking.
    pub fn open(platform: Arc<Platform>) -> anyhow::Result<Self> {
        let tenancy = Self {
            platform,
            tenants: DashMap::new(),
            hosts: DashMap::new(),
            tokens: DashMap::new(),
            changes: tokio::sync::Mutex::new(()),
            restored: std::sync::atomic::AtomicBool::new(false),
        };
        let store = &tenancy.platform.store;
        for name in store.list("tenants".as_ref())? {
            let record = match store.read_record::<TenantRecord>(&records::tenant_path(&name)) {
                Ok(record) => record,
                Err(e) => {
                    // One unreadable record must not keep every other tenant down.
                    tracing::error!(tenant = %name, error = ?e, "cannot read the tenant record; the tenant is not served, and no blob is collected");
                    store.keep_all_blobs();
                    continue;
                }
            };
            let Some(record) = record else {
                // A tenant whose creation or deletion was interrupted: nothing refers to it.
                tracing::info!(tenant = %name, "removing an incomplete tenant directory");
                store.remove_dir(&records::tenant_dir(&name))?;
                continue;
            };
            // Every stored deployment holds its blobs, active or not.
            match stored_deployments(&tenancy.platform, &name) {
                Ok(deployments) => {
                    for deployment in deployments {
                        store.refer(deployment.blobs());
                    }
                }
                Err(e) => {
                    tracing::error!(tenant = %name, error = ?e, "cannot read the tenant's deployments; no blob is collected until they read again");
                    store.keep_all_blobs();
                }
            }
            // Active deployments are built by `restore`, in parallel, once the server serves.
            let certificate = restore_certificate(store, &name);
            tracing::info!(tenant = %name, hosts = ?record.hosts, active = ?record.active, certificate = certificate.is_some(), "tenant read");
            tenancy.insert(record, None, certificate);
        }
        // Blobs of refused uploads, deleted tenants and collected deployments that a crash
        // (or an older version of Corral) left behind.
        match store.sweep() {
            Ok((0, _)) => {}
            Ok((blobs, bytes)) => tracing::info!(blobs, bytes, "unused blobs collected"),
            Err(e) => tracing::error!(error = ?e, "cannot collect unused blobs"),
        }
        Ok(tenancy)
    }

    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
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
                let reason = refusal_text(&refusal);
                tracing::error!(tenant = %name, version, reason = %reason, "cannot restore the active deployment; the tenant answers 503 until one is activated");
                tenant.unavailable.store(Some(Arc::new(reason)));
            }
        }
    }

    /// Whether the restore at start has ended (for `/readyz`).
    pub fn restored(&self) -> bool {
        self.restored.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Why the tenant's active deployment does not serve, if it does not.
    pub fn unavailable(&self, name: &str) -> Option<Unavailable> {
        let tenant = self.tenants.get(name)?;
        if tenant.live.load().is_some() || tenant.record.load().active.is_none() {
            return None;
        }
        Some(match tenant.unavailable.load_full() {
            Some(reason) => Unavailable::Failed((*reason).clone()),
            None => Unavailable::Restoring,
        })
    }

    fn insert(
        &self,
        record: TenantRecord,
        live: Option<Arc<LiveDeployment>>,
        certificate: Option<Certificate>,
    ) {
        let name: Arc<str> = Arc::from(record.name.as_str());
        for host in &record.hosts {
            self.hosts.insert(host.clone(), Arc::clone(&name));
        }
        self.tokens.insert(record.token_sha256, record.name.clone());
        let bounds = self.bounds(
            &name,
            &self.platform.default_limits.with(&record.limits),
            &record.outgoing_hosts,
        );
        self.tenants.insert(
            record.name.clone(),
            Arc::new(Tenant {
                record: ArcSwap::from_pointee(record),
                live: ArcSwapOption::new(live),
                unavailable: ArcSwapOption::empty(),
                bounds: ArcSwap::from_pointee(bounds),
                certificate: ArcSwapOption::new(certificate.map(Arc::new)),
            }),
        );
    }

    fn bounds(&self, tenant: &Arc<str>, limits: &Limits, outgoing: &[String]) -> TenantBounds {
        let counters = self.platform.metrics.tenant(tenant);
        let log = Arc::new(LogBudget::new(
            Arc::clone(tenant),
            limits.log_bytes_per_minute,
            Arc::clone(&counters),
        ));
        TenantBounds {
            sandbox: RequestSandbox {
                limits: Arc::new(limits.clone()),
                stdout: GuestOutput::Log(Arc::clone(&log)),
                stderr: GuestOutput::Log(log),
                outgoing_hosts: Arc::from(outgoing),
                counters: Arc::clone(&counters),
            },
            gate: Arc::new(Gate::new(limits, counters)),
        }
    }

    /// The effective limits for `overrides`, refused when invalid or beyond the engine's.
    fn effective_limits(&self, overrides: &LimitOverrides) -> Result<Limits, Refusal> {
        let limits = self.platform.default_limits.with(overrides);
        limits
            .check()
            .map_err(|m| Refusal::invalid("invalid_limits", m))?;
        let engine_max = self.platform.engine_settings.max_memory_bytes;
        if limits.memory_bytes > engine_max {
            return Err(Refusal::invalid(
                "invalid_limits",
                format!(
                    "limit 'memory_bytes' must be at most the engine's max_memory_bytes ({engine_max})"
                ),
            ));
        }
        Ok(limits)
    }

    /// A tenant's effective limits.
    pub fn limits(&self, name: &str) -> Result<Limits, Refusal> {
        Ok((*self.tenant(name)?.bounds.load().sandbox.limits).clone())
    }

    /// The deployment serving `host` (already normalized).
    pub fn route(&self, host: &str) -> Route {
        let Some(tenant) = self.hosts.get(host).map(|t| Arc::clone(t.value())) else {
            return Route::UnknownHost;
        };
        let Some(entry) = self.tenants.get(&*tenant).map(|t| Arc::clone(t.value())) else {
            return Route::UnknownHost;
        };
        match entry.live.load_full() {
            Some(deployment) => Route::Serve {
                tenant,
                deployment,
                bounds: entry.bounds.load_full(),
            },
            None => match self.unavailable(&tenant) {
                Some(Unavailable::Restoring) => Route::Unavailable {
                    tenant,
                    restoring: true,
                },
                Some(Unavailable::Failed(_)) => Route::Unavailable {
                    tenant,
                    restoring: false,
                },
                None => Route::NoDeployment { tenant },
            },
        }
    }

    /// The tenant serving `host` (already normalized), if any.
    pub fn tenant_of_host(&self, host: &str) -> Option<Arc<str>> {
        self.hosts.get(host).map(|t| Arc::clone(t.value()))
    }

    /// The certificate of the tenant serving `host` (already normalized), if it has one.
    pub fn certificate_for_host(&self, host: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let tenant = self.tenant_of_host(host)?;
        let entry = self.tenants.get(&*tenant)?;
        let certificate = entry.certificate.load();
        certificate.as_ref().map(|c| Arc::clone(&c.key))
    }

    /// What the tenant's certificate is, if it has one.
    pub fn certificate(&self, name: &str) -> Result<Option<CertInfo>, Refusal> {
        let tenant = self.tenant(name)?;
        let certificate = tenant.certificate.load();
        Ok(certificate.as_ref().map(|c| c.info.clone()))
    }

    /// Installs the tenant's certificate (PEM chain, leaf first, and its PEM key) after checking
    /// that the key matches, the certificate is valid now and it covers every host name of
    /// the tenant. New TLS connections use it at once; the one it replaces stays in use by
    /// connections already open.
    pub async fn put_certificate(
        &self,
        name: &str,
        cert: String,
        key: String,
    ) -> Result<CertInfo, Refusal> {
        let _changes = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        let invalid = |message: String| Refusal::invalid("invalid_certificate", message);
        let parsed = certs::parse(&cert, &key).map_err(invalid)?;
        let hosts = tenant.record.load().hosts.clone();
        let now = i64::try_from(records::now()).unwrap_or(i64::MAX);
        certs::check_usable(&parsed, &hosts, now).map_err(invalid)?;
        let stored = CertificateRecord {
            cert,
            key,
            uploaded: records::now(),
        };
        let platform = Arc::clone(&self.platform);
        let path = records::certificate_path(name);
        blocking(move || Ok(platform.store.write_record(&path, &stored)?)).await?;
        let info = parsed.info.clone();
        tenant.certificate.store(Some(Arc::new(parsed)));
        tracing::info!(tenant = %name, names = ?info.names, not_after = %certs::format_time(info.not_after), "certificate installed");
        Ok(info)
    }

    /// Removes the tenant's certificate; its host names get the default certificate again.
    pub async fn delete_certificate(&self, name: &str) -> Result<(), Refusal> {
        let _changes = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        if tenant.certificate.load().is_none() {
            return Err(Refusal::NotFound(format!(
                "tenant '{name}' has no certificate"
            )));
        }
        let platform = Arc::clone(&self.platform);
        let path = records::certificate_path(name);
        blocking(move || Ok(platform.store.remove_record(&path)?)).await?;
        tenant.certificate.store(None);
        tracing::info!(tenant = %name, "certificate removed");
        Ok(())
    }

    /// The tenant a tenant token belongs to.
    pub fn tenant_of_token(&self, token: &str) -> Option<String> {
        self.tokens
            .get(&records::token_hash(token))
            .map(|t| t.value().clone())
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Requests waiting for a slot, by tenant.
    pub fn queue_depths(&self) -> Vec<(String, u32)> {
        let mut depths: Vec<(String, u32)> = self
            .tenants
            .iter()
            .map(|t| (t.key().clone(), t.bounds.load().gate.waiting()))
            .collect();
        depths.sort_unstable();
        depths
    }

    pub fn list(&self) -> Vec<TenantRecord> {
        let mut all: Vec<TenantRecord> = self
            .tenants
            .iter()
            .map(|t| (**t.record.load()).clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn get(&self, name: &str) -> Result<TenantRecord, Refusal> {
        Ok((*self.tenant(name)?.record.load_full()).clone())
    }

    /// The tenant `name` if it is still `before` (not deleted, or deleted and recreated, while
    /// a change was being validated).
    fn same_tenant(&self, name: &str, before: &Arc<Tenant>) -> Result<Arc<Tenant>, Refusal> {
        let now = self.tenant(name)?;
        if !Arc::ptr_eq(&now, before) {
            return Err(Refusal::Conflict(format!(
                "tenant '{name}' was deleted while the change was being validated"
            )));
        }
        Ok(now)
    }

    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, Refusal> {
        self.tenants
            .get(name)
            .map(|t| Arc::clone(t.value()))
            .ok_or_else(|| Refusal::NotFound(format!("no tenant named '{name}'")))
    }

    /// Creates a tenant, or updates an existing one (each field of `update` is kept when
    /// `None`). Returns the record and, for a new tenant only, its token (shown once; only its
    /// hash is kept).
    pub async fn put_tenant(
        &self,
        name: &str,
        update: TenantUpdate,
    ) -> Result<(TenantRecord, Option<String>), Refusal> {
        let TenantUpdate {
            hosts,
            limits,
            outgoing_hosts,
            trusted_models,
        } = update;
        records::check_tenant_name(name).map_err(|m| Refusal::invalid("invalid_tenant", m))?;
        let outgoing_hosts = match outgoing_hosts {
            Some(list) => Some(normalize_outgoing(&list)?),
            None => None,
        };
        if let Some(overrides) = &limits {
            self.effective_limits(overrides)?;
        }
        let hosts = match hosts {
            Some(hosts) => Some(normalize_hosts(&hosts, "invalid_host")?),
            None => None,
        };
        let _changing = self.changes.lock().await;
        let existing = self.tenants.get(name).map(|t| Arc::clone(t.value()));
        let normalized = match (hosts, &existing) {
            (Some(hosts), _) => hosts,
            (None, Some(tenant)) => tenant.record.load().hosts.clone(),
            (None, None) => Vec::new(),
        };
        for host in &normalized {
            if let Some(owner) = self.hosts.get(host)
                && **owner != *name
            {
                return Err(Refusal::Conflict(format!(
                    "host '{host}' already belongs to another tenant"
                )));
            }
        }
        let (record, token) = match &existing {
            Some(tenant) => {
                let mut record = (**tenant.record.load()).clone();
                // Every name of a tenant with its own certificate is covered by it: a new name
                // needs a certificate for it first.
                if let Some(certificate) = tenant.certificate.load().as_ref() {
                    let added: Vec<String> = normalized
                        .iter()
                        .filter(|h| !record.hosts.contains(h))
                        .cloned()
                        .collect();
                    certs::check_covers(certificate, &added).map_err(|why| {
                        Refusal::invalid(
                            "certificate_mismatch",
                            format!(
                                "tenant '{name}' has its own certificate and {why}; upload one \
                                 that also covers the new host names \
                                 (PUT /v1/tenants/{name}/certificate) or remove it first"
                            ),
                        )
                    })?;
                }
                record.hosts = normalized;
                if let Some(limits) = limits {
                    record.limits = limits;
                }
                if let Some(outgoing) = outgoing_hosts {
                    record.outgoing_hosts = outgoing;
                }
                if let Some(trusted) = trusted_models {
                    record.trusted_models = trusted;
                }
                (record, None)
            }
            None => {
                let token = records::new_token("corral_t")?;
                let record = TenantRecord {
                    name: name.to_owned(),
                    hosts: normalized,
                    token_sha256: records::token_hash(&token),
                    created: records::now(),
                    active: None,
                    limits: limits.unwrap_or_default(),
                    outgoing_hosts: outgoing_hosts.unwrap_or_default(),
                    trusted_models: trusted_models.unwrap_or(false),
                };
                (record, Some(token))
            }
        };
        // Validate everything before writing, so a refusal changes nothing.
        let limits = self.effective_limits(&record.limits)?;
        let mut record = record;
        let revoked = self.revoke_untrusted(name, &mut record).await?;
        self.write_tenant(&record).await?;
        if revoked && let Some(tenant) = &existing {
            tenant.live.store(None);
        }
        match existing {
            Some(tenant) => {
                let old = tenant.record.load_full();
                // Requests in flight keep the gate they entered; replace it only when the
                // limits or outgoing hosts actually changed.
                if old.limits != record.limits || old.outgoing_hosts != record.outgoing_hosts {
                    let bounds = self.bounds(&Arc::from(name), &limits, &record.outgoing_hosts);
                    tenant.bounds.store(Arc::new(bounds));
                }
                tenant.record.store(Arc::new(record.clone()));
                for host in old.hosts.iter().filter(|h| !record.hosts.contains(h)) {
                    self.hosts.remove(host);
                }
                let name: Arc<str> = Arc::from(name);
                for host in &record.hosts {
                    self.hosts.insert(host.clone(), Arc::clone(&name));
                }
            }
            None => self.insert(record.clone(), None, None),
        }
        Ok((record, token))
    }

    /// When `record` (about to be written) no longer trusts its tenant's models and its
    /// active deployment holds TorchScript, that deployment stops serving: it is made
    /// inactive in `record` (the tenant answers 503 until it activates a version without
    /// TorchScript, or is trusted again and re-activates). Returns whether it was.
    async fn revoke_untrusted(
        &self,
        name: &str,
        record: &mut TenantRecord,
    ) -> Result<bool, Refusal> {
        let Some(version) = record.active.filter(|_| !record.trusted_models) else {
            return Ok(false);
        };
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        let deployment = blocking(move || {
            Ok(platform
                .store
                .read_record::<DeploymentRecord>(&records::deployment_path(&store_name, version))?)
        })
        .await?;
        let Some(deployment) = deployment else {
            return Ok(false);
        };
        if check_trust(name, record, &deployment).is_ok() {
            return Ok(false);
        }
        tracing::warn!(tenant = %name, version, "the tenant's models are no longer trusted; its TorchScript deployment stops serving");
        record.active = None;
        Ok(true)
    }

    /// Deletes a tenant and all its deployment records. Requests in flight finish.
    pub async fn delete_tenant(&self, name: &str) -> Result<(), Refusal> {
        let _changing = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        let store_name = name.to_owned();
        let platform = Arc::clone(&self.platform);
        // The record goes first: a crash after it leaves a directory that `open` removes (and
        // blobs that the next start collects).
        blocking(move || {
            let blobs: Vec<Digest> = stored_deployments(&platform, &store_name)?
                .iter()
                .flat_map(DeploymentRecord::blobs)
                .collect();
            platform
                .store
                .remove_record(&records::tenant_path(&store_name))?;
            platform
                .store
                .remove_dir(&records::tenant_dir(&store_name))?;
            platform.store.release(blobs);
            Ok(())
        })
        .await?;
        let record = tenant.record.load_full();
        for host in &record.hosts {
            self.hosts.remove(host);
        }
        self.tokens.remove(&record.token_sha256);
        self.tenants.remove(name);
        tenant.live.store(None);
        self.platform.metrics.forget_tenant(name);
        self.platform.inference.scheduler().forget_tenant(name);
        Ok(())
    }

    /// Every deployment of a tenant, by version.
    pub async fn deployments(&self, name: &str) -> Result<DeploymentList, Refusal> {
        let tenant = self.tenant(name)?;
        let platform = Arc::clone(&self.platform);
        let dir_name = name.to_owned();
        let deployments = blocking(move || Ok(stored_deployments(&platform, &dir_name)?)).await?;
        Ok(DeploymentList {
            deployments,
            active: tenant.record.load().active,
        })
    }

    /// Validates and stores a new deployment of blobs already in the store, then activates it.
    pub async fn deploy(
        &self,
        name: &str,
        component: Digest,
        models: BTreeMap<String, ModelRef>,
        config: records::DeploymentConfig,
    ) -> Result<DeploymentRecord, Refusal> {
        let before = self.tenant(name)?;
        let mut record = DeploymentRecord {
            version: 0,
            component,
            models,
            created: records::now(),
            config,
        };
        check_trust(name, &before.record.load(), &record)?;
        // Validation (compilation, model loading) runs before the lock: uploads to different
        // tenants, or a slow compile, never hold up other changes. It holds a deploy slot
        // until the work has really ended, even past the deploy timeout.
        let slot = self.deploy_slot()?;
        let platform = Arc::clone(&self.platform);
        let candidate = record.clone();
        let tenant_name = name.to_owned();
        let limits = self
            .platform
            .default_limits
            .with(&before.record.load().limits);
        let live = self
            .within_deploy_timeout(blocking(move || {
                let _slot = slot;
                platform.build(&tenant_name, &candidate, Validation::Deploy(&limits))
            }))
            .await?;
        let _changing = self.changes.lock().await;
        let tenant = self.same_tenant(name, &before)?;
        // Trust may have been revoked while this deployment was being validated.
        check_trust(name, &tenant.record.load(), &record)?;
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        record.version = blocking(move || {
            Ok(versions(&platform, &store_name)?
                .last()
                .map_or(1, |v| v + 1))
        })
        .await?;
        let platform = Arc::clone(&self.platform);
        let (store_name, to_store) = (name.to_owned(), record.clone());
        blocking(move || {
            platform.store.write_record(
                &records::deployment_path(&store_name, to_store.version),
                &to_store,
            )?;
            platform.store.refer(to_store.blobs());
            Ok(())
        })
        .await?;
        self.activate_live(
            &tenant,
            LiveDeployment {
                version: record.version,
                service: live.service,
                component: live.component,
            },
        )
        .await?;
        tracing::info!(tenant = %name, version = record.version, component = %record.component, "deployment activated");
        // The deployment is active: a failure to collect old ones is the next deploy's work.
        if let Err(refusal) = self.collect_old_deployments(&tenant).await {
            tracing::warn!(tenant = %name, reason = %refusal_text(&refusal), "cannot collect old deployments");
        }
        Ok(record)
    }

    /// A deploy slot ([`Platform::deploy_slots`]), or `503 deploys_busy`.
    fn deploy_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        Arc::clone(&self.platform.deploy_slots)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy {
                code: "deploys_busy",
                message: format!(
                    "this server is validating {} deployments already; retry shortly",
                    self.platform.deploy_slots_total
                ),
            })
    }

    /// Removes the tenant's deployments beyond the newest [`Platform::keep_deployments`]
    /// (never the active one), then the blobs nothing else holds. Call with the changes lock
    /// held. A crash part-way leaves records that are still whole and blobs that the next
    /// start collects.
    async fn collect_old_deployments(&self, tenant: &Tenant) -> Result<(), Refusal> {
        let record = tenant.record.load_full();
        let keep = self.platform.keep_deployments;
        let platform = Arc::clone(&self.platform);
        blocking(move || {
            let versions = versions(&platform, &record.name)?;
            let old = versions.len().saturating_sub(keep);
            for &version in &versions[..old] {
                if record.active == Some(version) {
                    continue;
                }
                let path = records::deployment_path(&record.name, version);
                let Some(deployment) = platform.store.read_record::<DeploymentRecord>(&path)?
                else {
                    continue;
                };
                platform.store.remove_record(&path)?;
                platform.store.release(deployment.blobs());
                tracing::info!(tenant = %record.name, version, "old deployment collected");
            }
            Ok(())
        })
        .await
    }

    /// Deletes a stored deployment that is not the active one, and the blobs only it used.
    pub async fn delete_deployment(&self, name: &str, version: u32) -> Result<(), Refusal> {
        let _changing = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        if tenant.record.load().active == Some(version) {
            return Err(Refusal::Conflict(format!(
                "version {version} is the active deployment of '{name}'; activate another first"
            )));
        }
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        blocking(move || {
            let path = records::deployment_path(&store_name, version);
            let deployment = platform
                .store
                .read_record::<DeploymentRecord>(&path)?
                .ok_or_else(|| {
                    Refusal::NotFound(format!("tenant '{store_name}' has no version {version}"))
                })?;
            platform.store.remove_record(&path)?;
            platform.store.release(deployment.blobs());
            Ok(())
        })
        .await
    }

    /// Bytes of the blobs the tenant's stored deployments hold (each distinct blob once).
    pub async fn storage_used(&self, name: &str) -> Result<u64, Refusal> {
        /// Reads of stored records at once for this: every upload starts with one, and a
        /// burst of uploads must not take a blocking thread each.
        static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
        self.tenant(name)?;
        let _read = READS
            .acquire()
            .await
            .map_err(|e| Refusal::Internal(e.into()))?;
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        blocking(move || {
            let blobs: std::collections::BTreeSet<Digest> =
                stored_deployments(&platform, &store_name)?
                    .iter()
                    .flat_map(DeploymentRecord::blobs)
                    .collect();
            Ok(blobs.iter().map(|d| platform.store.blob_len(d)).sum())
        })
        .await
    }

    /// Makes an existing version the active one (roll back or forward).
    pub async fn activate(&self, name: &str, version: u32) -> Result<DeploymentRecord, Refusal> {
        let before = self.tenant(name)?;
        let before_record = before.record.load_full();
        let slot = self.deploy_slot()?;
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        let (record, live) = self
            .within_deploy_timeout(blocking(move || {
                let _slot = slot;
                let record = platform
                    .store
                    .read_record::<DeploymentRecord>(&records::deployment_path(
                        &store_name,
                        version,
                    ))?
                    .ok_or_else(|| {
                        Refusal::NotFound(format!("tenant '{store_name}' has no version {version}"))
                    })?;
                check_trust(&store_name, &before_record, &record)?;
                let limits = platform.default_limits.with(&before_record.limits);
                let live = platform.build(&store_name, &record, Validation::Deploy(&limits))?;
                Ok((record, live))
            }))
            .await?;
        let _changing = self.changes.lock().await;
        let tenant = self.same_tenant(name, &before)?;
        check_trust(name, &tenant.record.load(), &record)?;
        self.activate_live(&tenant, live).await?;
        tracing::info!(tenant = %name, version, "deployment activated");
        Ok(record)
    }

    /// Bounds validation in time. ONNX Runtime cannot cancel a load: a load past the limit
    /// finishes on its blocking thread and is then dropped.
    async fn within_deploy_timeout<T>(
        &self,
        work: impl Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        let limit = self.platform.deploy_timeout;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Refusal::invalid(
                "deploy_timeout",
                format!(
                    "compiling the component and loading its models took longer than {} s",
                    limit.as_secs_f64()
                ),
            ))
        })
    }

    /// Records `live` as the tenant's active version, then swaps it in. Call with the
    /// changes lock held.
    async fn activate_live(&self, tenant: &Tenant, live: LiveDeployment) -> Result<(), Refusal> {
        let mut record = (**tenant.record.load()).clone();
        record.active = Some(live.version);
        self.write_tenant(&record).await?;
        tenant.record.store(Arc::new(record));
        tenant.live.store(Some(Arc::new(live)));
        tenant.unavailable.store(None);
        Ok(())
    }

    async fn write_tenant(&self, record: &TenantRecord) -> Result<(), Refusal> {
        let platform = Arc::clone(&self.platform);
        let record = record.clone();
        blocking(move || {
            platform
                .store
                .write_record(&records::tenant_path(&record.name), &record)
                .context("cannot save the tenant")?;
            Ok(())
        })
        .await
    }

    /// The service serving a tenant now, if any (for tests and metrics).
    pub fn active_service(&self, name: &str) -> Option<Arc<Service>> {
        self.tenants
            .get(name)
            .and_then(|t| t.live.load_full())
            .map(|live| Arc::clone(&live.service))
    }
}

/// Builds a stored version for restore, checking the tenant's trust again: a record changed
/// while the server was stopped never serves TorchScript the operator has not trusted.
fn load_version(
    platform: &Platform,
    tenant: &TenantRecord,
    version: u32,
) -> Result<LiveDeployment, Refusal> {
    let name = &tenant.name;
    let record = platform
        .store
        .read_record::<DeploymentRecord>(&records::deployment_path(name, version))?
        .ok_or_else(|| Refusal::NotFound(format!("version {version} has no record")))?;
    check_trust(name, tenant, &record)?;
    platform.build(name, &record, Validation::Restore)
}

/// A refusal as one line for a tenant's status.
fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NotFound(message) | Refusal::Conflict(message) => message.clone(),
        Refusal::Invalid { message, .. }
        | Refusal::Forbidden { message, .. }
        | Refusal::Busy { message, .. }
        | Refusal::Quota { message, .. } => message.clone(),
        Refusal::Internal(e) => format!("{e:#}"),
    }
}

/// What `PUT /v1/tenants/{tenant}` may change; `None` keeps the current value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    pub hosts: Option<Vec<String>>,
    pub limits: Option<LimitOverrides>,
    pub outgoing_hosts: Option<Vec<String>>,
    /// Whether the tenant may deploy TorchScript models (which run as code).
    pub trusted_models: Option<bool>,
}

/// Normalized, de-duplicated host names; `code` names the field when one is invalid.
fn normalize_hosts(hosts: &[String], code: &'static str) -> Result<Vec<String>, Refusal> {
    let mut normalized = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = records::normalize_host(host).ok_or_else(|| {
            Refusal::invalid(
                code,
                format!("'{}' is not a valid host name", host.escape_debug()),
            )
        })?;
        if !normalized.contains(&host) {
            normalized.push(host);
        }
    }
    Ok(normalized)
}

/// Outgoing-HTTP entries: `host` (any port) or `host:port`, normalized.
fn normalize_outgoing(entries: &[String]) -> Result<Vec<String>, Refusal> {
    let mut normalized = Vec::with_capacity(entries.len());
    for entry in entries {
        let invalid = || {
            Refusal::invalid(
                "invalid_outgoing_host",
                format!("'{}' is not a host name or host:port", entry.escape_debug()),
            )
        };
        let port = match entry.rsplit_once(':') {
            Some((_, port)) => Some(port.parse::<u16>().map_err(|_| invalid())?),
            None => None,
        };
        let host = records::normalize_host(entry).ok_or_else(invalid)?;
        let value = match port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        if !normalized.contains(&value) {
            normalized.push(value);
        }
    }
    Ok(normalized)
}

/// The versions stored for a tenant, ascending.
fn versions(platform: &Platform, tenant: &str) -> anyhow::Result<Vec<u32>> {
    let mut versions: Vec<u32> = platform
        .store
        .list(&records::deployments_dir(tenant))?
        .iter()
        .filter_map(|file| file.strip_suffix(".json")?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Every stored deployment record of a tenant, by version. Blocking.
fn stored_deployments(platform: &Platform, tenant: &str) -> anyhow::Result<Vec<DeploymentRecord>> {
    let mut all = Vec::new();
    for version in versions(platform, tenant)? {
        if let Some(record) = platform
            .store
            .read_record::<DeploymentRecord>(&records::deployment_path(tenant, version))?
        {
            all.push(record);
        }
    }
    Ok(all)
}

/// Refuses a deployment with TorchScript models for a tenant the operator has not trusted:
/// PyTorch's security policy treats TorchScript as executable code.
fn check_trust(
    name: &str,
    tenant: &TenantRecord,
    deployment: &DeploymentRecord,
) -> Result<(), Refusal> {
    if tenant.trusted_models {
        return Ok(());
    }
    let untrusted = deployment
        .models
        .iter()
        .find(|(_, model)| model.format == ModelFormat::Pytorch);
    match untrusted {
        None => Ok(()),
        Some((model, _)) => Err(Refusal::Forbidden {
            code: "untrusted_model",
            message: format!(
                "model '{model}' is TorchScript, which runs as code (PyTorch's security \
                 policy); tenant '{name}' may deploy it only once the operator trusts its \
                 models: PUT /v1/tenants/{name} {{\"trusted_models\": true}}"
            ),
        }),
    }
}

/// The certificate stored for a tenant, if it still parses. An expired one is still served
/// (and logged): the tenant or operator replaces it.
fn restore_certificate(store: &crate::store::Store, tenant: &str) -> Option<Certificate> {
    let stored = match store.read_record::<CertificateRecord>(&records::certificate_path(tenant)) {
        Ok(stored) => stored?,
        Err(e) => {
            tracing::error!(tenant = %tenant, error = ?e, "cannot read the tenant's certificate; it gets the default one");
            return None;
        }
    };
    match certs::parse(&stored.cert, &stored.key) {
        Ok(certificate) => {
            let now = i64::try_from(records::now()).unwrap_or(i64::MAX);
            if certificate.info.not_after < now {
                tracing::warn!(tenant = %tenant, not_after = %certs::format_time(certificate.info.not_after), "the tenant's certificate has expired");
            }
            Some(certificate)
        }
        Err(message) => {
            tracing::error!(tenant = %tenant, error = %message, "the stored certificate does not parse; the tenant gets the default one");
            None
        }
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
