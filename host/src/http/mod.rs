//! The data plane's HTTP listener: accepts connections (HTTP/1.1 and HTTP/2 over cleartext),
//! and hands each request to a fresh instance of the service's component.

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

/// Serves `service` on `listener` until `shutdown` resolves. Connections already accepted
/// keep being served by their own tasks.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
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
        let service = Arc::clone(&service);
        tokio::spawn(serve_connection(stream, peer, service));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, service: Arc<Service>) {
    let _ = stream.set_nodelay(true);
    let handler = hyper::service::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { Ok::<_, std::convert::Infallible>(handle(&service, request).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), handler)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Runs one request through a fresh instance. Every failure becomes a JSON error response.
pub async fn handle(service: &Service, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = run_guest(service, request)
        .await
        .unwrap_or_else(HostError::into_response);
    tracing::info!(%method, %path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
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
