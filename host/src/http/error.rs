//! Every HTTP error Corral answers on its own, built in this one place from an
//! [`ErrorCode`](crate::error::ErrorCode).
//!
//! Bodies are always `{"error":{"code":"...","message":"..."}}`. Messages describe what the
//! client can act on; trap details and backtraces go to the log, never to the client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::error::{ErrorCode, Refusal};

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
    /// The code and message the client gets.
    fn parts(&self) -> (ErrorCode, String) {
        match self {
            Self::BadRequest(message) => (ErrorCode::BadRequest, message.clone()),
            Self::ComponentFailed(None) => (
                ErrorCode::ComponentFailed,
                "the service's component failed while handling the request".into(),
            ),
            Self::ComponentFailed(Some(trap)) => (
                ErrorCode::ComponentTrapped,
                format!("the service's component trapped: {trap}"),
            ),
            Self::Limit(hit, message) => (hit.code(), message.clone()),
            Self::Overloaded => (
                ErrorCode::Overloaded,
                "this service is handling as many requests as it may; retry shortly".into(),
            ),
            Self::ComponentError(code) => (
                ErrorCode::ComponentError,
                format!(
                    "the service's component answered with an error instead of a response: {code}"
                ),
            ),
            Self::Timeout(limit) => (
                ErrorCode::Timeout,
                format!(
                    "the service's component did not answer within {} s",
                    limit.as_secs_f64()
                ),
            ),
            Self::UnknownHost(Some(host)) => (
                ErrorCode::UnknownHost,
                format!("no service is deployed at host '{}'", host.escape_debug()),
            ),
            Self::UnknownHost(None) => (
                ErrorCode::UnknownHost,
                "the request names no host (Host header or :authority)".into(),
            ),
            Self::DeploymentUnavailable { restoring } => (
                ErrorCode::DeploymentUnavailable,
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
                ErrorCode::NoActiveDeployment,
                "this service has no active deployment".into(),
            ),
            Self::Misdirected { sni, host } => (
                ErrorCode::MisdirectedRequest,
                format!(
                    "this connection was opened for '{}' (TLS server name), which is not the \
                     service at '{}': open a new connection for that host",
                    sni.escape_debug(),
                    host.escape_debug()
                ),
            ),
            Self::HeadersTooLarge(message) => (ErrorCode::HeadersTooLarge, message.clone()),
        }
    }

    pub fn into_response(self) -> Response<HyperOutgoingBody> {
        let (code, message) = self.parts();
        let mut response = error_response(code, &message);
        if let Self::DeploymentUnavailable { restoring: false } = self {
            // Retrying does not help a deployment that could not be restored.
            response.headers_mut().remove(hyper::header::RETRY_AFTER);
        }
        response
    }
}

/// The one place an error becomes a response: `code`'s status, `{"error":{"code","message"}}`,
/// and `Retry-After` where the code passes.
pub fn error_response(code: ErrorCode, message: &str) -> Response<HyperOutgoingBody> {
    let mut response = json_response(
        code.status(),
        &serde_json::json!({ "error": { "code": code.as_str(), "message": message } }),
    );
    if let Some(seconds) = code.retry_after() {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(seconds),
        );
    }
    response
}

/// A refusal as its response; Corral's own failure is logged and answered `500 internal`
/// without its cause.
pub fn refusal_response(refusal: Refusal) -> Response<HyperOutgoingBody> {
    match refusal {
        Refusal::Refused { code, message } => error_response(code, &message),
        Refusal::Internal(error) => {
            tracing::error!(error = ?error, "request failed");
            error_response(ErrorCode::Internal, "the server failed; see its log")
        }
    }
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
