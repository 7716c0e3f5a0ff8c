//! Creating, changing and deleting tenants: host names, limits, outgoing hosts and trust.

use std::sync::Arc;

use super::deploy::check_trust;
use super::hostname::{normalize_hosts, normalize_outgoing};
use super::tokens;
use super::{Refusal, Tenancy, blocking};
use crate::error::ErrorCode;
use crate::limits::{LimitOverrides, Limits};
use crate::store::records::{self, DeploymentRecord, TenantRecord};
use crate::store::{Generation, RecordError};
use crate::tls::certs;

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

impl Tenancy {
    /// The effective limits for `overrides`, refused when invalid or beyond the engine's.
    fn effective_limits(&self, overrides: &LimitOverrides) -> Result<Limits, Refusal> {
        let limits = self.platform.default_limits.with(overrides);
        limits
            .check()
            .map_err(|m| Refusal::new(ErrorCode::InvalidLimits, m))?;
        self.platform
            .engine_settings
            .check_limits(&limits)
            .map_err(|m| Refusal::new(ErrorCode::InvalidLimits, m))?;
        Ok(limits)
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
        records::check_tenant_name(name).map_err(|m| Refusal::new(ErrorCode::InvalidTenant, m))?;
        let outgoing_hosts = match outgoing_hosts {
            Some(list) => Some(normalize_outgoing(&list)?),
            None => None,
        };
        if let Some(overrides) = &limits {
            self.effective_limits(overrides)?;
        }
        let hosts = match hosts {
            Some(hosts) => Some(normalize_hosts(&hosts, ErrorCode::InvalidHost)?),
            None => None,
        };
        self.up_to_date(name).await?;
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
                return Err(Refusal::conflict(format!(
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
                        Refusal::new(
                            ErrorCode::CertificateMismatch,
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
                let token = tokens::new_token("corral_t")?;
                let record = TenantRecord {
                    name: name.to_owned(),
                    hosts: normalized,
                    token_sha256: tokens::token_hash(&token),
                    created: crate::clock::now(),
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
        let expected = existing
            .as_ref()
            .map_or(Generation::ABSENT, |tenant| tenant.generation());
        let generation = self.write_tenant(&record, expected).await?;
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
                tenant.set_generation(generation);
                for host in old.hosts.iter().filter(|h| !record.hosts.contains(h)) {
                    self.hosts.remove(host);
                }
                let name: Arc<str> = Arc::from(name);
                for host in &record.hosts {
                    self.hosts.insert(host.clone(), Arc::clone(&name));
                }
            }
            None => self.insert(record.clone(), generation, None, None),
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
        let deployment =
            blocking(move || Ok(platform.store.records.deployment(&store_name, version)?)).await?;
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
        self.up_to_date(name).await?;
        let _changing = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        let store_name = name.to_owned();
        let platform = Arc::clone(&self.platform);
        let expected = tenant.generation();
        // A crash part-way leaves blobs that the next start collects.
        blocking(move || {
            let deployments = platform
                .store
                .records
                .delete_tenant(&store_name, expected)
                .map_err(record_refusal)?;
            platform
                .store
                .blobs
                .release(deployments.iter().flat_map(DeploymentRecord::blobs));
            Ok(())
        })
        .await?;
        self.forget(name, &tenant);
        Ok(())
    }

    /// Writes the tenant's record if it is still at `expected`; its new generation.
    pub(super) async fn write_tenant(
        &self,
        record: &TenantRecord,
        expected: Generation,
    ) -> Result<Generation, Refusal> {
        let platform = Arc::clone(&self.platform);
        let record = record.clone();
        blocking(move || {
            platform
                .store
                .records
                .put_tenant(&record, expected)
                .map_err(record_refusal)
        })
        .await
    }
}

/// A refused record write as the caller sees it: a conflict with another writer, or the
/// store's failure.
fn record_refusal(error: RecordError) -> Refusal {
    match error {
        RecordError::Conflict { tenant, .. } => Refusal::conflict(format!(
            "tenant '{tenant}' was changed by another request meanwhile; retry"
        )),
        // Another server claimed it first (a shared store decides).
        RecordError::HostTaken { host, .. } => {
            Refusal::conflict(format!("host '{host}' already belongs to another tenant"))
        }
        RecordError::Store(e) => Refusal::Internal(e.context("cannot save the tenant")),
    }
}
