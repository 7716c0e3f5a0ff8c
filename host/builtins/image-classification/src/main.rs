//! Corral's built-in `image-classification` component: `POST /` with a JPEG or PNG body
//! answers the most likely classes, `{"predictions":[{"index","label","probability"}, ...]}`,
//! from the deployment's image classifier. Chosen at deploy (`corral deploy --builtin
//! image-classification --model classifier=model.onnx --config config.json`), it is set up by
//! the deployment's config, under `component` (every key optional):
//!
//! ```json
//! {"component": {"labels": ["tench", "goldfish", "..."], "top_k": 5,
//!                "resize": 256, "crop": 224,
//!                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
//!                "model": "classifier", "input": "input", "output": "logits"}}
//! ```
//!
//! Without them: the deployment's only model, its first input and first output, ImageNet's
//! preprocessing (resize 256, center crop 224, ImageNet mean and deviation, NCHW `f32`), the
//! top 5, and classes named by index. The image work is the same code as
//! `examples/image-classifier` (`corral_guest::vision`).

use corral_guest::http::{error, json, require_post};
use corral_guest::vision::{IMAGENET, Preprocess, image_pixels, top_k};
use corral_guest::{Model, Tensor, metadata};
use serde::Deserialize;
use serde_json::json;
use wstd::http::{Body, Error, Request, Response, StatusCode};

/// The component's settings (`config.component`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    labels: Vec<String>,
    top_k: Option<usize>,
    resize: Option<u32>,
    crop: Option<u32>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    model: Option<String>,
    input: Option<String>,
    output: Option<String>,
}

/// Most classes one answer lists.
const MAX_TOP_K: usize = 100;
/// Largest square side the image is resized to.
const MAX_SIDE: u32 = 2048;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    if let Err(response) = require_post(&request, "POST a JPEG or PNG image as the request body") {
        return Ok(response);
    }
    let settings = match metadata::component_config::<Settings>() {
        Ok(settings) => settings.unwrap_or_default(),
        Err(e) => {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_config",
                &format!("the deployment's config.component is not this component's: {e}"),
            ));
        }
    };
    let how = Preprocess {
        resize: settings.resize.unwrap_or(IMAGENET.resize).min(MAX_SIDE),
        crop: settings.crop.unwrap_or(IMAGENET.crop).min(MAX_SIDE),
        mean: settings.mean.unwrap_or(IMAGENET.mean),
        std: settings.std.unwrap_or(IMAGENET.std),
        ..IMAGENET
    };
    let body = request.body_mut().contents().await?;
    let pixels = match image_pixels(body, &how) {
        Ok(pixels) => pixels,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_image", &message)),
    };
    Ok(match classify(&settings, &how, &pixels) {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(message) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            &message,
        ),
    })
}

fn classify(
    settings: &Settings,
    how: &Preprocess,
    pixels: &[f32],
) -> Result<serde_json::Value, String> {
    let name = metadata::model_named(settings.model.as_deref())?;
    let model = Model::load(&name).map_err(|e| e.to_string())?;
    let input = match &settings.input {
        Some(input) => input.clone(),
        None => model
            .describe()
            .map_err(|e| e.to_string())?
            .inputs
            .first()
            .map_or_else(|| "input".to_owned(), |i| i.name.clone()),
    };
    let outputs = model
        .run(vec![(
            input,
            Tensor::f32(&[1, 3, how.crop, how.crop], pixels),
        )])
        .map_err(|e| e.to_string())?;
    let logits = match &settings.output {
        Some(output) => outputs.get(output),
        None => outputs.iter().next().map(|(_, t)| t),
    }
    .ok_or("the model gave no such output")?
    .to_f32()
    .map_err(|e| e.to_string())?;
    let k = settings.top_k.unwrap_or(5).clamp(1, MAX_TOP_K);
    Ok(json!({ "predictions": top_k(&logits, k, &settings.labels) }))
}
