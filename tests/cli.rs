//! The `corral` binary as a user runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
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
