//! A tenant's stored deployment turned into one that serves: its record's blobs become the
//! parts the process's [`DeploymentBuilder`] builds from.

use std::sync::Arc;

use wasmtime::component::Component;

use crate::backends::models::ModelKey;
use crate::deployment::{BuildError, DeploymentBuilder, ModelPart, Parts, Validation};
use crate::engine::{EngineSettings, Service};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::records::DeploymentRecord;

/// What the tenancy shares with every deployment it builds, and its settings.
#[derive(Debug)]
pub struct Platform {
    pub store: Arc<Store>,
    pub builder: DeploymentBuilder,
    /// What tenants' limits are checked against.
    pub engine_settings: EngineSettings,
    /// Limits of tenants that do not override them.
    pub default_limits: Limits,
    pub metrics: Arc<Metrics>,
    /// How long validating an upload (compiling, loading models) may take.
    pub deploy_timeout: std::time::Duration,
    /// Deployments being validated at once (`[store] concurrent_deploys`); a slot is held
    /// until the validation's work has ended.
    pub deploy_slots: Arc<tokio::sync::Semaphore>,
    pub deploy_slots_total: usize,
    /// Deployments kept per tenant (`[store] keep_deployments`).
    pub keep_deployments: usize,
}

/// A deployment that serves requests: the version and its linked, pre-instantiated component.
#[derive(Debug)]
pub struct LiveDeployment {
    pub version: u32,
    pub service: Arc<Service>,
    /// Keeps the compiled component shared with other deployments of the same bytes.
    pub component: Arc<Component>,
}

impl Platform {
    /// Builds a serving deployment from its record. Blocking and possibly slow (compilation,
    /// model loading): call it from a blocking pool.
    pub fn build(
        &self,
        tenant: &str,
        record: &DeploymentRecord,
        validation: Validation<'_>,
    ) -> Result<LiveDeployment, BuildError> {
        let blobs = &self.store.blobs;
        let mut models = Vec::with_capacity(record.models.len());
        for (name, model) in &record.models {
            models.push(ModelPart {
                name: name.clone(),
                key: ModelKey {
                    digest: model.digest,
                    format: model.format,
                },
                path: blobs.local_path(&model.digest).map_err(BuildError::Store)?,
            });
        }
        let parts = Parts {
            component: record.component,
            component_bytes: &|| blobs.read(&record.component),
            models,
            config: &record.config,
        };
        let built = self.builder.build(tenant, parts, validation)?;
        Ok(LiveDeployment {
            version: record.version,
            service: built.service,
            component: built.component,
        })
    }
}
