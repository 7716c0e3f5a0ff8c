//! Benchmark guest for `cargo xtask bench`: the model named `model`, with as little guest work
//! as possible around it, so a benchmark measures the host.
//!
//! - `POST /tensor`: the body is the input tensor's raw little-endian f32 bytes; the `x-shape`
//!   header gives its dimensions (`1,3,224,224`), `x-input` the input's name (default `input`)
//!   and `x-model` the model's (default `model`). The answer is the first output's raw bytes.
//! - `POST /json`: `{"features": [f32, ...]}` runs input `x` with shape `[1, n]` and answers
//!   `{"scores": [f32, ...]}` from the first output (a small tabular model).
//! - `POST /read`: reads the whole body and answers 4,000 zero bytes (EfficientNet-Lite0's
//!   output size), without a model: what `/tensor` costs apart from `wasi:nn` and the run.
//! - `POST /preprocess`: a JPEG or PNG body, put through the image classifier's preprocessing
//!   (`corral_guest::vision`, ImageNet's defaults) and timed inside the guest:
//!   `{"decode_us", "total_us", "width", "height"}`, where `decode_us` is the decode to RGB
//!   alone and `total_us` the whole preprocessing (decode, resize, crop, normalize). No model.

// Errors here are the response to send, made once per request: their size does not matter.
#![allow(clippy::result_large_err)]

use corral_guest::http::{error, json, read_json};
use corral_guest::wasi_nn::tensor::TensorType;
use corral_guest::{Model, Tensor, vision};
use std::time::Instant;
use wstd::http::{Body, Error, Request, Response, StatusCode};

#[derive(serde::Deserialize)]
struct Features {
    features: Vec<f32>,
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    match request.uri().path() {
        "/tensor" => tensor(&mut request).await,
        "/json" => Ok(features(&mut request).await),
        "/preprocess" => preprocess(&mut request).await,
        "/read" => {
            request.body_mut().contents().await?;
            Ok(Response::new(Body::from(vec![0u8; 4000])))
        }
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "POST /tensor (raw f32 bytes, x-shape header), /json ({\"features\": [...]}), \
             /read (any body) or /preprocess (an image)",
        )),
    }
}

async fn tensor(request: &mut Request<Body>) -> Result<Response<Body>, Error> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let input = header("x-input").unwrap_or_else(|| "input".to_owned());
    let model = header("x-model").unwrap_or_else(|| "model".to_owned());
    let shape: Result<Vec<u32>, _> = header("x-shape")
        .unwrap_or_default()
        .split(',')
        .map(|d| d.trim().parse::<u32>())
        .collect();
    let Ok(shape) = shape else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_shape",
            "x-shape must be comma-separated dimensions, e.g. 1,3,224,224",
        ));
    };
    let body = request.body_mut().contents().await?;
    let tensor = Tensor::from_bytes(&shape, TensorType::Fp32, body);
    match run(&model, vec![(input, tensor)]) {
        Ok(output) => Ok(Response::new(Body::from(output.bytes()))),
        Err(response) => Ok(response),
    }
}

async fn features(request: &mut Request<Body>) -> Response<Body> {
    let features: Features = match read_json(request).await {
        Ok(features) => features,
        Err(response) => return response,
    };
    let n = features.features.len() as u32;
    let tensor = Tensor::f32(&[1, n], &features.features);
    match run("model", vec![("x".to_owned(), tensor)]).and_then(|output| {
        output.to_f32().map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad_output",
                &e.to_string(),
            )
        })
    }) {
        Ok(scores) => json(StatusCode::OK, &serde_json::json!({ "scores": scores })),
        Err(response) => response,
    }
}

async fn preprocess(request: &mut Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let started = Instant::now();
    let decoded = match image::load_from_memory(body) {
        Ok(image) => image.into_rgb8(),
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_image",
                &e.to_string(),
            ));
        }
    };
    let decode = started.elapsed();
    let started = Instant::now();
    let pixels = vision::image_pixels(body, &vision::IMAGENET);
    let total = started.elapsed();
    Ok(match pixels {
        Ok(_) => json(
            StatusCode::OK,
            &serde_json::json!({
                "decode_us": decode.as_secs_f64() * 1e6,
                "total_us": total.as_secs_f64() * 1e6,
                "width": decoded.width(),
                "height": decoded.height(),
            }),
        ),
        Err(message) => error(StatusCode::BAD_REQUEST, "invalid_image", &message),
    })
}

/// Runs the model named `name` and returns its first output, or the 422 answer naming the
/// wasi:nn error.
fn run(name: &str, inputs: Vec<(String, Tensor)>) -> Result<Tensor, Response<Body>> {
    let failed = |e: corral_guest::Error| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code_name(),
            &e.to_string(),
        )
    };
    let outputs = Model::load(name)
        .and_then(|model| model.run(inputs))
        .map_err(failed)?;
    outputs
        .into_vec()
        .into_iter()
        .next()
        .map(|(_, t)| t)
        .ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_output",
                "the model has no output",
            )
        })
}
