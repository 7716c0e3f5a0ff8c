//! Corral's `wasi:nn` host driven by a real guest (tests/guests/nn-probe): every tensor type
//! round-trips, every guest mistake is a `wasi:nn` error value, and the next request works.

use std::sync::OnceLock;

use crate::common::*;
use hyper::StatusCode;

static SERVER: OnceLock<Shared> = OnceLock::new();

fn server() -> &'static Shared {
    start_shared(&SERVER, || {
        dev_options(
            "nn-probe",
            &[
                ("identity", fixture("identity_types.onnx")),
                ("add", fixture("add.onnx")),
                ("bool", fixture("bool_output.onnx")),
            ],
        )
    })
}

async fn case(name: &str) -> serde_json::Value {
    let (status, body) = request(server().addr, "GET", &format!("/case/{name}"), Vec::new()).await;
    let result = json(&body);
    assert_eq!(status, StatusCode::OK, "case {name}: {result}");
    result
}

#[tokio::test]
async fn every_tensor_type_round_trips_through_a_real_session() {
    let result = case("types").await;
    assert_eq!(result["ok"], true, "{result}");
    let checked: Vec<&str> = result["detail"]["checked"]
        .as_array()
        .expect("{result}")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        checked,
        [
            "y_f16", "y_bf16", "y_f32", "y_f64", "y_u8", "y_i32", "y_i64"
        ],
        "{result}"
    );
}

#[tokio::test]
async fn a_model_computes_on_named_inputs() {
    let result = case("add").await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["detail"]["sum"],
        serde_json::json!([11.0, 22.0, 33.0, 44.0])
    );
    assert_eq!(result["detail"]["shape"], serde_json::json!([2, 2]));
}

/// Each guest mistake, the `wasi:nn` error code it must produce, and a word the message must
/// contain so the guest author can see what was wrong.
const MISTAKES: &[(&str, &str, &str)] = &[
    ("unknown-model", "not-found", "no-such-model"),
    ("load-bytes", "security", "load-by-name"),
    ("wrong-shape", "invalid-argument", "dimensions"),
    ("wrong-rank", "invalid-argument", "dimensions"),
    ("byte-length", "invalid-argument", "15 bytes"),
    ("overflow-dims", "invalid-argument", "overflow"),
    (
        "huge-dims",
        "invalid-argument",
        "limit of 67108864 elements",
    ),
    ("unknown-input", "invalid-argument", "'c'"),
    ("missing-input", "invalid-argument", "missing input 'b'"),
    ("duplicate-input", "invalid-argument", "more than once"),
    ("wrong-type", "invalid-argument", "must be f32"),
    ("unsupported-output", "unsupported-operation", "Bool"),
];

#[tokio::test]
async fn every_guest_mistake_is_an_error_value_and_the_next_request_succeeds() {
    for (name, code, hint) in MISTAKES {
        let result = case(name).await;
        assert_eq!(result["ok"], false, "case {name} should fail: {result}");
        assert_eq!(result["code"], *code, "case {name}: {result}");
        let message = result["message"].as_str().unwrap();
        assert!(
            message.contains(hint),
            "case {name}: message {message:?} should mention {hint:?}"
        );
        let after = case("add").await;
        assert_eq!(
            after["ok"], true,
            "request after case {name} failed: {after}"
        );
    }
}

#[tokio::test]
async fn the_sandbox_grants_no_environment_files_or_outgoing_http() {
    let (status, body) = request(server().addr, "GET", "/case/sandbox", Vec::new()).await;
    let result = json(&body);
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        result["env"],
        serde_json::json!([]),
        "no environment variables: {result}"
    );
    assert_eq!(
        result["files"],
        serde_json::json!([]),
        "no preopened directories: {result}"
    );
    let outgoing = result["outgoing_http"].as_str().unwrap();
    assert!(
        outgoing.starts_with("refused") && outgoing.contains("HttpRequestDenied"),
        "{outgoing}"
    );
    let args = result["args"].as_array().unwrap();
    assert!(
        args.len() <= 1,
        "no arguments beyond a program name: {result}"
    );
}
