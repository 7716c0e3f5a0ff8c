//! JSON over `wasi:http`, for handlers written with [`wstd`]: read a JSON body, answer JSON,
//! answer an error the way Corral's own errors look (`{"error":{"code","message"}}`).
//!
//! ```no_run
//! use corral_guest::http::{error, json, read_json};
//! use wstd::http::{Body, Request, Response, StatusCode};
//!
//! #[derive(serde::Deserialize)]
//! struct Query {
//!     text: String,
//! }
//!
//! async fn handle(mut request: Request<Body>) -> Response<Body> {
//!     let query: Query = match read_json(&mut request).await {
//!         Ok(query) => query,
//!         Err(response) => return response,
//!     };
//!     if query.text.is_empty() {
//!         return error(StatusCode::BAD_REQUEST, "empty_text", "send some text");
//!     }
//!     json(StatusCode::OK, &serde_json::json!({ "length": query.text.len() }))
//! }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use wstd::http::{Body, Request, Response, StatusCode};

/// Reads the request body as JSON. On failure, the `Err` is the `400 invalid_json` response
/// to return, naming what was wrong.
pub async fn read_json<T: DeserializeOwned>(
    request: &mut Request<Body>,
) -> Result<T, Response<Body>> {
    let body = match request.body_mut().contents().await {
        Ok(body) => body,
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("cannot read the request body: {e}"),
            ));
        }
    };
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("the body is not the JSON this service expects: {e}"),
        )
    })
}

/// A JSON response with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let text = serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"code":"internal","message":"cannot encode the answer: {e}"}}}}"#)
    });
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        wstd::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error response shaped like Corral's own: `{"error":{"code":...,"message":...}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

/// `Err` with the `405 method_not_allowed` response to return unless `request` is a POST;
/// `usage` tells the client what to send.
pub fn require_post(request: &Request<Body>, usage: &str) -> Result<(), Response<Body>> {
    if request.method() == wstd::http::Method::POST {
        return Ok(());
    }
    Err(error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        usage,
    ))
}
