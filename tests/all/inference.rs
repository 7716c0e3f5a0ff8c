//! The shared inference layer through the real server (`corral serve`, real ONNX Runtime
//! sessions, real guests): batching across requests and tenants, a bad input inside a batch,
//! fair shares of the run threads, jobs dropped while queued, and the model memory budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::serve::*;
use crate::common::*;
use hyper::StatusCode;
use serde_json::json;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A `bench-nn` tensor request: raw f32 bytes in, the first output's raw bytes out.
async fn tensor(
    corral: &Corral,
    host: &str,
    shape: &str,
    values: &[f32],
) -> (StatusCode, hyper::body::Bytes) {
    send(
        corral.data,
        "POST",
        "/tensor",
        host,
        &[("x-shape", shape), ("x-input", "input")],
        f32_bytes(values),
    )
    .await
}

/// Creates `tenant` at `<tenant>.test` with `limits` and deploys `bench-nn` with `model` as its
/// model `model`.
async fn bench_tenant(
    corral: &Corral,
    tenant: &str,
    model: &std::path::Path,
    limits: serde_json::Value,
) {
    let (status, body) = corral
        .operator(
            "PUT",
            &format!("/v1/tenants/{tenant}"),
            json!({ "hosts": [format!("{tenant}.test")], "limits": limits }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy(tenant, &token, &guest("bench-nn"), &[("model", model)])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A metric's value, 0 when the server shows no such series (yet).
async fn gauge(corral: &Corral, name: &str) -> f64 {
    let text = corral.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn digest(path: &std::path::Path) -> String {
    corral::Digest::of(&std::fs::read(path).unwrap()).to_string()
}

/// One input row of the MLP fixture, different for each `n`.
fn mlp_row(n: usize) -> Vec<f32> {
    (0..16)
        .map(|i| ((n * 31 + i * 7) % 23) as f32 / 11.0 - 1.0)
        .collect()
}

/// Requests for one model from two tenants, sent at once, run as batches, and every request
/// gets exactly the rows it would have got alone (ONNX Runtime's batched and single-row
/// kernels may differ in the last bits: the tolerance is 1e-5).
#[tokio::test]
async fn batched_outputs_equal_unbatched_ones() {
    let dir = DataDir::new("batching");
    // One run thread, and a job waits up to 50 ms for company: batches form for sure.
    let corral = Arc::new(Corral::start(
        &dir,
        "[inference]\nruns = 1\n[batching]\nmax_delay_us = 50000\n",
    ));
    for tenant in ["one", "two"] {
        bench_tenant(&corral, tenant, &fixture("mlp.onnx"), json!({})).await;
    }
    // Alone: one request at a time is a batch of one.
    let mut alone = Vec::new();
    for n in 0..12 {
        let (status, body) = tensor(&corral, "one.test", "1,16", &mlp_row(n)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        alone.push(f32_values(&body));
    }
    let model = digest(&fixture("mlp.onnx"));
    let batch_count = format!("corral_nn_batch_size_count{{model=\"{model}\"}}");
    let batch_sum = format!("corral_nn_batch_size_sum{{model=\"{model}\"}}");
    assert_eq!(corral.metric(&batch_count).await, 12.0);
    assert_eq!(corral.metric(&batch_sum).await, 12.0);

    // Together, from both tenants, plus one request of three rows.
    let mut tasks = Vec::new();
    for n in 0..12 {
        let corral = Arc::clone(&corral);
        let host = if n % 2 == 0 { "one.test" } else { "two.test" };
        tasks.push(tokio::spawn(async move {
            tensor(&corral, host, "1,16", &mlp_row(n)).await
        }));
    }
    let three: Vec<f32> = (0..3).flat_map(mlp_row).collect();
    let (status, body) = tensor(&corral, "two.test", "3,16", &three).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let rows = f32_values(&body);
    assert_eq!(rows.len(), 3 * 8);
    for (n, row) in rows.chunks(8).enumerate() {
        assert_close(row, &alone[n], &format!("row {n} of the three-row request"));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_close(&f32_values(&body), &alone[n], &format!("request {n}"));
    }
    let runs = corral.metric(&batch_count).await - 12.0;
    let rows = corral.metric(&batch_sum).await - 12.0;
    assert_eq!(rows, 15.0, "every row ran once");
    assert!(
        runs < 13.0,
        "13 requests ran in {runs} runs: some must have been batched"
    );
    // Both tenants were charged for their share of the runs.
    for tenant in ["one", "two"] {
        let seconds = corral
            .metric(&format!(
                "corral_tenant_compute_seconds_total{{tenant=\"{tenant}\",device=\"cpu\"}}"
            ))
            .await;
        assert!(seconds > 0.0, "{tenant}: {seconds}");
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}: {got:?} != {want:?}"
        );
    }
}

/// In one batch, a request whose input makes the run fail (an index outside the lookup table)
/// and one whose input does not fit the model get their own errors; every other request of the
/// batch gets its answer.
#[tokio::test]
async fn a_bad_input_inside_a_batch_fails_only_its_own_request() {
    let dir = DataDir::new("bad-in-batch");
    let corral = Arc::new(Corral::start(
        &dir,
        "[inference]\nruns = 1\n[batching]\nmax_delay_us = 100000\n",
    ));
    bench_tenant(&corral, "lookup", &fixture("lookup.onnx"), json!({})).await;
    let mut tasks = Vec::new();
    for index in [0.0f32, 1.0, 99.0, 2.0, 3.0, 4.0, 5.0] {
        let corral = Arc::clone(&corral);
        tasks.push((
            index,
            tokio::spawn(async move { tensor(&corral, "lookup.test", "1,1", &[index]).await }),
        ));
    }
    let corral2 = Arc::clone(&corral);
    let misfit =
        tokio::spawn(async move { tensor(&corral2, "lookup.test", "1,2", &[1.0, 2.0]).await });
    for (index, task) in tasks {
        let (status, body) = task.await.unwrap();
        if index == 99.0 {
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(
                json(&body)["error"]["code"],
                "runtime-error",
                "{}",
                json(&body)
            );
        } else {
            assert_eq!(
                status,
                StatusCode::OK,
                "index {index}: {}",
                String::from_utf8_lossy(&body)
            );
            let row = index as usize * 4;
            let want: Vec<f32> = (row..row + 4).map(|v| v as f32).collect();
            assert_eq!(f32_values(&body), want, "index {index}");
        }
    }
    let (status, body) = misfit.await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json(&body)["error"]["code"],
        "invalid-argument",
        "{}",
        json(&body)
    );
}

/// With one run thread, a light tenant's requests go ahead of a heavy tenant's queue: while
/// the heavy tenant keeps 12 runs of about 100 ms queued, each light request waits for at most
/// the run executing when it arrived (and one starting as it does), never for the heavy
/// tenant's whole queue as the first-come-first-served pool made it.
#[tokio::test]
async fn a_light_tenant_goes_ahead_of_a_heavy_tenants_queue() {
    let dir = DataDir::new("fair");
    let corral = Arc::new(Corral::start(&dir, "[inference]\nruns = 1\n"));
    bench_tenant(&corral, "heavy", &fixture("slow.onnx"), json!({})).await;
    bench_tenant(&corral, "light", &fixture("mlp.onnx"), json!({})).await;
    let heavy_done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..12 {
        let (corral, done, stop) = (
            Arc::clone(&corral),
            Arc::clone(&heavy_done),
            Arc::clone(&stop),
        );
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = tensor(&corral, "heavy.test", "1", &[150_000.0]).await;
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // The heavy queue is full once its first runs are done.
    while gauge(&corral, "corral_nn_queued_runs{tenant=\"heavy\"}").await < 10.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut worst = 0;
    for n in 0..10 {
        let before = heavy_done.load(Ordering::SeqCst);
        let (status, body) = tensor(&corral, "light.test", "1,16", &mlp_row(n)).await;
        let passed = heavy_done.load(Ordering::SeqCst) - before;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        worst = worst.max(passed);
    }
    stop.store(true, Ordering::SeqCst);
    for task in flood {
        task.await.unwrap();
    }
    assert!(
        worst <= 2,
        "a light request waited while {worst} heavy requests finished: it queued behind them"
    );
}

/// Creates tenant `spinner` (requests of 1.5 s at most) with a model that never ends on its
/// own, and starts one request of it: its run holds a run thread until that request ends.
/// Returns once the run is executing; the task answers the request's status and body.
async fn occupy_the_run_thread(
    corral: &Arc<Corral>,
) -> tokio::task::JoinHandle<(StatusCode, hyper::body::Bytes)> {
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/spinner",
            json!({ "hosts": ["spinner.test"], "limits": { "timeout_ms": 1500 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy(
            "spinner",
            &token,
            &guest("nn-probe"),
            &[("spin", &fixture("spin.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spinner = Arc::clone(corral);
    let spin = tokio::spawn(async move {
        spinner
            .call("spinner.test", "GET", "/fault/spin", Vec::new())
            .await
    });
    while corral.metric("corral_inference_runs_in_flight").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spin
}

/// A job whose request ended while it waited for a run thread never runs: with the only thread
/// held by another tenant's endless run, a request of 300 ms times out in the queue, and its
/// model has run nothing once the thread is free again.
#[tokio::test]
async fn a_job_cancelled_while_queued_never_runs() {
    let dir = DataDir::new("cancel-queued");
    let corral = Arc::new(Corral::start(&dir, "[inference]\nruns = 1\n"));
    bench_tenant(
        &corral,
        "waiter",
        &fixture("mlp.onnx"),
        json!({ "timeout_ms": 300 }),
    )
    .await;
    let model = digest(&fixture("mlp.onnx"));
    let runs = format!("corral_nn_batch_size_count{{model=\"{model}\"}}");

    let spin = occupy_the_run_thread(&corral).await;
    let (status, body) = tensor(&corral, "waiter.test", "1,16", &mlp_row(0)).await;
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = spin.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    while corral.metric("corral_inference_runs_in_flight").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(corral.metric(&runs).await, 0.0, "the dropped job never ran");
    let (status, body) = tensor(&corral, "waiter.test", "1,16", &mlp_row(0)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(corral.metric(&runs).await, 1.0);
}

/// A tenant with `nn_queued_runs` jobs already waiting is stopped with `503 overloaded` and
/// `Retry-After`, like its other limits, and the server keeps serving it afterwards.
#[tokio::test]
async fn a_tenant_past_its_queue_bound_gets_503() {
    let dir = DataDir::new("queue-bound");
    let corral = Arc::new(Corral::start(&dir, "[inference]\nruns = 1\n"));
    bench_tenant(
        &corral,
        "queued",
        &fixture("mlp.onnx"),
        json!({ "nn_queued_runs": 2 }),
    )
    .await;
    let spin = occupy_the_run_thread(&corral).await;
    let mut waiting = Vec::new();
    for n in 0..2 {
        let corral = Arc::clone(&corral);
        waiting.push(tokio::spawn(async move {
            tensor(&corral, "queued.test", "1,16", &mlp_row(n)).await
        }));
    }
    // Both wait in the queue (the only thread spins), so a third is one too many.
    let queued = "corral_nn_queued_runs{tenant=\"queued\"}";
    while gauge(&corral, queued).await < 2.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, headers, body) = send_full(
        corral.data,
        "POST",
        "/tensor",
        "queued.test",
        &[("x-shape", "1,16"), ("x-input", "input")],
        f32_bytes(&mlp_row(9)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        json(&body)["error"]["code"],
        "overloaded",
        "{}",
        json(&body)
    );
    assert!(headers.contains_key("retry-after"));
    let _ = spin.await.unwrap();
    for task in waiting {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
}

/// EfficientNet-Lite0 with a `doc_string` naming `n` appended: the same network, distinct
/// bytes (and so a distinct model to load).
fn distinct_classifier(dir: &DataDir, n: usize) -> std::path::PathBuf {
    let mut bytes = std::fs::read(example_model()).unwrap();
    bytes.extend(corral_parsers::onnx::testing::field(
        6,
        format!("copy {n}").as_bytes(),
    ));
    let path = dir.0.join(format!("classifier-{n}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Three distinct classifiers under a budget that holds two: each deploy and each first use
/// loads its model, unloading the least recently used idle one; every request is answered;
/// the measured resident bytes never pass the budget; a model larger than the whole budget is
/// refused at deploy, and a deployment past its tenant's `model_bytes` with 507.
#[tokio::test]
async fn models_load_on_use_and_the_least_recently_used_make_room() {
    let dir = DataDir::new("model-budget");
    let size = std::fs::metadata(example_model()).unwrap().len();
    let budget = size * 5 / 2;
    let corral = Arc::new(Corral::start(
        &dir,
        &format!("[models]\nmemory_bytes = {budget}\n"),
    ));
    let image = vec![0.5f32; 3 * 224 * 224];
    let resident = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("corral_model_resident_bytes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut answers = Vec::new();
    for n in 0..3 {
        let model = distinct_classifier(&dir, n);
        bench_tenant(&corral, &format!("m{n}"), &model, json!({})).await;
        assert!(resident(&corral.metrics_text().await) <= budget as f64);
    }
    for round in 0..3 {
        for n in 0..3 {
            let host = format!("m{n}.test");
            let (status, body) = tensor(&corral, &host, "1,3,224,224", &image).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}, m{n}: {}",
                String::from_utf8_lossy(&body)
            );
            answers.push(f32_values(&body));
            let text = corral.metrics_text().await;
            assert!(
                resident(&text) <= budget as f64,
                "resident models over the budget of {budget}:\n{text}"
            );
        }
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "the same network answers the same wherever it was loaded from"
    );
    let evictions = corral.metric("corral_model_evictions_total").await;
    let loads = corral.metric("corral_model_loads_total").await;
    assert!(evictions >= 3.0, "{evictions} evictions");
    assert!(loads >= 6.0, "{loads} loads");
    assert!(corral.metric("corral_model_sessions").await <= 2.0);

    // Larger than the whole budget: refused before it is loaded.
    let large = repo().join(".corral/models/text-embedding/maskseq.onnx");
    let (status, body) = corral
        .operator("PUT", "/v1/tenants/big", json!({ "hosts": ["big.test"] }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy("big", &token, &guest("bench-nn"), &[("model", &large)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "model_too_large", "{body}");

    // A tenant whose quota is under one classifier.
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/small",
            json!({ "hosts": ["small.test"], "limits": { "model_bytes": size / 2 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy(
            "small",
            &token,
            &guest("bench-nn"),
            &[("model", &example_model())],
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "model_quota_exceeded", "{body}");
    // Every tenant still answers, and its status shows its model.
    for n in 0..3 {
        let (status, _) = tensor(&corral, &format!("m{n}.test"), "1,3,224,224", &image).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = corral
            .operator("GET", &format!("/v1/tenants/m{n}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let model = &body["status"]["models"][0];
        assert_eq!(model["name"], "model", "{body}");
        assert!(model["loaded"].is_boolean(), "{body}");
        assert!(model["resident_bytes"].as_u64().unwrap() >= size, "{body}");
        assert!(model.get("load_error").is_none(), "{body}");
    }

    // A model whose blob was damaged on disk while it was unloaded: its first use fails with
    // a wasi:nn runtime error, the tenant's status says why, and the others keep answering.
    let (_, body) = corral.operator("GET", "/v1/tenants/m0", json!({})).await;
    let digest = body["status"]["models"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = digest.trim_start_matches("sha256:");
    // Use the other two until m0's model is the one unloaded.
    for _ in 0..2 {
        for n in 1..3 {
            let (status, _) = tensor(&corral, &format!("m{n}.test"), "1,3,224,224", &image).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let (_, body) = corral.operator("GET", "/v1/tenants/m0", json!({})).await;
    assert_eq!(body["status"]["models"][0]["loaded"], false, "{body}");
    std::fs::write(dir.data().join("blobs/sha256").join(hex), b"damaged").unwrap();
    let (status, body) = tensor(&corral, "m0.test", "1,3,224,224", &image).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        json(&body)["error"]["code"],
        "runtime-error",
        "{}",
        json(&body)
    );
    let (_, body) = corral.operator("GET", "/v1/tenants/m0", json!({})).await;
    let error = body["status"]["models"][0]["load_error"]
        .as_str()
        .unwrap_or("");
    assert!(error.contains("changed"), "{body}");
    assert!(!error.contains(hex), "no server path in {error}");
    let (status, _) = tensor(&corral, "m1.test", "1,3,224,224", &image).await;
    assert_eq!(status, StatusCode::OK);
}

/// A deployment's `config` part is checked against its models before anything is stored: an
/// ONNX model declares its own batch axis, only the leading axis batches, unknown keys and
/// models are named; a valid config turns batching off for that deployment alone.
#[tokio::test]
async fn a_deployments_config_is_checked_and_applies_to_it_alone() {
    let dir = DataDir::new("deploy-config");
    let corral = Arc::new(Corral::start(
        &dir,
        "[inference]\nruns = 1\n[batching]\nmax_delay_us = 50000\n",
    ));
    let token = corral.create_tenant("own", "own.test").await;
    let upload = |config: serde_json::Value| {
        let parts = [
            Part::file("component", &guest("bench-nn")),
            Part::file("model.model", &fixture("mlp.onnx")),
            Part::bytes("config", "config.json", config.to_string().into_bytes()),
        ];
        multipart(&parts)
    };
    for (config, needle) in [
        (
            json!({ "models": { "model": { "batch_axis": 0 } } }),
            "ONNX model declares",
        ),
        (json!({ "models": { "other": {} } }), "'other'"),
        (
            json!({ "batching": { "max_batch_size": 0 } }),
            "max_batch_size",
        ),
        (
            json!({ "batching": { "max_delay_us": 5_000_000 } }),
            "max_delay_us",
        ),
        (json!({ "batching": { "size": 4 } }), "size"),
    ] {
        let (status, body) = corral
            .admin(
                "POST",
                "/v1/tenants/own/deployments",
                Some(&token),
                Some(upload(config.clone())),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{config}: {body}");
        assert_eq!(body["error"]["code"], "invalid_config", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{config}: {body}"
        );
    }
    let (status, body) = corral
        .admin(
            "POST",
            "/v1/tenants/own/deployments",
            Some(&token),
            Some(upload(json!({ "batching": { "max_batch_size": 1 } }))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Another tenant on the same model still batches.
    bench_tenant(&corral, "shared", &fixture("mlp.onnx"), json!({})).await;
    let model = digest(&fixture("mlp.onnx"));
    let runs = format!("corral_nn_batch_size_count{{model=\"{model}\"}}");
    let rows = format!("corral_nn_batch_size_sum{{model=\"{model}\"}}");
    for (host, batched) in [("own.test", false), ("shared.test", true)] {
        let (runs_before, rows_before) = (gauge(&corral, &runs).await, gauge(&corral, &rows).await);
        let tasks: Vec<_> = (0..6)
            .map(|n| {
                let corral = Arc::clone(&corral);
                tokio::spawn(async move { tensor(&corral, host, "1,16", &mlp_row(n)).await })
            })
            .collect();
        for task in tasks {
            let (status, body) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        }
        let ran = gauge(&corral, &runs).await - runs_before;
        assert_eq!(gauge(&corral, &rows).await - rows_before, 6.0);
        if batched {
            assert!(ran < 6.0, "{host}: 6 requests in {ran} runs");
        } else {
            assert_eq!(ran, 6.0, "{host}: its config turns batching off");
        }
    }
}

/// A model in use (its run executing) is never unloaded to make room, even when it is the
/// least recently used: the next idle model goes instead.
#[tokio::test]
async fn a_model_in_use_is_never_unloaded() {
    let dir = DataDir::new("in-use");
    let size = std::fs::metadata(example_model()).unwrap().len();
    let budget = size * 5 / 2;
    let corral = Arc::new(Corral::start(
        &dir,
        &format!("[models]\nmemory_bytes = {budget}\n"),
    ));
    bench_tenant(&corral, "slow", &fixture("slow.onnx"), json!({})).await;
    for n in 0..2 {
        let model = distinct_classifier(&dir, n);
        bench_tenant(&corral, &format!("c{n}"), &model, json!({})).await;
    }
    let loaded = |body: &serde_json::Value| body["status"]["models"][0]["loaded"].clone();
    let long = Arc::clone(&corral);
    let running =
        tokio::spawn(async move { tensor(&long, "slow.test", "1", &[3_000_000.0]).await });
    while corral.metric("corral_inference_runs_in_flight").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The slow model is now the least recently used; a third classifier needs room.
    let image = vec![0.5f32; 3 * 224 * 224];
    for n in 0..2 {
        let (status, _) = tensor(&corral, &format!("c{n}.test"), "1,3,224,224", &image).await;
        assert_eq!(status, StatusCode::OK);
    }
    let third = distinct_classifier(&dir, 2);
    bench_tenant(&corral, "c2", &third, json!({})).await;
    assert_eq!(
        corral.metric("corral_inference_runs_in_flight").await,
        1.0,
        "still running"
    );
    let (_, slow) = corral.operator("GET", "/v1/tenants/slow", json!({})).await;
    assert_eq!(loaded(&slow), true, "the model in use stays loaded: {slow}");
    let (_, c0) = corral.operator("GET", "/v1/tenants/c0", json!({})).await;
    assert_eq!(
        loaded(&c0),
        false,
        "the least recently used idle model made room: {c0}"
    );
    let (status, body) = running.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(f32_values(&body), vec![3_000_000.0]);
}

/// A tenant cycling through models of its own unloads its own idle models before other
/// tenants': the other tenant's model stays loaded even when it is the least recently used.
#[tokio::test]
async fn a_tenant_making_room_unloads_its_own_models_first() {
    let dir = DataDir::new("own-first");
    let size = std::fs::metadata(example_model()).unwrap().len();
    let corral = Arc::new(Corral::start(
        &dir,
        &format!("[models]\nmemory_bytes = {}\n", size * 5 / 2),
    ));
    let image = vec![0.5f32; 3 * 224 * 224];
    let call = |host: &'static str, model: &'static str| {
        let corral = Arc::clone(&corral);
        let body = f32_bytes(&image);
        async move {
            let (status, body) = send(
                corral.data,
                "POST",
                "/tensor",
                host,
                &[
                    ("x-shape", "1,3,224,224"),
                    ("x-input", "input"),
                    ("x-model", model),
                ],
                body,
            )
            .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{host} {model}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    };
    bench_tenant(&corral, "other", &distinct_classifier(&dir, 9), json!({})).await;
    let token = corral.create_tenant("cycler", "cycler.test").await;
    // Two models of its own, which together fit its quota (the budget), but not beside the
    // other tenant's.
    let models: Vec<std::path::PathBuf> = (0..2).map(|n| distinct_classifier(&dir, n)).collect();
    let (status, body) = corral
        .deploy(
            "cycler",
            &token,
            &guest("bench-nn"),
            &[("m0", &models[0]), ("m1", &models[1])],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The other tenant's model is used first, so it is the least recently used from here on.
    call("other.test", "model").await;
    for _ in 0..3 {
        for model in ["m0", "m1"] {
            call("cycler.test", model).await;
        }
    }
    let (_, other) = corral.operator("GET", "/v1/tenants/other", json!({})).await;
    assert_eq!(
        other["status"]["models"][0]["loaded"], true,
        "the cycling tenant unloaded another tenant's model: {other}"
    );
    assert!(corral.metric("corral_model_evictions_total").await >= 4.0);
    call("other.test", "model").await;
}
