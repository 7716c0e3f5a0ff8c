//! A test guest that exercises Corral's `wasi:nn` host: `GET /case/NAME` runs one case and
//! answers `{"case":NAME,"ok":true,...}` on success or `{"case":NAME,"ok":false,"code":...,
//! "message":...}` with the `wasi:nn` error the host returned. The host is started with
//! models `identity` (tests/fixtures/identity_types.onnx), `add` (add.onnx) and `bool`
//! (bool_output.onnx). `GET /load/NAME` only loads the model NAME by name (tenancy tests);
//! `GET /case/describe` answers every model's signature and the deployment's configuration
//! (`corral:service/models`); `GET /fault/NAME` misbehaves on purpose (the fault suite, see `fault.rs`); `POST
//! /body-length` reads the whole body and answers its length.

mod fault;

use corral_guest::wasi_nn::{graph, tensor::TensorType};
use corral_guest::{Error, Model, Tensor, metadata};
use serde_json::{Value, json};
use wstd::http::{Body, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    if request.uri().path() == "/body-length" {
        // Reads the whole request body (the front door's body limit cuts it off).
        let length = request.body_mut().contents().await.map(|b| b.len());
        return Ok(match length {
            Ok(length) => respond(StatusCode::OK, json!({ "length": length })),
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("cannot read the body: {e}") }),
            ),
        });
    }
    if let Some(name) = request.uri().path().strip_prefix("/fault/") {
        let query = request.uri().query().unwrap_or_default().to_owned();
        return Ok(match fault::run(name, &query).await {
            Some((status, body)) => respond(status, body),
            None => respond(
                StatusCode::NOT_FOUND,
                json!({ "fault": name, "error": "unknown fault" }),
            ),
        });
    }
    if let Some(name) = request.uri().path().strip_prefix("/load/") {
        let body = match Model::load(name) {
            Ok(_) => json!({ "model": name, "ok": true }),
            Err(e) => {
                json!({ "model": name, "ok": false, "code": e.code_name(), "message": e.message })
            }
        };
        return Ok(respond(StatusCode::OK, body));
    }
    let case = request.uri().path().trim_start_matches("/case/").to_owned();
    if case == "sandbox" {
        return Ok(respond(StatusCode::OK, sandbox()));
    }
    let result = match case.as_str() {
        "types" => every_type(),
        "add" => add(f32s(&[1.0, 2.0, 3.0, 4.0]), f32s(&[10.0, 20.0, 30.0, 40.0])),
        "describe" => describe(),
        "unknown-model" => Model::load("no-such-model").map(|_| json!({})),
        "load-bytes" => graph::load(
            &[vec![0u8; 16]],
            graph::GraphEncoding::Onnx,
            graph::ExecutionTarget::Cpu,
        )
        .map(|_| json!({}))
        .map_err(|e| Error {
            code: e.code(),
            message: e.data(),
        }),
        "wrong-shape" => run_add(vec![
            ("a", Tensor::f32(&[2, 3], &[0.0; 6])),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "wrong-rank" => run_add(vec![
            ("a", Tensor::f32(&[4], &[0.0; 4])),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "byte-length" => run_add(vec![
            (
                "a",
                Tensor::from_bytes(&[2, 2], TensorType::Fp32, &[0u8; 15]),
            ),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "overflow-dims" => run_add(vec![
            (
                "a",
                Tensor::from_bytes(&[u32::MAX, u32::MAX, u32::MAX], TensorType::Fp32, &[0u8; 4]),
            ),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "huge-dims" => run_add(vec![
            (
                "a",
                Tensor::from_bytes(&[1_000_000, 1_000_000], TensorType::Fp32, &[0u8; 16]),
            ),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "unknown-input" => run_add(vec![
            ("a", Tensor::f32(&[2, 2], &[0.0; 4])),
            ("c", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "missing-input" => run_add(vec![("a", Tensor::f32(&[2, 2], &[0.0; 4]))]),
        "duplicate-input" => run_add(vec![
            ("a", Tensor::f32(&[2, 2], &[0.0; 4])),
            ("a", Tensor::f32(&[2, 2], &[0.0; 4])),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "wrong-type" => run_add(vec![
            ("a", Tensor::i32(&[2, 2], &[0; 4])),
            ("b", Tensor::f32(&[2, 2], &[0.0; 4])),
        ]),
        "unsupported-output" => Model::load("bool").and_then(|m| {
            m.run(vec![("x", Tensor::f32(&[4], &[1.0, -1.0, 2.0, 0.0]))])
                .map(|_| json!({}))
        }),
        _ => {
            return Ok(respond(
                StatusCode::NOT_FOUND,
                json!({ "case": case, "error": "unknown case" }),
            ));
        }
    };
    let body = match result {
        Ok(detail) => json!({ "case": case, "ok": true, "detail": detail }),
        Err(e) => json!({ "case": case, "ok": false, "code": e.code_name(), "message": e.message }),
    };
    Ok(respond(StatusCode::OK, body))
}

/// Every model's signature and the deployment's configuration, through Corral's own
/// `corral:service/models` interface.
fn describe() -> Result<Value, Error> {
    let info = |t: &metadata::TensorInfo| json!({ "name": t.name, "datatype": t.datatype.map(|d| format!("{d:?}")), "shape": t.shape });
    let mut models = serde_json::Map::new();
    for name in metadata::model_names() {
        let signature = Model::load(&name)?.describe()?;
        models.insert(
            name,
            json!({
                "inputs": signature.inputs.iter().map(info).collect::<Vec<_>>(),
                "outputs": signature.outputs.iter().map(info).collect::<Vec<_>>(),
            }),
        );
    }
    let config: Option<Value> = metadata::config().map_err(|e| Error {
        code: corral_guest::wasi_nn::errors::ErrorCode::InvalidEncoding,
        message: e.to_string(),
    })?;
    Ok(json!({ "models": models, "config": config }))
}

fn f32s(values: &[f32]) -> Tensor {
    Tensor::f32(&[2, 2], values)
}

fn run_add(inputs: Vec<(&str, Tensor)>) -> Result<Value, Error> {
    Model::load("add")?.run(inputs).map(|_| json!({}))
}

fn add(a: Tensor, b: Tensor) -> Result<Value, Error> {
    let outputs = Model::load("add")?.run(vec![("a", a), ("b", b)])?;
    let sum = outputs.get("sum").ok_or_else(|| Error {
        code: corral_guest::wasi_nn::errors::ErrorCode::Unknown,
        message: "no output 'sum'".into(),
    })?;
    Ok(json!({ "sum": sum.to_f32()?, "shape": sum.shape() }))
}

/// Feeds a `[2, 4]` tensor of every type through the identity model at once and checks each
/// output has the input's dimensions, type and exact bytes.
fn every_type() -> Result<Value, Error> {
    let types = [
        ("f16", TensorType::Fp16, 2),
        ("bf16", TensorType::Bf16, 2),
        ("f32", TensorType::Fp32, 4),
        ("f64", TensorType::Fp64, 8),
        ("u8", TensorType::U8, 1),
        ("i32", TensorType::I32, 4),
        ("i64", TensorType::I64, 8),
    ];
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    for (name, ty, size) in types {
        // Element k: low byte k+1, high byte 0x3f (a normal positive float for the float types).
        let bytes: Vec<u8> = (0..8u8)
            .flat_map(|k| {
                (0..size).map(move |b| {
                    if b == 0 {
                        k + 1
                    } else if b == size - 1 {
                        0x3f
                    } else {
                        0
                    }
                })
            })
            .collect();
        expected.push((format!("y_{name}"), ty, bytes.clone()));
        inputs.push((format!("x_{name}"), Tensor::from_bytes(&[2, 4], ty, &bytes)));
    }
    let outputs = Model::load("identity")?.run(inputs)?;
    let mut checked = Vec::new();
    for (name, ty, bytes) in expected {
        let Some(output) = outputs.get(&name) else {
            return Ok(json!({ "mismatch": format!("missing output {name}") }));
        };
        if output.ty() != ty || output.shape() != [2, 4] || output.bytes() != bytes {
            return Ok(
                json!({ "mismatch": name, "shape": output.shape(), "bytes": output.bytes() }),
            );
        }
        checked.push(name);
    }
    Ok(json!({ "checked": checked }))
}

/// Tries `GET http://127.0.0.1:9/` through `wasi:http/outgoing-handler` and reports the
/// `error-code` the host answers with.
fn outgoing_http() -> String {
    use wasip2::http::{outgoing_handler, types};
    let request = types::OutgoingRequest::new(types::Fields::new());
    let _ = request.set_scheme(Some(&types::Scheme::Http));
    let _ = request.set_authority(Some("127.0.0.1:9"));
    let _ = request.set_path_with_query(Some("/"));
    let response = match outgoing_handler::handle(request, None) {
        Ok(response) => response,
        Err(code) => return format!("refused: {code:?}"),
    };
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(response))) => format!("allowed: {}", response.status()),
        Some(Ok(Err(code))) => format!("refused: {code:?}"),
        other => format!("unexpected: {}", other.is_some()),
    }
}

/// What the sandbox lets a guest see: environment, arguments, files, outgoing HTTP.
fn sandbox() -> Value {
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    let files = ["/", ".", "/etc/passwd", "/tmp"]
        .iter()
        .filter(|path| std::fs::metadata(path).is_ok())
        .map(|path| path.to_string())
        .collect::<Vec<_>>();
    let outgoing = outgoing_http();
    json!({ "case": "sandbox", "env": env, "args": args, "files": files, "outgoing_http": outgoing })
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
}
