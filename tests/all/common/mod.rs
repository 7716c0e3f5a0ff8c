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
