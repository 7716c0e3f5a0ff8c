//! Components from other languages' toolchains served by Corral, each calling `wasi:nn` on a
//! real ONNX model: `examples/python-sum` (componentize-py) and `examples/js-sum`
//! (`jco componentize`), both built by `cargo xtask build-guests`.

use std::sync::OnceLock;

use crate::common::*;
use hyper::StatusCode;
use serde_json::json;

static PYTHON: OnceLock<Shared> = OnceLock::new();
static PYTHON_NO_MODEL: OnceLock<Shared> = OnceLock::new();
static JS: OnceLock<Shared> = OnceLock::new();
static JS_NO_MODEL: OnceLock<Shared> = OnceLock::new();

/// The component served with `add` (tests/fixtures/add.onnx), and served with no models.
fn servers(component: &str) -> (&'static Shared, &'static Shared) {
    let (with, without) = match component {
        "python-sum" => (&PYTHON, &PYTHON_NO_MODEL),
        "js-sum" => (&JS, &JS_NO_MODEL),
        other => panic!("no server for {other}"),
    };
    (
        start_shared(with, || {
            dev_options(component, &[("add", fixture("add.onnx"))])
        }),
        start_shared(without, || dev_options(component, &[])),
    )
}

async fn post(server: &Shared, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let (status, answer) = request(server.addr, "POST", "/", body.to_vec()).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let value = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
    (status, value)
}

/// The sum comes from the ONNX session; a body the guest refuses is a 400 naming the fields;
/// a wasi:nn error (no model named `add`) reaches the guest as an error value it answers 422.
async fn serves_the_model_and_reports_errors(component: &str) {
    let (server, no_model) = servers(component);

    let body = json!({ "a": [1, 2, 3, 4], "b": [10, 20, 30, 40.5] }).to_string();
    let (status, answer) = post(server, body.as_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{component}: {answer}");
    // Compared as numbers: JavaScript writes 11.0 as 11.
    let sum: Vec<f64> = serde_json::from_value(answer["sum"].clone()).expect("sum is numbers");
    assert_eq!(sum, [11.0, 22.0, 33.0, 44.5], "{component}");
    assert_eq!(answer["shape"], json!([2, 2]), "{component}");

    let (status, answer) = post(server, br#"{"a": [1, 2, 3]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{component}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("'b'"), "{component}: {message}");

    let (status, answer) = post(no_model, body.as_bytes()).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{component}: {answer}"
    );
    assert_eq!(answer["code"], "not-found", "{component}: {answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("no model named 'add'"),
        "{component}: {message}"
    );
}

#[tokio::test]
async fn a_python_component_runs_the_model_through_wasi_nn() {
    serves_the_model_and_reports_errors("python-sum").await;
}

#[tokio::test]
async fn a_javascript_component_runs_the_model_through_wasi_nn() {
    serves_the_model_and_reports_errors("js-sum").await;
}
