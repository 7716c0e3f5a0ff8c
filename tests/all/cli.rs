//! The `corral` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;
use hyper::StatusCode;

fn corral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corral"))
}

#[tokio::test]
async fn corral_run_serves_the_example_and_prints_its_address() {
    let mut child = corral()
        .arg("run")
        .arg(guest("image-classifier"))
        .arg("--model")
        .arg(format!("classifier={}", example_model().display()))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("corral starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split(" on http://").nth(1) {
            addr = Some(rest.trim().parse().expect("address"));
            break;
        }
    }
    let addr = addr.expect("corral prints the address it serves on");
    let (status, body) = request(addr, "POST", "/", sample("dog.jpg")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["predictions"][0]["index"], 207);
}

#[test]
fn a_missing_onnx_runtime_library_names_the_fix() {
    let output = corral()
        .arg("run")
        .arg(guest("image-classifier"))
        .arg("--model")
        .arg(format!("classifier={}", example_model().display()))
        .args(["--listen", "127.0.0.1:0"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("corral runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ORT_DYLIB_PATH") && stderr.contains("/nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
}

#[test]
fn a_bad_model_flag_names_the_flag() {
    let output = corral()
        .args(["run", "x.wasm", "--model", "classifier"])
        .output()
        .expect("corral runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--model") && stderr.contains("NAME=PATH"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_a_component_names_the_file() {
    let output = corral()
        .arg("run")
        .arg(fixture("add.onnx"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("corral runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("add.onnx") && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );
}

/// The README's multi-tenant walk-through, with the real CLI against a real `corral serve`.
#[tokio::test]
async fn the_cli_creates_tenants_deploys_lists_and_rolls_back() {
    use crate::common::serve::{Corral, DataDir};
    let dir = DataDir::new("cli");
    let server = Corral::start(&dir, "");
    let cli = |args: &[&str], token: &str| {
        let output = corral()
            .args(args)
            .env("CORRAL_SERVER", format!("http://{}", server.admin))
            .env("CORRAL_TOKEN", token)
            .output()
            .expect("corral runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let operator = server.token.clone();

    let (ok, out, err) = cli(
        &["tenant", "create", "acme", "--host", "acme.test"],
        &operator,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("created tenant 'acme' (hosts: acme.test)"),
        "{out}"
    );
    let tenant_token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the token is printed")
        .to_owned();

    // The tenant's own token deploys twice and rolls back.
    let model = format!("add={}", fixture("add.onnx").display());
    let probe = guest("nn-probe");
    let component = probe.to_str().unwrap();
    for version in ["1", "2"] {
        let (ok, out, err) = cli(
            &["deploy", "--tenant", "acme", component, "--model", &model],
            &tenant_token,
        );
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("deployed 'acme' version {version} (active)")),
            "{out}"
        );
        assert!(out.contains("model add sha256:"), "{out}");
        let url = format!("call it: curl http://acme.test:{}/", server.data.port());
        assert!(out.contains(&url), "{out}");
    }
    let (ok, out, err) = cli(&["rollback", "acme", "1"], &tenant_token);
    assert!(ok, "{err}");
    assert!(out.contains("version 1 is active"), "{out}");
    let (ok, out, _) = cli(&["deployments", "acme"], &tenant_token);
    assert!(ok);
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("VERSION") && rows.len() == 3, "{out}");
    assert!(rows[1].starts_with("1        *"), "{out}");
    let (ok, out, _) = cli(&["deployments", "acme", "--json"], &tenant_token);
    assert!(ok);
    let listed = json(out.as_bytes());
    assert_eq!(listed["active"], 1);
    let (status, body) = server
        .call("acme.test", "GET", "/case/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));

    // Errors name what is wrong: a tenant token on an operator command, a missing file,
    // a model flag with an unknown format, no token at all.
    let (ok, _, err) = cli(&["tenant", "list"], &tenant_token);
    assert!(
        !ok && err.contains("403") && err.contains("forbidden"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &["deploy", "--tenant", "acme", "missing.wasm"],
        &tenant_token,
    );
    assert!(!ok && err.contains("missing.wasm"), "{err}");
    let (ok, _, err) = cli(
        &[
            "deploy",
            "--tenant",
            "acme",
            component,
            "--model",
            "m=weights.bin",
        ],
        &tenant_token,
    );
    assert!(
        !ok && err.contains("--model m=weights.bin") && err.contains("*.onnx"),
        "{err}"
    );
    let (ok, _, err) = cli(&["tenant", "list"], "");
    assert!(!ok && err.contains("CORRAL_TOKEN"), "{err}");
    let (ok, _, err) = cli(&["deploy", "--tenant", "acme"], &tenant_token);
    assert!(!ok && err.contains("--model NAME=PATH"), "{err}");

    // Models alone: the built-in inference component serves them (Open Inference Protocol).
    let (ok, out, err) = cli(
        &["deploy", "--tenant", "acme", "--model", &model],
        &tenant_token,
    );
    assert!(ok, "{err}");
    assert!(out.contains("deployed 'acme' version 3 (active)"), "{out}");
    let (status, body) = server
        .call("acme.test", "GET", "/v2/models/add", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["outputs"][0]["name"], "sum");
    let (ok, out, _) = cli(&["tenant", "list"], &operator);
    assert!(ok && out.contains("acme    3       acme.test"), "{out}");
}

/// `corral new` → `cargo build --release` → `corral run` → a request: the scaffold works as
/// its README says.
#[tokio::test]
async fn corral_new_scaffolds_a_project_that_builds_and_serves() {
    use crate::common::serve::DataDir;
    let dir = DataDir::new("new");
    let project = dir.0.join("my-service");
    let output = corral()
        .args(["new", "my-service", "--dir"])
        .arg(&project)
        .arg("--sdk")
        .arg(repo().join("guest-sdk"))
        .output()
        .expect("corral runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("cargo build --release"));
    assert!(project.join("README.md").is_file());

    // Build it as its README says, sharing the guests' target directory (same profile) and
    // the examples' dependency versions (no fresh resolution against the registry).
    std::fs::copy(
        repo().join("examples/Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .unwrap();
    let guests = guest("nn-probe");
    let target = guests
        .ancestors()
        .nth(3)
        .expect("<target>/guests")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--release", "--target-dir"])
        .arg(&target)
        .current_dir(&project)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let component = target.join("wasm32-wasip2/release/my-service.wasm");
    assert!(component.is_file());

    let mut child = corral()
        .arg("run")
        .arg(&component)
        .arg("--model")
        .arg(format!("model={}", fixture("add.onnx").display()))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("corral starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let addr = stdout
        .lines()
        .find_map(|line| {
            line.ok()?
                .split(" on http://")
                .nth(1)?
                .trim()
                .parse::<std::net::SocketAddr>()
                .ok()
        })
        .expect("corral prints its address");
    let body = serde_json::json!({ "inputs": {
        "a": { "shape": [2, 2], "data": [1, 2, 3, 4] },
        "b": { "shape": [2, 2], "data": [10, 20, 30, 40] },
    }});
    let (status, answer) = request(addr, "POST", "/", body.to_string().into_bytes()).await;
    // A wrong input name is the model's error, answered 422 with the wasi:nn code.
    let wrong = serde_json::json!({ "inputs": { "c": { "shape": [2, 2], "data": [1, 2, 3, 4] } } });
    let (wrong_status, wrong_answer) =
        request(addr, "POST", "/", wrong.to_string().into_bytes()).await;
    let (bad_status, bad_answer) = request(addr, "POST", "/", b"{\"inputs\": 3}".to_vec()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        json(&answer)["outputs"]["sum"]["data"],
        serde_json::json!([11.0, 22.0, 33.0, 44.0])
    );
    assert_eq!(wrong_status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(&wrong_answer)["error"]["code"], "invalid-argument");
    assert!(
        json(&wrong_answer)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'c'"),
        "{}",
        String::from_utf8_lossy(&wrong_answer)
    );
    assert_eq!(bad_status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&bad_answer)["error"]["code"], "invalid_json");
}
