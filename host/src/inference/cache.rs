//! The model memory budgets: loaded models by content, placed on a device, kept
//! least-recently-used within each device's budget.
//!
//! A model is loaded on first use (or at deploy, to validate it) and stays loaded while it is
//! used. **Placement**: it goes to the accelerator (GPU) with the fewest resident bytes that
//! has room for it; failing that, to the one that can make room by unloading idle models;
//! only then to the CPU (if it is a device at all), free room first. **Eviction**, per device:
//! when a load would take a device's measured resident bytes past its budget, idle models
//! there (held by nothing but the cache: no run queued or executing) are unloaded first:
//! models no deployment holds, then the loading tenant's own, then other tenants', each
//! oldest use first. So a tenant cycling through many models of its own mostly unloads its
//! own, and cannot push every other tenant's models out by doing so. A model in use is never
//! unloaded; a load that cannot fit without unloading one fails instead, so every budget
//! holds. A model larger than every device's budget never loads.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use dashmap::DashMap;

use crate::backends::models::{ModelKey, ModelSource};
use crate::backends::{InferenceError, LoadedModel, Placement, backend};
use crate::metrics::Histogram;

mod placement;
use placement::choose;

/// Most models whose measured size or last failure is remembered (forgotten all at once past
/// it: they are estimates and diagnostics, not state).
const MAX_REMEMBERED: usize = 1 << 16;

/// One device's part of the cache: where its models load and the bytes they may hold there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBudget {
    /// The name metrics and status show (`cpu`, `cuda:0`).
    pub name: Arc<str>,
    /// Where the backends load its models.
    pub placement: Placement,
    /// Whether models go here before the CPU (a GPU; tests also mark CPU stand-ins).
    pub accelerator: bool,
    /// Measured resident bytes its models may hold together.
    pub budget: u64,
}

/// A loaded model and the device it is on (an index into the cache's devices, which is also
/// the scheduler lane its runs go to).
#[derive(Clone, Debug)]
pub struct Placed {
    pub model: Arc<dyn LoadedModel>,
    pub device: usize,
}

impl Deref for Placed {
    type Target = dyn LoadedModel;

    fn deref(&self) -> &Self::Target {
        &*self.model
    }
}

/// Why a model could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Its measured (or, before a first load, its file's) size is over the budget of every
    /// device (of the device it loaded on, once measured).
    TooLarge { bytes: u64, budget: u64 },
    /// Models in use hold every budget it could fit in: nothing idle is left to unload.
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
    device: usize,
}

impl Entry {
    /// Held by nothing but the cache: no run queued or executing.
    fn idle(&self) -> bool {
        Arc::strong_count(&self.model) == 1
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<ModelKey, Entry>,
    /// Per device: bytes of loaded models plus bytes reserved by loads in progress.
    used: Vec<u64>,
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
        let idle = state.entries.get(&self.key).is_some_and(Entry::idle);
        if idle && let Some(entry) = state.entries.remove(&self.key) {
            state.used[entry.device] -= entry.bytes;
            tracing::info!(digest = %self.key.digest, bytes = entry.bytes, "model unloaded (no deployment uses it)");
        }
    }
}

/// Loaded models under each device's memory budget.
pub struct ModelCache {
    devices: Vec<DeviceBudget>,
    state: Arc<Mutex<State>>,
    /// One lock per model being loaded: two first uses of one model load it once.
    loading: DashMap<ModelKey, Arc<Mutex<()>>>,
    loads: AtomicU64,
    evictions: AtomicU64,
    /// Time of each successful load (reading the bytes and the backend's load), by device.
    load_times: Vec<Arc<Histogram>>,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("devices", &self.devices)
            .field("resident", &self.resident_bytes())
            .finish_non_exhaustive()
    }
}

/// One loaded model as metrics and status show it.
#[derive(Clone, Debug)]
pub struct Resident {
    pub key: ModelKey,
    pub bytes: u64,
    /// The device it is on (`cpu`, `cuda:0`).
    pub device: Arc<str>,
}

/// How a load may be refused, as [`ModelCache::load`] answers.
type Refusal = Result<Option<Placed>, LoadError>;

impl ModelCache {
    /// A cache of one device.
    pub fn new(budget: u64, placement: Placement) -> Self {
        Self::with_devices(vec![DeviceBudget {
            name: Arc::from(placement.name()),
            placement,
            accelerator: placement.is_accelerator(),
            budget,
        }])
    }

    /// A cache placing models on `devices` (at least one), each under its own budget.
    pub fn with_devices(devices: Vec<DeviceBudget>) -> Self {
        assert!(!devices.is_empty(), "a model cache needs a device");
        let state = State {
            used: vec![0; devices.len()],
            ..State::default()
        };
        Self {
            load_times: devices.iter().map(|_| Arc::default()).collect(),
            devices,
            state: Arc::new(Mutex::new(state)),
            loading: DashMap::new(),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The largest device budget: no model larger than this can load.
    pub fn budget(&self) -> u64 {
        self.devices.iter().map(|d| d.budget).max().unwrap_or(0)
    }

    pub fn devices(&self) -> &[DeviceBudget] {
        &self.devices
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
    pub fn get(&self, key: &ModelKey) -> Option<Placed> {
        let mut state = self.state();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(key)?;
        entry.last_used = clock;
        Some(Placed {
            model: Arc::clone(&entry.model),
            device: entry.device,
        })
    }

    /// The loaded model for `key`, loading it from `source` if needed, for `tenant` (whose own
    /// idle models make room before other tenants'). Blocking.
    pub fn load(
        &self,
        key: ModelKey,
        source: &dyn ModelSource,
        room: Room,
        tenant: &str,
    ) -> Result<Option<Placed>, LoadError> {
        if let Some(model) = self.get(&key) {
            return Ok(Some(model));
        }
        let lock = Arc::clone(&self.loading.entry(key).or_default());
        let result = {
            let _loading = lock.lock().unwrap_or_else(PoisonError::into_inner);
            match self.get(&key) {
                Some(model) => Ok(Some(model)),
                None => self.load_new(key, source, room, tenant, false),
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

    /// Loads a model not loaded yet (`again`: placed a second time, by its measured size).
    fn load_new(
        &self,
        key: ModelKey,
        source: &dyn ModelSource,
        room: Room,
        tenant: &str,
        again: bool,
    ) -> Result<Option<Placed>, LoadError> {
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
        let (device, estimate) = {
            let mut state = self.state();
            let estimate = state.sizes.get(&key).copied().unwrap_or(bytes.len() as u64);
            let device = match self.place(&mut state, estimate, room, tenant) {
                Ok(device) => device,
                Err(refused) => return refused,
            };
            state.used[device] += estimate;
            (device, estimate)
        };
        let loaded = backend.load(&bytes, self.devices[device].placement);
        drop(bytes);
        let mut state = self.state();
        state.used[device] -= estimate;
        let model = loaded.map_err(LoadError::Failed)?;
        let measured = model.resident_bytes();
        if state.sizes.len() >= MAX_REMEMBERED {
            state.sizes.clear();
        }
        state.sizes.insert(key, measured);
        // It may measure larger than estimated, with what is left in use: the budget holds.
        // Placed by a first guess (its file's size), it is placed again by its measured size,
        // which another device may have room for.
        if let Some(refused) = self.fit(&mut state, device, measured, room, tenant) {
            if measured > estimate && self.devices.len() > 1 && !again {
                drop((state, model));
                tracing::debug!(digest = %key.digest, measured, estimate, "a model larger than its estimate is placed again");
                return self.load_new(key, source, room, tenant, true);
            }
            return refused;
        }
        state.used[device] += measured;
        state.clock += 1;
        let last_used = state.clock;
        state.failures.remove(&key);
        state.entries.insert(
            key,
            Entry {
                model: Arc::clone(&model),
                bytes: measured,
                last_used,
                device,
            },
        );
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_times[device].observe(started.elapsed());
        let on = &*self.devices[device].name;
        tracing::info!(digest = %key.digest, format = key.format.name(), bytes = measured, device = on, "model loaded");
        Ok(Some(Placed { model, device }))
    }

    /// The device a model of `bytes` goes to (see the module's documentation), having made
    /// room there if it must; the answer to give when there is none.
    fn place(
        &self,
        state: &mut State,
        bytes: u64,
        room: Room,
        tenant: &str,
    ) -> Result<usize, Refusal> {
        let budget = self.budget();
        if bytes > budget {
            return Err(Err(LoadError::TooLarge { bytes, budget }));
        }
        let reclaimable: Vec<u64> = (0..self.devices.len())
            .map(|d| self.reclaimable(state, d))
            .collect();
        let evict = room == Room::MakeRoom;
        match choose(&self.devices, &state.used, &reclaimable, bytes, evict) {
            Some(device) => {
                self.make_room(state, device, bytes, evict, tenant);
                Ok(device)
            }
            None if evict => Err(Err(LoadError::NoRoom { bytes, budget })),
            None => Err(Ok(None)),
        }
    }

    /// Bytes `device` would have free with every idle model on it unloaded.
    fn reclaimable(&self, state: &State, device: usize) -> u64 {
        let idle: u64 = state
            .entries
            .values()
            .filter(|e| e.device == device && e.idle())
            .map(|e| e.bytes)
            .sum();
        self.devices[device]
            .budget
            .saturating_add(idle)
            .saturating_sub(state.used[device])
    }

    /// Makes room for `bytes` more on `device` as `room` allows; the answer to give when they
    /// cannot fit.
    fn fit(
        &self,
        state: &mut State,
        device: usize,
        bytes: u64,
        room: Room,
        tenant: &str,
    ) -> Option<Refusal> {
        let budget = self.devices[device].budget;
        if bytes > budget {
            return Some(Err(LoadError::TooLarge { bytes, budget }));
        }
        if self.make_room(state, device, bytes, room == Room::MakeRoom, tenant) {
            return None;
        }
        Some(match room {
            Room::IfFree => Ok(None),
            Room::MakeRoom => Err(LoadError::NoRoom { bytes, budget }),
        })
    }

    /// Unloads idle models on `device` until `bytes` more fit there (when `evict`): first
    /// those no deployment holds, then `tenant`'s own, then other tenants', least recently
    /// used first in each; whether they fit.
    fn make_room(
        &self,
        state: &mut State,
        device: usize,
        bytes: u64,
        evict: bool,
        tenant: &str,
    ) -> bool {
        while state.used[device] + bytes > self.devices[device].budget {
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
                .filter(|(_, entry)| entry.device == device && entry.idle())
                .min_by_key(|(key, entry)| (order(key), entry.last_used))
                .map(|(key, _)| *key);
            let Some(victim) = victim else {
                return false;
            };
            if let Some(entry) = state.entries.remove(&victim) {
                state.used[device] -= entry.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                let on = &*self.devices[device].name;
                tracing::info!(digest = %victim.digest, bytes = entry.bytes, device = on, "model unloaded (memory budget)");
            }
        }
        true
    }

    /// Bytes the loaded models hold, as measured, on every device together.
    pub fn resident_bytes(&self) -> u64 {
        self.state().entries.values().map(|e| e.bytes).sum()
    }

    /// Every loaded model, its measured size and its device.
    pub fn residents(&self) -> Vec<Resident> {
        let mut all: Vec<Resident> = self
            .state()
            .entries
            .iter()
            .map(|(key, entry)| Resident {
                key: *key,
                bytes: entry.bytes,
                device: Arc::clone(&self.devices[entry.device].name),
            })
            .collect();
        all.sort_unstable_by_key(|r| (r.key.digest.to_string(), r.key.format.name()));
        all
    }

    pub fn loaded_keys(&self) -> HashSet<ModelKey> {
        self.state().entries.keys().copied().collect()
    }

    /// The models loaded on `device` now.
    pub fn loaded_keys_on(&self, device: usize) -> HashSet<ModelKey> {
        let state = self.state();
        let on = state.entries.iter().filter(|(_, e)| e.device == device);
        on.map(|(key, _)| *key).collect()
    }

    /// The device `key` is loaded on now, if it is.
    pub fn device_of(&self, key: &ModelKey) -> Option<Arc<str>> {
        let device = self.state().entries.get(key)?.device;
        Some(Arc::clone(&self.devices[device].name))
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

    /// Each device's load times.
    pub fn load_times(&self) -> Vec<(Arc<str>, Arc<Histogram>)> {
        let devices = self.devices.iter().map(|d| Arc::clone(&d.name));
        devices
            .zip(self.load_times.iter().map(Arc::clone))
            .collect()
    }

    pub fn evictions_total(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Loads in progress (the per-model locks do not outlive their loads).
    pub fn loads_in_progress(&self) -> usize {
        self.loading.len()
    }
}
