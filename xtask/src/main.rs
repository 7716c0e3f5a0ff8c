//! Project tasks: `cargo xtask <setup | build-guests | demo | test | bench>`.
//!
//! - `setup`: installs what a fresh machine lacks: the `wasm32-wasip2` target, the ONNX
//!   Runtime library (from the PyPI `onnxruntime` wheel, into `.corral/onnxruntime/`), the
//!   text-embedding model, and the Python and JavaScript component toolchains. `setup --gpu`
//!   installs ONNX Runtime's GPU build instead (`onnxruntime-gpu`, into
//!   `.corral/onnxruntime-gpu/`, with NVIDIA's CUDA 13 and cuDNN 9 libraries in `nvidia/`).
//! - `build-guests`: builds the example and test components (release, wasm32-wasip2).
//! - `demo`: setup + build, starts `corral run` on the image classifier, classifies the sample
//!   image and prints the predictions.
//! - `test`: setup + build, then `cargo test --workspace --features corral/torch` with
//!   `LIBTORCH` pointing at the installed libtorch (extra arguments are passed on), then the
//!   Python client's tests (pytest, `clients/python/tests`) against the `corral` it built.
//! - `pytest [args]`: those Python tests alone.
//! - `bench [--quick | --report | --cluster | --preprocess | --only SCENARIO..]`: every side-by-side
//!   benchmark, written to `docs/benchmarks.md`
//!   (`--quick`: a few minutes, written under the target directory instead); see `bench/mod.rs`.

mod bench;
mod setup;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use setup::{libtorch_dir, setup};

const GUEST_WORKSPACES: [&str; 3] = ["examples", "tests/guests", "host/builtins"];

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") if args.get(1).map(String::as_str) == Some("--gpu") => setup::setup_gpu(),
        Some("setup") => setup(),
        Some("build-guests") => build_guests(),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("pytest") => pytest(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        _ => {
            Err("usage: cargo xtask <setup [--gpu] | build-guests | demo | test [cargo test args] | pytest [pytest args] | bench [--quick | --report | --cluster | --preprocess | --only SCENARIO..]>".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

fn run(command: &mut Command) -> Result {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Where the ONNX Runtime library is installed (the host looks here too).
fn ort_library() -> PathBuf {
    root().join(".corral/onnxruntime/libonnxruntime.so")
}

/// The JavaScript example's folder: its package.json pins jco and componentize-js.
fn js_example() -> PathBuf {
    root().join("examples/js-sum")
}

/// Builds `examples/js-sum` with `jco componentize` (its `npm run build`) into the guests'
/// output folder, unless the component is newer than its sources.
fn build_js_guest() -> Result {
    let dir = js_example();
    let output = guest_dir().join("js-sum.wasm");
    let sources = [
        dir.join("app.js"),
        dir.join("build.mjs"),
        dir.join("wit/world.wit"),
        dir.join("package-lock.json"),
    ];
    if is_newer_than(&output, &sources) {
        return Ok(());
    }
    if !dir.join("node_modules/.bin/jco").exists() {
        return Err("jco is missing: run `cargo xtask setup` first".into());
    }
    std::fs::create_dir_all(guest_dir()).map_err(|e| e.to_string())?;
    eprintln!("xtask: building examples/js-sum with jco componentize");
    run(Command::new("node")
        .current_dir(&dir)
        .arg("build.mjs")
        .arg(&output))
}

/// Whether `output` exists and was written after every one of `sources`.
fn is_newer_than(output: &Path, sources: &[PathBuf]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(output) else {
        return false;
    };
    sources
        .iter()
        .all(|source| modified(source).is_some_and(|changed| built > changed))
}

/// Builds `examples/python-sum` with componentize-py into the guests' output folder, unless
/// the component is newer than its sources.
fn build_python_guest() -> Result {
    let output = guest_dir().join("python-sum.wasm");
    let sources = [
        root().join("examples/python-sum/app.py"),
        root().join("wit/world.wit"),
        root().join("wit/models.wit"),
    ];
    if is_newer_than(&output, &sources) {
        return Ok(());
    }
    if !root()
        .join(".corral/componentize-py/componentize_py/__init__.py")
        .is_file()
    {
        return Err("componentize-py is missing: run `cargo xtask setup` first".into());
    }
    std::fs::create_dir_all(guest_dir()).map_err(|e| e.to_string())?;
    eprintln!("xtask: building examples/python-sum with componentize-py");
    run(Command::new("python3")
        .env("PYTHONPATH", root().join(".corral/componentize-py"))
        .args([
            "-c",
            "import sys; from componentize_py import script; \
             sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ])
        .arg("-d")
        .arg(root().join("wit"))
        .args(["-w", "corral:service/service", "componentize", "-p"])
        .arg(root().join("examples/python-sum"))
        .arg("app")
        .arg("-o")
        .arg(&output))
}

/// The cargo target directory: `CARGO_TARGET_DIR` if set, else `target/` in the repository.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn guest_dir() -> PathBuf {
    target_dir().join("guests/wasm32-wasip2/release")
}

fn build_guests() -> Result {
    for workspace in GUEST_WORKSPACES {
        // Run from inside the workspace so its .cargo/config.toml (build.target) applies.
        run(cargo()
            .current_dir(root().join(workspace))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(target_dir().join("guests"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"))?;
    }
    build_python_guest()?;
    build_js_guest()
}

fn test(extra: &[String]) -> Result {
    setup()?;
    build_guests()?;
    run(cargo()
        .current_dir(root())
        .args(["test", "--workspace", "--features", "corral/torch"])
        .args(extra)
        .env("LIBTORCH", libtorch_dir())
        .env("CORRAL_GUEST_DIR", guest_dir())
        .env("ORT_DYLIB_PATH", ort_library()))?;
    // The tests above built target/debug/corral (with the torch feature).
    python_tests(&[])
}

/// `cargo xtask pytest [pytest args]`: the Python client's tests alone, against a fresh build.
fn pytest(extra: &[String]) -> Result {
    setup()?;
    build_guests()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--package", "corral", "--features", "torch"])
        .env("LIBTORCH", libtorch_dir()))?;
    python_tests(extra)
}

/// Installs `clients/python` into the tests' Python environment (as `pip install
/// ./clients/python` does) and runs its tests with pytest against `target/debug/corral`.
fn python_tests(extra: &[String]) -> Result {
    let python = setup::python();
    run(setup::pip_install(&python)
        .args(["--no-deps", "--no-build-isolation"])
        .arg(root().join("clients/python")))?;
    // Typed, as it says (py.typed): mypy --strict, from its pyproject.toml.
    run(Command::new(&python)
        .current_dir(root().join("clients/python"))
        .args(["-m", "mypy", "--no-incremental", "src"]))?;
    run(Command::new(&python)
        .current_dir(root().join("clients/python"))
        .args(["-m", "pytest", "-p", "no:cacheprovider", "tests"])
        .args(extra)
        .env("CORRAL_BIN", target_dir().join("debug/corral"))
        .env("ORT_DYLIB_PATH", ort_library()))
}

fn demo() -> Result {
    setup()?;
    build_guests()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--package", "corral"]))?;
    let corral = target_dir().join("debug/corral");
    let example = root().join("examples/image-classifier");
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("valid address");
    let mut server = Command::new(&corral)
        .arg("run")
        .arg(guest_dir().join("image-classifier.wasm"))
        .arg("--model")
        .arg(format!(
            "classifier={}",
            example.join("model/efficientnet-lite0.onnx").display()
        ))
        .arg("--listen")
        .arg(addr.to_string())
        .env("ORT_DYLIB_PATH", ort_library())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", corral.display()))?;
    let result = classify_sample(addr, &example.join("samples/dog.jpg"));
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn classify_sample(addr: SocketAddr, image: &Path) -> Result {
    let body = std::fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "corral did not start listening on {addr} within 120 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut timings = Vec::new();
    let mut response = String::new();
    for _ in 0..5 {
        let started = Instant::now();
        response = post(addr, &body)?;
        timings.push(started.elapsed());
    }
    let first = timings[0];
    let (head, body_text) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let json = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body_text)
    } else {
        body_text.to_owned()
    };
    println!(
        "\nPOST {} ({} bytes) -> {}",
        image.display(),
        body.len(),
        head.lines().next().unwrap_or("")
    );
    println!("{}", json.replace("[{", "[\n  {").replace("},{", "},\n  {"));
    timings.sort();
    println!(
        "latency over {} requests: first {:.1} ms, median {:.1} ms",
        timings.len(),
        first.as_secs_f64() * 1e3,
        timings[timings.len() / 2].as_secs_f64() * 1e3
    );
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err("the demo request did not succeed".into())
    }
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body.
fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        text = after.trim_start_matches("\r\n");
    }
    out
}

/// One HTTP/1.1 POST over a plain socket.
fn post(addr: SocketAddr, body: &[u8]) -> Result<String> {
    post_to(addr, &addr.to_string(), "/", body)
}

/// One HTTP/1.1 POST of `body` to `path` with a `Host` header, on a new connection.
fn post_to(addr: SocketAddr, host: &str, path: &str, body: &[u8]) -> Result<String> {
    let mut stream =
        TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
