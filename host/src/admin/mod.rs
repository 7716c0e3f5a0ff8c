//! The control plane: the admin API on its own listener.
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`: no token (keep the listener private);
//! - `PUT /v1/tenants/{tenant}`, `GET /v1/tenants`, `DELETE /v1/tenants/{tenant}`,
//!   `GET /v1/status` (how far this server has applied the store's changes): operator;
//! - `GET /v1/tenants/{tenant}` and everything under it: the operator or that tenant's token.
//!
//! Tokens come as `Authorization: Bearer TOKEN`. A missing or unknown token is `401`; a valid
//! tenant token used on another tenant or on an operator route is `403`, without saying
//! whether that tenant exists. Every error is `{"error":{"code","message"}}`.

mod paced;
mod sink;
mod tenants;
mod upload;

pub use corral_parsers::multipart;

use std::future::Future;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::config::HttpSettings;
use crate::error::{ErrorCode, Refusal};
use crate::http::error::{json_response, refusal_response, text_response};
use crate::http::listener::Listener;
use crate::metrics::ConnectionStats;
use crate::metrics::{Gauges, Metrics};
use crate::store::Digest;
use crate::tenancy::Tenancy;
use crate::tenancy::tokens::token_hash;

/// Largest JSON body the admin API reads.
const MAX_JSON_BODY: usize = 64 * 1024;

/// The admin API's state.
#[derive(Debug)]
pub struct Admin {
    pub tenancy: Arc<Tenancy>,
    /// The shared inference layer (model status, `/metrics`).
    pub inference: Arc<crate::inference::Inference>,
    /// Where uploads are written.
    pub store: Arc<crate::store::Store>,
    /// The engine's instance slots, for `/metrics`.
    pub instance_slots: u32,
    pub metrics: Arc<Metrics>,
    pub operator_token_sha256: Digest,
    /// How large and how slow a deployment upload may be.
    pub uploads: UploadSettings,
    /// Time a JSON body has to arrive once its request head has.
    pub body_timeout: std::time::Duration,
    /// The data-plane listeners (cleartext, HTTPS), for the URLs a deployment answers with.
    pub data_addr: Option<std::net::SocketAddr>,
    pub tls_addr: Option<std::net::SocketAddr>,
    /// The data-plane listeners' connection counts, for /metrics.
    pub connections: Vec<(&'static str, Arc<ConnectionStats>)>,
}

/// Bounds on deployment uploads.
#[derive(Clone, Copy, Debug)]
pub struct UploadSettings {
    /// Largest upload, in bytes (`413 upload_too_large`).
    pub max_bytes: u64,
    /// Each 10 s of an upload carries at least ten times this (`408 upload_too_slow`).
    pub min_bytes_per_sec: u64,
}

/// Who is calling.
#[derive(Debug, PartialEq)]
enum Caller {
    Operator,
    Tenant(String),
}

/// Serves the admin API on `socket` under the front door's `settings` until `shutdown`
/// resolves, then drains for at most `drain`.
pub async fn serve(
    socket: TcpListener,
    settings: HttpSettings,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
    drain: std::time::Duration,
) {
    let handler = move |request, _connection| {
        let admin = Arc::clone(&admin);
        async move { admin.handle(request).await }
    };
    let listener = Listener {
        name: "admin",
        socket,
        tls: None,
        settings,
        stats: Arc::default(),
    };
    crate::http::listener::serve(listener, handler, shutdown, drain).await;
}

impl Admin {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = self.route(request).await.unwrap_or_else(refusal_response);
        tracing::info!(%method, %path, status = response.status().as_u16(), "admin request");
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Refusal> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
            }
            (&Method::GET, ["readyz"]) if !self.tenancy.restored() => Ok(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "restoring", "tenants": self.tenancy.tenant_count()}),
            )),
            (&Method::GET, ["readyz"]) => Ok(json_response(
                StatusCode::OK,
                &json!({"status": "ready", "tenants": self.tenancy.tenant_count()}),
            )),
            (&Method::GET, ["metrics"]) => {
                let inference = &self.inference;
                let cache = inference.cache();
                let digest = |key: &crate::backends::models::ModelKey| key.digest.to_string();
                let gauges = Gauges {
                    models_resident: cache
                        .residents()
                        .iter()
                        .map(|r| (digest(&r.key), r.device.to_string(), r.bytes))
                        .collect(),
                    models_budget: cache
                        .devices()
                        .iter()
                        .map(|d| (d.name.to_string(), d.budget))
                        .collect(),
                    model_loads: cache.loads_total(),
                    model_evictions: cache.evictions_total(),
                    model_load_times: cache
                        .load_times()
                        .into_iter()
                        .map(|(device, times)| (device.to_string(), times))
                        .collect(),
                    model_stats: inference
                        .model_stats()
                        .into_iter()
                        .map(|(key, stats)| {
                            (digest(&key), stats as Arc<dyn crate::metrics::ModelSeries>)
                        })
                        .collect(),
                    tenant_compute: inference
                        .compute_seconds()
                        .into_iter()
                        .map(|(tenant, device, seconds)| (tenant, device.to_string(), seconds))
                        .collect(),
                    nn_queued: inference.queued(),
                    tenants: self.tenancy.tenant_count(),
                    queue_depth: self.tenancy.queue_depths(),
                    instances_in_use: crate::engine::live_instances(),
                    instance_slots: self.instance_slots,
                    inference_runs: inference.runs_in_flight(),
                    connections: self.connections.clone(),
                };
                Ok(text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(&gauges),
                ))
            }
            (&Method::GET, ["v1", "status"]) => {
                operator_only(&self.caller(&request)?)?;
                Ok(json_response(StatusCode::OK, &json!(self.tenancy.status())))
            }
            (_, ["v1", "tenants", rest @ ..]) => {
                let caller = self.caller(&request)?;
                self.tenants(caller, method, rest, request).await
            }
            _ => Err(Refusal::not_found(format!(
                "no admin route {method} {path}"
            ))),
        }
    }

    fn caller(&self, request: &Request<Incoming>) -> Result<Caller, Refusal> {
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("this route needs 'Authorization: Bearer TOKEN'"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer TOKEN'"))?;
        if token_hash(token) == self.operator_token_sha256 {
            return Ok(Caller::Operator);
        }
        self.tenancy
            .tenant_of_token(token)
            .map(Caller::Tenant)
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

fn operator_only(caller: &Caller) -> Result<(), Refusal> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant(_) => Err(forbidden()),
    }
}

fn unauthorized(message: &str) -> Refusal {
    Refusal::new(ErrorCode::Unauthorized, message)
}

fn forbidden() -> Refusal {
    Refusal::new(ErrorCode::Forbidden, "this token may not do that")
}

fn method_not_allowed(method: &Method) -> Refusal {
    Refusal::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on this route"),
    )
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    timeout: std::time::Duration,
) -> Result<T, Refusal> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_JSON_BODY);
    let bytes = tokio::time::timeout(timeout, limited.collect())
        .await
        .map_err(|_| {
            Refusal::new(
                ErrorCode::BodyTimeout,
                format!(
                    "the JSON body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        })?
        .map_err(|_| {
            Refusal::new(
                ErrorCode::BodyTooLarge,
                format!("JSON bodies are limited to {MAX_JSON_BODY} bytes"),
            )
        })?
        .to_bytes();
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes)
        .map_err(|e| Refusal::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
}
