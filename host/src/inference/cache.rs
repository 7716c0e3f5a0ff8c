//! The model memory budget: loaded models by content, kept least-recently-used.
//!
//! A model is loaded on first use (or at deploy, to validate it) and stays loaded while it is
//! used. When a load would take the models' measured resident bytes past the budget, idle
//! models (held by nothing but the cache: no run queued or executing) are unloaded first:
//! models no deployment holds, then the loading tenant's own, then other tenants', each
//! oldest use first. So a tenant cycling through many models of its own mostly unloads its
//! own, and cannot push every other tenant's models out by doing so. A model in use is never unloaded; a load that cannot fit without
//! unloading one fails instead, so the budget holds. A model larger than the whole budget never
//! loads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use dashmap::DashMap;

use crate::backends::models::{ModelKey, ModelSource};
use crate::backends::{InferenceError, LoadedModel, Placement, backend};
use crate::metrics::Histogram;

/// Most models whose measured size or last failure is remembered (forgotten all at once past
/// it: they are estimates and diagnostics, not state).
const MAX_REMEMBERED: usize = 1 << 16;

/// Why a model could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Its measured (or, before a first load, its file's) size is over the whole budget.
    TooLarge { bytes: u64, budget: u64 },
    /// Models in use hold the budget: nothing idle is left to unload.
    NoRoom { bytes: u64, budget: u64 },
    /// The backend refused the bytes, or they could not be read.
    Failed(InferenceError),
}

impl LoadError {
    /// The error a guest's `compute` gets.
    pub fn to_inference(&self) -> InferenceError {
        match self {
            Self::TooLarge { bytes, budget } => InferenceError::runtime(format!(
                "the model needs {bytes} bytes, more than the server's model memory budget of \
                 {budget} bytes"
            )),
            Self::NoRoom { bytes, budget } => InferenceError::runtime(format!(
                "the model ({bytes} bytes) cannot be loaded now: models in use hold the server's \
                 model memory budget of {budget} bytes; retry shortly"
            )),
            Self::Failed(e) => {
                InferenceError::runtime(format!("the model cannot be loaded: {}", e.message))
            }
        }
    }
}

/// Whether a load may unload idle models to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Unload idle models as needed (a request's first use, a deploy's validation).
    MakeRoom,
    /// Load only into free budget (restore at start: what does not fit loads on first use).
    IfFree,
}

struct Entry {
    model: Arc<dyn LoadedModel>,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<ModelKey, Entry>,
    /// Bytes of loaded models plus bytes reserved by loads in progress.
    used: u64,
    clock: u64,
    /// Measured sizes of models loaded before (the estimate for their next load).
    sizes: HashMap<ModelKey, u64>,
    /// The last load failure of each model whose latest load failed.
    failures: HashMap<ModelKey, String>,
    /// Deployments' holds on each model, by tenant.
    holds: HashMap<ModelKey, HashMap<Arc<str>, usize>>,
}

/// A deployment's hold on a model: while one exists the cache keeps the model (budget
/// permitting); when the last one is dropped the model is unloaded unless a run is using it.
pub struct ModelHold {
    key: ModelKey,
    tenant: Arc<str>,
    state: Weak<Mutex<State>>,
}

impl std::fmt::Debug for ModelHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHold").field("key", &self.key).finish()
    }
}

impl Drop for ModelHold {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let holders = state.holds.entry(self.key).or_default();
        let count = holders.entry(Arc::clone(&self.tenant)).or_insert(1);
        *count -= 1;
        if *count == 0 {
            holders.remove(&self.tenant);
        }
        if !holders.is_empty() {
            return;
        }
        state.holds.remove(&self.key);
        let idle = state
            .entries
            .get(&self.key)
            .is_some_and(|e| Arc::strong_count(&e.model) == 1);
        if idle && let Some(entry) = state.entries.remove(&self.key) {
            state.used -= entry.bytes;
            tracing::info!(digest = %self.key.digest, bytes = entry.bytes, "model unloaded (no deployment uses it)");
        }
    }
}

/// Loaded models under a memory budget.
pub struct ModelCache {
    budget: u64,
    placement: Placement,
    state: Arc<Mutex<State>>,
    /// One lock per model being loaded: two first uses of one model load it once.
    loading: DashMap<ModelKey, Arc<Mutex<()>>>,
    loads: AtomicU64,
    evictions: AtomicU64,
    /// Time of each successful load (reading the bytes and the backend's load).
    load_times: Arc<Histogram>,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("budget", &self.budget)
            .field("resident", &self.resident_bytes())
            .finish_non_exhaustive()
    }
}

/// One loaded model as metrics and status show it.
#[derive(Clone, Debug)]
pub struct Resident {
    pub key: ModelKey,
    pub bytes: u64,
}

impl ModelCache {
    pub fn new(budget: u64, placement: Placement) -> Self {
        Self {
            budget,
            placement,
            state: Arc::default(),
            loading: DashMap::new(),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            load_times: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// A deployment's hold on `key`, for `tenant` (see [`ModelHold`]).
    pub fn hold(&self, key: ModelKey, tenant: &str) -> ModelHold {
        let tenant: Arc<str> = Arc::from(tenant);
        *self
            .state()
            .holds
            .entry(key)
            .or_default()
            .entry(Arc::clone(&tenant))
            .or_default() += 1;
        ModelHold {
            key,
            tenant,
            state: Arc::downgrade(&self.state),
        }
    }

    /// The loaded model for `key`, if it is loaded; counts as a use.
    pub fn get(&self, key: &ModelKey) -> Option<Arc<dyn LoadedModel>> {
        let mut state = self.state();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(key)?;
        entry.last_used = clock;
        Some(Arc::clone(&entry.model))
    }

    /// The loaded model for `key`, loading it from `source` if needed, for `tenant` (whose own
    /// idle models make room before other tenants'). Blocking.
    pub fn load(
        &self,
        key: ModelKey,
        source: &dyn ModelSource,
        room: Room,
        tenant: &str,
    ) -> Result<Option<Arc<dyn LoadedModel>>, LoadError> {
        if let Some(model) = self.get(&key) {
            return Ok(Some(model));
        }
        let lock = Arc::clone(&self.loading.entry(key).or_default());
        let result = {
            let _loading = lock.lock().unwrap_or_else(PoisonError::into_inner);
            match self.get(&key) {
                Some(model) => Ok(Some(model)),
                None => self.load_new(key, source, room, tenant),
            }
        };
        drop(lock);
        self.loading
            .remove_if(&key, |_, lock| Arc::strong_count(lock) == 1);
        if let Err(e) = &result {
            let mut state = self.state();
            if state.failures.len() >= MAX_REMEMBERED {
                state.failures.clear();
            }
            state.failures.insert(key, e.to_inference().message);
        }
        result
    }

    fn load_new(
        &self,
        key: ModelKey,
        source: &dyn ModelSource,
        room: Room,
        tenant: &str,
    ) -> Result<Option<Arc<dyn LoadedModel>>, LoadError> {
        let started = std::time::Instant::now();
        let backend = backend(key.format).map_err(LoadError::Failed)?;
        let bytes = source.read().map_err(|e| {
            // The detail names server paths: it goes to the log, not to the tenant.
            tracing::error!(digest = %key.digest, error = %format!("{e:#}"), "cannot read a model's stored bytes");
            LoadError::Failed(InferenceError::runtime(
                "its stored bytes are damaged or missing: they changed on the server's disk or \
                 cannot be read (the server's log says more)",
            ))
        })?;
        let estimate = {
            let mut state = self.state();
            let estimate = state.sizes.get(&key).copied().unwrap_or(bytes.len() as u64);
            if let Some(refused) = self.fit(&mut state, estimate, room, tenant) {
                return refused;
            }
            state.used += estimate;
            estimate
        };
        let loaded = backend.load(&bytes, self.placement);
        drop(bytes);
        let mut state = self.state();
        state.used -= estimate;
        let model = loaded.map_err(LoadError::Failed)?;
        let measured = model.resident_bytes();
        if state.sizes.len() >= MAX_REMEMBERED {
            state.sizes.clear();
        }
        state.sizes.insert(key, measured);
        // It may measure larger than estimated, with what is left in use: the budget holds.
        if let Some(refused) = self.fit(&mut state, measured, room, tenant) {
            return refused;
        }
        state.used += measured;
        state.clock += 1;
        let last_used = state.clock;
        state.failures.remove(&key);
        state.entries.insert(
            key,
            Entry {
                model: Arc::clone(&model),
                bytes: measured,
                last_used,
            },
        );
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_times.observe(started.elapsed());
        tracing::info!(digest = %key.digest, format = key.format.name(), bytes = measured, "model loaded");
        Ok(Some(model))
    }

    /// Makes room for `bytes` more as `room` allows; the answer to give when they cannot fit.
    fn fit(
        &self,
        state: &mut State,
        bytes: u64,
        room: Room,
        tenant: &str,
    ) -> Option<Result<Option<Arc<dyn LoadedModel>>, LoadError>> {
        let budget = self.budget;
        if bytes > budget {
            return Some(Err(LoadError::TooLarge { bytes, budget }));
        }
        if self.make_room(state, bytes, room == Room::MakeRoom, tenant) {
            return None;
        }
        Some(match room {
            Room::IfFree => Ok(None),
            Room::MakeRoom => Err(LoadError::NoRoom { bytes, budget }),
        })
    }

    /// Unloads idle models until `bytes` more fit (when `evict`): first those no deployment
    /// holds, then `tenant`'s own, then other tenants', least recently used first in each;
    /// whether they fit.
    fn make_room(&self, state: &mut State, bytes: u64, evict: bool, tenant: &str) -> bool {
        while state.used + bytes > self.budget {
            if !evict {
                return false;
            }
            let order = |key: &ModelKey| match state.holds.get(key) {
                None => 0,
                Some(holders) if holders.keys().all(|t| &**t == tenant) => 1,
                Some(_) => 2,
            };
            let victim = state
                .entries
                .iter()
                .filter(|(_, entry)| Arc::strong_count(&entry.model) == 1)
                .min_by_key(|(key, entry)| (order(key), entry.last_used))
                .map(|(key, _)| *key);
            let Some(victim) = victim else {
                return false;
            };
            if let Some(entry) = state.entries.remove(&victim) {
                state.used -= entry.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(digest = %victim.digest, bytes = entry.bytes, "model unloaded (memory budget)");
            }
        }
        true
    }

    /// Bytes the loaded models hold, as measured.
    pub fn resident_bytes(&self) -> u64 {
        self.state().entries.values().map(|e| e.bytes).sum()
    }

    /// Every loaded model and its measured size.
    pub fn residents(&self) -> Vec<Resident> {
        let mut all: Vec<Resident> = self
            .state()
            .entries
            .iter()
            .map(|(key, entry)| Resident {
                key: *key,
                bytes: entry.bytes,
            })
            .collect();
        all.sort_unstable_by_key(|r| (r.key.digest.to_string(), r.key.format.name()));
        all
    }

    pub fn loaded_keys(&self) -> HashSet<ModelKey> {
        self.state().entries.keys().copied().collect()
    }

    /// Whether `key` is loaded now (no use counted).
    pub fn is_loaded(&self, key: &ModelKey) -> bool {
        self.state().entries.contains_key(key)
    }

    /// Why the latest load of `key` failed, if it did.
    pub fn failure(&self, key: &ModelKey) -> Option<String> {
        self.state().failures.get(key).cloned()
    }

    /// The measured size of `key`, if it was ever loaded.
    pub fn measured_bytes(&self, key: &ModelKey) -> Option<u64> {
        self.state().sizes.get(key).copied()
    }

    pub fn loads_total(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    pub fn load_times(&self) -> Arc<Histogram> {
        Arc::clone(&self.load_times)
    }

    pub fn evictions_total(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Loads in progress (the per-model locks do not outlive their loads).
    pub fn loads_in_progress(&self) -> usize {
        self.loading.len()
    }
}
