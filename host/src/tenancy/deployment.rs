//! Turning a stored deployment into one that serves: compile (or load from the cache) the
//! component, load each model on the shared session pool, link. Every failure is a
//! [`Refusal`] naming the part at fault, and nothing is activated until all of it succeeded.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::Refusal;
use super::records::DeploymentRecord;
use crate::backends::ErrorKind;
use crate::backends::models::{InferencePool, Model, ModelFormat, ModelSet, SessionPool};
use crate::backends::onnx::{ModelCheckError, check_self_contained};
use crate::engine::{CompileError, ComponentCache, EngineSettings, LinkError, Service};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::nn::NnCtx;
use crate::store::Store;

/// What every deployment of the process shares.
#[derive(Debug)]
pub struct Platform {
    pub engine: Engine,
    pub store: Store,
    pub sessions: SessionPool,
    pub components: ComponentCache,
    pub inference: Arc<InferencePool>,
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
    ) -> Result<LiveDeployment, Refusal> {
        let component = self
            .components
            .load(&self.engine, &self.store, &record.component)
            .map_err(|e| match e {
                CompileError::Invalid(message) => Refusal::invalid("invalid_component", message),
                CompileError::Store(e) => Refusal::Internal(e),
            })?;
        let mut models = ModelSet::default();
        for (name, model) in &record.models {
            let session = match self.sessions.get(model.digest, model.format) {
                Some(session) => session,
                None => {
                    let bytes = self
                        .store
                        .read_blob(&model.digest)
                        .map_err(Refusal::Internal)?;
                    let invalid = |message: String| {
                        Refusal::invalid("invalid_model", format!("model '{name}': {message}"))
                    };
                    if model.format == ModelFormat::Onnx {
                        check_self_contained(&bytes).map_err(|e| match e {
                            ModelCheckError::ExternalData(_) => {
                                Refusal::invalid("external_data", format!("model '{name}': {e}"))
                            }
                            ModelCheckError::Malformed(_) => invalid(e.to_string()),
                        })?;
                    }
                    let (_, session) =
                        self.sessions
                            .load(&bytes, model.format)
                            .map_err(|e| match e.kind {
                                ErrorKind::RuntimeError => Refusal::Internal(anyhow::anyhow!(
                                    "cannot load model '{name}': {}",
                                    e.message
                                )),
                                _ => invalid(e.message),
                            })?;
                    session
                }
            };
            models.insert(Model::new(name.clone(), model.digest, session));
        }
        let nn = NnCtx::new(Arc::new(models), Arc::clone(&self.inference), tenant);
        let service = Service::new(&self.engine, &component, nn).map_err(|e| match e {
            LinkError::Import(_) => Refusal::invalid("unsatisfied_import", e.to_string()),
            LinkError::Export(_) => Refusal::invalid("missing_export", e.to_string()),
            LinkError::Host(e) => Refusal::Internal(e),
        })?;
        Ok(LiveDeployment {
            version: record.version,
            service: Arc::new(service),
            component,
        })
    }
}
