//! Corral's built-in `text-embedding` component: `POST /` with `{"sentences": ["...", ...]}`
//! answers each sentence's normalized embedding (the mean of its tokens' vectors) and their
//! cosine similarities, `{"embeddings": [[...], ...], "similarity": [[1.0, 0.71], ...]}`,
//! from the deployment's BERT-style encoder. Chosen at deploy (`corral deploy --builtin
//! text-embedding --model encoder=model.onnx --config config.json`), it is set up by the
//! deployment's config, under `component`:
//!
//! ```json
//! {"component": {"vocab": ["[PAD]", "...", "[UNK]", "[CLS]", "[SEP]", "..."],
//!                "seq": 64, "mask_value": -30.0,
//!                "model": "encoder", "ids": "input_ids", "mask": "attention_mask",
//!                "output": "hidden"}}
//! ```
//!
//! `vocab` (the WordPiece vocabulary, in id order) is required; the rest is optional: the only
//! model, its inputs named `input_ids` (i64 `[1, seq]`) and `attention_mask`, and its first
//! output (`[1, seq, dim]`). The mask is given as the model's input declares it: i64 `1`/`0`,
//! or an additive f32 mask of `0` and `mask_value` (default -30) of any rank ending in `seq`.
//! `seq` defaults to the length `input_ids` declares. Tokenization and pooling are the same
//! code as `examples/text-embedding` (`corral_guest::text`).

use corral_guest::http::{error, json, require_post};
use corral_guest::metadata::{self, TensorInfo};
use corral_guest::text::{WordPiece, mean_pooled, read_sentences, similarity};
use corral_guest::wasi_nn::tensor::TensorType;
use corral_guest::{Model, Tensor};
use serde::Deserialize;
use serde_json::json;
use wstd::http::{Body, Error, Request, Response, StatusCode};

/// The component's settings (`config.component`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    vocab: Vec<String>,
    seq: Option<u32>,
    mask_value: Option<f32>,
    model: Option<String>,
    ids: Option<String>,
    mask: Option<String>,
    output: Option<String>,
}

const MAX_SENTENCES: usize = 32;
const MAX_SENTENCE_BYTES: usize = 4096;
/// Longest sequence this component builds.
const MAX_SEQ: u32 = 4096;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    if let Err(response) = require_post(&request, "POST {\"sentences\": [\"...\"]}") {
        return Ok(response);
    }
    let settings = match metadata::component_config::<Settings>() {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_config",
                "deploy this component with a config whose component.vocab is the model's WordPiece vocabulary",
            ));
        }
        Err(e) => {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_config",
                &format!("the deployment's config.component is not this component's: {e}"),
            ));
        }
    };
    let body = request.body_mut().contents().await?;
    let sentences = match read_sentences(body, MAX_SENTENCES, MAX_SENTENCE_BYTES) {
        Ok(sentences) => sentences,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_request", &message)),
    };
    Ok(match embed_all(&settings, &sentences) {
        Ok(embeddings) => json(
            StatusCode::OK,
            &json!({ "similarity": similarity(&embeddings), "embeddings": embeddings }),
        ),
        Err(message) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            &message,
        ),
    })
}

fn embed_all(settings: &Settings, sentences: &[String]) -> Result<Vec<Vec<f32>>, String> {
    let name = metadata::model_named(settings.model.as_deref())?;
    let model = Model::load(&name).map_err(|e| e.to_string())?;
    let signature = model.describe().map_err(|e| e.to_string())?;
    let ids_name = settings.ids.as_deref().unwrap_or("input_ids");
    let mask_name = settings.mask.as_deref().unwrap_or("attention_mask");
    let find = |name: &str| signature.inputs.iter().find(|i| i.name == name);
    let seq = match settings.seq {
        Some(seq) => seq,
        None => find(ids_name)
            .and_then(|i| i.shape.last().copied().flatten())
            .ok_or_else(|| {
                format!("input '{ids_name}' declares no length: give config.component.seq")
            })?,
    }
    .clamp(3, MAX_SEQ);
    let vocab = WordPiece::new(settings.vocab.iter().map(String::as_str));
    let mask = find(mask_name);
    sentences
        .iter()
        .map(|text| {
            embed(
                &model,
                settings,
                &vocab,
                (ids_name, mask_name, mask),
                seq,
                text,
            )
        })
        .collect()
}

/// One sentence's normalized embedding.
fn embed(
    model: &Model,
    settings: &Settings,
    vocab: &WordPiece,
    (ids_name, mask_name, mask): (&str, &str, Option<&TensorInfo>),
    seq: u32,
    text: &str,
) -> Result<Vec<f32>, String> {
    let seq_len = seq as usize;
    let mut ids = vec![vocab.cls];
    ids.extend(vocab.encode(text).into_iter().take(seq_len - 2));
    ids.push(vocab.sep);
    let length = ids.len();
    ids.resize(seq_len, vocab.pad);
    let mut inputs = vec![(ids_name.to_owned(), Tensor::i64(&[1, seq], &ids))];
    if let Some(mask) = mask {
        let tensor = if mask.datatype == Some(TensorType::Fp32) {
            // An additive mask, of the rank the model declares (e.g. [1, 1, 1, seq]).
            let value = settings.mask_value.unwrap_or(-30.0);
            let values: Vec<f32> = (0..seq_len)
                .map(|i| if i < length { 0.0 } else { value })
                .collect();
            let mut shape = vec![1u32; mask.shape.len().max(2) - 1];
            shape.push(seq);
            Tensor::f32(&shape, &values)
        } else {
            let values: Vec<i64> = (0..seq_len).map(|i| i64::from(i < length)).collect();
            Tensor::i64(&[1, seq], &values)
        };
        inputs.push((mask_name.to_owned(), tensor));
    }
    let outputs = model.run(inputs).map_err(|e| e.to_string())?;
    let hidden = match &settings.output {
        Some(output) => outputs.get(output),
        None => outputs.iter().next().map(|(_, t)| t),
    }
    .ok_or("the model gave no such output")?;
    let values = hidden.to_f32().map_err(|e| e.to_string())?;
    let dim = values.len() / seq_len;
    if dim == 0 || values.len() != dim * seq_len {
        return Err(format!(
            "the output has {} values, not {seq} rows of one size",
            values.len()
        ));
    }
    Ok(mean_pooled(&values, length, dim))
}
