//! The wasmtime side of serving: one engine per process, one pre-instantiated component per
//! deployment, a fresh sandboxed instance per request.
//!
//! An instance gets the `wasi:http/proxy` imports, `wasi:nn` over its deployment's models, and
//! the rest of WASI 0.2 (so components from Rust's `wasm32-wasip2` target link) with nothing
//! granted: no preopened directories, no environment variables or arguments, no sockets, no
//! name lookups, and outgoing HTTP requests are denied. Guest CPU time is bounded by epoch
//! deadlines and linear memory by [`StoreLimits`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::nn::{self, NnCtx, NnView};

mod cache;

pub use cache::{CompileError, ComponentCache, check_component_header};

/// How often the epoch advances; guest CPU deadlines are measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox settings that apply to every instance.
#[derive(Clone, Debug)]
pub struct SandboxSettings {
    /// Upper bound on one instance's linear memory, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock budget of one request: guest code still running past it is trapped, and a
    /// guest that has not answered by then gets a 504 sent on its behalf.
    pub request_timeout: Duration,
    /// Instances that may exist at once (the pooling allocator's slots).
    pub max_instances: u32,
    /// Let the guest write to the host's stdout/stderr (development only).
    pub inherit_stdio: bool,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            max_memory_bytes: 512 << 20,
            request_timeout: Duration::from_secs(30),
            max_instances: 1000,
            inherit_stdio: false,
        }
    }
}

/// Builds the process's engine (pooling allocator, copy-on-write memory images, epoch
/// interruption) and starts the thread that advances its epoch.
pub fn new_engine(settings: &SandboxSettings) -> anyhow::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(settings.max_instances)
        .total_memories(settings.max_instances)
        .total_tables(settings.max_instances)
        .total_core_instances(settings.max_instances.saturating_mul(4))
        .max_memory_size(settings.max_memory_bytes);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot configure the WebAssembly engine")?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("corral-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(engine)
}

/// The data of one instance's store.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    nn: NnCtx,
    limits: StoreLimits,
    hooks: DenyOutgoingHttp,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl InstanceState {
    fn nn(&mut self) -> NnView<'_> {
        NnView {
            ctx: &self.nn,
            table: &mut self.table,
        }
    }
}

/// Refuses every outgoing HTTP request: guests get `HTTP-request-denied`.
struct DenyOutgoingHttp;

impl WasiHttpHooks for DenyOutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        tracing::debug!(uri = %request.uri(), "outgoing HTTP request denied");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// A component ready to serve: compiled, linked and pre-instantiated, with its models.
pub struct Service {
    pre: ProxyPre<InstanceState>,
    nn: NnCtx,
    settings: SandboxSettings,
}

/// Why a component cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// It imports something Corral does not provide (wasmtime's message names the import).
    #[error("the component imports something Corral does not provide: {0}")]
    Import(String),
    /// It does not export `wasi:http/incoming-handler`.
    #[error("the component does not export wasi:http/incoming-handler@0.2: {0}")]
    Export(String),
    /// Building the linker failed (a host bug, not the component's fault).
    #[error("cannot link the component: {0:#}")]
    Host(anyhow::Error),
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("nn", &self.nn)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Links `component` against the imports Corral provides. Fails, naming the import or
    /// export, when the component needs something Corral does not offer or does not export
    /// `wasi:http/incoming-handler`.
    pub fn new(
        engine: &Engine,
        component: &Component,
        nn: NnCtx,
        settings: SandboxSettings,
    ) -> Result<Self, LinkError> {
        let host = |e: wasmtime::Error| LinkError::Host(anyhow::Error::from(e));
        let mut linker = Linker::<InstanceState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(host)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(host)?;
        nn::add_to_linker(&mut linker, InstanceState::nn).map_err(host)?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| LinkError::Import(format!("{:#}", anyhow::Error::from(e))))?;
        let pre = ProxyPre::new(pre)
            .map_err(|e| LinkError::Export(format!("{:#}", anyhow::Error::from(e))))?;
        Ok(Self { pre, nn, settings })
    }

    /// A fresh store for one request, with its memory and CPU bounds set.
    pub fn new_store(&self) -> Store<InstanceState> {
        let mut wasi = WasiCtx::builder();
        if self.settings.inherit_stdio {
            wasi.inherit_stdout().inherit_stderr();
        }
        let state = InstanceState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            nn: self.nn.clone(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.settings.max_memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            hooks: DenyOutgoingHttp,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        let started = Instant::now();
        let budget = self.settings.request_timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() > budget {
                Err(wasmtime::format_err!(
                    "guest code ran past the request timeout of {budget:?}"
                ))
            } else {
                // Yield to the async runtime each tick so a busy guest never starves others.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    pub fn pre(&self) -> &ProxyPre<InstanceState> {
        &self.pre
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }
}

/// Compiles a component file. Slow (cranelift): call it off the async workers.
pub fn compile(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Component> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    cache::compile_bytes(engine, &bytes).with_context(|| format!("{}", path.display()))
}

/// Shared handle to a service.
pub type SharedService = Arc<Service>;
