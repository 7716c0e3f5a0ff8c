//! The one way a deployment is built, for `corral serve` (from the store) and `corral run`
//! (from files): compile the component through the compiled-component cache, load each model
//! through the model cache (or find it there), link. Every failure is a [`BuildError`] naming
//! the part at fault, and nothing serves until all of it succeeded.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::backends::models::{ModelFile, ModelKey};
use crate::backends::{ErrorKind, InferenceError};
use crate::engine::{CompileError, ComponentCache, LinkError, Service};
use crate::error::{ErrorCode, Refusal};
use crate::inference::{Inference, LoadError, Model, ModelSet, Room};
use crate::limits::Limits;
use crate::nn::NnCtx;
use crate::store::records::DeploymentConfig;
use crate::store::{CacheDir, Digest};

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
    /// The store could not give a model's bytes: not the model's fault.
    #[error("{0:#}")]
    Store(anyhow::Error),
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
            | Self::ModelLoad { .. }
            | Self::Store(_) => return None,
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

/// One model of a deployment: the name guests load it by, what it is, and a file on this node
/// with its bytes.
#[derive(Clone, Debug)]
pub struct ModelPart {
    pub name: String,
    pub key: ModelKey,
    pub path: PathBuf,
}

/// What a deployment is built from.
pub struct Parts<'a> {
    /// The component's digest, and how to read its bytes when it must be compiled (not when
    /// a deployment holds it already, or the cache has it compiled).
    pub component: Digest,
    pub component_bytes: &'a dyn Fn() -> anyhow::Result<Vec<u8>>,
    pub models: Vec<ModelPart>,
    pub config: &'a DeploymentConfig,
}

/// A built deployment: its linked, pre-instantiated component.
#[derive(Debug)]
pub struct Built {
    pub service: Arc<Service>,
    /// Keeps the compiled component shared with other deployments of the same bytes.
    pub component: Arc<Component>,
}

/// Builds deployments on one engine and one inference layer.
#[derive(Debug)]
pub struct DeploymentBuilder {
    engine: Engine,
    components: ComponentCache,
    inference: Arc<Inference>,
    /// Where compiled components are kept between starts (`None`: compiled each time).
    cache: Option<CacheDir>,
}

impl DeploymentBuilder {
    pub fn new(engine: Engine, inference: Arc<Inference>, cache: Option<CacheDir>) -> Self {
        Self {
            components: ComponentCache::new(&engine),
            engine,
            inference,
            cache,
        }
    }

    pub fn inference(&self) -> &Arc<Inference> {
        &self.inference
    }

    /// Builds a deployment of `tenant` from `parts`. Blocking and possibly slow (compilation,
    /// model loading): call it from a blocking pool.
    pub fn build(
        &self,
        tenant: &str,
        parts: Parts<'_>,
        validation: Validation<'_>,
    ) -> Result<Built, BuildError> {
        let component = self
            .components
            .load(
                &self.engine,
                self.cache.as_ref(),
                &parts.component,
                parts.component_bytes,
            )
            .map_err(BuildError::Component)?;
        let models = load_models(
            &self.inference,
            tenant,
            &parts.models,
            parts.config,
            validation,
        )?;
        // Guests may read the configuration they were deployed with (`corral:service/models`).
        // (A record of strings and numbers: encoding it cannot fail.)
        let config = (!parts.config.is_empty())
            .then(|| serde_json::to_string(parts.config).ok())
            .flatten();
        let nn =
            NnCtx::new(Arc::new(models), Arc::clone(&self.inference), tenant).with_config(config);
        let service = Service::new(&self.engine, &component, nn).map_err(BuildError::Link)?;
        Ok(Built {
            service: Arc::new(service),
            component,
        })
    }
}

/// Loads a deployment's models through the cache as `validation` asks, and returns them by
/// name with the deployment's batching settings. Blocking.
pub fn load_models(
    inference: &Inference,
    tenant: &str,
    parts: &[ModelPart],
    config: &DeploymentConfig,
    validation: Validation<'_>,
) -> Result<ModelSet, BuildError> {
    let mut models = ModelSet::default();
    let mut measured: Vec<(ModelKey, u64)> = Vec::new();
    for part in parts {
        let source = Arc::new(ModelFile {
            path: part.path.clone(),
            digest: part.key.digest,
        });
        // Held before it loads: a deployment's model is never unloaded for having no
        // deployment between its load and this deployment's existence.
        let hold = inference.cache().hold(part.key, tenant);
        let bytes = load_model(inference, tenant, part, &source, validation)?;
        if let Some(bytes) = bytes
            && !measured.iter().any(|(k, _)| *k == part.key)
        {
            measured.push((part.key, bytes));
        }
        let batch_axis = config
            .models
            .get(&part.name)
            .and_then(|m| m.batch_axis)
            .map(|axis| axis as usize);
        models.insert(Model {
            name: part.name.clone(),
            key: part.key,
            source,
            hold,
            batch_axis,
        });
    }
    if let Validation::Deploy(limits) = validation {
        let budget = inference.cache().budget();
        let quota = limits.model_bytes.min(budget);
        let total: u64 = measured.iter().map(|(_, bytes)| bytes).sum();
        if total > quota {
            return Err(BuildError::ModelQuota { total, quota });
        }
    }
    models.max_batch_size = config.batching.max_batch_size;
    models.max_delay = config
        .batching
        .max_delay_us
        .map(std::time::Duration::from_micros);
    Ok(models)
}

/// Loads one model through the cache as `validation` asks; its measured size when it is
/// loaded.
fn load_model(
    inference: &Inference,
    tenant: &str,
    part: &ModelPart,
    source: &ModelFile,
    validation: Validation<'_>,
) -> Result<Option<u64>, BuildError> {
    let room = match validation {
        Validation::Deploy(_) => Room::MakeRoom,
        Validation::Restore => Room::IfFree,
    };
    let name = part.name.clone();
    match inference.cache().load(part.key, source, room, tenant) {
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
