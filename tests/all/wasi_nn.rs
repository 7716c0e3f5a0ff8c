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

/// `corral:service/models` describes each model of the deployment as the model declares it
/// (names, element types, shapes, dynamic dimensions as null), and a deployment without a
/// configuration has none.
#[tokio::test]
async fn a_guest_can_read_its_models_signatures() {
    let result = case("describe").await;
    assert_eq!(result["ok"], true, "{result}");
    let models = &result["detail"]["models"];
    let names: Vec<&String> = models.as_object().unwrap().keys().collect();
    assert_eq!(names, ["add", "bool", "identity"], "{result}");
    assert_eq!(
        models["add"],
        serde_json::json!({
            "inputs": [
                { "name": "a", "datatype": "TensorType::Fp32", "shape": [2, 2] },
                { "name": "b", "datatype": "TensorType::Fp32", "shape": [2, 2] },
            ],
            "outputs": [{ "name": "sum", "datatype": "TensorType::Fp32", "shape": [2, 2] }],
        }),
        "{result}"
    );
    // A dynamic dimension is none.
    assert_eq!(
        models["identity"]["inputs"][2],
        serde_json::json!({ "name": "x_f32", "datatype": "TensorType::Fp32", "shape": [null, 4] }),
        "{result}"
    );
    // An element type wasi:nn cannot carry is named as none.
    assert_eq!(
        models["bool"]["outputs"][0]["datatype"],
        serde_json::Value::Null,
        "{result}"
    );
    assert_eq!(result["detail"]["config"], serde_json::Value::Null);
}

/// A deployment's `config` part, the component's own free-form settings included, reaches its
/// guest through `corral:service/models.config`.
#[tokio::test]
async fn a_guest_reads_the_configuration_it_was_deployed_with() {
    use crate::common::serve::{Corral, DataDir, Part};
    let dir = DataDir::new("guest-config");
    let corral = Corral::start(&dir, "");
    let token = corral.create_tenant("acme", "acme.test").await;
    let config = serde_json::json!({
        "batching": { "max_batch_size": 2 },
        "component": { "labels": ["cat", "dog"], "top_k": 1 },
    });
    let parts = [
        Part::file("component", &guest("nn-probe")),
        Part::file("model.add", &fixture("add.onnx")),
        Part::bytes("config", "config.json", config.to_string().into_bytes()),
    ];
    let (status, body) = corral.upload("acme", &token, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = corral
        .call("acme.test", "GET", "/case/describe", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = json(&body);
    assert_eq!(result["detail"]["config"], config, "{result}");
    assert_eq!(
        result["detail"]["models"]["add"]["outputs"][0]["name"], "sum",
        "{result}"
    );
}
