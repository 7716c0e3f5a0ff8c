//! Tenancy as users see it: the real `corral serve` binary on loopback, tenants created and
//! deployed through the admin API with real uploads, real components built from this
//! repository, real ONNX Runtime sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::serve::{Corral, DataDir, Part, multipart, raw_request};
use crate::common::*;
use hyper::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn two_tenants_are_isolated_by_host_token_and_model_names_and_share_identical_models() {
    let dir = DataDir::new("two-tenants");
    let corral = Corral::start(&dir, "");
    let alpha = corral.create_tenant("alpha", "alpha.test").await;
    let beta = corral.create_tenant("beta", "Beta.Test").await;

    let (status, body) = corral
        .deploy(
            "alpha",
            &alpha,
            &guest("image-classifier"),
            &[
                ("classifier", &example_model()),
                ("shared", &fixture("add.onnx")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    assert!(body["component"].as_str().unwrap().starts_with("sha256:"));
    let add_digest = body["models"]["shared"].clone();
    let (status, body) = corral
        .deploy(
            "beta",
            &beta,
            &guest("nn-probe"),
            &[
                ("add", &fixture("add.onnx")),
                ("secret", &fixture("identity_types.onnx")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["models"]["add"], add_digest, "same bytes, same digest");

    // Each host reaches its own tenant's component and models.
    let (status, body) = corral
        .call("alpha.test", "POST", "/", sample("dog.jpg"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["predictions"][0]["label"], "golden retriever");
    let (status, body) = corral
        .call("beta.test:8080", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["detail"]["sum"],
        json!([11.0, 22.0, 33.0, 44.0])
    );

    // HTTP/2 routes by :authority.
    let (status, body) = corral.call_h2("beta.test", "/case/add").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["detail"]["sum"],
        json!([11.0, 22.0, 33.0, 44.0])
    );

    // load-by-name sees only the caller's own deployment.
    let (_, body) = corral
        .call("beta.test", "GET", "/load/secret", Vec::new())
        .await;
    assert_eq!(json(&body)["ok"], true);
    let (_, body) = corral
        .call("beta.test", "GET", "/load/classifier", Vec::new())
        .await;
    let body = json(&body);
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["code"], "not-found");
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains("classifier, shared")
    );

    // The identical add.onnx of both tenants is one session: efficientnet, add, identity.
    assert_eq!(corral.metric("corral_model_sessions").await, 3.0);

    // Unknown host: 404 from the host; a tenant without a deployment: 503.
    let (status, body) = corral.call("nobody.test", "GET", "/", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["code"], "unknown_host");
    let gamma = corral.create_tenant("gamma", "gamma.test").await;
    let (status, body) = corral.call("gamma.test", "GET", "/", Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"]["code"], "no_active_deployment");

    // Tokens: a tenant's token reaches only its own tenant; operator routes need the operator.
    for (method, path) in [
        ("GET", "/v1/tenants/alpha"),
        ("GET", "/v1/tenants/alpha/deployments"),
        ("POST", "/v1/tenants/alpha/deployments/1/activate"),
        ("GET", "/v1/tenants"),
        ("DELETE", "/v1/tenants/alpha"),
        ("GET", "/v1/tenants/no-such-tenant"),
    ] {
        let (status, body) = corral.admin(method, path, Some(&beta), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, body) = corral.deploy("alpha", &beta, &guest("nn-probe"), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for token in [None, Some("corral_t_not-a-real-token")] {
        let (status, body) = corral.admin("GET", "/v1/tenants/beta", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, body) = corral
        .admin("GET", "/v1/tenants/beta/deployments", Some(&beta), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], 1);
    assert_eq!(body["deployments"][0]["active"], true);
    assert!(body["deployments"][0]["created"].as_u64().unwrap() > 1_700_000_000);
    let (status, body) = corral.operator("GET", "/v1/tenants", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);

    // A host belongs to one tenant; names are checked.
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/delta",
            json!({ "hosts": ["ALPHA.test."] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, body) = corral
        .operator("PUT", "/v1/tenants/Not_Valid", json!({ "hosts": [] }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_tenant");

    // A session lives while a deployment uses it: gamma's unique model adds one, deleting
    // gamma drops it.
    let (status, body) = corral
        .deploy(
            "gamma",
            &gamma,
            &guest("nn-probe"),
            &[("bool", &fixture("bool_output.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(corral.metric("corral_model_sessions").await, 4.0);
    let metrics = corral.metrics_text().await;
    assert!(metrics.contains("corral_requests_total{tenant=\"gamma\",status=\"503\"} 1\n"));
    let (status, _) = corral
        .operator("DELETE", "/v1/tenants/gamma", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = corral.call("gamma.test", "GET", "/", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(corral.metric("corral_model_sessions").await, 3.0);

    let metrics = corral.metrics_text().await;
    assert!(
        metrics.contains("corral_requests_total{tenant=\"alpha\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    // A deleted tenant's series are gone with it.
    assert!(!metrics.contains("tenant=\"gamma\""), "{metrics}");
    assert!(metrics.contains("corral_requests_total{tenant=\"\",status=\"404\"} 2\n"));
}

/// One bad upload: what is sent and the status and code it must get.
struct BadUpload {
    what: &'static str,
    tenant: &'static str,
    parts: Vec<Part>,
    content_type: Option<&'static str>,
    status: StatusCode,
    code: &'static str,
}

#[tokio::test]
async fn invalid_uploads_are_refused_with_their_code_and_change_nothing() {
    let dir = DataDir::new("bad-uploads");
    // Room for the real uploads below (nn-probe + add.onnx), not for a 3 MB one.
    let corral = Corral::start(&dir, "max_upload_bytes = 2_500_000\n");
    let token = corral.create_tenant("acme", "acme.test").await;
    let add = || Part::file("model.add", &fixture("add.onnx"));
    let (status, body) = corral
        .admin(
            "POST",
            "/v1/tenants/acme/deployments",
            Some(&token),
            Some(multipart(&[
                Part::file("component", &guest("nn-probe")),
                add(),
            ])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let wat = |text: &str| wat::parse_str(text).unwrap();
    let cases = vec![
        BadUpload {
            what: "not WebAssembly",
            tenant: "acme",
            parts: vec![
                Part::bytes("component", "app.wasm", b"hello".to_vec()),
                add(),
            ],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_component",
        },
        BadUpload {
            what: "a core module",
            tenant: "acme",
            parts: vec![Part::bytes("component", "app.wasm", wat("(module)"))],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_component",
        },
        BadUpload {
            what: "no incoming-handler export",
            tenant: "acme",
            parts: vec![Part::bytes("component", "app.wasm", wat("(component)"))],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "missing_export",
        },
        BadUpload {
            what: "an import Corral does not provide",
            tenant: "acme",
            parts: vec![Part::bytes(
                "component",
                "app.wasm",
                wat(
                    r#"(component (import "acme:missing/thing" (instance (export "hello" (func)))))"#,
                ),
            )],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "unsatisfied_import",
        },
        BadUpload {
            what: "a model ONNX Runtime cannot load",
            tenant: "acme",
            parts: vec![
                Part::file("component", &guest("nn-probe")),
                Part::bytes("model.add", "add.onnx", b"\x08\x07garbage".to_vec()),
            ],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_model",
        },
        BadUpload {
            what: "a custom op (needs a library Corral never loads)",
            tenant: "acme",
            parts: vec![
                Part::file("component", &guest("nn-probe")),
                Part::file("model.add", &fixture("custom_op.onnx")),
            ],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_model",
        },
        BadUpload {
            what: "external data",
            tenant: "acme",
            parts: vec![
                Part::file("component", &guest("nn-probe")),
                Part::file("model.add", &fixture("external_data.onnx")),
            ],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "external_data",
        },
        BadUpload {
            what: "a model of unknown format",
            tenant: "acme",
            parts: vec![
                Part::file("component", &guest("nn-probe")),
                Part::bytes(
                    "model.add",
                    "add.bin",
                    std::fs::read(fixture("add.onnx")).unwrap(),
                ),
            ],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "unknown_format",
        },
        BadUpload {
            what: "no component and no model",
            tenant: "acme",
            parts: vec![],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "missing_component",
        },
        BadUpload {
            what: "not multipart",
            tenant: "acme",
            parts: vec![],
            content_type: Some("application/json"),
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
        },
        BadUpload {
            what: "unknown tenant",
            tenant: "nobody",
            parts: vec![Part::file("component", &guest("nn-probe"))],
            content_type: None,
            status: StatusCode::NOT_FOUND,
            code: "not_found",
        },
    ];
    for case in cases {
        let (content_type, body) = multipart(&case.parts);
        let content_type = case.content_type.map_or(content_type, str::to_owned);
        let path = format!("/v1/tenants/{}/deployments", case.tenant);
        let (status, answer) = corral
            .admin(
                "POST",
                &path,
                Some(&corral.token),
                Some((content_type, body)),
            )
            .await;
        assert_eq!(status, case.status, "{}: {answer}", case.what);
        assert_eq!(
            answer["error"]["code"], case.code,
            "{}: {answer}",
            case.what
        );
        assert!(
            !answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{}: the error says what is wrong",
            case.what
        );
        // Nothing changed: version 1 is still the only one and still serves.
        let (status, list) = corral
            .admin("GET", "/v1/tenants/acme/deployments", Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["active"], 1, "{}", case.what);
        assert_eq!(
            list["deployments"].as_array().unwrap().len(),
            1,
            "{}",
            case.what
        );
        let (status, body) = corral
            .call("acme.test", "GET", "/case/add", Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK, "{}", case.what);
        assert_eq!(json(&body)["ok"], true);
    }
    let tmp = std::fs::read_dir(dir.data().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no temporary file is left behind");

    // An upload declared larger than the limit is refused before a byte of it is read.
    let head = format!(
        "POST /v1/tenants/acme/deployments HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {token}\r\n\
         content-type: multipart/form-data; boundary=x\r\ncontent-length: 3000000\r\n\r\n"
    );
    let response = raw_request(corral.admin, &head).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"upload_too_large\""), "{response}");

    // A `format.NAME` part names the format when the file name does not; an unknown one is
    // refused.
    let add_bytes = || std::fs::read(fixture("add.onnx")).unwrap();
    let upload = |format: &str| {
        multipart(&[
            Part::file("component", &guest("nn-probe")),
            Part::bytes("model.add", "weights.bin", add_bytes()),
            Part {
                name: "format.add".into(),
                file_name: None,
                bytes: format.as_bytes().to_vec(),
            },
        ])
    };
    let path = "/v1/tenants/acme/deployments";
    let (status, body) = corral
        .admin("POST", path, Some(&token), Some(upload("tflite")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_format");
    let (status, body) = corral
        .admin("POST", path, Some(&token), Some(upload("onnx")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["formats"]["add"], "onnx");
}

#[tokio::test]
async fn restarts_and_a_crash_mid_upload_keep_the_active_deployment() {
    let dir = DataDir::new("restart");
    let corral = Corral::start(&dir, "");
    let token = corral.create_tenant("acme", "acme.test").await;
    let (status, body) = corral
        .deploy(
            "acme",
            &token,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Start a second upload, send half of it, and SIGKILL the server mid-stream.
    let (content_type, body) = multipart(&[
        Part::file("component", &guest("nn-probe")),
        Part::file("model.classifier", &example_model()),
    ]);
    let mut stream = tokio::net::TcpStream::connect(corral.admin).await.unwrap();
    let head = format!(
        "POST /v1/tenants/acme/deployments HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {token}\r\n\
         content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    let tmp = dir.data().join("tmp");
    for _ in 0..100 {
        if std::fs::read_dir(&tmp).unwrap().count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        std::fs::read_dir(&tmp).unwrap().count() > 0,
        "the upload was being written"
    );
    corral.kill();
    drop(stream);

    // The restarted server serves version 1, knows no version 2, and cleared the partial file.
    let corral = Corral::start(&dir, "");
    let (status, body) = corral
        .call("acme.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["detail"]["sum"],
        json!([11.0, 22.0, 33.0, 44.0])
    );
    let (_, list) = corral
        .admin("GET", "/v1/tenants/acme/deployments", Some(&token), None)
        .await;
    assert_eq!(list["active"], 1);
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(
        corral
            .log_text()
            .contains("compiled component loaded from cache"),
        "a restart does not recompile:\n{}",
        corral.log_text()
    );

    // The tenant token survives the restart (only its hash is stored) and deploys work on.
    let (status, body) = corral
        .deploy(
            "acme",
            &token,
            &guest("nn-probe"),
            &[
                ("add", &fixture("add.onnx")),
                ("extra", &fixture("bool_output.onnx")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 2);
    let record = std::fs::read_to_string(dir.data().join("tenants/acme/tenant.json")).unwrap();
    assert!(
        !record.contains(&token),
        "the token is stored only as a hash"
    );
    corral.kill();
    let corral = Corral::start(&dir, "");
    let (_, body) = corral
        .call("acme.test", "GET", "/load/extra", Vec::new())
        .await;
    assert_eq!(
        json(&body)["ok"],
        true,
        "version 2 is active after a restart"
    );
}

#[tokio::test]
async fn deploying_and_rolling_back_under_load_loses_no_request() {
    let dir = DataDir::new("rollback");
    let corral = Arc::new(Corral::start(&dir, ""));
    let token = corral.create_tenant("acme", "acme.test").await;
    let v1: &[(&str, &std::path::Path)] = &[("add", &fixture("add.onnx"))];
    let (status, body) = corral.deploy("acme", &token, &guest("nn-probe"), v1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (corral, stop, ok, failed) = (corral.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = corral
                    .call("acme.test", "GET", "/case/add", Vec::new())
                    .await;
                if status == StatusCode::OK && json(&body)["ok"] == true {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {status} {}", String::from_utf8_lossy(&body));
                }
            }
        }));
    }
    let extra = fixture("bool_output.onnx");
    let v2: &[(&str, &std::path::Path)] = &[("add", &fixture("add.onnx")), ("extra", &extra)];
    let loaded = |corral: Arc<Corral>| async move {
        let (_, body) = corral
            .call("acme.test", "GET", "/load/extra", Vec::new())
            .await;
        json(&body)["ok"] == true
    };
    let (status, body) = corral.deploy("acme", &token, &guest("nn-probe"), v2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(loaded(corral.clone()).await, "version 2 serves");
    for (version, has_extra) in [(1, false), (2, true), (1, false)] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = corral
            .admin(
                "POST",
                &format!("/v1/tenants/acme/deployments/{version}/activate"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            loaded(corral.clone()).await,
            has_extra,
            "version {version} serves"
        );
    }
    let (status, body) = corral
        .admin(
            "POST",
            "/v1/tenants/acme/deployments/9/activate",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok >= 20, "the clients kept sending ({ok} requests)");
}

/// Whether the data directory holds the blob of `bytes`.
fn has_blob(dir: &DataDir, bytes: &[u8]) -> bool {
    let digest = corral::Digest::of(bytes);
    dir.data().join("blobs/sha256").join(digest.hex()).is_file()
}

/// Waits (a little) for the blob of `bytes` to be collected; whether it was.
async fn collected(dir: &DataDir, bytes: &[u8]) -> bool {
    for _ in 0..100 {
        if !has_blob(dir, bytes) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Deploys the probe with `model` as `add` for `tenant`.
async fn deploy_probe(
    corral: &Corral,
    tenant: &str,
    token: &str,
    model: &[u8],
) -> (StatusCode, serde_json::Value) {
    let upload = multipart(&[
        Part::file("component", &guest("nn-probe")),
        Part::bytes("model.add", "add.onnx", model.to_vec()),
    ]);
    let path = format!("/v1/tenants/{tenant}/deployments");
    corral.admin("POST", &path, Some(token), Some(upload)).await
}

/// Disk has an owner: a refused upload leaves no blob, deployments beyond `keep_deployments`
/// and deleted ones are collected with the blobs only they used, a deleted tenant's blobs go
/// (never one another tenant still uses), blobs a crash orphaned go at the next start, and a
/// tenant's storage is bounded by `limits.storage_bytes` (`507`).
#[tokio::test]
async fn disk_has_an_owner() {
    let dir = DataDir::new("disk-owner");
    let config = "[store]\nkeep_deployments = 2\n";
    let corral = Corral::start(&dir, config);
    let acme = corral.create_tenant("acme", "acme.test").await;
    let other = corral.create_tenant("other", "other.test").await;
    let component = std::fs::read(guest("nn-probe")).unwrap();
    let model = |name: &str| std::fs::read(fixture(name)).unwrap();
    let (add, reshape, identity) = (
        model("add.onnx"),
        model("reshape.onnx"),
        model("identity_types.onnx"),
    );

    // A refused upload leaves nothing behind.
    let garbage = b"\x08\x07 not a model, refused at upload".to_vec();
    let (status, body) = deploy_probe(&corral, "acme", &acme, &garbage).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        collected(&dir, &garbage).await,
        "the refused model's blob stays"
    );
    assert!(
        collected(&dir, &component).await,
        "the refused upload's component stays"
    );

    // Three versions, two kept: the oldest goes with the model only it used.
    for (version, bytes) in [(1, &add), (2, &reshape), (3, &identity)] {
        let (status, body) = deploy_probe(&corral, "acme", &acme, bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["version"], version);
    }
    let (_, list) = corral
        .admin("GET", "/v1/tenants/acme/deployments", Some(&acme), None)
        .await;
    let versions: Vec<u64> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3], "{list}");
    assert!(collected(&dir, &add).await, "version 1's model stays");
    assert!(has_blob(&dir, &reshape) && has_blob(&dir, &identity) && has_blob(&dir, &component));

    // A deployment is deleted on request, never the active one.
    let (status, body) = corral
        .admin(
            "DELETE",
            "/v1/tenants/acme/deployments/3",
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = corral
        .admin(
            "DELETE",
            "/v1/tenants/acme/deployments/2",
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(collected(&dir, &reshape).await, "version 2's model stays");

    // The quota counts what the deployments hold plus the upload: one more probe does not fit.
    let used = (component.len() + identity.len()) as u64;
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/acme",
            json!({ "limits": { "storage_bytes": used + 1000 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = deploy_probe(&corral, "acme", &acme, &add).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "storage_quota_exceeded", "{body}");
    assert!(collected(&dir, &add).await);
    let (_, list) = corral
        .admin("GET", "/v1/tenants/acme/deployments", Some(&acme), None)
        .await;
    assert_eq!(list["active"], 3, "a refused upload changes nothing");

    // Deleting a tenant removes its blobs, but not the component another tenant still uses.
    let (status, body) = deploy_probe(&corral, "other", &other, &add).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = corral
        .operator("DELETE", "/v1/tenants/acme", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        collected(&dir, &identity).await,
        "the deleted tenant's model stays"
    );
    assert!(has_blob(&dir, &component) && has_blob(&dir, &add));

    // A blob a crash orphaned (here: written while the server is down) goes at the next start.
    corral.kill();
    let orphan = b"an orphaned blob".to_vec();
    std::fs::write(
        dir.data()
            .join("blobs/sha256")
            .join(corral::Digest::of(&orphan).hex()),
        &orphan,
    )
    .unwrap();
    let corral = Corral::start(&dir, config);
    assert!(!has_blob(&dir, &orphan), "the orphan survived a restart");
    assert!(has_blob(&dir, &component) && has_blob(&dir, &add));
    let (status, _) = corral
        .call("other.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Deploys being validated are bounded across the process: with one slot, uploads that
/// arrive while another validates get `503 deploys_busy` with `Retry-After`, and nothing of
/// theirs is kept.
#[tokio::test]
async fn deploys_beyond_the_slots_are_busy() {
    let dir = DataDir::new("deploy-slots");
    let corral = Arc::new(Corral::start(&dir, "[store]\nconcurrent_deploys = 1\n"));
    let token = corral.create_tenant("vision", "vision.test").await;
    let mut deploys = Vec::new();
    for _ in 0..6 {
        let corral = Arc::clone(&corral);
        let token = token.clone();
        deploys.push(tokio::spawn(async move {
            let (content_type, body) = multipart(&[
                Part::file("component", &guest("image-classifier")),
                Part::file("model.classifier", &example_model()),
            ]);
            let headers = [
                ("authorization", format!("Bearer {token}")),
                ("content-type", content_type),
            ];
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            crate::common::serve::send_full(
                corral.admin,
                "POST",
                "/v1/tenants/vision/deployments",
                "admin",
                &headers,
                body,
            )
            .await
        }));
    }
    let (mut created, mut busy) = (0, 0);
    for deploy in deploys {
        let (status, headers, body) = deploy.await.unwrap();
        let body = String::from_utf8_lossy(&body);
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("\"deploys_busy\""), "{body}");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(created >= 1 && busy >= 1, "{created} created, {busy} busy");
    let (_, list) = corral
        .admin("GET", "/v1/tenants/vision/deployments", Some(&token), None)
        .await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), created);
}

/// After a restart, a tenant whose deployment cannot be built answers `503
/// deployment_unavailable` with the reason in its status, while every other tenant serves;
/// a new deploy brings it back.
#[tokio::test]
async fn a_deployment_that_cannot_be_restored_holds_up_no_other_tenant() {
    let dir = DataDir::new("restore");
    let corral = Corral::start(&dir, "");
    let good = corral.create_tenant("good", "good.test").await;
    let broken = corral.create_tenant("broken", "broken.test").await;
    let add = std::fs::read(fixture("add.onnx")).unwrap();
    let reshape = std::fs::read(fixture("reshape.onnx")).unwrap();
    for (tenant, token, model) in [("good", &good, &add), ("broken", &broken, &reshape)] {
        let (status, body) = deploy_probe(&corral, tenant, token, model).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    corral.kill();
    // The broken tenant's model is damaged on disk while the server is down.
    let blob = dir
        .data()
        .join("blobs/sha256")
        .join(corral::Digest::of(&reshape).hex());
    std::fs::write(&blob, b"damaged").unwrap();

    let corral = Corral::start(&dir, "");
    let (status, _) = corral
        .call("good.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = corral.call("broken.test", "GET", "/", Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = json(&body);
    assert_eq!(body["error"]["code"], "deployment_unavailable", "{body}");
    assert!(
        !body.to_string().contains(&blob.display().to_string()),
        "end users never see server paths: {body}"
    );
    let (_, tenant) = corral
        .admin("GET", "/v1/tenants/broken", Some(&broken), None)
        .await;
    assert_eq!(tenant["status"]["state"], "unavailable", "{tenant}");
    assert!(
        tenant["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{tenant}"
    );
    let (_, tenant) = corral
        .admin("GET", "/v1/tenants/good", Some(&good), None)
        .await;
    assert_eq!(tenant["status"]["state"], "serving", "{tenant}");

    // A new upload of the model brings the tenant back.
    std::fs::remove_file(&blob).unwrap();
    let (status, body) = deploy_probe(&corral, "broken", &broken, &add).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = corral
        .call("broken.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, tenant) = corral
        .admin("GET", "/v1/tenants/broken", Some(&broken), None)
        .await;
    assert_eq!(tenant["status"]["state"], "serving", "{tenant}");
}
