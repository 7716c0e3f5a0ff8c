//! A deployment's models as its guests see them: by name.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::ModelHold;
use crate::backends::models::{ModelKey, ModelSource};

/// A model a guest can load by name: a reference to its bytes, loaded by the cache on use.
/// While any deployment holds it, the cache keeps its model loaded unless the budget needs the
/// room; when the last one goes, the cache unloads it (if no run is using it).
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub key: ModelKey,
    pub source: Arc<dyn ModelSource>,
    pub hold: ModelHold,
    /// The batch axis its deployment declares (TorchScript, whose files declare none).
    pub batch_axis: Option<usize>,
}

/// The named models of one deployment, and its own batching settings.
#[derive(Debug, Default)]
pub struct ModelSet {
    by_name: HashMap<String, Arc<Model>>,
    /// `max_batch_size` for this deployment's jobs, instead of the server's.
    pub max_batch_size: Option<u32>,
    /// `max_delay_us` for this deployment's jobs, instead of the server's.
    pub max_delay: Option<std::time::Duration>,
}

impl ModelSet {
    /// Adds a model; `false` (and nothing changed) when the name is taken.
    pub fn insert(&mut self, model: Model) -> bool {
        if self.by_name.contains_key(&model.name) {
            return false;
        }
        self.by_name.insert(model.name.clone(), Arc::new(model));
        true
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.by_name.values()
    }
}
