//! Load generation: `wrk` runs and sweeps over concurrency, the requests they send, and
//! `bench_probe`, the in-process client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::Kit;
use super::report::describe;
use super::server::{Corral, guest};
use crate::{Result, ort_library, root};

/// What one wrk run sends.
#[derive(Clone, Default)]
pub(super) struct Load {
    pub(super) url: String,
    pub(super) method: &'static str,
    pub(super) body: Option<PathBuf>,
    pub(super) headers: Vec<String>,
    /// `("t%d.localhost", n)`: rotate the Host header over n tenants.
    pub(super) hosts: Option<(String, usize)>,
}

/// Runs wrk at each concurrency and returns one point per level, failing on any error or
/// non-2xx answer (a benchmark of failures measures nothing).
pub(super) fn sweep(kit: &mut Kit, load: &Load, levels: &[u32]) -> Result<Vec<Value>> {
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
pub(super) fn wrk_command(load: &Load, connections: u32, seconds: u32) -> Command {
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

pub(super) fn wrk(
    kit: &mut Kit,
    load: &Load,
    connections: u32,
    seconds: u32,
    record: bool,
) -> Result<Value> {
    let mut command = wrk_command(load, connections, seconds);
    if record {
        kit.commands.push(
            describe(&command)
                .replace(&format!("-c {connections} "), "-c C ")
                .replace(&format!("-d {seconds}s"), "-d Ns"),
        );
    }
    let cpu_before = children_cpu_seconds();
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    // wrk has been waited for, so its CPU time is now counted among this process's children.
    let client_cpu = children_cpu_seconds() - cpu_before;
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
    point["client_cpu_ms_per_request"] = json!(client_cpu * 1e3 / requests);
    eprintln!(
        "xtask: {} c={connections}: {:.1} req/s, p50 {} us, p99 {} us",
        load.url,
        point["rps"].as_f64().unwrap_or(0.0),
        point["p50_us"],
        point["p99_us"]
    );
    Ok(point)
}

/// CPU seconds (user + system) of this process's children that have been waited for, from
/// `/proc/self/stat` (clock ticks of 10 ms: enough over a run of seconds).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // cutime and cstime are fields 16 and 17.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |field: usize| {
        fields
            .get(field - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(16) + ticks(17)) / 100.0
}

/// Runs bench_probe and parses its JSON lines.
pub(super) fn probe(kit: &mut Kit, args: &[&dyn AsRefOsStr]) -> Result<Vec<Value>> {
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

/// Runs `command` (one of `xtask/bench/`'s Python scripts) and parses the JSON it prints.
pub(super) fn script_json(command: &mut Command) -> Result<Value> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            describe(command),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{}: {e}", describe(command)))
}

/// Arguments of mixed string and path types.
pub(super) trait AsRefOsStr {
    fn as_os(&self) -> &std::ffi::OsStr;
}

impl<T: AsRef<std::ffi::OsStr> + ?Sized> AsRefOsStr for T {
    fn as_os(&self) -> &std::ffi::OsStr {
        self.as_ref()
    }
}

/// A request to tenant `tTENANT` of `corral`, routed by its Host header.
pub(super) fn corral_load(
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

/// A `bench-nn` raw-tensor load on tenant `t0`, or rotating over `tenants` tenants.
pub(super) fn tensor_load(corral: &Corral, body: &Path, shape: &str, tenants: usize) -> Load {
    let mut load = corral_load(
        corral,
        0,
        "/tensor",
        "POST",
        Some(body),
        &[
            &format!("x-shape: {shape}"),
            "Content-Type: application/octet-stream",
        ],
    );
    if tenants > 1 {
        load.headers.retain(|h| !h.starts_with("Host:"));
        load.hosts = Some(("t%d.localhost".into(), tenants));
    }
    load
}

/// Deploys `bench-nn` with the tiny MLP as tenant `tTENANT` and sweeps its JSON route.
pub(super) fn mlp_sweep(kit: &mut Kit, corral: &Corral, tenant: usize) -> Result<Vec<Value>> {
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
