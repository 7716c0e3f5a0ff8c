//! Image classification as a Corral service.
//!
//! `POST /` with a JPEG or PNG body. The component decodes, resizes to 256×256, center-crops
//! 224×224 and normalizes the image inside its sandbox, runs the `classifier` model
//! (EfficientNet-Lite0, input `input` f32 `[1, 3, 224, 224]`, output `logits` `[1, 1000]`) on
//! the host through `wasi:nn`, and answers the five most likely ImageNet classes:
//! `{"predictions":[{"index":207,"label":"golden retriever","probability":0.90}, ...]}`.

use corral_guest::http::{error, json, require_post};
use corral_guest::vision::{IMAGENET, Prediction, image_pixels, top_k};
use corral_guest::{Model, Tensor};
use serde_json::json;
use wstd::http::{Body, Error, Request, Response, StatusCode};

const LABELS: &str = include_str!("../model/labels.txt");

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    if let Err(response) = require_post(&request, "POST a JPEG or PNG image as the request body") {
        return Ok(response);
    }
    let body = request.body_mut().contents().await?;
    let pixels = match image_pixels(body, &IMAGENET) {
        Ok(pixels) => pixels,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_image", &message)),
    };
    match classify(&pixels) {
        Ok(predictions) => Ok(json(StatusCode::OK, &json!({ "predictions": predictions }))),
        Err(e) => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            &e.to_string(),
        )),
    }
}

fn classify(pixels: &[f32]) -> Result<Vec<Prediction>, corral_guest::Error> {
    let model = Model::load("classifier")?;
    let outputs = model.run(vec![("input", Tensor::f32(&[1, 3, 224, 224], pixels))])?;
    let logits = outputs
        .get("logits")
        .or_else(|| outputs.iter().next().map(|(_, t)| t))
        .map(|t| t.to_f32())
        .transpose()?
        .unwrap_or_default();
    let labels: Vec<&str> = LABELS.lines().collect();
    Ok(top_k(&logits, 5, &labels))
}
