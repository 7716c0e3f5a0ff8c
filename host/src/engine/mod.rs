//! The wasmtime side of serving: one engine per process, one pre-instantiated component per
//! deployment, a fresh sandboxed instance per request.
//!
//! An instance gets the `wasi:http/proxy` imports, `wasi:nn` over its deployment's models, and
//! the rest of WASI 0.2 (so components from Rust's `wasm32-wasip2` target link) with nothing
//! granted: no preopened directories, no environment variables or arguments, no sockets, no
//! name lookups, and outgoing HTTP requests are denied unless the operator allowed the host
//! for the tenant. Each request runs under its tenant's
//! [`Limits`]: CPU time by epoch deadlines (one ticker thread), memory, tables and instances by
//! a resource limiter, `wasi:nn` traffic by the `wasi:nn` host; guest stdout/stderr become
//! rate-limited log lines ([`log`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::limits::{LimitHit, Limits, Outcome};
use crate::metrics::TenantCounters;
use crate::nn::{self, NnBudget, NnCtx};

mod cache;
mod instance;
pub mod log;

pub use cache::{CompileError, ComponentCache};
pub use corral_parsers::config::EngineSettings;
pub use instance::{InstanceState, live_instances};
use instance::{Limiter, OutgoingHttp};
use log::{GuestOutput, GuestStream};

/// How often the epoch advances; guest CPU time is measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the process's engine (pooling allocator, copy-on-write memory images, epoch
/// interruption) and starts the one thread that advances its epoch.
pub fn new_engine(settings: &EngineSettings) -> anyhow::Result<Engine> {
    settings.check().map_err(anyhow::Error::msg)?;
    let stack = settings.stack_bytes as usize;
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(settings.instances)
        .total_memories(settings.instances)
        // Components carry small tables in their shims besides the main module's.
        .total_tables(settings.instances.saturating_mul(4))
        .total_stacks(settings.instances)
        .total_core_instances(settings.instances.saturating_mul(8))
        .max_memory_size(settings.max_memory_bytes as usize)
        // More than the largest memory could never be used.
        .linear_memory_keep_resident(
            settings.keep_resident_bytes.min(settings.max_memory_bytes) as usize
        )
        .table_keep_resident(settings.keep_resident_bytes.min(64 << 10) as usize)
        // Where the kernel can say which pages a request dirtied (Linux 6.7+), only those are
        // reset, and they stay resident: the next request in the slot takes no page faults.
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(stack)
        // The async stack holds the wasm stack plus host frames.
        .async_stack_size(stack + (512 << 10))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    if settings.profiling == "perfmap" {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
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

/// What one request's instance runs under.
#[derive(Clone, Debug)]
pub struct RequestSandbox {
    pub limits: Arc<Limits>,
    pub stdout: GuestOutput,
    pub stderr: GuestOutput,
    /// Hosts outgoing HTTP requests may go to (normalized names, any port); none by default.
    pub outgoing_hosts: Arc<[String]>,
    /// Where the tenant's CPU time (and other per-tenant counts) accumulate.
    pub counters: Arc<TenantCounters>,
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

/// A component ready to serve: compiled, linked and pre-instantiated, with its models.
pub struct Service {
    pre: ProxyPre<InstanceState>,
    nn: NnCtx,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("nn", &self.nn)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// The `wasi:nn` context its instances get: its deployment's models.
    pub fn nn(&self) -> &NnCtx {
        &self.nn
    }

    /// Links `component` against the imports Corral provides. Fails, naming the import or
    /// export, when the component needs something Corral does not offer or does not export
    /// `wasi:http/incoming-handler`.
    pub fn new(engine: &Engine, component: &Component, nn: NnCtx) -> Result<Self, LinkError> {
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
        Ok(Self { pre, nn })
    }

    /// A fresh store for one request, with its memory, CPU and `wasi:nn` bounds set. Limits
    /// hit are recorded in `outcome`; guest output is tagged with `request_id`; `slot` (the
    /// request's place in its tenant's gate) is held by every inference run it starts.
    pub fn new_store(
        &self,
        sandbox: &RequestSandbox,
        outcome: &Arc<Outcome>,
        request_id: &str,
        slot: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Store<InstanceState> {
        let limits = &sandbox.limits;
        let mut wasi = WasiCtx::builder();
        for (output, name) in [(&sandbox.stdout, "stdout"), (&sandbox.stderr, "stderr")] {
            match output {
                GuestOutput::Inherit if name == "stdout" => {
                    wasi.inherit_stdout();
                }
                GuestOutput::Inherit => {
                    wasi.inherit_stderr();
                }
                GuestOutput::Log(budget) => {
                    let stream = GuestStream {
                        budget: Arc::clone(budget),
                        stream: name,
                        request_id: Arc::from(request_id),
                    };
                    if name == "stdout" {
                        wasi.stdout(stream);
                    } else {
                        wasi.stderr(stream);
                    }
                }
                GuestOutput::Discard => {}
            }
        }
        let state = InstanceState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            nn: self.nn.clone(),
            nn_budget: NnBudget::new(Arc::clone(limits), Arc::clone(outcome), slot),
            limiter: Limiter {
                limits: Arc::clone(limits),
                outcome: Arc::clone(outcome),
                memory_used: 0,
            },
            hooks: OutgoingHttp {
                allowed: Arc::clone(&sandbox.outgoing_hosts),
            },
            _live: instance::LiveInstance::new(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        let started = Instant::now();
        let wall = Duration::from_millis(limits.timeout_ms);
        let cpu_ticks = limits.cpu_ms.div_ceil(EPOCH_TICK.as_millis() as u64);
        let mut ticks = 0u64;
        let (limits, outcome) = (Arc::clone(limits), Arc::clone(outcome));
        let counters = Arc::clone(&sandbox.counters);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            // Called once per tick in which guest code was running: a count of CPU time.
            ticks += 1;
            counters
                .cpu_ticks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if ticks > cpu_ticks {
                return Err(outcome.trap(LimitHit::CpuTime, &limits));
            }
            if started.elapsed() > wall {
                return Err(wasmtime::format_err!(
                    "guest code ran past the request timeout of {wall:?}"
                ));
            }
            // Yield to the async runtime each tick so a busy guest never starves others.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    pub fn pre(&self) -> &ProxyPre<InstanceState> {
        &self.pre
    }
}

/// Compiles a component file. Slow (cranelift): call it off the async workers.
pub fn compile(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Component> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    cache::compile_bytes(engine, &bytes).with_context(|| format!("{}", path.display()))
}
