//! The data plane: accepts connections (HTTP/1.1 and HTTP/2, cleartext or TLS), picks the
//! service by host name, and hands each request to a fresh instance of its component.

pub mod bounds;
pub mod error;
pub mod listener;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::Instrument;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::engine::{RequestSandbox, Service};
use crate::limits::LimitHit;
use crate::limits::Outcome;
use bounds::{Bounded, Gate};
use error::HostError;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Where a request goes and the bounds it runs under.
#[derive(Clone, Debug)]
pub struct Target {
    pub service: Arc<Service>,
    pub sandbox: RequestSandbox,
    /// The tenant's admission gate (none in development mode).
    pub gate: Option<Arc<Gate>>,
}

/// Picks the service that handles a request.
pub trait Router: Send + Sync + 'static {
    /// The label the request's metrics go under (its tenant, `""` when none) and where the
    /// request to `host` (as the client sent it, possibly with a port) goes, on a connection
    /// whose TLS handshake named `sni`; an error is answered by the host.
    fn route(&self, host: Option<&str>, sni: Option<&str>)
    -> (Arc<str>, Result<Target, HostError>);

    /// Called once per request with the label from [`Router::route`], the final status and
    /// the time to the response head.
    fn record(&self, _label: &str, _status: u16, _elapsed: Duration) {}
}

/// Development mode: every request goes to the one service.
pub struct SingleService(pub Target);

impl Router for SingleService {
    fn route(
        &self,
        _host: Option<&str>,
        _sni: Option<&str>,
    ) -> (Arc<str>, Result<Target, HostError>) {
        (Arc::from(""), Ok(self.0.clone()))
    }
}

/// The host a request names: `:authority` (HTTP/2, absolute-form URIs), else the Host header.
/// A request that names two hosts (two Host headers, or a Host header that differs from its
/// `:authority`) is refused: a proxy in front may route by one and Corral by the other.
pub fn request_host<B>(request: &Request<B>) -> Result<Option<&str>, HostError> {
    let mut hosts = request.headers().get_all(hyper::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::BadRequest(
            "the request has more than one Host header".into(),
        ));
    }
    let header = header
        .map(|value| {
            value
                .to_str()
                .map_err(|_| HostError::BadRequest("the Host header is not ASCII".into()))
        })
        .transpose()?;
    match (request.uri().authority().map(|a| a.as_str()), header) {
        (Some(authority), Some(header))
            if !corral_parsers::hostname::same_host(authority, header) =>
        {
            Err(HostError::BadRequest(
                "the Host header names a different host than the request's authority".into(),
            ))
        }
        (Some(authority), _) => Ok(Some(authority)),
        (None, header) => Ok(header),
    }
}

/// Serves requests on `listener`, routed by `router`, until `shutdown` resolves; then lets
/// requests in flight finish for at most `drain`.
pub async fn serve(
    listener: listener::Listener,
    router: Arc<dyn Router>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let max_headers = listener.settings.max_headers;
    let handler = move |request, connection: Arc<listener::Connection>| {
        let router = Arc::clone(&router);
        async move { handle(&*router, request, &connection, max_headers).await }
    };
    listener::serve(listener, handler, shutdown, drain).await;
}

/// The request's id: the client's `x-request-id` when it is a short plain token, else a new
/// one. It is on every log line of the request and sent back in `x-request-id`.
fn request_id<B>(request: &Request<B>) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(id) => id.to_owned(),
        None => {
            let prefix = PREFIX.get_or_init(|| getrandom::u32().unwrap_or(0));
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            format!("{prefix:08x}{n:08x}")
        }
    }
}

const REQUEST_ID: &str = "x-request-id";

/// Routes one request and runs it through a fresh instance. Every failure becomes a JSON
/// error response.
pub async fn handle(
    router: &dyn Router,
    request: Request<Incoming>,
    connection: &listener::Connection,
    max_headers: usize,
) -> Response<HyperOutgoingBody> {
    let started = std::time::Instant::now();
    let id = request_id(&request);
    let (label, mut target) = match request_host(&request) {
        Ok(host) => router.route(host, connection.sni.as_deref()),
        Err(refused) => (Arc::from(""), Err(refused)),
    };
    // HTTP/1.1 heads are bounded by hyper; this bounds HTTP/2's too.
    if request.headers().len() > max_headers {
        target = Err(HostError::HeadersTooLarge(format!(
            "the request has {} header fields; the limit is {max_headers}",
            request.headers().len()
        )));
    }
    let scheme = if connection.tls {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let span = tracing::info_span!("request", id = %id, tenant = %label);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = async {
        match target {
            Ok(target) => serve_target(target, request, scheme, &id).await,
            Err(error) => Err(error),
        }
        .unwrap_or_else(HostError::into_response)
    }
    .instrument(span.clone())
    .await;
    if let Ok(value) = hyper::header::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    router.record(&label, status, elapsed);
    span.in_scope(|| {
        tracing::info!(%method, %path, status, elapsed_us = elapsed.as_micros() as u64, "request");
    });
    response
}

/// Admits a request under its tenant's bounds, then runs it.
async fn serve_target(
    target: Target,
    request: Request<Incoming>,
    scheme: Scheme,
    id: &str,
) -> Result<Response<HyperOutgoingBody>, HostError> {
    let limits = Arc::clone(&target.sandbox.limits);
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.request_body_bytes) {
        return Err(HostError::Limit(
            LimitHit::RequestBody,
            LimitHit::RequestBody.describe(&limits),
        ));
    }
    // One deadline for the whole request: time spent waiting for a slot counts.
    let timeout = Duration::from_millis(limits.timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let permit = match &target.gate {
        Some(gate) => Some(gate.enter(timeout).await?),
        None => None,
    };
    let response = run_guest(
        &target.service,
        &target.sandbox,
        permit,
        request,
        (scheme, id),
        deadline,
    )
    .await?;
    Ok(response.map(|body| Bounded::response(body, limits.response_body_bytes).boxed_unsync()))
}

async fn run_guest(
    service: &Service,
    sandbox: &RequestSandbox,
    permit: Option<OwnedSemaphorePermit>,
    request: Request<Incoming>,
    (scheme, id): (Scheme, &str),
    deadline: tokio::time::Instant,
) -> Result<Response<HyperOutgoingBody>, HostError> {
    let limits = Arc::clone(&sandbox.limits);
    let outcome = Arc::new(Outcome::default());
    // The tenant slot lives as long as the guest task or any inference run it started.
    let slot: Option<Arc<dyn std::any::Any + Send + Sync>> =
        permit.map(|p| Arc::new(p) as Arc<dyn std::any::Any + Send + Sync>);
    let mut store = service.new_store(sandbox, &outcome, id, slot);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request =
        request.map(|body| Bounded::request(body, limits.request_body_bytes, Arc::clone(&outcome)));
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, request)
        .map_err(|e| HostError::BadRequest(format!("{e}")))?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot create the response outparam");
            HostError::ComponentFailed(None)
        })?;
    let pre = service.pre().clone();
    // The guest runs in its own task so it can keep streaming the body after the head is sent;
    // the tenant's slot is held until it ends.
    // The whole task, body streaming included, ends at the request's deadline.
    let timeout = Duration::from_millis(limits.timeout_ms);
    let task = tokio::spawn(
        async move {
            // The store holds the tenant slot (through its wasi:nn budget) until it is dropped.
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            };
            match tokio::time::timeout_at(deadline, run).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::format_err!(
                    "the request ran past its timeout of {timeout:?}"
                )),
            }
        }
        .in_current_span(),
    );
    // Dropping this handler (the client went away) stops the guest too.
    let mut task = AbortOnDrop(Some(task));
    let limit = |hit: LimitHit| HostError::Limit(hit, hit.describe(&limits));
    match tokio::time::timeout_at(deadline, receiver).await {
        Ok(Ok(_)) if outcome.hit() == Some(LimitHit::RequestBody) => {
            Err(limit(LimitHit::RequestBody))
        }
        Ok(Ok(Err(code))) => Err(HostError::ComponentError(format!("{code:?}"))),
        Ok(Err(_)) => {
            // The guest dropped the outparam without answering: report how it ended.
            let trap = match task.finish().await {
                Ok(Ok(())) => {
                    tracing::warn!("component returned without setting a response");
                    None
                }
                Ok(Err(trap)) => {
                    tracing::warn!(error = ?trap, "component trapped");
                    Some(trap)
                }
                Err(e) => {
                    tracing::error!(error = %e, "component task failed");
                    None
                }
            };
            if let Some(hit) = outcome.hit() {
                return Err(limit(hit));
            }
            if tokio::time::Instant::now() >= deadline {
                // The task's own deadline ended it (the same moment as ours).
                return Err(HostError::Timeout(timeout));
            }
            if trap
                .as_ref()
                .is_some_and(|t| t.is::<wasmtime::PoolConcurrencyLimitError>())
            {
                // Every instance slot of the process is in use: a capacity problem, not the
                // component's fault.
                return Err(HostError::Overloaded);
            }
            let kind = trap
                .as_ref()
                .and_then(|t| t.downcast_ref::<wasmtime::Trap>())
                .map(|t| t.to_string());
            Err(HostError::ComponentFailed(kind))
        }
        Err(_) => {
            drop(task);
            tracing::warn!(?timeout, "component did not answer in time");
            Err(HostError::Timeout(timeout))
        }
        Ok(Ok(Ok(response))) => {
            // The guest keeps streaming the body on its task; it is bounded by the deadline.
            task.detach();
            Ok(response)
        }
    }
}

/// A guest task that is aborted if its handle is dropped before it is detached.
struct AbortOnDrop(Option<tokio::task::JoinHandle<wasmtime::Result<()>>>);

impl AbortOnDrop {
    fn detach(mut self) {
        self.0 = None;
    }

    /// Waits for the task (it ends by its own deadline). If this wait is dropped (the client
    /// went away), the task is still aborted.
    async fn finish(&mut self) -> Result<wasmtime::Result<()>, tokio::task::JoinError> {
        let Some(task) = self.0.as_mut() else {
            return Ok(Ok(()));
        };
        let result = task.await;
        self.0 = None;
        result
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
