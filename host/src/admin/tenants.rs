//! The routes under `/v1/tenants`: tenants, their deployments, uploads and certificates, and
//! the JSON they answer with.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Admin, Caller, forbidden, method_not_allowed, operator_only, read_json, upload};
use crate::error::Refusal;
use crate::http::error::json_response;
use crate::store::records::{DeploymentRecord, TenantRecord};
use crate::tenancy::{TenantUpdate, Unavailable};

impl Admin {
    pub(super) async fn tenants(
        &self,
        caller: Caller,
        method: Method,
        rest: &[&str],
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Refusal> {
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
        let cache = self.inference.cache();
        let mut all: Vec<Value> = models
            .iter()
            .map(|model| {
                let mut status = json!({
                    "name": model.name,
                    "digest": model.key.digest.to_string(),
                    "format": model.key.format.name(),
                    "loaded": cache.is_loaded(&model.key),
                });
                if let Some(device) = cache.device_of(&model.key) {
                    status["device"] = json!(&*device);
                }
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
    ) -> Result<Response<HyperOutgoingBody>, Refusal> {
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
                answer["urls"] = self.urls(tenant);
                answer["limits"] = serde_json::to_value(self.tenancy.limits(tenant)?)
                    .map_err(|e| Refusal::Internal(e.into()))?;
                answer["limit_overrides"] = serde_json::to_value(&record.limits)
                    .map_err(|e| Refusal::Internal(e.into()))?;
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

                let deployed = async {
                    let quota = upload::Quota {
                        limit: self.tenancy.limits(tenant)?.storage_bytes,
                        used: self.tenancy.storage_used(tenant).await?,
                    };
                    let upload = upload::receive(&self.store, request, self.uploads, quota).await?;
                    let record = self
                        .tenancy
                        .deploy(tenant, upload.component, upload.models, upload.config)
                        .await;
                    // Recorded (the deployment now holds its blobs) or refused (they go unless
                    // something else holds them): the upload's pins are no longer needed.
                    drop(upload.pins);
                    record
                }
                .await;
                let result = deployed
                    .as_ref()
                    .map_or_else(|e| e.code().as_str(), |_| "ok");
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
                None => Err(Refusal::not_found(format!(
                    "tenant '{tenant}' has no certificate"
                ))),
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
}

fn certificate_json(info: &crate::tls::certs::CertInfo) -> Value {
    json!({
        "names": info.names,
        "not_before": crate::clock::format_time(info.not_before),
        "not_after": crate::clock::format_time(info.not_after),
        "issuer": info.issuer,
        "sha256": info.sha256,
    })
}

fn parse_version(version: &str) -> Result<u32, Refusal> {
    version.parse().map_err(|_| {
        Refusal::bad_request(format!(
            "'{}' is not a version number",
            version.escape_debug()
        ))
    })
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
