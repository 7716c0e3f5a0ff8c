//! The tools a benchmark run installs or finds: `wrk` on the PATH, the Python server's
//! virtualenv and `wasmtime serve`.

use std::path::PathBuf;
use std::process::Command;

use crate::setup::{ONNXRUNTIME_VERSION, pip_install};
use crate::{Result, cargo, root, run, target_dir};

/// wasmtime-cli for the `wasmtime serve` anchor: the wasmtime release in Cargo.lock.
const WASMTIME_CLI_VERSION: &str = "48.0.8";
/// The Python server's packages, pinned so runs compare like with like.
const PYTHON_PACKAGES: &[&str] = &[
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "pillow==13.0.0",
    "numpy==2.4.6",
    "onnx==1.23.2",
    "matplotlib==3.11.2",
];

pub(super) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The virtualenv with the Python server's packages and the plotting library.
pub(super) fn python_env() -> Result<PathBuf> {
    let venv = root().join(".corral/bench-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("corral-packages");
    let wanted = format!(
        "onnxruntime=={}\n{}",
        ONNXRUNTIME_VERSION,
        PYTHON_PACKAGES.join("\n")
    );
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).map_err(|e| {
        format!(
            "{e}: cannot create the Python server's virtualenv in {} (on Debian or Ubuntu, \
             `sudo apt-get install python3-venv`)",
            venv.display()
        )
    })?;
    run(pip_install(&python).args(wanted.lines()))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

/// `wasmtime` with `serve`, built from crates.io once (a few minutes on two cores).
pub(super) fn install_wasmtime() -> Result<PathBuf> {
    let tools = root().join(".corral/tools");
    let wasmtime = tools.join("bin/wasmtime");
    let version = Command::new(&wasmtime).arg("--version").output();
    if let Ok(output) = version
        && String::from_utf8_lossy(&output.stdout).contains(WASMTIME_CLI_VERSION)
    {
        return Ok(wasmtime);
    }
    run(cargo()
        .args(["install", "wasmtime-cli", "--locked", "--version"])
        .arg(format!("={WASMTIME_CLI_VERSION}"))
        .args([
            "--no-default-features",
            "--features",
            "run,serve,cranelift,pooling-allocator,parallel-compilation,cache,component-model,component-model-async",
            "--root",
        ])
        .arg(&tools)
        .arg("--target-dir")
        .arg(target_dir().join("tools")))?;
    Ok(wasmtime)
}
