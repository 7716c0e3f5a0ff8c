//! `cargo xtask bench [--quick | --report | --only SCENARIO..]`: Corral against the real
//! alternatives, side by side in one run on this machine, written to `docs/benchmarks.md` with
//! plots in `docs/benchmarks/` (`--quick`: shorter, under `target/bench/`; `--report`: the
//! document again from the last full run's `target/bench/results.json`, measuring nothing;
//! `--only batching|neighbour|churn`: the inference scheduler's scenarios alone, rewriting only
//! their section of the document).
//!
//! Load comes from `wrk` (Debian's `wrk` package) with `xtask/bench/wrk.lua`; in-process
//! figures (native ONNX Runtime, instantiation, session memory, tenant deployment) come from
//! `host/examples/bench_probe.rs`; the Python server is `xtask/bench/python_server.py` in a
//! virtualenv under `.corral/bench-venv`; `wasmtime serve` is wasmtime-cli at the wasmtime
//! release Corral links, installed under `.corral/tools`. Every server gets the same machine,
//! the same ONNX Runtime thread settings (its defaults) and no access log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Result, build_guests, cargo, guest_dir, ort_library, root, run, setup, target_dir};

mod scheduler;

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

/// How much of everything to run.
struct Plan {
    /// Seconds of load per point.
    seconds: u32,
    concurrency: Vec<u32>,
    /// Tenant counts for the density runs, same component and model.
    tenants: Vec<usize>,
    /// Tenant counts with a distinct component each (each one compiled).
    distinct: Vec<usize>,
    instantiations: usize,
    cold_starts: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                seconds: 2,
                concurrency: vec![1, 4, 16],
                tenants: vec![1, 100],
                distinct: vec![1, 10],
                instantiations: 2_000,
                cold_starts: 3,
            }
        } else {
            Self {
                seconds: 5,
                concurrency: vec![1, 2, 4, 8, 16, 32, 64],
                tenants: vec![1, 100, 1_000, 10_000],
                distinct: vec![1, 100, 1_000],
                instantiations: 20_000,
                cold_starts: 10,
            }
        }
    }
}

/// Everything a run needs to find.
struct Kit {
    plan: Plan,
    corral: PathBuf,
    probe: PathBuf,
    wasmtime: PathBuf,
    python: PathBuf,
    work: PathBuf,
    classifier: PathBuf,
    labels: PathBuf,
    dog: PathBuf,
    mlp: PathBuf,
    features: PathBuf,
    tensor: PathBuf,
    /// Every command run, for the report.
    commands: Vec<String>,
}

pub fn bench(args: &[String]) -> Result {
    let usage = || {
        format!(
            "usage: cargo xtask bench [--quick | --report | --only SCENARIO...] (scenarios: {})",
            scheduler::SCENARIOS.join(", ")
        )
    };
    let (quick, only) = match args {
        [] => (false, Vec::new()),
        [flag] if flag == "--quick" => (true, Vec::new()),
        [flag] if flag == "--report" => return rewrite_report(),
        [flag, names @ ..] if flag == "--only" && !names.is_empty() => {
            if let Some(name) = names
                .iter()
                .find(|n| !scheduler::SCENARIOS.contains(&n.as_str()))
            {
                return Err(format!("unknown scenario {name}; {}", usage()));
            }
            (false, names.to_vec())
        }
        _ => return Err(usage()),
    };
    setup()?;
    build_guests()?;
    run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "corral",
        "--bin",
        "corral",
        "--example",
        "bench_probe",
    ]))?;
    let wrk = which("wrk").ok_or(
        "wrk is not installed: on Debian or Ubuntu, `sudo apt-get install wrk` (the load generator \
         every comparison uses)",
    )?;
    eprintln!("xtask: load generator {}", wrk.display());
    let python = python_env()?;
    // The scheduler's scenarios alone never start `wasmtime serve`.
    let wasmtime = if only.is_empty() {
        install_wasmtime()?
    } else {
        PathBuf::new()
    };
    let work = target_dir().join("bench");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let model = root().join("examples/image-classifier/model");
    let dog = root().join("examples/image-classifier/samples/dog.jpg");
    run(Command::new(&python)
        .arg(root().join("xtask/bench/fixtures.py"))
        .arg(&work)
        .arg(&dog))?;
    let release = target_dir().join("release");
    let mut kit = Kit {
        plan: Plan::new(quick),
        corral: release.join("corral"),
        probe: release.join("examples/bench_probe"),
        wasmtime,
        python,
        classifier: model.join("efficientnet-lite0.onnx"),
        labels: model.join("labels.txt"),
        dog,
        mlp: work.join("mlp.onnx"),
        features: work.join("features.json"),
        tensor: work.join("dog.f32"),
        work,
        commands: Vec::new(),
    };
    let started = Instant::now();
    if !only.is_empty() {
        return scheduler_only(&mut kit, &only);
    }
    let mut results = BTreeMap::new();
    results.insert("machine", machine());
    results.insert("overhead", overhead(&mut kit)?);
    results.insert("fixed", fixed(&mut kit)?);
    results.insert("python", python_pair(&mut kit)?);
    results.insert("instantiation", instantiation(&mut kit)?);
    results.insert("density", density(&mut kit)?);
    results.insert("cold_start", cold_start(&mut kit)?);
    results.insert("sessions", sessions(&mut kit)?);
    results.insert(
        "run",
        json!({
            "quick": quick,
            "seconds_per_point": kit.plan.seconds,
            "concurrency": kit.plan.concurrency,
            "minutes": started.elapsed().as_secs_f64() / 60.0,
            "commands": kit.commands,
        }),
    );
    let results = serde_json::to_value(&results).map_err(|e| e.to_string())?;
    let json_path = kit.work.join(if quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&json_path, format!("{results:#}")).map_err(|e| e.to_string())?;
    let (doc, plots) = if quick {
        (kit.work.join("benchmarks-quick.md"), kit.work.join("plots"))
    } else {
        (
            root().join("docs/benchmarks.md"),
            root().join("docs/benchmarks"),
        )
    };
    std::fs::create_dir_all(&plots).map_err(|e| e.to_string())?;
    run(Command::new(&kit.python)
        .arg(root().join("xtask/bench/plot.py"))
        .arg(&json_path)
        .arg(&plots))?;
    let mut report = report(&results, &plots, &doc)?;
    // The scheduler's scenarios keep their own section (and their own results file), so that
    // `--only` can rewrite them alone.
    if !quick {
        let commands = std::mem::take(&mut kit.commands);
        let scheduler = run_scheduler(&mut kit, scheduler::SCENARIOS)?;
        report = scheduler::splice(&report, &scheduler::report(&scheduler, &kit.commands));
        kit.commands = commands;
    }
    std::fs::write(&doc, report).map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!(
        "xtask: benchmark written to {} ({:.1} min)",
        doc.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Runs the scheduler's `scenarios`, merged into `target/bench/results-scheduler.json` (so a
/// later `--only` of one scenario keeps the others' last results).
fn run_scheduler(kit: &mut Kit, scenarios: &[impl AsRef<str>]) -> Result<Value> {
    let path = kit.work.join("results-scheduler.json");
    let mut results: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    for name in scenarios {
        let name = name.as_ref();
        let result = scheduler::scenario(kit, name)?;
        results[name] = result;
    }
    results["run"] = json!({
        "date": machine()["date"],
        "seconds_per_point": kit.plan.seconds,
    });
    std::fs::write(&path, format!("{results:#}")).map_err(|e| e.to_string())?;
    Ok(results)
}

/// `--only`: the named scheduler scenarios, and their section of docs/benchmarks.md rewritten
/// in place.
fn scheduler_only(kit: &mut Kit, scenarios: &[String]) -> Result {
    let results = run_scheduler(kit, scenarios)?;
    let doc = root().join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let section = scheduler::report(&results, &kit.commands);
    std::fs::write(&doc, scheduler::splice(&text, &section))
        .map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!("xtask: scheduler benchmarks written to {}", doc.display());
    Ok(())
}

/// `--report`: writes docs/benchmarks.md and its plots again from the last full run's
/// results (after a change to the report's layout; no measurement is repeated).
fn rewrite_report() -> Result {
    let json_path = target_dir().join("bench/results.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| {
        format!(
            "{}: {e} (run `cargo xtask bench` first)",
            json_path.display()
        )
    })?;
    let results: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if results["run"]["quick"].as_bool() != Some(false) {
        return Err(format!("{} is from a --quick run", json_path.display()));
    }
    let (doc, plots) = (
        root().join("docs/benchmarks.md"),
        root().join("docs/benchmarks"),
    );
    run(Command::new(python_env()?)
        .arg(root().join("xtask/bench/plot.py"))
        .arg(&json_path)
        .arg(&plots))?;
    std::fs::write(&doc, report(&results, &plots, &doc)?).map_err(|e| e.to_string())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The virtualenv with the Python server's packages and the plotting library.
fn python_env() -> Result<PathBuf> {
    let venv = root().join(".corral/bench-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("corral-packages");
    let wanted = format!(
        "onnxruntime=={}\n{}",
        super::ONNXRUNTIME_VERSION,
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
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(wanted.lines()))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

/// `wasmtime` with `serve`, built from crates.io once (a few minutes on two cores).
fn install_wasmtime() -> Result<PathBuf> {
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

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    let command_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": memory,
        "kernel": command_line("uname", &["-sr"]),
        "rustc": command_line("rustc", &["--version"]),
        "wrk": command_line("wrk", &["--version"]).lines().next().unwrap_or("").to_owned(),
        "onnxruntime": super::ONNXRUNTIME_VERSION,
        "date": command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    })
}

fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// A server under test, killed when dropped.
struct Server {
    child: Child,
    name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `command` with its output in `work/logs/NAME.log` and waits until `addr`
    /// accepts connections.
    fn start(kit: &mut Kit, name: &str, command: &mut Command, addr: SocketAddr) -> Result<Self> {
        let logs = kit.work.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(logs.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        kit.commands.push(describe(command));
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut server = Self {
            child,
            name: name.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}) before listening; see {}",
                    logs.join(format!("{name}.log")).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not listen on {addr} within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in MiB.
    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("{}: {e}", self.name))?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| format!("{}: no VmRSS", self.name))
    }
}

/// A command as a reader would type it: paths relative to the repository, tokens elided.
fn describe(command: &Command) -> String {
    let mut text = String::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            let _ = write!(
                text,
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            );
        }
    }
    let program = command.get_program().to_string_lossy();
    let program = program
        .strip_prefix(&format!("{}/", root().display()))
        .unwrap_or(&program)
        .to_owned();
    text.push_str(&program);
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        let arg = arg
            .strip_prefix(&format!("{}/", root().display()))
            .unwrap_or(&arg);
        let _ = write!(text, " {arg}");
    }
    text.replace(&format!("{}/", root().display()), "")
        .split(' ')
        .map(|word| {
            if word.starts_with("corral_op_") {
                "$TOKEN"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one wrk run sends.
#[derive(Clone, Default)]
struct Load {
    url: String,
    method: &'static str,
    body: Option<PathBuf>,
    headers: Vec<String>,
    /// `("t%d.localhost", n)`: rotate the Host header over n tenants.
    hosts: Option<(String, usize)>,
}

/// Runs wrk at each concurrency and returns one point per level, failing on any error or
/// non-2xx answer (a benchmark of failures measures nothing).
fn sweep(kit: &mut Kit, load: &Load, levels: &[u32]) -> Result<Vec<Value>> {
    // Warm up: compiled code paths, allocator pools, ONNX Runtime's arenas.
    wrk(kit, load, 2, 1, false)?;
    let mut points = Vec::new();
    for &c in levels {
        let point = wrk(kit, load, c, kit.plan.seconds, points.is_empty())?;
        points.push(point);
    }
    Ok(points)
}

/// A wrk command for `load` at `connections` for `seconds`, not yet run.
fn wrk_command(load: &Load, connections: u32, seconds: u32) -> Command {
    let mut command = Command::new("wrk");
    command
        .args(["-t", "1", "-c"])
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .args(["--timeout", "30s", "-s"])
        .arg(root().join("xtask/bench/wrk.lua"))
        .arg(&load.url)
        .env("BENCH_METHOD", load.method)
        .env(
            "BENCH_BODY_FILE",
            load.body.as_deref().unwrap_or(Path::new("")),
        )
        .env("BENCH_HEADERS", load.headers.join("|"))
        .env(
            "BENCH_HOSTS",
            load.hosts
                .as_ref()
                .map(|(pattern, n)| format!("{pattern}:{n}"))
                .unwrap_or_default(),
        );
    command
}

fn wrk(kit: &mut Kit, load: &Load, connections: u32, seconds: u32, record: bool) -> Result<Value> {
    let mut command = wrk_command(load, connections, seconds);
    if record {
        kit.commands.push(
            describe(&command)
                .replace(&format!("-c {connections} "), "-c C ")
                .replace(&format!("-d {seconds}s"), "-d Ns"),
        );
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("wrk printed no result for {}:\n{text}", load.url))?;
    let mut point: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let requests = point["requests"].as_f64().unwrap_or(0.0);
    let duration = point["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    if point["socket_errors"].as_u64() != Some(0)
        || point["non2xx"].as_u64() != Some(0)
        || requests == 0.0
    {
        return Err(format!(
            "{} at concurrency {connections}: {line} (the server's log is in {})",
            load.url,
            kit.work.join("logs").display()
        ));
    }
    point["concurrency"] = json!(connections);
    point["rps"] = json!(requests / duration);
    eprintln!(
        "xtask: {} c={connections}: {:.1} req/s, p50 {} us, p99 {} us",
        load.url,
        point["rps"].as_f64().unwrap_or(0.0),
        point["p50_us"],
        point["p99_us"]
    );
    Ok(point)
}

/// Runs bench_probe and parses its JSON lines.
fn probe(kit: &mut Kit, args: &[&dyn AsRefOsStr]) -> Result<Vec<Value>> {
    let mut command = Command::new(&kit.probe);
    for arg in args {
        command.arg(arg.as_os());
    }
    command.env("ORT_DYLIB_PATH", ort_library());
    kit.commands.push(describe(&command));
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bench_probe: {e}"))?;
    if !output.status.success() {
        return Err(format!("bench_probe {} failed", describe(&command)));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect()
}

/// Arguments of mixed string and path types.
trait AsRefOsStr {
    fn as_os(&self) -> &std::ffi::OsStr;
}

impl<T: AsRef<std::ffi::OsStr> + ?Sized> AsRefOsStr for T {
    fn as_os(&self) -> &std::ffi::OsStr {
        self.as_ref()
    }
}

/// `corral serve` on a fresh data directory with no HTTPS, and its operator token.
struct Corral {
    server: Server,
    data: SocketAddr,
    admin: String,
    token: String,
    dir: PathBuf,
}

impl Corral {
    fn start(kit: &mut Kit, name: &str) -> Result<Self> {
        let dir = kit.work.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Self::start_in(kit, name, dir)
    }

    /// [`Corral::start`] with extra environment variables (configuration overrides).
    fn start_with(kit: &mut Kit, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = kit.work.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Self::launch(kit, name, dir, env)
    }

    /// Starts (or restarts) a server on `dir`, keeping what is stored there.
    fn start_in(kit: &mut Kit, name: &str, dir: PathBuf) -> Result<Self> {
        Self::launch(kit, name, dir, &[])
    }

    fn launch(kit: &mut Kit, name: &str, dir: PathBuf, env: &[(&str, &str)]) -> Result<Self> {
        let (data, admin) = (free_addr()?, free_addr()?);
        let mut command = Command::new(&kit.corral);
        command
            .args(["serve", "--data"])
            .arg(&dir)
            .arg("--listen")
            .arg(data.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env("CORRAL_TLS_ENABLED", "false")
            .env("RUST_LOG", "warn")
            .env("ORT_DYLIB_PATH", ort_library());
        for (key, value) in env {
            command.env(key, value);
        }
        let server = Server::start(kit, name, &mut command, admin)?;
        let token = std::fs::read_to_string(dir.join("admin-token"))
            .map_err(|e| format!("{}: {e}", dir.join("admin-token").display()))?
            .trim()
            .to_owned();
        Ok(Self {
            server,
            data,
            admin: format!("http://{admin}"),
            token,
            dir,
        })
    }

    /// Creates tenants `tFROM..tTO` with `component` and the model.
    fn tenants(
        &self,
        kit: &mut Kit,
        range: std::ops::Range<usize>,
        component: &Path,
        model: &str,
        distinct: bool,
    ) -> Result<f64> {
        let scratch = kit.work.join("distinct");
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        let (from, to) = (range.start.to_string(), range.end.to_string());
        let mut args: Vec<&dyn AsRefOsStr> = vec![
            &"tenants",
            &self.admin,
            &self.token,
            &from,
            &to,
            &component,
            &model,
        ];
        if distinct {
            args.push(&scratch);
        }
        let out = probe(kit, &args)?;
        Ok(out
            .first()
            .and_then(|v| v["seconds"].as_f64())
            .unwrap_or(0.0))
    }
}

fn guest(name: &str) -> PathBuf {
    guest_dir().join(format!("{name}.wasm"))
}

/// A request to tenant `tTENANT` of `corral`, routed by its Host header.
fn corral_load(
    corral: &Corral,
    tenant: usize,
    path: &str,
    method: &'static str,
    body: Option<&Path>,
    headers: &[&str],
) -> Load {
    let mut headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    headers.push(format!("Host: t{tenant}.localhost"));
    Load {
        url: format!("http://{}{path}", corral.data),
        method,
        body: body.map(Path::to_path_buf),
        headers,
        hosts: None,
    }
}

/// Deploys `bench-nn` with the tiny MLP as tenant `tTENANT` and sweeps its JSON route.
fn mlp_sweep(kit: &mut Kit, corral: &Corral, tenant: usize) -> Result<Vec<Value>> {
    let mlp = format!("model={}", kit.mlp.display());
    corral.tenants(kit, tenant..tenant + 1, &guest("bench-nn"), &mlp, false)?;
    let load = corral_load(
        corral,
        tenant,
        "/json",
        "POST",
        Some(&kit.features.clone()),
        &["Content-Type: application/json"],
    );
    let levels = kit.plan.concurrency.clone();
    sweep(kit, &load, &levels)
}

/// 1. The host's overhead over ONNX Runtime itself on EfficientNet-Lite0, preprocessing
///    excluded (the guest takes the raw tensor).
fn overhead(kit: &mut Kit) -> Result<Value> {
    let seconds = kit.plan.seconds.to_string();
    let native_levels = "1,2,4,8".to_owned();
    let classifier = kit.classifier.clone();
    let native = probe(
        kit,
        &[
            &"native",
            &classifier,
            &"input",
            &"1,3,224,224",
            &seconds,
            &native_levels,
        ],
    )?;
    let corral = Corral::start(kit, "overhead")?;
    let model = format!("model={}", classifier.display());
    corral.tenants(kit, 0..1, &guest("bench-nn"), &model, false)?;
    let load = corral_load(
        &corral,
        0,
        "/tensor",
        "POST",
        Some(&kit.tensor.clone()),
        &[
            "x-shape: 1,3,224,224",
            "Content-Type: application/octet-stream",
        ],
    );
    let levels = kit.plan.concurrency.clone();
    let http = sweep(kit, &load, &levels)?;
    Ok(json!({ "native": native, "corral": http }))
}

/// 2. Fixed costs: a hello-world component on Corral and on `wasmtime serve`, and a tiny
///    model through Corral against ONNX Runtime alone.
fn fixed(kit: &mut Kit) -> Result<Value> {
    let levels = kit.plan.concurrency.clone();
    let corral = Corral::start(kit, "fixed")?;
    let hello = guest("bench-hello");
    corral.tenants(kit, 0..1, &hello, "none", false)?;
    let corral_hello = sweep(
        kit,
        &corral_load(&corral, 0, "/", "GET", None, &[]),
        &levels,
    )?;
    let corral_mlp = mlp_sweep(kit, &corral, 1)?;
    drop(corral);

    let addr = free_addr()?;
    let mut command = Command::new(&kit.wasmtime);
    command
        .args(["serve", "-S", "cli", "-O", "pooling-allocator=y", "--addr"])
        .arg(addr.to_string())
        .arg(&hello);
    let wasmtime = Server::start(kit, "wasmtime-serve", &mut command, addr)?;
    let wasmtime_hello = sweep(
        kit,
        &Load {
            url: format!("http://{addr}/"),
            method: "GET",
            ..Load::default()
        },
        &levels,
    )?;
    drop(wasmtime);

    let seconds = kit.plan.seconds.to_string();
    let mlp_path = kit.mlp.clone();
    let native_mlp = probe(
        kit,
        &[&"native", &mlp_path, &"x", &"1,16", &seconds, &"1,2,4"],
    )?;
    Ok(json!({
        "corral_hello": corral_hello,
        "wasmtime_hello": wasmtime_hello,
        "corral_mlp": corral_mlp,
        "native_mlp": native_mlp,
    }))
}

/// 3. Corral's image-classifier and a tiny JSON model against the Python server a team would
///    write instead, at its best worker/thread setting.
fn python_pair(kit: &mut Kit) -> Result<Value> {
    let levels = kit.plan.concurrency.clone();
    let corral = Corral::start(kit, "python-pair")?;
    let classifier = format!("classifier={}", kit.classifier.display());
    corral.tenants(kit, 0..1, &guest("image-classifier"), &classifier, false)?;
    let dog = kit.dog.clone();
    let corral_image = sweep(
        kit,
        &corral_load(
            &corral,
            0,
            "/",
            "POST",
            Some(&dog),
            &["Content-Type: image/jpeg"],
        ),
        &levels,
    )?;
    let corral_json = mlp_sweep(kit, &corral, 1)?;
    drop(corral);

    // Python's settings: one worker process with ONNX Runtime's default threads, or one
    // worker per core with one intra-op thread each.
    let mut python = serde_json::Map::new();
    for (workers, threads) in [(1, 0), (2, 1)] {
        let addr = free_addr()?;
        let mut command = Command::new(&kit.python);
        command
            .args(["-m", "uvicorn", "--app-dir"])
            .arg(root().join("xtask/bench"))
            .args(["python_server:app", "--host", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args([
                "--workers",
                &workers.to_string(),
                "--no-access-log",
                "--log-level",
                "warning",
            ])
            .env("BENCH_CLASSIFIER", &kit.classifier)
            .env("BENCH_LABELS", &kit.labels)
            .env("BENCH_MLP", &kit.mlp)
            .env("BENCH_INTRA_THREADS", threads.to_string());
        let name = format!("python-w{workers}-t{threads}");
        let server = Server::start(kit, &name, &mut command, addr)?;
        // Each worker loads its models after the port opens.
        std::thread::sleep(Duration::from_secs(3));
        let image = sweep(
            kit,
            &Load {
                url: format!("http://{addr}/classify"),
                method: "POST",
                body: Some(dog.clone()),
                headers: vec!["Content-Type: image/jpeg".into()],
                hosts: None,
            },
            &levels,
        )?;
        let json_points = sweep(
            kit,
            &Load {
                url: format!("http://{addr}/json"),
                method: "POST",
                body: Some(kit.features.clone()),
                headers: vec!["Content-Type: application/json".into()],
                hosts: None,
            },
            &levels,
        )?;
        drop(server);
        python.insert(
            format!(
                "workers={workers}, intra_op_threads={}",
                if threads == 0 {
                    "default".to_owned()
                } else {
                    threads.to_string()
                }
            ),
            json!({ "image": image, "json": json_points }),
        );
    }
    Ok(json!({ "corral_image": corral_image, "corral_json": corral_json, "python": python }))
}

/// 4. Per-request instance creation, in process.
fn instantiation(kit: &mut Kit) -> Result<Value> {
    let iterations = kit.plan.instantiations.to_string();
    let mut out = serde_json::Map::new();
    let mlp = format!("model={}", kit.mlp.display());
    let classifier = format!("classifier={}", kit.classifier.display());
    for (name, model) in [
        ("bench-hello", None),
        ("bench-nn", Some(mlp)),
        ("image-classifier", Some(classifier)),
    ] {
        let component = guest(name);
        let size = std::fs::metadata(&component).map_or(0, |m| m.len());
        let mut args: Vec<&dyn AsRefOsStr> = vec![&"instantiate", &component, &iterations];
        if let Some(model) = &model {
            args.push(model);
        }
        let parts = probe(kit, &args)?;
        out.insert(
            name.to_owned(),
            json!({ "component_bytes": size, "parts": parts }),
        );
    }
    Ok(Value::Object(out))
}

/// One request to each of `hosts`, never asked before; latencies in microseconds.
fn first_requests(kit: &mut Kit, corral: &Corral, hosts: &[String]) -> Result<Vec<f64>> {
    let addr = corral.data.to_string();
    let features = kit.features.clone();
    let mut args: Vec<&dyn AsRefOsStr> = vec![&"first", &addr, &"/json", &features];
    for host in hosts {
        args.push(host);
    }
    Ok(probe(kit, &args)?
        .iter()
        .filter_map(|v| v["latency_us"].as_f64())
        .collect())
}

/// 5. Resident memory against the number of tenants, and the first request to a cold one.
fn density(kit: &mut Kit) -> Result<Value> {
    let mlp = format!("model={}", kit.mlp.display());
    let component = guest("bench-nn");
    let mut out = serde_json::Map::new();
    for (kind, counts, distinct) in [
        ("same", kit.plan.tenants.clone(), false),
        ("distinct", kit.plan.distinct.clone(), true),
    ] {
        let corral = Corral::start(kit, &format!("density-{kind}"))?;
        let empty = corral.server.rss_mib()?;
        let mut points = Vec::new();
        let mut deployed = 0;
        for &count in &counts {
            let seconds = corral.tenants(kit, deployed..count, &component, &mlp, distinct)?;
            deployed = count;
            std::thread::sleep(Duration::from_secs(1));
            let rss = corral.server.rss_mib()?;
            // Ten tenants deployed but never asked, spread over the range.
            let hosts: Vec<String> = (0..10.min(count))
                .map(|i| format!("t{}.localhost", i * count / 10.min(count)))
                .collect();
            let first = first_requests(kit, &corral, &hosts)?;
            points.push(json!({
                "tenants": count,
                "rss_mib": rss,
                "deploy_seconds": seconds,
                "first_request_us": first,
            }));
            eprintln!("xtask: density {kind}: {count} tenants, {rss:.0} MiB");
        }
        // Restart on the same data: every tenant comes back from the store and the compiled
        // component cache; then first requests to tenants never asked since the restart.
        let dir = corral.dir.clone();
        drop(corral);
        let started = Instant::now();
        let restarted = Corral::start_in(kit, &format!("density-{kind}-restart"), dir)?;
        let ready = started.elapsed().as_secs_f64();
        let rss = restarted.server.rss_mib()?;
        let count = deployed;
        let hosts: Vec<String> = (0..10.min(count))
            .map(|i| format!("t{}.localhost", i * count / 10.min(count) + count / 20))
            .collect();
        let first = first_requests(kit, &restarted, &hosts)?;
        out.insert(
            kind.to_owned(),
            json!({
                "empty_rss_mib": empty,
                "points": points,
                "restart": {
                    "tenants": count,
                    "seconds_to_listen": ready,
                    "rss_mib": rss,
                    "first_request_us": first,
                },
            }),
        );
    }
    Ok(Value::Object(out))
}

/// 6. From `corral deploy` returning to the first 200 from the new deployment.
fn cold_start(kit: &mut Kit) -> Result<Value> {
    let corral = Corral::start(kit, "cold-start")?;
    let component = guest("image-classifier");
    let mut samples = Vec::new();
    let dog = std::fs::read(&kit.dog).map_err(|e| e.to_string())?;
    for i in 0..kit.plan.cold_starts {
        let tenant = format!("cold{i}");
        let host = format!("{tenant}.localhost");
        let mut create = Command::new(&kit.corral);
        create
            .args([
                "tenant",
                "create",
                &tenant,
                "--host",
                &host,
                "--server",
                &corral.admin,
            ])
            .env("CORRAL_TOKEN", &corral.token);
        let mut deploy = Command::new(&kit.corral);
        deploy
            .args(["deploy", "--tenant", &tenant])
            .arg(&component)
            .arg("--model")
            .arg(format!("classifier={}", kit.classifier.display()))
            .args(["--server", &corral.admin])
            .env("CORRAL_TOKEN", &corral.token);
        if i == 0 {
            kit.commands
                .push(describe(&create).replace(&corral.token, "$TOKEN"));
            kit.commands
                .push(describe(&deploy).replace(&corral.token, "$TOKEN"));
        }
        for command in [&mut create, &mut deploy] {
            let output = command
                .stdout(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(format!(
                    "{}: {}",
                    describe(command),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        // `corral deploy` has returned: the deployment is active. Time the first answer.
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = super::post_to(corral.data, &host, "/", &dog)?;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("no 200 from {host} within 30 s: {answer}"));
            }
        }
        samples.push(json!({ "ms": started.elapsed().as_secs_f64() * 1e3, "attempts": attempts }));
    }
    // The same request to a warm tenant, for comparison (the median of five).
    let mut warm = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        super::post_to(corral.data, "cold0.localhost", "/", &dog)?;
        warm.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let warm = percentile(&warm, 0.5);
    Ok(json!({ "samples": samples, "warm_ms": warm }))
}

/// 7. 100 tenants on the same model bytes (one shared session) against 100 separate sessions.
fn sessions(kit: &mut Kit) -> Result<Value> {
    let count = 100;
    let classifier = kit.classifier.clone();
    let separate = probe(kit, &[&"sessions", &classifier, &count.to_string()])?;
    let corral = Corral::start(kit, "sessions")?;
    let one = corral.server.rss_mib()?;
    let model = format!("model={}", classifier.display());
    corral.tenants(kit, 0..count, &guest("bench-nn"), &model, false)?;
    let deployed = corral.server.rss_mib()?;
    let load = Load {
        url: format!("http://{}/tensor", corral.data),
        method: "POST",
        body: Some(kit.tensor.clone()),
        headers: vec![
            "x-shape: 1,3,224,224".into(),
            "Content-Type: application/octet-stream".into(),
        ],
        hosts: Some(("t%d.localhost".into(), count)),
    };
    let levels: Vec<u32> = kit
        .plan
        .concurrency
        .iter()
        .copied()
        .filter(|&c| c >= 4)
        .collect();
    let points = sweep(kit, &load, &levels)?;
    let loaded = corral.server.rss_mib()?;
    Ok(json!({
        "tenants": count,
        "separate": separate.first().cloned().unwrap_or(Value::Null),
        "corral_rss_mib": { "empty": one, "deployed": deployed, "after_load": loaded },
        "corral_100_tenants": points,
    }))
}

/// A sweep's points as `(concurrency, rps, p50 µs, p99 µs)`.
fn points(value: &Value) -> Vec<(u64, f64, f64, f64)> {
    value
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|p| {
                    (
                        p["concurrency"].as_u64().unwrap_or(0),
                        p["rps"].as_f64().unwrap_or(0.0),
                        p["p50_us"].as_f64().unwrap_or(0.0),
                        p["p99_us"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The best throughput of a sweep and the point it was reached at.
fn peak(value: &Value) -> (u64, f64, f64, f64) {
    points(value)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}

/// The point at concurrency 1.
fn single(value: &Value) -> (u64, f64, f64, f64) {
    points(value)
        .into_iter()
        .find(|p| p.0 == 1)
        .unwrap_or_default()
}

fn ms(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// A table of several sweeps side by side: one row per concurrency.
fn sweep_table(out: &mut String, columns: &[(&str, &Value)]) {
    let _ = write!(out, "| concurrency |");
    for (name, _) in columns {
        let _ = write!(out, " {name} req/s | p50 | p99 |");
    }
    out.push_str("\n|---|");
    for _ in columns {
        out.push_str("---|---|---|");
    }
    out.push('\n');
    let mut levels: Vec<u64> = columns
        .iter()
        .flat_map(|(_, v)| points(v).into_iter().map(|p| p.0))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    for c in levels {
        let _ = write!(out, "| {c} |");
        for (_, value) in columns {
            match points(value).into_iter().find(|p| p.0 == c) {
                Some((_, rps, p50, p99)) => {
                    let _ = write!(out, " {rps:.1} | {} | {} |", ms(p50), ms(p99));
                }
                None => out.push_str(" – | – | – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

fn report(results: &Value, plots: &Path, doc: &Path) -> Result<String> {
    let plot = |name: &str| {
        let file = plots.join(format!("{name}.png"));
        let relative = doc
            .parent()
            .and_then(|dir| file.strip_prefix(dir).ok())
            .map_or(file.clone(), Path::to_path_buf);
        format!("![{name}]({})\n\n", relative.display())
    };
    let m = &results["machine"];
    let r = &results["run"];
    let mut goals: Vec<(String, String, String, bool)> = Vec::new();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench{}` ({:.0} minutes) on {}. Every comparison ran in the same \
         run on the same machine: {} ({} cores), {:.0} GiB, {}; {}; ONNX Runtime {} (CPU, its \
         default thread settings for every server); load from {} with one thread and C \
         connections for {} s per point, on the same cores as the server. Servers log no access \
         lines (Corral `RUST_LOG=warn`, uvicorn `--no-access-log`). Corral is the release \
         build of `corral serve` with one tenant per service, reached by Host header.\n",
        if r["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        r["minutes"].as_f64().unwrap_or(0.0),
        m["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"].as_f64().unwrap_or(0.0),
        m["kernel"].as_str().unwrap_or(""),
        m["rustc"].as_str().unwrap_or(""),
        m["onnxruntime"].as_str().unwrap_or(""),
        m["wrk"].as_str().unwrap_or("wrk"),
        r["seconds_per_point"],
    );
    let summary_at = out.len();

    // 1. Host overhead.
    let o = &results["overhead"];
    let (native_c1, corral_c1) = (single(&o["native"]), single(&o["corral"]));
    let (native_peak, corral_peak) = (peak(&o["native"]), peak(&o["corral"]));
    let added = corral_c1.2 - native_c1.2;
    let ratio = corral_peak.1 / native_peak.1;
    let _ = writeln!(
        out,
        "## 1. Host overhead: EfficientNet-Lite0 on a raw tensor\n"
    );
    out.push_str(
        "ONNX Runtime alone, in process (`bench_probe native`: threads calling `Run` on one shared \
         session, the same session code and settings `corral serve` uses) against the same model \
         through Corral end to end: loopback HTTP, routing, a fresh instance of the `bench-nn` \
         guest per request, which passes the 602,112-byte body to `wasi:nn` as the input tensor \
         and answers the raw 4,000-byte output. No preprocessing on either side.\n\n",
    );
    sweep_table(
        &mut out,
        &[("native", &o["native"]), ("Corral", &o["corral"])],
    );
    let _ = writeln!(
        out,
        "- Concurrency 1: p50 {} native, {} through Corral: **{:+.0} µs** added; p99 {} vs {}.\n\
         - Saturation: native {:.1} runs/s (at {}), Corral {:.1} req/s (at {}): **{:.1}%** of native.\n",
        ms(native_c1.2),
        ms(corral_c1.2),
        added,
        ms(native_c1.3),
        ms(corral_c1.3),
        native_peak.1,
        native_peak.0,
        corral_peak.1,
        corral_peak.0,
        ratio * 100.0
    );
    out.push_str(&plot("overhead"));
    goals.push((
        "1. throughput vs native ONNX Runtime".into(),
        "≥ 95%".into(),
        format!("{:.1}%", ratio * 100.0),
        ratio >= 0.95,
    ));
    goals.push((
        "1. added p50 latency at concurrency 1".into(),
        "≤ 100 µs".into(),
        format!("{added:.0} µs"),
        added <= 100.0,
    ));

    // 2. Fixed overhead.
    let f = &results["fixed"];
    let (hello, wasmtime) = (peak(&f["corral_hello"]), peak(&f["wasmtime_hello"]));
    let (mlp_native, mlp_corral) = (single(&f["native_mlp"]), single(&f["corral_mlp"]));
    let _ = writeln!(out, "## 2. Fixed overhead: hello world and a tiny model\n");
    out.push_str(
        "`bench-hello` answers `hello, world` and imports only `wasi:http` and the WASI it needs, \
         so `wasmtime serve` (wasmtime-cli at the wasmtime release Corral links, pooling \
         allocator on, `-S cli`) runs the same component file.\n\n",
    );
    sweep_table(
        &mut out,
        &[
            ("Corral", &f["corral_hello"]),
            ("wasmtime serve", &f["wasmtime_hello"]),
        ],
    );
    let _ = writeln!(
        out,
        "- Saturation: Corral {:.0} req/s, `wasmtime serve` {:.0} req/s ({:.2}×). Concurrency 1 p50: \
         {} vs {}.\n",
        hello.1,
        wasmtime.1,
        hello.1 / wasmtime.1,
        ms(single(&f["corral_hello"]).2),
        ms(single(&f["wasmtime_hello"]).2),
    );
    out.push_str(
        "The tiny model: a 16→64→64→3 MLP (`xtask/bench/fixtures.py`), JSON in and out through \
         the `bench-nn` guest, against ONNX Runtime alone on the same input.\n\n",
    );
    sweep_table(
        &mut out,
        &[("native", &f["native_mlp"]), ("Corral", &f["corral_mlp"])],
    );
    let _ = writeln!(
        out,
        "- Concurrency 1: the model alone {} per run, the whole request through Corral {}: \
         **{:.0} µs** per request is the host, HTTP, the instance and the JSON.\n",
        ms(mlp_native.2),
        ms(mlp_corral.2),
        mlp_corral.2 - mlp_native.2
    );
    out.push_str(&plot("fixed"));
    goals.push((
        "2. hello-world throughput vs `wasmtime serve`".into(),
        "≥ 1.0×".into(),
        format!("{:.2}×", hello.1 / wasmtime.1),
        hello.1 >= wasmtime.1,
    ));

    // 3. Python.
    let p = &results["python"];
    let _ = writeln!(out, "## 3. Against a Python server\n");
    out.push_str(
        "`xtask/bench/python_server.py`: Starlette on uvicorn, Pillow for decoding and resizing, \
         onnxruntime, inference in the thread pool as FastAPI runs a `def` endpoint; the same \
         preprocessing as the `image-classifier` example. Two settings, both measured: one \
         worker with ONNX Runtime's default threads, and two workers (one per core) with one \
         intra-op thread each. Corral runs the `image-classifier` example (JPEG decode, resize \
         and normalization inside the WebAssembly sandbox) and `bench-nn`'s JSON route.\n\n",
    );
    let pythons: Vec<(String, Value)> = p["python"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let best = |field: &str| {
        pythons
            .iter()
            .map(|(k, v)| (k.clone(), v[field].clone()))
            .max_by(|a, b| peak(&a.1).1.total_cmp(&peak(&b.1).1))
            .unwrap_or_default()
    };
    for (field, corral_field, title) in [
        (
            "image",
            "corral_image",
            "EfficientNet-Lite0, JPEG in, top-5 JSON out",
        ),
        ("json", "corral_json", "tabular MLP, JSON in and out"),
    ] {
        let _ = writeln!(out, "### {title}\n");
        let mut columns: Vec<(&str, &Value)> = vec![("Corral", &p[corral_field])];
        let labels: Vec<String> = pythons
            .iter()
            .map(|(k, _)| format!("Python ({k})"))
            .collect();
        for ((_, v), label) in pythons.iter().zip(&labels) {
            columns.push((label.as_str(), &v[field]));
        }
        sweep_table(&mut out, &columns);
        let (best_name, best_points) = best(field);
        let (c, py) = (peak(&p[corral_field]), peak(&best_points));
        let py_p99_same_c = points(&best_points)
            .into_iter()
            .find(|q| q.0 == c.0)
            .map_or(f64::NAN, |q| q.3);
        let _ = writeln!(
            out,
            "- Saturation: Corral {:.1} req/s (at {}), best Python ({best_name}) {:.1} req/s (at {}): \
             **{:.2}×**. p99 at Corral's peak concurrency: Corral {}, Python {}.\n",
            c.1,
            c.0,
            py.1,
            py.0,
            c.1 / py.1,
            ms(c.3),
            ms(py_p99_same_c),
        );
        if field == "image" {
            let of_native = c.1 / native_peak.1;
            let _ = writeln!(
                out,
                "- Corral's image classifier reaches {:.1}% of native ONNX Runtime's ceiling on the \
                 raw tensor ({:.1} runs/s), with JPEG decoding and resizing in the guest on top.\n",
                of_native * 100.0,
                native_peak.1
            );
            goals.push((
                "3. image classifier vs Python".into(),
                "≥ 1.25×".into(),
                format!("{:.2}×", c.1 / py.1),
                c.1 / py.1 >= 1.25,
            ));
            goals.push((
                "3. image classifier vs native ceiling".into(),
                "≥ 95%".into(),
                format!("{:.1}%", of_native * 100.0),
                of_native >= 0.95,
            ));
            goals.push((
                "3. image classifier p99 vs Python (same concurrency)".into(),
                "≤".into(),
                format!("{} vs {}", ms(c.3), ms(py_p99_same_c)),
                c.3 <= py_p99_same_c,
            ));
        } else {
            goals.push((
                "3. tiny model vs Python".into(),
                "≥ 3×".into(),
                format!("{:.2}×", c.1 / py.1),
                c.1 / py.1 >= 3.0,
            ));
        }
    }
    out.push_str(&plot("python"));

    // 4. Instantiation.
    let _ = writeln!(out, "## 4. Instantiation per request\n");
    out.push_str(
        "`bench_probe instantiate`: what `corral serve` does per request before the guest's \
         handler runs, timed in process: a new store with the tenant's limits, WASI and \
         `wasi:nn` contexts (`store`), then instantiating the pre-instantiated component from the \
         pooling allocator with copy-on-write memory images (`instantiate`); the store is \
         dropped after each, returning the slot, as the end of a request does.\n\n\
         | component | size | store p50 | p99 | instantiate p50 | p99 | total p50 | p99 |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut worst_total = 0.0f64;
    if let Some(map) = results["instantiation"].as_object() {
        for (name, v) in map {
            let part = |p: &str| {
                v["parts"]
                    .as_array()
                    .and_then(|parts| parts.iter().find(|x| x["part"] == p))
                    .map_or((f64::NAN, f64::NAN), |x| {
                        (
                            x["p50_us"].as_f64().unwrap_or(f64::NAN),
                            x["p99_us"].as_f64().unwrap_or(f64::NAN),
                        )
                    })
            };
            let (s, i, t) = (part("store"), part("instantiate"), part("total"));
            worst_total = worst_total.max(t.0);
            let _ = writeln!(
                out,
                "| `{name}` | {:.0} KiB | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
                v["component_bytes"].as_f64().unwrap_or(0.0) / 1024.0,
                s.0,
                s.1,
                i.0,
                i.1,
                t.0,
                t.1
            );
        }
    }
    out.push('\n');
    goals.push((
        "4. instance creation p50 (worst component)".into(),
        "≤ 20 µs".into(),
        format!("{worst_total:.1} µs"),
        worst_total <= 20.0,
    ));

    // 5. Density.
    let d = &results["density"];
    let _ = writeln!(out, "## 5. Density\n");
    out.push_str(
        "`corral serve` with N tenants, each with its own host name and an active deployment of \
         `bench-nn` plus the tiny MLP, created through the admin API four at a time \
         (`bench_probe tenants`). \"Same\": every tenant uploads the same component and model \
         bytes. \"Distinct\": each tenant's component differs (a custom section naming the tenant \
         is appended), so each is compiled and cached on its own. Resident memory is the \
         process's VmRSS after the deployments; the first-request latencies are one request each \
         to ten tenants never asked before (a new connection, `POST /json`), then again after a \
         restart on the same data directory, where every component comes from the compiled \
         cache.\n\n\
         | tenants | component | RSS | per tenant beyond 1 | deploy time | first request p50 | max |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut per_tenant_same = f64::NAN;
    let mut restart_first = Vec::new();
    for kind in ["same", "distinct"] {
        let pts = d[kind]["points"].as_array().cloned().unwrap_or_default();
        let base = pts
            .first()
            .map_or(0.0, |p| p["rss_mib"].as_f64().unwrap_or(0.0));
        for point in &pts {
            let n = point["tenants"].as_f64().unwrap_or(0.0);
            let rss = point["rss_mib"].as_f64().unwrap_or(0.0);
            let per = if n > 1.0 {
                (rss - base) / (n - 1.0)
            } else {
                f64::NAN
            };
            if kind == "same" && n > 1.0 {
                per_tenant_same = per;
            }
            let first: Vec<f64> = point["first_request_us"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {n:.0} | {kind} | {rss:.0} MiB | {} | {:.1} s | {} | {} |",
                if per.is_nan() {
                    "–".to_owned()
                } else {
                    format!("{:.0} KiB", per * 1024.0)
                },
                point["deploy_seconds"].as_f64().unwrap_or(0.0),
                ms(percentile(&first, 0.5)),
                ms(percentile(&first, 1.0)),
            );
        }
    }
    out.push_str("\nAfter a restart on the same data directory:\n\n| component | tenants | until listening | RSS | first request p50 | max |\n|---|---|---|---|---|---|\n");
    for kind in ["same", "distinct"] {
        let restart = &d[kind]["restart"];
        let first: Vec<f64> = restart["first_request_us"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        restart_first.extend(first.iter().copied());
        let _ = writeln!(
            out,
            "| {kind} | {} | {:.1} s | {:.0} MiB | {} | {} |",
            restart["tenants"],
            restart["seconds_to_listen"].as_f64().unwrap_or(0.0),
            restart["rss_mib"].as_f64().unwrap_or(0.0),
            ms(percentile(&first, 0.5)),
            ms(percentile(&first, 1.0)),
        );
    }
    out.push('\n');
    out.push_str(&plot("density"));
    let most = d["same"]["points"]
        .as_array()
        .and_then(|a| a.last())
        .map_or(0.0, |p| p["tenants"].as_f64().unwrap_or(0.0));
    goals.push((
        format!("5. idle tenant memory ({most:.0} tenants, same component)"),
        "≤ 1 MiB".into(),
        format!("{:.0} KiB", per_tenant_same * 1024.0),
        per_tenant_same <= 1.0,
    ));
    let cold = percentile(&restart_first, 0.5);
    goals.push((
        "5. cold first request p50 (cached compiled component)".into(),
        "≤ 10 ms".into(),
        ms(cold),
        cold <= 10_000.0,
    ));

    // 6. Cold start.
    let c = &results["cold_start"];
    let samples: Vec<f64> = c["samples"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["ms"].as_f64()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "## 6. Cold start: from `corral deploy` returning to the first 200\n"
    );
    let _ = writeln!(
        out,
        "A new tenant each time (`corral tenant create`, then `corral deploy` of the \
         `image-classifier` component and EfficientNet-Lite0); when the deploy command exits the \
         version is active, and the clock runs until the first `POST /` of the dog image \
         answers 200. {} deployments: p50 **{:.1} ms**, max {:.1} ms; the first request answered \
         200 in {} of them. The same request to a warm tenant takes {:.1} ms (median of five).\n",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 1.0),
        c["samples"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["attempts"] == 1).count()),
        c["warm_ms"].as_f64().unwrap_or(0.0)
    );

    // 7. Sessions.
    let s = &results["sessions"];
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    let _ = writeln!(out, "## 7. Shared sessions\n");
    let shared_peak = peak(&s["corral_100_tenants"]);
    let _ = writeln!(
        out,
        "{} tenants deploy the same EfficientNet-Lite0 bytes with `bench-nn`; Corral keeps one \
         session for all of them. `bench_probe sessions` loads the same file as {} separate \
         ONNX Runtime sessions (what a server without sharing holds) and as {} loads through \
         Corral's session pool, measuring resident memory.\n\n\
         | | memory |\n|---|---|\n\
         | {} separate sessions (in process) | {:.0} MiB |\n\
         | {} loads through the shared pool (in process) | {:.0} MiB |\n\
         | `corral serve`, empty | {:.0} MiB |\n\
         | `corral serve`, {} tenants deployed on the one model | {:.0} MiB |\n\
         | `corral serve`, after the load below | {:.0} MiB |\n\n\
         Throughput with requests spread over all {} tenants' host names (raw tensor, as in 1):\n",
        s["tenants"],
        s["tenants"],
        s["tenants"],
        s["tenants"],
        mib(&s["separate"]["separate_sessions_bytes"]),
        s["tenants"],
        mib(&s["separate"]["shared_sessions_bytes"]),
        s["corral_rss_mib"]["empty"].as_f64().unwrap_or(0.0),
        s["tenants"],
        s["corral_rss_mib"]["deployed"].as_f64().unwrap_or(0.0),
        s["corral_rss_mib"]["after_load"].as_f64().unwrap_or(0.0),
        s["tenants"],
    );
    sweep_table(
        &mut out,
        &[("100 tenants, one session", &s["corral_100_tenants"])],
    );
    let _ = writeln!(
        out,
        "- Peak {:.1} req/s over {} tenants against {:.1} req/s for one tenant in 1 ({:.0}%).\n",
        shared_peak.1,
        s["tenants"],
        corral_peak.1,
        shared_peak.1 / corral_peak.1 * 100.0
    );

    // The commands.
    out.push_str("## Commands\n\nEvery process the run started, in order (paths relative to the repository; `C` and `N` are the concurrency and seconds of each point):\n\n```\n");
    let mut seen = std::collections::BTreeSet::new();
    for command in r["commands"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let command = command.replace(&target_dir().display().to_string(), "$TARGET");
        if seen.insert(command.clone()) {
            let _ = writeln!(out, "{command}");
        }
    }
    out.push_str("```\n");

    // The goals, first.
    let mut summary =
        String::from("## Goals\n\n| goal | target | measured | |\n|---|---|---|---|\n");
    for (goal, target, measured, met) in &goals {
        let _ = writeln!(
            summary,
            "| {goal} | {target} | {measured} | {} |",
            verdict(*met)
        );
    }
    summary.push('\n');
    out.insert_str(summary_at, &summary);
    Ok(out)
}
