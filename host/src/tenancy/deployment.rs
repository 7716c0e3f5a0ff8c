//! Turning a stored deployment into one that serves: compile (or load from the cache) the
//! component, load each model into the model cache (or find it there), link. Every failure is a
//! [`BuildError`] naming the part at fault, and nothing is activated until all of it succeeded.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::records::DeploymentRecord;
use crate::backends::models::{ModelFile, ModelKey};
use crate::backends::{ErrorKind, InferenceError};
use crate::engine::{CompileError, ComponentCache, EngineSettings, LinkError, Service};
use crate::error::{ErrorCode, Refusal};
use crate::inference::{Inference, LoadError, Model, ModelSet, Room};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::nn::NnCtx;
use crate::store::Store;

/// Why a deployment does not build: the part at fault, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The component does not compile.
    #[error(transparent)]
    Component(CompileError),
    /// It does not link (an import Corral lacks, no `wasi:http` handler).
    #[error(transparent)]
    Link(LinkError),
    /// The backend refused a model's bytes.
    #[error("model '{name}': {}", source.message)]
    InvalidModel {
        name: String,
        source: InferenceError,
    },
    /// An ONNX model refers to files outside itself (checked by the backend on every load).
    #[error("model '{name}': {}", source.message)]
    ExternalData {
        name: String,
        source: InferenceError,
    },
    /// The backend or the store failed while loading a model: not the model's fault.
    #[error("cannot load model '{name}': {}", source.message)]
    ModelLoad {
        name: String,
        source: InferenceError,
    },
    /// A model is larger loaded than the whole model memory budget.
    #[error(
        "model '{name}' needs {bytes} bytes loaded, more than the server's model memory budget \
         of {budget} bytes"
    )]
    ModelTooLarge {
        name: String,
        bytes: u64,
        budget: u64,
    },
    /// Models in use hold the budget now.
    #[error(
        "model '{name}' ({bytes} bytes) cannot be loaded now: models in use hold the server's \
         model memory budget of {budget} bytes; retry shortly"
    )]
    ModelsBusy {
        name: String,
        bytes: u64,
        budget: u64,
    },
    /// Together the models are over the tenant's `model_bytes`.
    #[error(
        "the deployment's models measure {total} bytes loaded, more than this tenant's model \
         memory quota of {quota} bytes"
    )]
    ModelQuota { total: u64, quota: u64 },
}

impl BuildError {
    /// The code the uploader gets; `None` when Corral itself failed.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::Component(CompileError::Invalid(_)) => ErrorCode::InvalidComponent,
            Self::Link(LinkError::Import(_)) => ErrorCode::UnsatisfiedImport,
            Self::Link(LinkError::Export(_)) => ErrorCode::MissingExport,
            Self::InvalidModel { .. } => ErrorCode::InvalidModel,
            Self::ExternalData { .. } => ErrorCode::ExternalData,
            Self::ModelTooLarge { .. } => ErrorCode::ModelTooLarge,
            Self::ModelsBusy { .. } => ErrorCode::ModelsBusy,
            Self::ModelQuota { .. } => ErrorCode::ModelQuotaExceeded,
            Self::Component(CompileError::Store(_))
            | Self::Link(LinkError::Host(_))
            | Self::ModelLoad { .. } => return None,
        })
    }
}

impl From<BuildError> for Refusal {
    fn from(error: BuildError) -> Self {
        match error.code() {
            Some(code) => Refusal::new(code, error.to_string()),
            None => Refusal::Internal(anyhow::Error::new(error)),
        }
    }
}

/// What every deployment of the process shares.
#[derive(Debug)]
pub struct Platform {
    pub engine: Engine,
    pub store: Store,
    pub components: ComponentCache,
    pub inference: Arc<Inference>,
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

/// Why a deployment is being built: what its models must prove.
#[derive(Clone, Copy, Debug)]
pub enum Validation<'a> {
    /// A new deployment (or a rollback) of a tenant with these limits: every model loads (the
    /// cache keeps it; idle models may be unloaded for it), no model is larger than the whole
    /// budget, and together they fit the tenant's `model_bytes`.
    Deploy(&'a Limits),
    /// A stored deployment at start: models load only while the budget has room (the rest load
    /// on first use); a model that does not load fails the build.
    Restore,
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
        let component = self
            .components
            .load(&self.engine, &self.store, &record.component)
            .map_err(BuildError::Component)?;
        let mut models = ModelSet::default();
        let mut measured: Vec<(ModelKey, u64)> = Vec::new();
        for (name, model) in &record.models {
            let key = ModelKey {
                digest: model.digest,
                format: model.format,
            };
            let source = Arc::new(ModelFile {
                path: self.store.blob_path(&model.digest),
                digest: model.digest,
            });
            // Held before it loads: a deployment's model is never unloaded for having no
            // deployment between its load and this deployment's existence.
            let hold = self.inference.cache().hold(key, tenant);
            let bytes = load_model(&self.inference, (tenant, name), key, &source, validation)?;
            if let Some(bytes) = bytes
                && !measured.iter().any(|(k, _)| *k == key)
            {
                measured.push((key, bytes));
            }
            let batch_axis = record
                .config
                .models
                .get(name)
                .and_then(|m| m.batch_axis)
                .map(|axis| axis as usize);
            models.insert(Model {
                name: name.clone(),
                key,
                source,
                hold,
                batch_axis,
            });
        }
        if let Validation::Deploy(limits) = validation {
            let budget = self.inference.cache().budget();
            let quota = limits.model_bytes.min(budget);
            let total: u64 = measured.iter().map(|(_, bytes)| bytes).sum();
            if total > quota {
                return Err(BuildError::ModelQuota { total, quota });
            }
        }
        models.max_batch_size = record.config.batching.max_batch_size;
        models.max_delay = record
            .config
            .batching
            .max_delay_us
            .map(std::time::Duration::from_micros);
        let nn = NnCtx::new(Arc::new(models), Arc::clone(&self.inference), tenant);
        let service = Service::new(&self.engine, &component, nn).map_err(BuildError::Link)?;
        Ok(LiveDeployment {
            version: record.version,
            service: Arc::new(service),
            component,
        })
    }
}

/// Loads one model of a deployment through the cache as `validation` asks; its measured size
/// when it is loaded.
fn load_model(
    inference: &Inference,
    (tenant, name): (&str, &str),
    key: ModelKey,
    source: &ModelFile,
    validation: Validation<'_>,
) -> Result<Option<u64>, BuildError> {
    let room = match validation {
        Validation::Deploy(_) => Room::MakeRoom,
        Validation::Restore => Room::IfFree,
    };
    let name = name.to_owned();
    match inference.cache().load(key, source, room, tenant) {
        Ok(Some(model)) => Ok(Some(model.resident_bytes())),
        Ok(None) => Ok(None),
        Err(LoadError::TooLarge { bytes, budget }) => match validation {
            Validation::Deploy(_) => Err(BuildError::ModelTooLarge {
                name,
                bytes,
                budget,
            }),
            Validation::Restore => {
                tracing::warn!(model = %name, bytes, budget, "a restored model is larger than the model memory budget: it cannot load");
                Ok(None)
            }
        },
        Err(LoadError::NoRoom { bytes, budget }) => Err(BuildError::ModelsBusy {
            name,
            bytes,
            budget,
        }),
        Err(LoadError::Failed(source)) => Err(match source.kind {
            // The backend's check of an ONNX model's self-containment (run on every load).
            ErrorKind::Security => BuildError::ExternalData { name, source },
            // The runtime, or reading the blob, failed: Corral's fault, not the model's.
            ErrorKind::RuntimeError => BuildError::ModelLoad { name, source },
            _ => BuildError::InvalidModel { name, source },
        }),
    }
}
