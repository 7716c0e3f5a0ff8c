//! The data plane's HTTP listener: accepts connections (HTTP/1.1 and HTTP/2 over cleartext),
//! picks the service by host name, and hands each request to a fresh instance of its
//! component.

pub mod bounds;
pub mod error;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::engine::{Outcome, RequestSandbox, Service};
use crate::limits::LimitHit;
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
    /// request to `host` (as the client sent it, possibly with a port) goes; an error is
    /// answered by the host.
    fn route(&self, host: Option<&str>) -> (Arc<str>, Result<Target, HostError>);

    /// Called once per request with the label from [`Router::route`] and the final status.
    fn record(&self, _label: &str, _status: u16) {}
}

/// Development mode: every request goes to the one service.
pub struct SingleService(pub Target);

impl Router for SingleService {
    fn route(&self, _host: Option<&str>) -> (Arc<str>, Result<Target, HostError>) {
        (Arc::from(""), Ok(self.0.clone()))
    }
}

/// The host a request names: `:authority` (HTTP/2, absolute-form URIs), else the Host header.
pub fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(hyper::header::HOST)?.to_str().ok())
}

/// Serves requests on `listener`, routed by `router`, until `shutdown` resolves. Connections
/// already accepted keep being served by their own tasks.
pub async fn serve(
    listener: TcpListener,
    router: Arc<dyn Router>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        tokio::spawn(serve_connection(stream, peer, Arc::clone(&router)));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Arc<dyn Router>,
) {
    let _ = stream.set_nodelay(true);
    let handler = hyper::service::service_fn(move |request| {
        let router = Arc::clone(&router);
        async move { Ok::<_, std::convert::Infallible>(handle(&*router, request).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), handler)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Routes one request and runs it through a fresh instance. Every failure becomes a JSON
/// error response.
pub async fn handle(
    router: &dyn Router,
    request: Request<Incoming>,
) -> Response<HyperOutgoingBody> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (label, target) = router.route(request_host(&request));
    let response = match target {
        Ok(target) => serve_target(target, request).await,
        Err(error) => Err(error),
    }
    .unwrap_or_else(HostError::into_response);
    let status = response.status().as_u16();
    router.record(&label, status);
    tracing::info!(tenant = %label, %method, %path, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

/// Admits a request under its tenant's bounds, then runs it.
async fn serve_target(
    target: Target,
    request: Request<Incoming>,
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
    let timeout = Duration::from_millis(limits.timeout_ms);
    let permit = match &target.gate {
        Some(gate) => Some(gate.enter(timeout).await?),
        None => None,
    };
    let response = run_guest(&target.service, &target.sandbox, permit, request).await?;
    Ok(response.map(|body| Bounded::response(body, limits.response_body_bytes).boxed_unsync()))
}

async fn run_guest(
    service: &Service,
    sandbox: &RequestSandbox,
    permit: Option<OwnedSemaphorePermit>,
    request: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, HostError> {
    let limits = Arc::clone(&sandbox.limits);
    let outcome = Arc::new(Outcome::default());
    let mut store = service.new_store(sandbox, &outcome);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request =
        request.map(|body| Bounded::request(body, limits.request_body_bytes, Arc::clone(&outcome)));
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
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
    let task = tokio::spawn(async move {
        let _permit = permit;
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, outparam)
            .await
    });
    let limit = |hit: LimitHit| HostError::Limit(hit, hit.describe(&limits));
    let timeout = Duration::from_millis(limits.timeout_ms);
    match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(_)) if outcome.hit() == Some(LimitHit::RequestBody) => {
            Err(limit(LimitHit::RequestBody))
        }
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(code))) => Err(HostError::ComponentError(format!("{code:?}"))),
        Ok(Err(_)) => {
            // The guest dropped the outparam without answering: report how it ended.
            let trap = match task.await {
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
            task.abort();
            tracing::warn!(?timeout, "component did not answer in time");
            Err(HostError::Timeout(timeout))
        }
    }
}
