//! Deployments of a tenant: deploy (validate, store, activate), activate an earlier version,
//! list, delete, collect old ones, and the storage they hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{LiveDeployment, Refusal, Tenancy, Tenant, Validation, blocking};
use crate::backends::models::ModelFormat;
use crate::error::ErrorCode;
use crate::store::record_store::ActiveDeployment;
use crate::store::records::{DeploymentConfig, DeploymentRecord, ModelRef, TenantRecord};
use crate::store::{Digest, stored_deployments};

/// A tenant's deployments, oldest first, and which one is active.
#[derive(Debug)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentRecord>,
    pub active: Option<u32>,
}

impl Tenancy {
    /// Every deployment of a tenant, by version.
    pub async fn deployments(&self, name: &str) -> Result<DeploymentList, Refusal> {
        let tenant = self.tenant(name)?;
        let platform = Arc::clone(&self.platform);
        let dir_name = name.to_owned();
        let deployments =
            blocking(move || Ok(stored_deployments(&*platform.store.records, &dir_name)?)).await?;
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
        config: DeploymentConfig,
    ) -> Result<DeploymentRecord, Refusal> {
        self.up_to_date(name).await?;
        let before = self.tenant(name)?;
        let record = DeploymentRecord {
            // Allocated by the store when the deployment is recorded.
            version: 0,
            component,
            models,
            created: crate::clock::now(),
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
                Ok(platform.build(&tenant_name, &candidate, Validation::Deploy(&limits))?)
            }))
            .await?;
        let _changing = self.changes.lock().await;
        let tenant = self.same_tenant(name, &before)?;
        // Trust may have been revoked while this deployment was being validated.
        check_trust(name, &tenant.record.load(), &record)?;
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        let record = blocking(move || {
            let record = platform.store.records.add_deployment(&store_name, record)?;
            platform.store.blobs.refer(record.blobs());
            Ok(record)
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
            tracing::warn!(tenant = %name, reason = %refusal, "cannot collect old deployments");
        }
        Ok(record)
    }

    /// A deploy slot ([`Platform::deploy_slots`]), or `503 deploys_busy`.
    fn deploy_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        Arc::clone(&self.platform.deploy_slots)
            .try_acquire_owned()
            .map_err(|_| {
                Refusal::new(
                    ErrorCode::DeploysBusy,
                    format!(
                        "this server is validating {} deployments already; retry shortly",
                        self.platform.deploy_slots_total
                    ),
                )
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
            let store = &platform.store;
            let versions = store.records.versions(&record.name)?;
            let old = versions.len().saturating_sub(keep);
            for &version in &versions[..old] {
                if record.active == Some(version) {
                    continue;
                }
                if let Some(deployment) = store.records.remove_deployment(&record.name, version)? {
                    store.blobs.release(deployment.blobs());
                    tracing::info!(tenant = %record.name, version, "old deployment collected");
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes a stored deployment that is not the active one, and the blobs only it used.
    pub async fn delete_deployment(&self, name: &str, version: u32) -> Result<(), Refusal> {
        self.up_to_date(name).await?;
        let _changing = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        if tenant.record.load().active == Some(version) {
            return Err(Refusal::conflict(format!(
                "version {version} is the active deployment of '{name}'; activate another first"
            )));
        }
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        blocking(move || {
            let deployment = platform
                .store
                .records
                .remove_deployment(&store_name, version)
                .map_err(|e| match e.downcast_ref::<ActiveDeployment>() {
                    // Another server activated it after this one last heard.
                    Some(active) => Refusal::conflict(active.to_string()),
                    None => Refusal::Internal(e),
                })?
                .ok_or_else(|| {
                    Refusal::not_found(format!("tenant '{store_name}' has no version {version}"))
                })?;
            platform.store.blobs.release(deployment.blobs());
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
                stored_deployments(&*platform.store.records, &store_name)?
                    .iter()
                    .flat_map(DeploymentRecord::blobs)
                    .collect();
            Ok(blobs.iter().map(|d| platform.store.blobs.len(d)).sum())
        })
        .await
    }

    /// Makes an existing version the active one (roll back or forward).
    pub async fn activate(&self, name: &str, version: u32) -> Result<DeploymentRecord, Refusal> {
        self.up_to_date(name).await?;
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
                    .records
                    .deployment(&store_name, version)?
                    .ok_or_else(|| {
                        Refusal::not_found(format!(
                            "tenant '{store_name}' has no version {version}"
                        ))
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
    pub(super) async fn within_deploy_timeout<T>(
        &self,
        work: impl Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        let limit = self.platform.deploy_timeout;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Refusal::new(
                ErrorCode::DeployTimeout,
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
        let generation = self.write_tenant(&record, tenant.generation()).await?;
        tenant.record.store(Arc::new(record));
        tenant.set_generation(generation);
        tenant.live.store(Some(Arc::new(live)));
        tenant.unavailable.store(None);
        Ok(())
    }
}

/// Refuses a deployment with TorchScript models for a tenant the operator has not trusted:
/// PyTorch's security policy treats TorchScript as executable code.
pub(super) fn check_trust(
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
        Some((model, _)) => Err(Refusal::new(
            ErrorCode::UntrustedModel,
            format!(
                "model '{model}' is TorchScript, which runs as code (PyTorch's security \
                 policy); tenant '{name}' may deploy it only once the operator trusts its \
                 models: PUT /v1/tenants/{name} {{\"trusted_models\": true}}"
            ),
        )),
    }
}
