//! Every HTTP error Corral answers on its own, built in this one place.
//!
//! Bodies are always `{"error":{"code":"...","message":"..."}}`. Messages describe what the
//! client can act on; trap details and backtraces go to the log, never to the client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A failure answered by the host rather than the guest.
#[derive(Debug)]
pub enum HostError {
    /// The request cannot be handed to a component (e.g. no Host header / authority).
    BadRequest(String),
    /// The component trapped (the trap's kind, when it is a wasm trap) or returned without
    /// answering.
    ComponentFailed(Option<String>),
    /// A tenant limit stopped the request.
    Limit(crate::limits::LimitHit, String),
    /// The tenant's concurrency slots and queue are full.
    Overloaded,
    /// The component answered with a `wasi:http` error code instead of a response.
    ComponentError(String),
    /// The component did not answer within the request timeout.
    Timeout(std::time::Duration),
    /// No tenant serves this host name (or the request named none).
    UnknownHost(Option<String>),
    /// The tenant has no active deployment.
    NoDeployment,
    /// The tenant's active deployment is being restored (`true`) or could not be.
    DeploymentUnavailable { restoring: bool },
    /// The TLS handshake named one tenant's host and the request another's.
    Misdirected { sni: String, host: String },
    /// The request head has more header fields than the front door allows.
    HeadersTooLarge(String),
}

impl HostError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "bad_request", message.clone()),
            Self::ComponentFailed(None) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "component_failed",
                "the service's component failed while handling the request".into(),
            ),
            Self::ComponentFailed(Some(trap)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "component_trapped",
                format!("the service's component trapped: {trap}"),
            ),
            Self::Limit(hit, message) => {
                let status = match hit {
                    crate::limits::LimitHit::RequestBody => StatusCode::PAYLOAD_TOO_LARGE,
                    crate::limits::LimitHit::NnQueue => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, hit.code(), message.clone())
            }
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "this service is handling as many requests as it may; retry shortly".into(),
            ),
            Self::ComponentError(code) => (
                StatusCode::BAD_GATEWAY,
                "component_error",
                format!(
                    "the service's component answered with an error instead of a response: {code}"
                ),
            ),
            Self::Timeout(limit) => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the service's component did not answer within {} s",
                    limit.as_secs_f64()
                ),
            ),
            Self::UnknownHost(Some(host)) => (
                StatusCode::NOT_FOUND,
                "unknown_host",
                format!("no service is deployed at host '{}'", host.escape_debug()),
            ),
            Self::UnknownHost(None) => (
                StatusCode::NOT_FOUND,
                "unknown_host",
                "the request names no host (Host header or :authority)".into(),
            ),
            Self::DeploymentUnavailable { restoring } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "deployment_unavailable",
                if *restoring {
                    "this service's deployment is being restored after a restart; retry shortly"
                        .into()
                } else {
                    "this service's deployment could not be restored; its owner can see why in \
                     its status"
                        .into()
                },
            ),
            Self::NoDeployment => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_active_deployment",
                "this service has no active deployment".into(),
            ),
            Self::Misdirected { sni, host } => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!(
                    "this connection was opened for '{}' (TLS server name), which is not the \
                     service at '{}': open a new connection for that host",
                    sni.escape_debug(),
                    host.escape_debug()
                ),
            ),
            Self::HeadersTooLarge(message) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                message.clone(),
            ),
        }
    }

    pub fn into_response(self) -> Response<HyperOutgoingBody> {
        let (status, code, message) = self.parts();
        let mut response = json_error(status, code, &message);
        if matches!(
            self,
            Self::Overloaded
                | Self::DeploymentUnavailable { restoring: true }
                | Self::Limit(crate::limits::LimitHit::NnQueue, _)
        ) {
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// A JSON error response.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<HyperOutgoingBody> {
    json_response(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

/// A JSON response (the admin API's successful answers use it too).
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<HyperOutgoingBody> {
    let mut body = value.to_string();
    body.push('\n');
    text_response(status, "application/json", body)
}

pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_json_with_code_and_message() {
        let response = HostError::Timeout(std::time::Duration::from_secs(2)).into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "timeout");
        assert!(json["error"]["message"].as_str().unwrap().contains("2 s"));
    }
}
