//! Shared helpers for the whole-system tests: real components built from this repository
//! (`cargo xtask build-guests`), real ONNX Runtime sessions, a real HTTP client on loopback.
#![allow(dead_code)]

pub mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use corral::config::EngineSettings;
use corral::dev::{DevOptions, DevServer};
use corral::limits::Limits;
use hyper::StatusCode;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repository")
        .to_path_buf()
}

/// A component built by `cargo xtask build-guests` (which `cargo xtask test` runs first).
pub fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("CORRAL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/guests/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test` (it builds the guest components), \
         or run `cargo xtask build-guests` first",
        path.display()
    );
    path
}

pub fn example_model() -> PathBuf {
    repo().join("examples/image-classifier/model/efficientnet-lite0.onnx")
}

/// The Python of the tests' environment (`cargo xtask setup` makes it: tritonclient, Pillow,
/// onnxruntime, ...), or `None` where it is missing outside CI (the test then skips). Under
/// `CI=true` a missing environment fails the test.
pub fn test_python() -> Option<PathBuf> {
    let env = std::env::var_os("CORRAL_PYTHON_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".corral/python-env"));
    let python = env.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the tests' Python environment is missing from {}: run `cargo xtask setup`",
        env.display()
    );
    eprintln!("skipping: no Python environment for the tests (`cargo xtask setup`)");
    None
}

/// Runs `python` on `script` (under `tests/python/`) with `args`; its stdout, or a failure
/// naming what it printed.
pub fn run_python(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new(python)
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("examples/image-classifier/samples").join(name))
        .expect("sample image")
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// A server started once per test binary on its own runtime, so that every test (each with its
/// own `#[tokio::test]` runtime) can reach it.
pub struct Shared {
    pub addr: SocketAddr,
    pub server: &'static DevServer,
}

pub fn start_shared(
    cell: &'static OnceLock<Shared>,
    options: impl FnOnce() -> DevOptions,
) -> &'static Shared {
    cell.get_or_init(|| {
        let options = options();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = DevServer::start(options).await;
                match server {
                    Ok(server) => {
                        let server: &'static DevServer = Box::leak(Box::new(server));
                        sender.send(Ok(server)).expect("test is waiting");
                        std::future::pending::<()>().await;
                    }
                    Err(e) => sender.send(Err(format!("{e:#}"))).expect("test is waiting"),
                }
            });
        });
        let server = receiver
            .recv()
            .expect("server thread answers")
            .expect("server starts");
        Shared {
            addr: server.addr(),
            server,
        }
    })
}

pub fn dev_options(component: &str, models: &[(&str, PathBuf)]) -> DevOptions {
    DevOptions {
        component: guest(component),
        models: models
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect(),
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineSettings::default(),
        limits: Limits::default(),
        inherit_stdio: false,
        runs: None,
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    serve::send(addr, method, path, &addr.to_string(), &[], body).await
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}
