//! Components from other languages' toolchains served by Corral: `examples/python-sum`, built
//! with componentize-py by `cargo xtask build-guests`, calling `wasi:nn` on a real ONNX model.

mod common;

use std::sync::OnceLock;

use common::*;
use hyper::StatusCode;
use serde_json::json;

static PYTHON: OnceLock<Shared> = OnceLock::new();

fn python() -> &'static Shared {
    start_shared(&PYTHON, || {
        dev_options("python-sum", &[("add", fixture("add.onnx"))])
    })
}

#[tokio::test]
async fn a_python_component_runs_the_model_through_wasi_nn() {
    let body = json!({ "a": [1, 2, 3, 4], "b": [10, 20, 30, 40] });
    let (status, answer) = request(python().addr, "POST", "/", body.to_string().into_bytes()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let answer = json(&answer);
    assert_eq!(answer["sum"], json!([11.0, 22.0, 33.0, 44.0]));
    assert_eq!(answer["shape"], json!([2, 2]));
}

#[tokio::test]
async fn a_python_component_answers_bad_input_with_400() {
    let (status, answer) =
        request(python().addr, "POST", "/", br#"{"a": [1, 2, 3]}"#.to_vec()).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        json(&answer)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'b'")
    );
}
