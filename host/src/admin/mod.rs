//! The control plane: the admin API on its own listener.
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`: no token (keep the listener private);
//! - `PUT /v1/tenants/{tenant}`, `GET /v1/tenants`, `DELETE /v1/tenants/{tenant}`: operator;
//! - `GET /v1/tenants/{tenant}` and everything under it: the operator or that tenant's token.
//!
//! Tokens come as `Authorization: Bearer TOKEN`. A missing or unknown token is `401`; a valid
//! tenant token used on another tenant or on an operator route is `403`, without saying
//! whether that tenant exists. Every error is `{"error":{"code","message"}}`.

mod upload;

pub use corral_parsers::multipart;

use std::future::Future;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::config::HttpSettings;
use crate::http::error::{json_error, json_response, text_response};
use crate::http::listener::{ConnectionStats, Listener};
use crate::metrics::{Gauges, Metrics};
use crate::store::Digest;
use crate::tenancy::records::{DeploymentRecord, TenantRecord, token_hash};
use crate::tenancy::{Refusal, Tenancy, TenantUpdate, Unavailable};

/// Largest JSON body the admin API reads.
const MAX_JSON_BODY: usize = 64 * 1024;

/// The admin API's state.
#[derive(Debug)]
pub struct Admin {
    pub tenancy: Arc<Tenancy>,
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

/// An admin API failure, answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(error: anyhow::Error) -> Self {
        tracing::error!(error = ?error, "admin request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; see its log",
        )
    }

    fn into_response(self) -> Response<HyperOutgoingBody> {
        let mut response = json_error(self.status, self.code, &self.message);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(message) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            Refusal::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            Refusal::Invalid { code, message } => Self::invalid(code, message),
            Refusal::Forbidden { code, message } => Self::new(StatusCode::FORBIDDEN, code, message),
            Refusal::Quota { code, message } => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, code, message)
            }
            Refusal::Busy { code, message } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
            Refusal::Internal(e) => Self::internal(e),
        }
    }
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
        let response = self
            .route(request)
            .await
            .unwrap_or_else(ApiError::into_response);
        tracing::info!(%method, %path, status = response.status().as_u16(), "admin request");
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, ApiError> {
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
                let platform = self.tenancy.platform();
                let inference = &platform.inference;
                let cache = inference.cache();
                let digest = |key: &crate::backends::models::ModelKey| key.digest.to_string();
                let gauges = Gauges {
                    models_resident: cache
                        .residents()
                        .iter()
                        .map(|r| (digest(&r.key), r.bytes))
                        .collect(),
                    models_budget: cache.budget(),
                    model_loads: cache.loads_total(),
                    model_evictions: cache.evictions_total(),
                    model_load_times: cache.load_times(),
                    model_stats: inference
                        .scheduler()
                        .model_stats(&cache.loaded_keys())
                        .into_iter()
                        .map(|(key, stats)| (digest(&key), stats))
                        .collect(),
                    tenant_compute: inference
                        .scheduler()
                        .compute_seconds()
                        .into_iter()
                        .map(|(tenant, seconds)| (tenant, "cpu", seconds))
                        .collect(),
                    nn_queued: inference.scheduler().queued(),
                    tenants: self.tenancy.tenant_count(),
                    queue_depth: self.tenancy.queue_depths(),
                    instances_in_use: crate::engine::live_instances(),
                    instance_slots: platform.engine_settings.instances,
                    inference_runs: inference.runs_in_flight(),
                    connections: self.connections.clone(),
                };
                Ok(text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(&gauges),
                ))
            }
            (_, ["v1", "tenants", rest @ ..]) => {
                let caller = self.caller(&request)?;
                self.tenants(caller, method, rest, request).await
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin route {method} {path}"),
            )),
        }
    }

    async fn tenants(
        &self,
        caller: Caller,
        method: Method,
        rest: &[&str],
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, ApiError> {
        match (&method, rest) {
            (&Method::GET, [] | [""]) => {
                operator_only(&caller)?;
                let tenants: Vec<Value> = self.tenancy.list().iter().map(tenant_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenants": tenants }),
                ))
            }
            (&Method::PUT, [tenant]) => {
                operator_only(&caller)?;
                let update: TenantUpdate = read_json(request, self.body_timeout).await?;
                let (record, token) = self.tenancy.put_tenant(tenant, update).await?;
                let mut answer = tenant_json(&record);
                match token {
                    Some(token) => {
                        answer["token"] = Value::String(token);
                        Ok(json_response(StatusCode::CREATED, &answer))
                    }
                    None => Ok(json_response(StatusCode::OK, &answer)),
                }
            }
            (&Method::DELETE, [tenant]) => {
                operator_only(&caller)?;
                self.tenancy.delete_tenant(tenant).await?;
                Ok(json_response(StatusCode::OK, &json!({ "deleted": tenant })))
            }
            (_, [tenant, rest @ ..]) => {
                if caller != Caller::Operator && caller != Caller::Tenant((*tenant).to_owned()) {
                    return Err(forbidden());
                }
                self.tenant(tenant, method, rest, request).await
            }
            _ => Err(method_not_allowed(&method)),
        }
    }

    /// Routes under `/v1/tenants/{tenant}`, for a caller allowed to touch that tenant.
    /// Each model of a deployment: loaded now or not, its measured size, and why its latest
    /// load failed, if it did (a model loads on first use, and may fail then).
    fn model_status(&self, models: &crate::inference::ModelSet) -> Value {
        let cache = self.tenancy.platform().inference.cache();
        let mut all: Vec<Value> = models
            .iter()
            .map(|model| {
                let mut status = json!({
                    "name": model.name,
                    "digest": model.key.digest.to_string(),
                    "format": model.key.format.name(),
                    "loaded": cache.is_loaded(&model.key),
                });
                if let Some(bytes) = cache.measured_bytes(&model.key) {
                    status["resident_bytes"] = json!(bytes);
                }
                if let Some(error) = cache.failure(&model.key) {
                    status["load_error"] = json!(error);
                }
                status
            })
            .collect();
        all.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Value::Array(all)
    }

    async fn tenant(
        &self,
        tenant: &str,
        method: Method,
        rest: &[&str],
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, ApiError> {
        match (&method, rest) {
            (&Method::GET, []) => {
                let record = self.tenancy.get(tenant)?;
                let mut answer = tenant_json(&record);
                answer["status"] = match self.tenancy.unavailable(tenant) {
                    Some(Unavailable::Restoring) => json!({ "state": "restoring" }),
                    Some(Unavailable::Failed(reason)) => {
                        json!({ "state": "unavailable", "reason": reason })
                    }
                    None if record.active.is_some() => json!({ "state": "serving" }),
                    None => json!({ "state": "no_deployment" }),
                };
                if let Some(service) = self.tenancy.active_service(tenant) {
                    answer["status"]["models"] = self.model_status(service.nn().models());
                }
                answer["limits"] = serde_json::to_value(self.tenancy.limits(tenant)?)
                    .map_err(|e| ApiError::internal(e.into()))?;
                answer["limit_overrides"] = serde_json::to_value(&record.limits)
                    .map_err(|e| ApiError::internal(e.into()))?;
                Ok(json_response(StatusCode::OK, &answer))
            }
            (&Method::GET, ["deployments"]) => {
                let list = self.tenancy.deployments(tenant).await?;
                let deployments: Vec<Value> = list
                    .deployments
                    .iter()
                    .map(|d| {
                        let mut value = deployment_json(d);
                        value["active"] = Value::Bool(list.active == Some(d.version));
                        value
                    })
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "active": list.active, "deployments": deployments }),
                ))
            }
            (&Method::POST, ["deployments"]) => {
                // Refuse before reading a byte of the upload when the tenant does not exist.
                self.tenancy.get(tenant)?;
                let platform = Arc::clone(self.tenancy.platform());
                let deployed = async {
                    let quota = upload::Quota {
                        limit: self.tenancy.limits(tenant)?.storage_bytes,
                        used: self.tenancy.storage_used(tenant).await?,
                    };
                    let upload = upload::receive(&platform, request, self.uploads, quota).await?;
                    let record = self
                        .tenancy
                        .deploy(tenant, upload.component, upload.models, upload.config)
                        .await;
                    // Recorded (the deployment now holds its blobs) or refused (they go unless
                    // something else holds them): the upload's pins are no longer needed.
                    drop(upload.pins);
                    Ok::<_, ApiError>(record?)
                }
                .await;
                let result = deployed.as_ref().map_or_else(|e| e.code, |_| "ok");
                self.metrics.record_deployment(tenant, result);
                let record = deployed?;
                let mut answer = deployment_json(&record);
                answer["active"] = Value::Bool(true);
                answer["urls"] = self.urls(tenant);
                Ok(json_response(StatusCode::CREATED, &answer))
            }
            (&Method::PUT, ["certificate"]) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Upload {
                    cert: String,
                    key: String,
                }
                let upload: Upload = read_json(request, self.body_timeout).await?;
                let info = self
                    .tenancy
                    .put_certificate(tenant, upload.cert, upload.key)
                    .await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "certificate": certificate_json(&info) }),
                ))
            }
            (&Method::GET, ["certificate"]) => match self.tenancy.certificate(tenant)? {
                Some(info) => Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "certificate": certificate_json(&info) }),
                )),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("tenant '{tenant}' has no certificate"),
                )),
            },
            (&Method::DELETE, ["certificate"]) => {
                self.tenancy.delete_certificate(tenant).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "deleted": "certificate" }),
                ))
            }
            (&Method::DELETE, ["deployments", version]) => {
                let version = parse_version(version)?;
                self.tenancy.delete_deployment(tenant, version).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "deleted": version }),
                ))
            }
            (&Method::POST, ["deployments", version, "activate"]) => {
                let version = parse_version(version)?;
                let record = self.tenancy.activate(tenant, version).await?;
                let mut answer = deployment_json(&record);
                answer["active"] = Value::Bool(true);
                Ok(json_response(StatusCode::OK, &answer))
            }
            _ => Err(method_not_allowed(&method)),
        }
    }

    /// Where the tenant's service answers on the data plane.
    fn urls(&self, tenant: &str) -> Value {
        let hosts = self
            .tenancy
            .get(tenant)
            .map(|t| t.hosts)
            .unwrap_or_default();
        let listeners = [("https", self.tls_addr), ("http", self.data_addr)];
        hosts
            .iter()
            .flat_map(|host| {
                listeners.iter().filter_map(move |(scheme, addr)| {
                    addr.map(|a| Value::String(format!("{scheme}://{host}:{}/", a.port())))
                })
            })
            .collect()
    }

    fn caller(&self, request: &Request<Incoming>) -> Result<Caller, ApiError> {
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

fn certificate_json(info: &crate::tls::certs::CertInfo) -> Value {
    json!({
        "names": info.names,
        "not_before": crate::tls::certs::format_time(info.not_before),
        "not_after": crate::tls::certs::format_time(info.not_after),
        "issuer": info.issuer,
        "sha256": info.sha256,
    })
}

fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant(_) => Err(forbidden()),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this token may not do that",
    )
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this route"),
    )
}

fn parse_version(version: &str) -> Result<u32, ApiError> {
    version.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{}' is not a version number",
            version.escape_debug()
        ))
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    timeout: std::time::Duration,
) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_JSON_BODY);
    let bytes = tokio::time::timeout(timeout, limited.collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the JSON body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
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
        .map_err(|e| ApiError::invalid("invalid_json", format!("invalid JSON body: {e}")))
}

fn tenant_json(record: &TenantRecord) -> Value {
    json!({
        "tenant": record.name,
        "hosts": record.hosts,
        "created": record.created,
        "active": record.active,
        "outgoing_hosts": record.outgoing_hosts,
        "trusted_models": record.trusted_models,
    })
}

fn deployment_json(record: &DeploymentRecord) -> Value {
    let models: serde_json::Map<String, Value> = record
        .models
        .iter()
        .map(|(name, model)| (name.clone(), Value::String(model.digest.to_string())))
        .collect();
    let formats: serde_json::Map<String, Value> = record
        .models
        .iter()
        .map(|(name, model)| (name.clone(), Value::String(model.format.name().into())))
        .collect();
    json!({
        "version": record.version,
        "component": record.component.to_string(),
        "models": models,
        "formats": formats,
        "created": record.created,
    })
}
