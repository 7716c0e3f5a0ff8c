//! One request's sandbox: the store data of an instance, and the limits that bound it.
//!
//! Every limit that stops a guest records which one it was in the request's
//! [`Outcome`](crate::limits::Outcome)
//! before trapping, so the client gets an error naming the limit rather than a bare 500.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::{LimitHit, Limits, Outcome};
use crate::nn::{NnBudget, NnCtx, NnView};

/// Bounds an instance's memories (all of them together), tables and instances.
pub struct Limiter {
    pub limits: Arc<Limits>,
    pub outcome: Arc<Outcome>,
    /// Linear memory bytes of all the instance's memories so far.
    pub memory_used: u64,
}

/// Memories one instance may have: a component's modules usually share one.
const MAX_MEMORIES: usize = 4;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for each memory's creation (from 0) and every growth: the sum of the deltas
        // is the instance's total.
        let growth = desired.saturating_sub(current) as u64;
        let total = self.memory_used.saturating_add(growth);
        if total > self.limits.memory_bytes {
            return Err(self.outcome.trap(LimitHit::Memory, &self.limits));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > u64::from(self.limits.table_elements) {
            return Err(self.outcome.trap(LimitHit::Memory, &self.limits));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.limits.instances as usize
    }

    fn tables(&self) -> usize {
        self.limits.tables as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The data of one instance's store.
pub struct InstanceState {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    pub(super) nn: NnCtx,
    pub(super) nn_budget: NnBudget,
    pub(super) limiter: Limiter,
    pub(super) hooks: OutgoingHttp,
    pub(super) _live: LiveInstance,
}

static LIVE_INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// Instances alive in this process now (stores not yet dropped).
pub fn live_instances() -> usize {
    LIVE_INSTANCES.load(Ordering::Relaxed)
}

/// Counts one instance for as long as its store lives.
pub struct LiveInstance(());

impl LiveInstance {
    pub fn new() -> Self {
        LIVE_INSTANCES.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        LIVE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
    }
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
    pub(super) fn nn(&mut self) -> NnView<'_> {
        NnView {
            ctx: &self.nn,
            budget: &mut self.nn_budget,
            table: &mut self.table,
        }
    }
}

/// Outgoing HTTP: only to the hosts the operator allowed for the tenant; every other request
/// gets `HTTP-request-denied` without a connection being made.
pub struct OutgoingHttp {
    /// Normalized `host` (any port) or `host:port` entries.
    pub allowed: Arc<[String]>,
}

impl OutgoingHttp {
    fn allows(&self, uri: &http::Uri) -> bool {
        // Compared as the entries were normalized when the operator set them.
        let Some(host) = uri
            .host()
            .and_then(corral_parsers::hostname::normalize_host)
        else {
            return false;
        };
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.allowed
            .iter()
            .any(|entry| *entry == host || *entry == format!("{host}:{port}"))
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
)>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allows(request.uri()) {
            tracing::debug!(uri = %request.uri(), "outgoing HTTP request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(uri = %request.uri(), "outgoing HTTP request allowed");
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
