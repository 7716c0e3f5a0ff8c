//! Image classification as a Corral service.
//!
//! `POST /` with a JPEG or PNG body. The component decodes, resizes to 256×256, center-crops
//! 224×224 and normalizes the image inside its sandbox, runs the `classifier` model
//! (EfficientNet-Lite0, input `input` f32 `[1, 3, 224, 224]`, output `logits` `[1, 1000]`) on
//! the host through `wasi:nn`, and answers the five most likely ImageNet classes:
//! `{"predictions":[{"index":207,"label":"golden retriever","probability":0.90}, ...]}`.

use std::io::Cursor;

use corral_guest::{Model, Tensor};
use image::imageops::FilterType;
use serde_json::json;
use wstd::http::{Body, Error, Method, Request, Response, StatusCode};

const LABELS: &str = include_str!("../model/labels.txt");
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Images larger than this in either dimension are refused before decoding.
const MAX_SIDE: u32 = 8192;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    if request.method() != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST a JPEG or PNG image as the request body",
        ));
    }
    let body = request.body_mut().contents().await?;
    let pixels = match preprocess(body) {
        Ok(pixels) => pixels,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_image", &message)),
    };
    match classify(&pixels) {
        Ok(predictions) => Ok(json_response(
            StatusCode::OK,
            json!({ "predictions": predictions }),
        )),
        Err(e) => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            &e.to_string(),
        )),
    }
}

/// Decodes and normalizes an image into NCHW f32 `[1, 3, 224, 224]`.
fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if bytes.is_empty() {
        return Err("the request body is empty; send a JPEG or PNG image".into());
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the request body: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err("the request body is not a JPEG or PNG image".into()),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    let resized = image.to_rgb8();
    let resized = image::imageops::resize(&resized, 256, 256, FilterType::Triangle);
    let cropped = image::imageops::crop_imm(&resized, 16, 16, 224, 224).to_image();
    let plane = 224 * 224;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, pixel) in cropped.pixels().enumerate() {
        for c in 0..3 {
            pixels[c * plane + i] = (f32::from(pixel[c]) / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Ok(pixels)
}

fn classify(pixels: &[f32]) -> Result<Vec<serde_json::Value>, corral_guest::Error> {
    let model = Model::load("classifier")?;
    let outputs = model.run(vec![("input", Tensor::f32(&[1, 3, 224, 224], pixels))])?;
    let logits = outputs
        .get("logits")
        .or_else(|| outputs.iter().next().map(|(_, t)| t))
        .map(|t| t.to_f32())
        .transpose()?
        .unwrap_or_default();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exps.iter().map(|&e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let labels: Vec<&str> = LABELS.lines().collect();
    Ok(ranked
        .into_iter()
        .take(5)
        .map(|(index, probability)| {
            json!({ "index": index, "label": label(labels.get(index).copied()), "probability": probability })
        })
        .collect())
}

/// `n02099601 golden retriever` → `golden retriever`; `n02123045 tabby, tabby cat` → `tabby`.
fn label(line: Option<&str>) -> String {
    let line = line.unwrap_or("");
    let name = line.split_once(' ').map_or(line, |(_, rest)| rest);
    name.split(',').next().unwrap_or(name).trim().to_owned()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("valid header"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        json!({ "error": { "code": code, "message": message } }),
    )
}
