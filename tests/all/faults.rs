//! The fault suite: a hostile tenant misbehaves in every way we know of while a healthy tenant
//! is under steady load on the same real `corral serve` process. Each case is one hostile
//! request, the status and error code it must get, and what must hold for everyone else: the
//! server stays up, every healthy request succeeds, and memory returns to its baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::serve::{Corral, DataDir, Part, multipart, raw_request};
use crate::common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

/// The hostile tenant's limits: small, so every case trips quickly.
fn hostile_limits() -> Value {
    json!({
        "memory_bytes": 64 << 20,
        "cpu_ms": 3000,
        "timeout_ms": 5000,
        "request_body_bytes": 1 << 20,
        "response_body_bytes": 1 << 20,
        "nn_calls_per_request": 2000,
        "nn_bytes_per_request": 4 << 20,
        "tensor_elements": 1000,
        "concurrent_requests": 2,
        "queued_requests": 2,
        "log_bytes_per_minute": 64 << 10,
    })
}

/// What the sandbox probe of the tenant at `host` got when it tried outgoing HTTP.
async fn outgoing_http(corral: &Corral, host: &str) -> String {
    let (_, body) = corral.call(host, "GET", "/case/sandbox", Vec::new()).await;
    json(&body)["outgoing_http"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One hostile request and what it must get.
struct Case {
    path: &'static str,
    status: StatusCode,
    /// The error code: the host's `error.code`, or the guest's `wasi:nn` code for 422s.
    code: &'static str,
    /// What else must hold of the answer.
    check: fn(&Value) -> bool,
}

fn any(_: &Value) -> bool {
    true
}

/// The error message of an answer: the host's `error.message` or the guest's `message`.
fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .or(body["message"].as_str())
        .unwrap_or_default()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            path: "/fault/big-tensor",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-argument",
            check: |b| {
                b["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("limit of 1000 elements")
            },
        },
        Case {
            path: "/fault/loop",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "cpu_time_limit",
            check: any,
        },
        Case {
            path: "/fault/grow-memory",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "memory_limit",
            check: any,
        },
        // Rust keeps large frames on a stack in linear memory: deep recursion ends in a
        // stack overflow or an out-of-bounds access below that stack, both traps.
        Case {
            path: "/fault/recursion",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "component_trapped",
            check: any,
        },
        Case {
            path: "/fault/panic",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "component_trapped",
            check: any,
        },
        Case {
            path: "/fault/unreachable",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "component_trapped",
            check: |b| {
                b["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("unreachable")
            },
        },
        Case {
            path: "/fault/huge-tensor",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-argument",
            check: any,
        },
        Case {
            path: "/fault/overflow-dims",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-argument",
            check: any,
        },
        Case {
            path: "/fault/bad-length",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-argument",
            check: any,
        },
        Case {
            path: "/fault/many-computes",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "nn_limit",
            check: any,
        },
        Case {
            path: "/fault/many-describes",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "nn_limit",
            check: any,
        },
        // Everything a guest makes the host hold through wasi:nn is counted: dimension lists,
        // live resources, names, every copy of an output.
        Case {
            path: "/fault/many-dims",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "nn_limit",
            check: |b| message(b).contains("limit of 8 dimensions"),
        },
        Case {
            path: "/fault/many-tensors",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "nn_limit",
            check: |b| message(b).contains("live wasi:nn resources"),
        },
        Case {
            path: "/fault/long-name",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "not-found",
            check: |b| message(b).len() < 2048 && message(b).contains("(4194304 bytes)"),
        },
        Case {
            path: "/fault/reread",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "nn_limit",
            check: any,
        },
        // ONNX Runtime asked for 2 GiB with a 256 MiB run arena: an error, not an allocation.
        Case {
            path: "/fault/fill?n=536870912",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "runtime-error",
            check: |b| message(b).contains("Available memory"),
        },
        Case {
            path: "/fault/fill?n=1000",
            status: StatusCode::OK,
            code: "",
            check: |b| b["detail"]["shape"] == json!([1000]),
        },
        Case {
            path: "/fault/stdout-flood",
            status: StatusCode::OK,
            code: "",
            check: |b| b["written"].as_u64() == Some(100 << 20),
        },
        Case {
            path: "/case/sandbox",
            status: StatusCode::OK,
            code: "",
            check: |b| {
                b["env"] == json!([])
                    && b["args"] == json!([])
                    && b["files"] == json!([])
                    && b["outgoing_http"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("HttpRequestDenied")
            },
        },
        Case {
            path: "/fault/never-respond",
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "timeout",
            check: any,
        },
        Case {
            path: "/fault/ort-error",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "runtime-error",
            check: |b| {
                b["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Reshape")
            },
        },
    ]
}

#[tokio::test]
async fn no_hostile_request_hurts_the_server_or_a_healthy_tenant() {
    let dir = DataDir::new("faults");
    let corral = Arc::new(Corral::start(
        &dir,
        "[engine]\ninstances = 64\n[onnx]\nrun_memory_bytes = 268435456\n",
    ));
    let healthy = corral.create_tenant("healthy", "healthy.test").await;
    let (status, body) = corral
        .deploy(
            "healthy",
            &healthy,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/hostile",
            json!({ "hosts": ["hostile.test"], "limits": hostile_limits() }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hostile = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy(
            "hostile",
            &hostile,
            &guest("nn-probe"),
            &[
                ("add", &fixture("add.onnx")),
                ("reshape", &fixture("reshape.onnx")),
                ("fill", &fixture("fill.onnx")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, body) = corral
        .admin("GET", "/v1/tenants/hostile", Some(&hostile), None)
        .await;
    assert_eq!(body["limits"]["cpu_ms"], 3000, "{body}");
    assert_eq!(
        body["limits"]["tensor_rank"], 8,
        "defaults fill what is not overridden"
    );

    // Warm up both tenants, then take the memory baseline.
    for _ in 0..20 {
        assert_eq!(
            corral
                .call("healthy.test", "GET", "/case/add", Vec::new())
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            corral
                .call("hostile.test", "GET", "/case/add", Vec::new())
                .await
                .0,
            StatusCode::OK
        );
    }
    let baseline = corral.rss_bytes();

    // Steady load on the healthy tenant for the whole suite.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (corral, stop, ok, failed) = (corral.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = corral
                    .call("healthy.test", "GET", "/case/add", Vec::new())
                    .await;
                if status == StatusCode::OK
                    && json(&body)["detail"]["sum"] == json!([11.0, 22.0, 33.0, 44.0])
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "healthy request failed: {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    for case in cases() {
        let (status, body) = corral
            .call("hostile.test", "GET", case.path, Vec::new())
            .await;
        let body = json(&body);
        assert_eq!(status, case.status, "{}: {body}", case.path);
        if !case.code.is_empty() {
            let code = body["error"]["code"].as_str().or(body["code"].as_str());
            assert_eq!(code, Some(case.code), "{}: {body}", case.path);
        }
        assert!((case.check)(&body), "{}: {body}", case.path);
        let (status, _) = corral.admin("GET", "/healthz", None, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the server is up after {}",
            case.path
        );
        eprintln!("fault {}: {} {}", case.path, case.status, case.code);
    }

    // Outgoing HTTP goes out only to hosts the operator allowed for the tenant: another port
    // of an allowed host stays denied; allowed, the request to 127.0.0.1:9 is attempted (and
    // refused by the closed port, not by Corral).
    let (status, _) = corral
        .operator(
            "PUT",
            "/v1/tenants/hostile",
            json!({ "outgoing_hosts": ["127.0.0.1:10"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let outgoing = outgoing_http(&corral, "hostile.test").await;
    assert!(outgoing.contains("HttpRequestDenied"), "{outgoing}");
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/hostile",
            json!({ "outgoing_hosts": ["127.0.0.1:9"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hosts"], json!(["hostile.test"]), "hosts are kept");
    let outgoing = outgoing_http(&corral, "hostile.test").await;
    assert!(
        outgoing.contains("ConnectionRefused") && !outgoing.contains("Denied"),
        "{outgoing}"
    );
    let outgoing = outgoing_http(&corral, "healthy.test").await;
    assert!(
        outgoing.contains("HttpRequestDenied"),
        "other tenants stay denied: {outgoing}"
    );

    // Bodies over the limit: refused before the guest runs.
    let head =
        "POST /fault/sleep HTTP/1.1\r\nhost: hostile.test\r\ncontent-length: 2000000\r\n\r\n";
    let response = raw_request(corral.data, head).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("request_too_large"), "{response}");

    // Responses over the limit are cut off: the client never gets the whole body.
    let (status, _) = corral
        .call(
            "hostile.test",
            "GET",
            "/fault/big-response?bytes=1000",
            Vec::new(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a response under the limit is whole"
    );
    let cut = corral
        .call_cut("hostile.test", "/fault/big-response?bytes=3000000")
        .await;
    assert!(
        cut < 3_000_000,
        "the client got {cut} bytes of a 3 MB response"
    );

    // Concurrency: 2 run, 2 wait, the rest get 503 with Retry-After at once. A tenant of its
    // own, so no earlier request still holds one of its slots.
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/bursty",
            json!({ "hosts": ["bursty.test"], "limits": { "concurrent_requests": 2, "queued_requests": 2 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bursty = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy("bursty", &bursty, &guest("nn-probe"), &[])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut burst = Vec::new();
    for _ in 0..8 {
        let corral = corral.clone();
        burst.push(tokio::spawn(async move {
            corral.call_full("bursty.test", "/fault/sleep?ms=700").await
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for request in burst {
        let (status, headers, body) = request.await.unwrap();
        match status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(headers["retry-after"], "1");
                assert_eq!(json(&body)["error"]["code"], "overloaded");
            }
            other => panic!(
                "burst request got {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    assert_eq!((served, refused), (4, 4), "2 running + 2 queued are served");

    // Guest output over the budget was dropped and counted.
    let metrics = corral.metrics_text().await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("corral_guest_log_dropped_bytes_total{tenant=\"hostile\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no dropped-bytes metric:\n{metrics}"));
    assert!(dropped > 90e6, "{dropped} bytes dropped");

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("healthy tenant during the suite: {ok} requests succeeded, {failed} failed");
    assert_eq!(
        failed, 0,
        "every healthy request succeeds during the faults"
    );
    assert!(ok >= 50, "the healthy load kept running ({ok} requests)");

    // Memory returns to its baseline once the hostile instances are gone.
    let mut rss = corral.rss_bytes();
    for _ in 0..50 {
        if rss <= baseline + (64 << 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = corral.rss_bytes();
    }
    eprintln!(
        "server RSS: baseline {} MiB, after the suite {} MiB",
        baseline >> 20,
        rss >> 20
    );
    assert!(
        rss <= baseline + (64 << 20),
        "RSS {} MiB vs baseline {} MiB",
        rss >> 20,
        baseline >> 20
    );
}

/// The security issue's first hole: an ONNX function's default attribute pointing at the
/// operator token, relative to the server's working directory. The upload check refuses it;
/// `backends::onnx::tests` shows ONNX Runtime would read the file if handed the same model.
#[tokio::test]
async fn an_onnx_model_cannot_read_the_servers_files() {
    let dir = DataDir::new("read-files");
    let corral = Corral::start_in_dir(&dir, "");
    let token_file = dir.data().join("admin-token");
    assert!(
        token_file.is_file(),
        "the operator token is at data/admin-token"
    );
    let thief = corral.create_tenant("thief", "thief.test").await;
    let model = corral_parsers::onnx::testing::function_default_attribute_model(
        "data/admin-token",
        corral.token.len() as u64,
    );
    let parts = [
        Part::file("component", &guest("nn-probe")),
        Part::bytes("model.leak", "leak.onnx", model),
    ];
    let (status, body) = corral
        .admin(
            "POST",
            "/v1/tenants/thief/deployments",
            Some(&thief),
            Some(multipart(&parts)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "external_data", "{body}");
    assert!(!body.to_string().contains(&corral.token));
}

/// A tenant's model that never ends, sent 8 times at once: each request gets its 504, its
/// runs are stopped (the runs in flight go back to zero), and while another tenant has models
/// it never holds more than all run threads but one, so that tenant's requests keep answering
/// meanwhile. (The configuration uses the deprecated `max_parallel_inference`, which still
/// starts a server: it is read as `[inference] runs`.)
#[tokio::test]
async fn a_run_that_never_ends_is_stopped_and_starves_no_one() {
    let dir = DataDir::new("spin");
    let corral = Arc::new(Corral::start(&dir, "max_parallel_inference = 4\n"));
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/spinner",
            json!({ "hosts": ["spinner.test"], "limits": {
                "timeout_ms": 2000, "concurrent_requests": 16, "queued_requests": 16 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spinner = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral
        .deploy(
            "spinner",
            &spinner,
            &guest("nn-probe"),
            &[("spin", &fixture("spin.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let healthy = corral.create_tenant("healthy", "healthy.test").await;
    let (status, body) = corral
        .deploy(
            "healthy",
            &healthy,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut spinning = Vec::new();
    for _ in 0..8 {
        let corral = corral.clone();
        spinning.push(tokio::spawn(async move {
            corral
                .call("spinner.test", "GET", "/fault/spin", Vec::new())
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    while spinning.iter().any(|task| !task.is_finished()) {
        let started = std::time::Instant::now();
        let (status, body) = corral
            .call("healthy.test", "GET", "/case/add", Vec::new())
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a healthy request while the spinner's runs hold their slots: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the healthy request waited {:?} for a slot",
            started.elapsed()
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        answered >= 10,
        "{answered} healthy requests during the spin"
    );
    for task in spinning {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // The stopped runs really end, and their slots come back.
    let mut in_flight = corral.metric("corral_inference_runs_in_flight").await;
    for _ in 0..50 {
        if in_flight == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        in_flight = corral.metric("corral_inference_runs_in_flight").await;
    }
    assert_eq!(
        in_flight, 0.0,
        "runs still executing after their requests ended"
    );
    for _ in 0..4 {
        let (status, _) = corral
            .call("healthy.test", "GET", "/case/add", Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Time spent waiting for one of the tenant's slots counts toward the request's timeout: a
/// request never runs for its queue wait plus a whole fresh `timeout_ms`.
#[tokio::test]
async fn waiting_for_a_slot_counts_toward_the_timeout() {
    let dir = DataDir::new("queued-deadline");
    let corral = Arc::new(Corral::start(&dir, ""));
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/slow",
            json!({ "hosts": ["slow.test"], "limits": {
                "timeout_ms": 1500, "concurrent_requests": 1, "queued_requests": 1 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = corral.deploy("slow", &token, &guest("nn-probe"), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first = {
        let corral = corral.clone();
        tokio::spawn(async move { corral.call_full("slow.test", "/fault/sleep?ms=1000").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Waits ~800 ms for the slot, then needs 1000 ms more: past its 1500 ms.
    let started = std::time::Instant::now();
    let (status, _, body) = corral.call_full("slow.test", "/fault/sleep?ms=1000").await;
    let elapsed = started.elapsed();
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        elapsed < Duration::from_millis(1800),
        "answered after {elapsed:?}"
    );
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn a_pooled_slot_reused_by_another_tenant_holds_nothing_of_the_last_one() {
    let dir = DataDir::new("leak");
    // One instance slot: the reader must land in the slot the writer just used.
    let corral = Corral::start(&dir, "[engine]\ninstances = 1\n");
    let mut hosts = Vec::new();
    for tenant in ["writer", "reader"] {
        let token = corral
            .create_tenant(tenant, &format!("{tenant}.test"))
            .await;
        let (status, body) = corral.deploy(tenant, &token, &guest("nn-probe"), &[]).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        hosts.push(format!("{tenant}.test"));
    }
    for round in 0..3 {
        let secret = format!("s{round}x9f3k");
        let (status, body) = corral
            .call(
                &hosts[0],
                "GET",
                &format!("/fault/write-secret?secret={secret}"),
                Vec::new(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}\n{}",
            String::from_utf8_lossy(&body),
            corral.log_text()
        );
        let written = json(&body);
        assert!(
            written["found_here"].as_u64().unwrap() > 100_000,
            "the scanner sees the writer's own copies: {written}"
        );
        let (status, body) = corral
            .call(
                &hosts[1],
                "GET",
                &format!("/fault/scan-secret?secret={secret}"),
                Vec::new(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let scanned = json(&body);
        assert!(
            scanned["found"].as_u64().unwrap() <= 4,
            "round {round}: the reader found the writer's secret: {scanned}"
        );
    }
}

/// Uploads that trickle one byte every couple of seconds hold no thread each: 600 of them at
/// once leave another tenant's inference answering and an operator's deploy succeeding, and
/// each is refused (`408 upload_too_slow`) once a rate window passes below the minimum,
/// leaving no file behind.
#[tokio::test]
async fn slow_uploads_hold_no_thread_and_starve_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const UPLOADS: usize = 600;
    let dir = DataDir::new("slow-uploads");
    let corral = Arc::new(Corral::start(&dir, ""));
    let slow = corral.create_tenant("slow", "slow.test").await;
    let healthy = corral.create_tenant("healthy", "healthy.test").await;
    let (status, body) = corral
        .deploy(
            "healthy",
            &healthy,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let head = format!(
        "POST /v1/tenants/slow/deployments HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {slow}\r\n\
         content-type: multipart/form-data; boundary=x\r\ncontent-length: 1000000\r\n\r\n\
         --x\r\ncontent-disposition: form-data; name=\"component\"; filename=\"c.wasm\"\r\n\r\n"
    );
    let mut uploads = Vec::new();
    for _ in 0..UPLOADS {
        let mut stream = tokio::net::TcpStream::connect(corral.admin).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        uploads.push(tokio::spawn(async move {
            // One byte every two seconds until the server answers.
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            answer.extend_from_slice(&buf[..n]);
                            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                                break;
                            }
                        }
                    },
                    _ = tick.tick() => {
                        let _ = stream.write_all(b"a").await;
                    }
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    // Every upload is being written (one temporary file each) ...
    let tmp = dir.data().join("tmp");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&tmp).unwrap().count() < UPLOADS {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "only {} of {UPLOADS} uploads started",
            std::fs::read_dir(&tmp).unwrap().count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... without a thread each, ...
    let threads = corral.threads();
    assert!(
        threads < 100,
        "{threads} server threads with {UPLOADS} uploads in progress"
    );
    // ... while another tenant's requests answer and an operator deploys.
    let mut answered = 0;
    while answered < 20 {
        let (status, body) = corral
            .call("healthy.test", "GET", "/case/add", Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        uploads.iter().all(|u| !u.is_finished()),
        "slow uploads were cut before their first rate window ended"
    );
    let token = corral.token.clone();
    let (status, body) = corral
        .deploy(
            "healthy",
            &token,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for upload in uploads {
        let answer = tokio::time::timeout(Duration::from_secs(30), upload)
            .await
            .expect("a slow upload is refused")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"upload_too_slow\""), "{answer}");
    }
    for _ in 0..50 {
        if std::fs::read_dir(&tmp).unwrap().count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "refused uploads left temporary files"
    );
    let (status, _) = corral
        .call("healthy.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
}
