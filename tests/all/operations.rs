//! Operating Corral: graceful shutdown, request ids in logs, the metrics a request produces,
//! health endpoints and configuration checks, against the real `corral serve` binary.

use std::time::Duration;

use crate::common::serve::{Corral, DataDir};
use crate::common::*;
use hyper::StatusCode;
use serde_json::json;

async fn with_tenant(corral: &Corral, name: &str) {
    corral.probe_tenant(name, &format!("{name}.test")).await;
}

#[tokio::test]
async fn sigterm_lets_every_accepted_request_finish_then_exits_zero() {
    let dir = DataDir::new("sigterm");
    let mut corral = Corral::start(&dir, "drain_timeout_secs = 10\n");
    with_tenant(&corral, "acme").await;
    let data = corral.data;
    let mut in_flight = Vec::new();
    for _ in 0..6 {
        in_flight.push(tokio::spawn(async move {
            crate::common::serve::get(data, "acme.test", "/fault/sleep?ms=3000").await
        }));
    }
    // Once the server has accepted all six (each has an instance running), ask it to stop.
    for _ in 0..200 {
        if corral.metric("corral_instances_in_use").await >= 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(corral.metric("corral_instances_in_use").await, 6.0);
    corral.terminate();
    for request in in_flight {
        let answer = request.await.unwrap();
        let (status, body) = answer
            .unwrap_or_else(|| panic!("an accepted request is answered:\n{}", corral.log_text()));
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["slept_ms"], 3000);
    }
    let exit = corral.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "corral exits 0 after draining: {exit:?}");
    assert!(
        tokio::net::TcpStream::connect(data).await.is_err(),
        "nothing listens after shutdown"
    );
    let log = corral.log_text();
    assert!(log.contains("draining"), "{log}");
}

#[tokio::test]
async fn a_request_has_an_id_in_its_logs_and_produces_its_metrics() {
    let dir = DataDir::new("observe");
    let corral = Corral::start_with(
        &dir,
        "[engine]\ninstances = 16\n",
        &["--log-format", "json"],
    );
    with_tenant(&corral, "acme").await;

    let (status, _) = corral.admin("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = crate::common::serve::get_with(
        corral.data,
        "acme.test",
        "/fault/print?text=marker-7f",
        &[("x-request-id", "req-test-42")],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-request-id"], "req-test-42");
    let (status, headers, _) =
        crate::common::serve::get_with(corral.data, "acme.test", "/case/add", &[])
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"].len(), 16, "a generated id");

    // Logs are JSON lines; the guest's output is tagged with tenant and request id.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = corral.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let guest: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("marker-7f")
        })
        .collect();
    assert_eq!(guest.len(), 2, "stdout and stderr lines: {log}");
    for line in &guest {
        assert_eq!(line["fields"]["tenant"], "acme", "{line}");
        assert_eq!(line["fields"]["request"], "req-test-42", "{line}");
    }
    let request_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request" && l["span"]["id"] == "req-test-42")
        .unwrap_or_else(|| panic!("no request line with the id:\n{log}"));
    assert_eq!(request_line["fields"]["status"], 200);
    assert_eq!(request_line["span"]["tenant"], "acme");

    let metrics = corral.metrics_text().await;
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{metrics}"))
    };
    assert_eq!(
        value("corral_requests_total{tenant=\"acme\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        value("corral_request_duration_seconds_count{tenant=\"acme\"}"),
        2.0
    );
    assert_eq!(
        value("corral_request_duration_seconds_bucket{tenant=\"acme\",le=\"+Inf\"}"),
        2.0
    );
    value("corral_guest_cpu_seconds_total{tenant=\"acme\"}");
    assert_eq!(
        value("corral_deployments_total{tenant=\"acme\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("corral_requests_rejected_total{tenant=\"acme\"}"),
        0.0
    );
    assert_eq!(value("corral_queue_depth{tenant=\"acme\"}"), 0.0);
    assert_eq!(value("corral_instance_slots"), 16.0);
    // The last instance ends just after its response is sent.
    for _ in 0..100 {
        if corral.metric("corral_instances_in_use").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(corral.metric("corral_instances_in_use").await, 0.0);
    assert_eq!(value("corral_model_sessions"), 1.0);
    assert!(
        value("corral_models_memory_budget_bytes{device=\"cpu\"}") > 0.0,
        "the budget is shown"
    );
    let add = json!(
        std::fs::read(fixture("add.onnx"))
            .map(|b| sha256(&b))
            .unwrap()
    );
    let compute = format!(
        "corral_nn_compute_seconds_count{{model=\"{}\"}}",
        add.as_str().unwrap()
    );
    assert_eq!(value(&compute), 1.0, "one compute on the add model");

    // A refused upload is counted by its code.
    let (status, _) = corral
        .deploy("acme", &corral.token, &fixture("add.onnx"), &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let metrics = corral.metrics_text().await;
    assert!(
        metrics
            .contains("corral_deployments_total{tenant=\"acme\",result=\"invalid_component\"} 1\n"),
        "{metrics}"
    );

    // A deleted tenant's series go, and so does the compute histogram of a model no
    // deployment holds any more: metrics do not grow with every tenant and model ever seen.
    let (status, _) = corral
        .operator("DELETE", "/v1/tenants/acme", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let metrics = corral.metrics_text().await;
    assert!(!metrics.contains("tenant=\"acme\""), "{metrics}");
    assert!(!metrics.contains(&compute), "{metrics}");
    assert_eq!(corral.metric("corral_model_sessions").await, 0.0);
}

fn sha256(bytes: &[u8]) -> String {
    corral::Digest::of(bytes).to_string()
}

#[test]
fn config_check_names_the_file_line_and_key_and_shows_overrides() {
    let dir = DataDir::new("config-check");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:8080\"\n[limits]\ncpu_msec = 5\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 3") && stderr.contains("cpu_msec"),
        "{stderr}"
    );

    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[limits]\ncpu_ms = 250\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["config", "check"])
        .arg(&good)
        .env("CORRAL_LIMITS_TIMEOUT_MS", "4000")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("cpu_ms = 250") && stdout.contains("timeout_ms = 4000"),
        "{stdout}"
    );
}
