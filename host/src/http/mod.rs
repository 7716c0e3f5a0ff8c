//! The data plane's HTTP listener: accepts connections (HTTP/1.1 and HTTP/2 over cleartext),
//! picks the service by host name, and hands each request to a fresh instance of its
//! component.

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

use crate::engine::Service;
use error::HostError;

/// Picks the service that handles a request.
pub trait Router: Send + Sync + 'static {
    /// The label the request's metrics go under (its tenant, `""` when none) and the service
    /// for a request to `host` (as the client sent it, possibly with a port); an error is
    /// answered by the host.
    fn route(&self, host: Option<&str>) -> (Arc<str>, Result<Arc<Service>, HostError>);

    /// Called once per request with the label from [`Router::route`] and the final status.
    fn record(&self, _label: &str, _status: u16) {}
}

/// Development mode: every request goes to the one service.
pub struct SingleService(pub Arc<Service>);

impl Router for SingleService {
    fn route(&self, _host: Option<&str>) -> (Arc<str>, Result<Arc<Service>, HostError>) {
        (Arc::from(""), Ok(Arc::clone(&self.0)))
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
    let (label, service) = router.route(request_host(&request));
    let response = match service {
        Ok(service) => run_guest(&service, request).await,
        Err(error) => Err(error),
    }
    .unwrap_or_else(HostError::into_response);
    let status = response.status().as_u16();
    router.record(&label, status);
    tracing::info!(tenant = %label, %method, %path, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

async fn run_guest(
    service: &Service,
    request: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, HostError> {
    let mut store = service.new_store();
    let (sender, receiver) = tokio::sync::oneshot::channel();
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
            HostError::ComponentFailed
        })?;
    let pre = service.pre().clone();
    // The guest runs in its own task so it can keep streaming the body after the head is sent.
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, outparam)
            .await
    });
    let timeout = service.settings().request_timeout;
    match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(code))) => Err(HostError::ComponentError(format!("{code:?}"))),
        Ok(Err(_)) => {
            // The guest dropped the outparam without answering: report how it ended.
            match task.await {
                Ok(Ok(())) => tracing::warn!("component returned without setting a response"),
                Ok(Err(trap)) => tracing::warn!(error = ?trap, "component trapped"),
                Err(e) => tracing::error!(error = %e, "component task failed"),
            }
            Err(HostError::ComponentFailed)
        }
        Err(_) => {
            task.abort();
            tracing::warn!(?timeout, "component did not answer in time");
            Err(HostError::Timeout(timeout))
        }
    }
}
