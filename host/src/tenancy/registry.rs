//! The registry requests are routed by: host name → tenant → its live deployment and bounds,
//! token → tenant, and what each tenant's requests run under.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use super::tokens;
use super::{LiveDeployment, Refusal, Tenancy, Tenant};
use crate::engine::log::{GuestOutput, LogBudget};
use crate::engine::{RequestSandbox, Service};
use crate::http::bounds::Gate;
use crate::limits::Limits;
use crate::store::Generation;
use crate::store::records::TenantRecord;
use crate::tls::certs::Certificate;

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

impl Tenancy {
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

    pub(super) fn insert(
        &self,
        record: TenantRecord,
        generation: Generation,
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
                generation: generation.0.into(),
                live: ArcSwapOption::new(live),
                unavailable: ArcSwapOption::empty(),
                bounds: ArcSwap::from_pointee(bounds),
                certificate: ArcSwapOption::new(certificate.map(Arc::new)),
            }),
        );
    }

    pub(super) fn bounds(
        &self,
        tenant: &Arc<str>,
        limits: &Limits,
        outgoing: &[String],
    ) -> TenantBounds {
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

    /// The tenant a tenant token belongs to.
    pub fn tenant_of_token(&self, token: &str) -> Option<String> {
        self.tokens
            .get(&tokens::token_hash(token))
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

    /// The service serving a tenant now, if any (for tests and metrics).
    pub fn active_service(&self, name: &str) -> Option<Arc<Service>> {
        self.tenants
            .get(name)
            .and_then(|t| t.live.load_full())
            .map(|live| Arc::clone(&live.service))
    }
}
