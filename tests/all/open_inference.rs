//! Models deployed without a component: Corral's built-in `inference` component
//! (`host/builtins/inference`) serves them over the Open Inference Protocol (KServe v2 REST),
//! sandboxed like any tenant's component.

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::common::serve::{Corral, DataDir, Part};
use crate::common::*;

/// A tenant given models and no component: the upload is accepted, and its host answers the
/// protocol.
async fn deployed(name: &str) -> Corral {
    let dir = DataDir::new(name);
    let corral = Corral::start(&dir, "");
    let token = corral.create_tenant("acme", "acme.test").await;
    let parts = [Part::file("model.add", &fixture("add.onnx"))];
    let (status, body) = corral.upload("acme", &token, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    corral
}

async fn get(corral: &Corral, path: &str) -> (StatusCode, Value) {
    let (status, body) = corral.call("acme.test", "GET", path, Vec::new()).await;
    let value = if body.is_empty() {
        Value::Null
    } else {
        json(&body)
    };
    (status, value)
}

async fn infer(corral: &Corral, model: &str, request: Value) -> (StatusCode, Value) {
    let (status, body) = corral
        .call(
            "acme.test",
            "POST",
            &format!("/v2/models/{model}/infer"),
            request.to_string().into_bytes(),
        )
        .await;
    (status, json(&body))
}

fn add_request(a: Value, b: Value) -> Value {
    json!({
        "id": "r1",
        "inputs": [
            { "name": "a", "shape": [2, 2], "datatype": "FP32", "data": a },
            { "name": "b", "shape": [2, 2], "datatype": "FP32", "data": b },
        ],
    })
}

/// Health, server and model metadata, and inference with flat and nested data, as the
/// protocol defines them.
#[tokio::test]
async fn models_without_a_component_answer_the_open_inference_protocol() {
    let corral = deployed("oip").await;
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/add/ready",
    ] {
        let (status, body) = get(&corral, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (status, server) = get(&corral, "/v2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server["name"], "corral", "{server}");

    let (status, metadata) = get(&corral, "/v2/models/add").await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(
        metadata,
        json!({
            "name": "add",
            "platform": "onnxruntime_onnx",
            "inputs": [
                { "name": "a", "datatype": "FP32", "shape": [2, 2] },
                { "name": "b", "datatype": "FP32", "shape": [2, 2] },
            ],
            "outputs": [{ "name": "sum", "datatype": "FP32", "shape": [2, 2] }],
        })
    );

    // Flat and nested row-major data alike.
    let (status, answer) = infer(
        &corral,
        "add",
        add_request(json!([1, 2, 3, 4]), json!([[10, 20], [30, 40]])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["model_name"], "add");
    assert_eq!(answer["id"], "r1");
    assert_eq!(
        answer["outputs"],
        json!([{ "name": "sum", "datatype": "FP32", "shape": [2, 2], "data": [11.0, 22.0, 33.0, 44.0] }])
    );
    // The same through a versioned path, asking for the output by name.
    let mut request = add_request(json!([1, 1, 1, 1]), json!([1, 1, 1, 1]));
    request["outputs"] = json!([{ "name": "sum" }]);
    let (status, body) = corral
        .call(
            "acme.test",
            "POST",
            "/v2/models/add/versions/1/infer",
            request.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["outputs"][0]["data"],
        json!([2.0, 2.0, 2.0, 2.0])
    );
}

/// Each mistake a client makes gets the protocol's `{"error": ...}` with the right status,
/// naming what was wrong, and the deployment keeps serving.
#[tokio::test]
async fn bad_requests_get_the_protocols_errors_and_the_model_keeps_serving() {
    let corral = deployed("oip-errors").await;
    let (status, body) = get(&corral, "/v2/models/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("'nope'"), "{body}");
    let (status, _) = get(&corral, "/v2/models/nope/ready").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let with = |datatype: &str, shape: Value, data: Value| {
        json!({ "inputs": [
            { "name": "a", "shape": shape, "datatype": datatype, "data": data },
            { "name": "b", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4] },
        ]})
    };
    let cases = [
        (
            "unknown model",
            "nope",
            add_request(json!([1, 2, 3, 4]), json!([1, 2, 3, 4])),
            StatusCode::NOT_FOUND,
            "'nope'",
        ),
        (
            "a datatype wasi:nn lacks",
            "add",
            with("BOOL", json!([2, 2]), json!([true, false, true, false])),
            StatusCode::BAD_REQUEST,
            "BOOL",
        ),
        (
            "data short of the shape",
            "add",
            with("FP32", json!([2, 2]), json!([1, 2, 3])),
            StatusCode::BAD_REQUEST,
            "4 elements",
        ),
        (
            "a string for a number",
            "add",
            with("FP32", json!([2, 2]), json!([1, "x", 3, 4])),
            StatusCode::BAD_REQUEST,
            "element 1",
        ),
        (
            "a negative dimension",
            "add",
            with("FP32", json!([-2, 2]), json!([1, 2, 3, 4])),
            StatusCode::BAD_REQUEST,
            "negative",
        ),
        (
            "the wrong shape for the model",
            "add",
            with("FP32", json!([4]), json!([1, 2, 3, 4])),
            StatusCode::BAD_REQUEST,
            "'a'",
        ),
        (
            "the wrong type for the model",
            "add",
            with("INT32", json!([2, 2]), json!([1, 2, 3, 4])),
            StatusCode::BAD_REQUEST,
            "input 'a' of model 'add' is FP32; the request gives INT32",
        ),
        (
            "not a request",
            "add",
            json!({ "inputs": "none" }),
            StatusCode::BAD_REQUEST,
            "inference request",
        ),
    ];
    for (what, model, request, want, needle) in cases {
        let (status, body) = infer(&corral, model, request).await;
        assert_eq!(status, want, "{what}: {body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert!(message.contains(needle), "{what}: {body}");
    }
    let mut request = add_request(json!([1, 2, 3, 4]), json!([1, 2, 3, 4]));
    request["outputs"] = json!([{ "name": "product" }]);
    let (status, body) = infer(&corral, "add", request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("'product'"),
        "{body}"
    );

    let (status, answer) = infer(
        &corral,
        "add",
        add_request(json!([1, 2, 3, 4]), json!([1, 2, 3, 4])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "still serving: {answer}");
}

/// A third-party client, unchanged: NVIDIA's `tritonclient` (installed by `cargo xtask
/// setup` into the tests' Python environment) reads health and metadata and infers with JSON
/// and with binary tensor data.
#[tokio::test]
async fn tritonclient_works_against_corral_unchanged() {
    let Some(python) = test_python() else {
        return;
    };
    let corral = deployed("oip-triton").await;
    let address = corral.data.to_string();
    let stdout = run_python(
        &python,
        "oip_tritonclient.py",
        &[address.as_ref(), "acme.test".as_ref()],
    );
    let results = json(stdout.trim().as_bytes());
    let want = json!([[11.0, 22.0], [33.0, 44.0]]);
    assert_eq!(results["json"], want, "{results}");
    assert_eq!(results["binary"], want, "{results}");
    assert_eq!(results["unknown_model"]["status"], "404", "{results}");
}

/// The binary tensor data extension: raw little-endian tensors after a JSON header whose
/// length `Inference-Header-Content-Length` gives, in and out; every length a client states
/// is checked against what it sent.
#[tokio::test]
async fn binary_tensors_are_taken_and_given_and_their_lengths_checked() {
    use crate::common::serve::send_full;
    let corral = deployed("oip-binary").await;
    let raw = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let header = |a_size: usize| {
        json!({
            "inputs": [
                { "name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": { "binary_data_size": a_size } },
                { "name": "b", "shape": [2, 2], "datatype": "FP32", "data": [10, 20, 30, 40] },
            ],
            "outputs": [{ "name": "sum", "parameters": { "binary_data": true } }],
        })
        .to_string()
        .into_bytes()
    };
    let send = |head: Vec<u8>, tail: Vec<u8>, stated: String| {
        let addr = corral.data;
        async move {
            let mut body = head;
            body.extend_from_slice(&tail);
            send_full(
                addr,
                "POST",
                "/v2/models/add/infer",
                "acme.test",
                &[("inference-header-content-length", stated.as_str())],
                body,
            )
            .await
        }
    };
    let head = header(16);
    let (status, headers, body) = send(
        head.clone(),
        raw(&[1.0, 2.0, 3.0, 4.0]),
        head.len().to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let json_length: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let answer = json(&body[..json_length]);
    assert_eq!(
        answer["outputs"][0]["parameters"]["binary_data_size"], 16,
        "{answer}"
    );
    assert_eq!(
        &body[json_length..],
        raw(&[11.0, 22.0, 33.0, 44.0]).as_slice()
    );

    for (what, head, tail, stated, needle) in [
        (
            "a header length past the body",
            header(16),
            raw(&[1.0; 4]),
            "100000".to_owned(),
            "Inference-Header-Content-Length",
        ),
        (
            "a header length that is not a number",
            header(16),
            raw(&[1.0; 4]),
            "many".to_owned(),
            "Inference-Header-Content-Length",
        ),
        (
            "a tensor size past the bytes sent",
            header(64),
            raw(&[1.0; 4]),
            String::new(),
            "binary_data_size 64",
        ),
        (
            "a tensor size that is not the shape's",
            header(12),
            raw(&[1.0; 3]),
            String::new(),
            "takes 4 × 4",
        ),
        (
            "bytes no input claims",
            header(16),
            raw(&[1.0; 5]),
            String::new(),
            "belong to no input",
        ),
    ] {
        let stated = if stated.is_empty() {
            head.len().to_string()
        } else {
            stated
        };
        let (status, _, body) = send(head, tail, stated).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        let answer = json(&body);
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{what}: {answer}"
        );
    }
}
