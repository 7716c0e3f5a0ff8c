//! Corral's built-in `inference` component: the Open Inference Protocol (the KServe v2 REST
//! protocol that Triton, KServe and MLServer speak) over the deployment's models, through
//! `wasi:nn` and Corral's `corral:service/models`. A deployment with models and no component
//! of its own runs this one, sandboxed like any tenant's.
//!
//! - `GET /v2`, `GET /v2/health/live`, `GET /v2/health/ready`;
//! - `GET /v2/models/{name}` (inputs and outputs: names, datatypes, shapes with -1 for a
//!   dynamic dimension) and `GET /v2/models/{name}/ready`;
//! - `POST /v2/models/{name}/infer` with JSON tensors (`data` row-major, flat or nested) or
//!   the binary tensor data extension (`Inference-Header-Content-Length`: the JSON header,
//!   then each input with `binary_data_size` as raw little-endian bytes, in order); `outputs`
//!   to choose which come back, as JSON or (`binary_data`, or `binary_data_output` for all)
//!   as raw bytes after the JSON header;
//! - `/v2/models/{name}/versions/{v}/...` is the same model: a deployment is one version.
//!
//! Errors are the protocol's `{"error": "..."}`: an unknown model is 404, a tensor that does
//! not fit (datatype, shape, data) 400, the model failing 500.

mod tensors;

use corral_guest::metadata::{self, TensorInfo};
use corral_guest::{Error, Model};
use serde::Deserialize;
use serde_json::{Value, json};
use wstd::http::{Body, Request, Response, StatusCode};

use tensors::{datatype_name, decode, encode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    let path = request.uri().path().trim_matches('/').to_owned();
    let method = request.method().as_str().to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    // `/v2/models/{name}/versions/{v}/rest` is `/v2/models/{name}/rest`.
    let segments: Vec<&str> = match segments.as_slice() {
        ["v2", "models", name, "versions", _, rest @ ..] => {
            [&["v2", "models", *name][..], rest].concat()
        }
        _ => segments,
    };
    Ok(match (method.as_str(), segments.as_slice()) {
        ("GET", ["v2"]) => respond(
            StatusCode::OK,
            &json!({ "name": "corral", "version": env!("CARGO_PKG_VERSION"), "extensions": [] }),
        ),
        ("GET", ["v2", "health", "live" | "ready"]) => empty(StatusCode::OK),
        ("GET", ["v2", "models", name]) => model_metadata(name),
        ("GET", ["v2", "models", name, "ready"]) => match known(name) {
            Ok(()) => empty(StatusCode::OK),
            Err(response) => response,
        },
        ("POST", ["v2", "models", name, "infer"]) => {
            let name = (*name).to_owned();
            let header_length = request
                .headers()
                .get("inference-header-content-length")
                .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()));
            match request.body_mut().contents().await {
                Ok(body) => match header_length {
                    None => infer(&name, body, &[]),
                    Some(Some(n)) if n <= body.len() => infer(&name, &body[..n], &body[n..]),
                    Some(_) => fail(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Inference-Header-Content-Length must be a number of bytes at most the body's {}",
                            body.len()
                        ),
                    ),
                },
                Err(e) => fail(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ),
            }
        }
        _ => fail(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint {method} /{path}: this is the Open Inference Protocol (GET /v2/models/NAME, POST /v2/models/NAME/infer)"
            ),
        ),
    })
}

/// `Ok` when the deployment has a model `name`, else the 404 to answer.
fn known(name: &str) -> Result<(), Response<Body>> {
    let names = metadata::model_names();
    if names.iter().any(|n| n == name) {
        return Ok(());
    }
    Err(fail(
        StatusCode::NOT_FOUND,
        format!(
            "unknown model '{name}'; this deployment has: {}",
            names.join(", ")
        ),
    ))
}

fn model_metadata(name: &str) -> Response<Body> {
    if let Err(response) = known(name) {
        return response;
    }
    let signature = match Model::load(name).and_then(|model| model.describe()) {
        Ok(signature) => signature,
        Err(e) => return model_error(&e),
    };
    let tensors = |list: &[TensorInfo]| -> Vec<Value> {
        list.iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "datatype": t.datatype.map_or("UNSUPPORTED", datatype_name),
                    "shape": t.shape.iter().map(|d| d.map_or(-1, i64::from)).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    // A format that declares its inputs is ONNX here; TorchScript declares none.
    let platform = if signature.inputs.is_empty() {
        "pytorch_libtorch"
    } else {
        "onnxruntime_onnx"
    };
    respond(
        StatusCode::OK,
        &json!({
            "name": name,
            "platform": platform,
            "inputs": tensors(&signature.inputs),
            "outputs": tensors(&signature.outputs),
        }),
    )
}

/// An inference request (fields this component does not use are ignored, as the protocol's
/// extensions may add some).
#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Absent when the tensor's bytes follow the JSON header (`binary_data_size`).
    data: Option<Value>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// The parameters this component reads (the binary tensor data extension's).
#[derive(Default, Deserialize)]
struct Parameters {
    binary_data_size: Option<u64>,
    binary_data: Option<bool>,
    binary_data_output: Option<bool>,
}

fn infer(name: &str, body: &[u8], mut binary: &[u8]) -> Response<Body> {
    if let Err(response) = known(name) {
        return response;
    }
    let request: InferRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("the body is not an inference request: {e}"),
            );
        }
    };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let data = match (&input.data, input.parameters.binary_data_size) {
            (None, Some(size)) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "input '{}': binary_data_size {size} is more than the {} bytes left after the header",
                            input.name,
                            binary.len()
                        ),
                    );
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                Data::Binary(bytes)
            }
            (Some(data), None) => Data::Json(data),
            _ => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "input '{}' needs either 'data' or parameters.binary_data_size (with \
                         Inference-Header-Content-Length), not both",
                        input.name
                    ),
                );
            }
        };
        match decode(&input.name, &input.datatype, &input.shape, data) {
            Ok(tensor) => inputs.push((input.name.clone(), tensor)),
            Err(message) => return fail(StatusCode::BAD_REQUEST, message),
        }
    }
    if !binary.is_empty() {
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{} bytes after the header belong to no input's binary_data_size",
                binary.len()
            ),
        );
    }
    let model = match Model::load(name) {
        Ok(model) => model,
        Err(e) => return model_error(&e),
    };
    // A datatype the model does not take, named in the protocol's terms before it runs.
    if let Ok(signature) = model.describe() {
        for input in &request.inputs {
            let declared = signature
                .inputs
                .iter()
                .find(|i| i.name == input.name)
                .and_then(|i| i.datatype)
                .map(datatype_name);
            if let Some(declared) = declared
                && declared != input.datatype
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "input '{}' of model '{name}' is {declared}; the request gives {}",
                        input.name, input.datatype
                    ),
                );
            }
        }
    }
    let outputs = match model.run(inputs) {
        Ok(outputs) => outputs,
        Err(e) => return model_error(&e),
    };
    let wanted: Option<Vec<&str>> = request
        .outputs
        .as_ref()
        .map(|list| list.iter().map(|o| o.name.as_str()).collect());
    if let Some(wanted) = &wanted
        && let Some(missing) = wanted.iter().find(|w| outputs.get(w).is_none())
    {
        let names: Vec<&str> = outputs.iter().map(|(n, _)| n).collect();
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "model '{name}' has no output '{missing}'; its outputs are: {}",
                names.join(", ")
            ),
        );
    }
    // Raw bytes for the outputs asked so (each, or all by `binary_data_output`).
    let all_binary = request.parameters.binary_data_output == Some(true);
    let binary_output = |output: &str| {
        request
            .outputs
            .iter()
            .flatten()
            .find(|o| o.name == output)
            .and_then(|o| o.parameters.binary_data)
            .unwrap_or(all_binary)
    };
    let mut answered = Vec::new();
    let mut raw: Vec<u8> = Vec::new();
    for (output, tensor) in outputs.iter() {
        if wanted.as_ref().is_some_and(|w| !w.contains(&output)) {
            continue;
        }
        let encoded = if binary_output(output) {
            let bytes = tensor.bytes();
            let value = json!({
                "name": output,
                "datatype": datatype_name(tensor.ty()),
                "shape": tensor.shape(),
                "parameters": { "binary_data_size": bytes.len() },
            });
            raw.extend_from_slice(&bytes);
            Ok(value)
        } else {
            encode(output, tensor)
        };
        match encoded {
            Ok(value) => answered.push(value),
            Err(message) => return fail(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
    let mut answer = json!({ "model_name": name, "outputs": answered });
    if let Some(id) = request.id {
        answer["id"] = Value::String(id);
    }
    if raw.is_empty() {
        return respond(StatusCode::OK, &answer);
    }
    let mut body = answer.to_string().into_bytes();
    let header_length = body.len();
    body.extend_from_slice(&raw);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        wstd::http::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "inference-header-content-length",
        wstd::http::HeaderValue::from(header_length),
    );
    response
}

/// Where an input's elements are: in the JSON header, or raw after it.
pub enum Data<'a> {
    Json(&'a Value),
    Binary(&'a [u8]),
}

/// A `wasi:nn` failure as the protocol answers it: the guest's mistakes are 400, a missing
/// model 404, the rest 500.
fn model_error(error: &Error) -> Response<Body> {
    let status = match error.code_name() {
        "invalid-argument" | "invalid-encoding" | "too-large" | "unsupported-operation" => {
            StatusCode::BAD_REQUEST
        }
        "not-found" => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    fail(status, error.message.clone())
}

fn fail(status: StatusCode, message: String) -> Response<Body> {
    respond(status, &json!({ "error": message }))
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    corral_guest::http::json(status, value)
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
