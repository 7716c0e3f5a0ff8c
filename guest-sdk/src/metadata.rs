//! What the deployment's models take and give, and the configuration it was deployed with:
//! Corral's own `corral:service/models` interface beside `wasi:nn` (whose `0.2.0-rc` cannot
//! describe a graph).
//!
//! ```no_run
//! use corral_guest::{Model, metadata};
//!
//! # fn main() -> Result<(), corral_guest::Error> {
//! for name in metadata::model_names() {
//!     let signature = Model::load(&name)?.describe()?;
//!     for input in &signature.inputs {
//!         println!("{name}: input {} {:?} {:?}", input.name, input.datatype, input.shape);
//!     }
//! }
//! let labels: Option<serde_json::Value> = metadata::config().ok().flatten();
//! # Ok(()) }
//! ```
//!
//! A component that calls anything here imports `corral:service/models` and runs on Corral
//! only; one that does not keeps the plain `wasi:http` + `wasi:nn` imports that `wasmtime
//! serve -S nn` also provides.

use serde::de::DeserializeOwned;

use crate::corral_models;
use crate::wasi_nn::tensor::TensorType;

/// One input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name, as `Model::run` takes it and returns it.
    pub name: String,
    /// Its element type; `None` when it is one `wasi:nn` cannot carry.
    pub datatype: Option<TensorType>,
    /// Its dimensions; `None` is a dynamic one (any size, often the batch).
    pub shape: Vec<Option<u32>>,
}

/// What a model takes and gives, in the model's order. Empty for a format that declares
/// neither (TorchScript: inputs are positional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// The inputs.
    pub inputs: Vec<TensorInfo>,
    /// The outputs.
    pub outputs: Vec<TensorInfo>,
}

impl Signature {
    pub(crate) fn from_wit(metadata: corral_models::GraphMetadata) -> Self {
        let info = |t: corral_models::TensorInfo| TensorInfo {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        };
        Self {
            inputs: metadata.inputs.into_iter().map(info).collect(),
            outputs: metadata.outputs.into_iter().map(info).collect(),
        }
    }
}

/// The names of the deployment's models (what [`crate::Model::load`] accepts), sorted.
pub fn model_names() -> Vec<String> {
    corral_models::names()
}

/// The configuration the deployment was deployed with (its `config` part), as JSON text;
/// `None` when it has none.
pub fn config_json() -> Option<String> {
    corral_models::config()
}

/// The deployment's configuration read as `T`; `Ok(None)` when it has none, an error when
/// it does not have `T`'s shape.
pub fn config<T: DeserializeOwned>() -> Result<Option<T>, serde_json::Error> {
    config_json()
        .map(|text| serde_json::from_str(&text))
        .transpose()
}

/// The configuration's `component` section (the component's own settings) read as `T`;
/// `Ok(None)` when there is none.
pub fn component_config<T: DeserializeOwned>() -> Result<Option<T>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Sections<T> {
        component: Option<T>,
    }
    Ok(config::<Sections<T>>()?.and_then(|sections| sections.component))
}

/// The model `name` if given, else the deployment's only model; an error naming the models
/// when there is not exactly one to choose.
pub fn model_named(name: Option<&str>) -> Result<String, String> {
    if let Some(name) = name {
        return Ok(name.to_owned());
    }
    match model_names().as_slice() {
        [only] => Ok(only.clone()),
        names => Err(format!(
            "the deployment has {} models ({}): name the one to use",
            names.len(),
            names.join(", ")
        )),
    }
}
