//! The inference scheduler's benchmarks (`cargo xtask bench --only batching|neighbour|churn`,
//! and part of the full run): batching off against on, a light tenant beside a heavy one, and
//! model churn under a memory budget. Each comparison's sides run in the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Corral, Kit, Load, corral_load, guest, wrk, wrk_command};
use crate::Result;

/// The scenarios, by the name `--only` takes.
pub const SCENARIOS: &[&str] = &["batching", "neighbour", "churn", "threads"];

/// Runs one scenario by name.
pub fn scenario(kit: &mut Kit, name: &str) -> Result<Value> {
    match name {
        "batching" => batching(kit),
        "neighbour" => neighbour(kit),
        "churn" => churn(kit),
        "threads" => threads(kit),
        _ => Err(format!(
            "unknown scenario {name}; the scheduler's are: {}",
            SCENARIOS.join(", ")
        )),
    }
}

/// The `/metrics` text of the admin API at `admin` (`http://ADDR`).
fn metrics(admin: &str) -> Result<String> {
    let addr = admin.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The sum of every series of `name` (any labels) in a metrics text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Rows per run over a stretch of load: the change in the batch-size histogram's sum over the
/// change in its count.
fn mean_batch(before: &str, after: &str) -> f64 {
    let delta = |name: &str| metric_sum(after, name) - metric_sum(before, name);
    let runs = delta("corral_nn_batch_size_count");
    if runs > 0.0 {
        delta("corral_nn_batch_size_sum") / runs
    } else {
        0.0
    }
}

/// A `bench-nn` raw-tensor load on tenant `t0`, or rotating over `tenants` tenants.
fn tensor_load(corral: &Corral, body: &Path, shape: &str, tenants: usize) -> Load {
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

/// Sweeps `load` and adds each point's mean batch size, and the server's CPU time by thread
/// kind (run threads against the async workers that do HTTP, instances and guests).
fn sweep_batches(
    kit: &mut Kit,
    corral: &Corral,
    load: &Load,
    levels: &[u32],
) -> Result<Vec<Value>> {
    wrk(kit, load, 2, 1, false)?;
    let mut points = Vec::new();
    for &c in levels {
        let before = metrics(&corral.admin)?;
        let cpu_before = thread_cpu(corral.server.pid());
        let mut point = wrk(kit, load, c, kit.plan.seconds, points.is_empty())?;
        let cpu_after = thread_cpu(corral.server.pid());
        point["mean_batch"] = json!(mean_batch(&before, &metrics(&corral.admin)?));
        let spent =
            |kind: &str| cpu_after.get(kind).unwrap_or(&0.0) - cpu_before.get(kind).unwrap_or(&0.0);
        point["cpu_run_threads_s"] = json!(spent("corral-run"));
        point["cpu_async_workers_s"] = json!(spent("tokio-rt-worker"));
        points.push(point);
    }
    Ok(points)
}

/// CPU seconds (user + system) of a process's threads, by thread name with any trailing
/// number dropped (`corral-run-0` counts as `corral-run`).
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_kind;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let kind = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        *by_kind.entry(kind.to_owned()).or_insert(0.0) += ticks / 100.0;
    }
    by_kind
}

/// Batching off (`max_batch_size = 1`) against on (the default), on the raw-tensor
/// EfficientNet-Lite0 for one tenant and for 8 tenants sharing the model, and on a wide MLP
/// whose batch-1 run is bound by reading its 34 MB of weights.
fn batching(kit: &mut Kit) -> Result<Value> {
    let levels = [1, 4, 8, 16, 32];
    let mut sides = BTreeMap::new();
    for (side, batch) in [("off", "1"), ("on", "32")] {
        let env = [("CORRAL_BATCHING_MAX_BATCH_SIZE", batch)];
        // One server per model and side, so that no model runs on a heap the other shaped.
        let corral = Corral::start_with(kit, &format!("batching-{side}"), &env)?;
        let classifier = format!("model={}", kit.classifier.display());
        corral.tenants(kit, 0..8, &guest("bench-nn"), &classifier, false)?;
        let tensor = kit.tensor.clone();
        let one = sweep_batches(
            kit,
            &corral,
            &tensor_load(&corral, &tensor, "1,3,224,224", 1),
            &levels,
        )?;
        let eight = sweep_batches(
            kit,
            &corral,
            &tensor_load(&corral, &tensor, "1,3,224,224", 8),
            &levels,
        )?;
        drop(corral);
        let corral = Corral::start_with(kit, &format!("batching-wide-{side}"), &env)?;
        let wide = format!("model={}", kit.work.join("wide_mlp.onnx").display());
        corral.tenants(kit, 0..1, &guest("bench-nn"), &wide, false)?;
        let wide_load = tensor_load(&corral, &kit.work.join("wide.f32"), "1,256", 1);
        let mlp = sweep_batches(kit, &corral, &wide_load, &levels)?;
        sides.insert(
            side,
            json!({ "classifier_1_tenant": one, "classifier_8_tenants": eight, "wide_mlp": mlp }),
        );
    }
    Ok(json!(sides))
}

/// The `[inference]` split: one thread per run and a run per core (the default) against all
/// cores in one run, and against what Corral did before the scheduler (four runs at once, each
/// with ONNX Runtime's default of a thread per core), on the raw-tensor EfficientNet-Lite0.
fn threads(kit: &mut Kit) -> Result<Value> {
    let levels = [1, 2, 8, 32];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sides = BTreeMap::new();
    for (side, runs, threads) in [
        ("default", 0, 0),
        ("one_run", 1, cores),
        ("before", 4, cores),
    ] {
        let (runs, threads) = (runs.to_string(), threads.to_string());
        let corral = Corral::start_with(
            kit,
            &format!("threads-{side}"),
            &[
                ("CORRAL_INFERENCE_RUNS", runs.as_str()),
                ("CORRAL_INFERENCE_THREADS", threads.as_str()),
                // Batching off: this compares thread splits alone.
                ("CORRAL_BATCHING_MAX_BATCH_SIZE", "1"),
            ],
        )?;
        let classifier = format!("model={}", kit.classifier.display());
        corral.tenants(kit, 0..1, &guest("bench-nn"), &classifier, false)?;
        let load = tensor_load(&corral, &kit.tensor.clone(), "1,3,224,224", 1);
        wrk(kit, &load, 2, 1, false)?;
        let mut points = Vec::new();
        for &c in &levels {
            points.push(wrk(kit, &load, c, kit.plan.seconds, points.is_empty())?);
        }
        sides.insert(
            side,
            json!({ "runs": runs, "threads": threads, "points": points }),
        );
    }
    Ok(json!(sides))
}

/// A light tenant (the tiny tabular MLP over JSON, 4 connections) alone, then while a heavy
/// tenant floods EfficientNet-Lite0 raw tensors at 32 connections.
fn neighbour(kit: &mut Kit) -> Result<Value> {
    let corral = Corral::start(kit, "neighbour")?;
    let classifier = format!("model={}", kit.classifier.display());
    corral.tenants(kit, 0..1, &guest("bench-nn"), &classifier, false)?;
    let mlp = format!("model={}", kit.mlp.display());
    corral.tenants(kit, 1..2, &guest("bench-nn"), &mlp, false)?;
    let light = corral_load(
        &corral,
        1,
        "/json",
        "POST",
        Some(&kit.features.clone()),
        &["Content-Type: application/json"],
    );
    let heavy = tensor_load(&corral, &kit.tensor.clone(), "1,3,224,224", 1);
    let seconds = kit.plan.seconds * 2;
    wrk(kit, &light, 2, 1, false)?;
    let alone = wrk(kit, &light, 4, seconds, true)?;
    // The flood starts first and ends after the light run.
    let flood = wrk_command(&heavy, 32, seconds + 3)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    std::thread::sleep(Duration::from_secs(2));
    let during = wrk(kit, &light, 4, seconds, false)?;
    let output = flood.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let heavy_point: Value = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    Ok(json!({ "alone": alone, "during_flood": during, "heavy": heavy_point }))
}

/// EfficientNet-Lite0 with a `doc_string` naming `n` appended (field 6 of ModelProto): the
/// same network, distinct bytes.
fn distinct_classifier(kit: &Kit, dir: &Path, n: usize) -> Result<PathBuf> {
    let mut bytes = std::fs::read(&kit.classifier).map_err(|e| e.to_string())?;
    let doc = format!("copy {n}");
    bytes.push(0x32);
    bytes.push(u8::try_from(doc.len()).map_err(|e| e.to_string())?);
    bytes.extend_from_slice(doc.as_bytes());
    let path = dir.join(format!("t{n}.onnx"));
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    Ok(path)
}

/// 50 tenants, each with its own copy of EfficientNet-Lite0, under a budget that holds 10;
/// requests rotate over all 50, so nearly every one finds its model unloaded. Reports
/// throughput, the loads' time, and the most resident bytes seen (sampled every 100 ms).
fn churn(kit: &mut Kit) -> Result<Value> {
    let models = 50;
    let dir = kit.work.join("churn-models");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for n in 0..models {
        distinct_classifier(kit, &dir, n)?;
    }
    // One model's measured size, from a server with room for all.
    let one = {
        let corral = Corral::start(kit, "churn-measure")?;
        let model = format!("model={}", dir.join("t0.onnx").display());
        corral.tenants(kit, 0..1, &guest("bench-nn"), &model, false)?;
        metric_sum(&metrics(&corral.admin)?, "corral_model_resident_bytes")
    };
    let budget = (one * 10.5) as u64;
    let corral = Corral::start_with(
        kit,
        "churn",
        &[("CORRAL_MODELS_MEMORY_BYTES", &budget.to_string())],
    )?;
    let model = format!("model={}/{{tenant}}.onnx", dir.display());
    corral.tenants(kit, 0..models, &guest("bench-nn"), &model, false)?;
    let before = metrics(&corral.admin)?;
    let load = Load {
        hosts: Some(("t%d.localhost".into(), models)),
        ..tensor_load(&corral, &kit.tensor.clone(), "1,3,224,224", models)
    };
    // Sample the resident bytes while the load runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let admin = corral.admin.clone();
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut most: f64 = 0.0;
            while sampling.load(Ordering::SeqCst) {
                if let Ok(text) = metrics(&admin) {
                    most = most.max(metric_sum(&text, "corral_model_resident_bytes"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        })
    };
    let seconds = kit.plan.seconds * 2;
    let point = wrk(kit, &load, 4, seconds, true)?;
    sampling.store(false, Ordering::SeqCst);
    let most = sampler.join().map_err(|_| "sampler thread panicked")?;
    let after = metrics(&corral.admin)?;
    let delta = |name: &str| metric_sum(&after, name) - metric_sum(&before, name);
    let loads = delta("corral_model_load_seconds_count");
    let buckets = load_buckets(&before, &after);
    Ok(json!({
        "models": models,
        "model_bytes": one,
        "budget_bytes": budget,
        "most_resident_bytes": most,
        "point": point,
        "loads": loads,
        "evictions": delta("corral_model_evictions_total"),
        "load_seconds_mean": if loads > 0.0 { delta("corral_model_load_seconds_sum") / loads } else { 0.0 },
        "load_p50_le": quantile(&buckets, 0.5),
        "load_p99_le": quantile(&buckets, 0.99),
    }))
}

/// The load-time histogram's buckets over a stretch: (upper bound, count in that stretch).
fn load_buckets(before: &str, after: &str) -> Vec<(f64, f64)> {
    let read = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("corral_model_load_seconds_bucket{")?;
                let le = rest.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (read(before), read(after));
    a.iter()
        .map(|(le, n)| {
            let was = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of a cumulative histogram.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// Where the scheduler's section of `docs/benchmarks.md` begins and ends.
pub const BEGIN: &str = "<!-- scheduler benchmarks: written by cargo xtask bench --only \
                         batching|neighbour|churn|threads -->";
pub const END: &str = "<!-- end of scheduler benchmarks -->";

/// `doc` with its scheduler section (between [`BEGIN`] and [`END`]) replaced by `section`, or
/// `section` appended.
pub fn splice(doc: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}\n");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{block}{}",
                &doc[..begin],
                &doc[end + END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{block}", doc.trim_end()),
    }
}

/// The scheduler's section of `docs/benchmarks.md`, from the results by scenario name, with
/// its goals.
pub fn report(results: &Value, commands: &[String]) -> String {
    let mut goals: Vec<(String, String, String, bool)> = Vec::new();
    let body = sections(results, &mut goals);
    let mut out = String::from("# The inference scheduler\n\n");
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench --only SCENARIO` ({}), on the same machine as the rest \
         of this document; each comparison's sides in the same run, {} s per point. The \
         sections above were measured before the scheduler existed (one first-come pool of \
         runs, ONNX Runtime's default threads); a full `cargo xtask bench` measures them \
         again.\n",
        results["run"]["date"].as_str().unwrap_or(""),
        results["run"]["seconds_per_point"],
    );
    out.push_str("| goal | target | result | met |\n|---|---|---|---|\n");
    for (goal, target, result, met) in &goals {
        let _ = writeln!(
            out,
            "| {goal} | {target} | {result} | {} |",
            if *met { "yes" } else { "**no**" }
        );
    }
    out.push('\n');
    out.push_str(&body);
    if !commands.is_empty() {
        out.push_str("Commands:\n\n```\n");
        for command in commands {
            let _ = writeln!(out, "{command}");
        }
        out.push_str("```\n\n");
    }
    out
}

fn sections(results: &Value, goals: &mut Vec<(String, String, String, bool)>) -> String {
    let mut out = String::new();
    let ms = |us: &Value| format!("{:.1}", us.as_f64().unwrap_or(f64::NAN) / 1000.0);
    if let Some(b) = results.get("batching") {
        let _ = writeln!(out, "## Batching off against on\n");
        out.push_str(
            "`corral serve` with `[batching] max_batch_size = 1` (off) and `32` (on, the \
             default; `max_delay_us = 0`, so nothing waits for company), both with the default \
             `[inference]` split (one intra-op thread per run, one run per core). `bench-nn` \
             raw tensors through HTTP; \"batch\" is the mean rows per run from \
             `corral_nn_batch_size`.\n\n",
        );
        for (key, title) in [
            ("classifier_1_tenant", "EfficientNet-Lite0, one tenant"),
            (
                "classifier_8_tenants",
                "EfficientNet-Lite0, 8 tenants sharing the model (requests rotate over them)",
            ),
            (
                "wide_mlp",
                "Wide MLP (256 → 2048 → 2048 → 2048 → 16, 34 MB of weights), one tenant",
            ),
        ] {
            let _ = writeln!(out, "**{title}**\n");
            out.push_str("| C | off req/s | off p50 / p99 ms | on req/s | on p50 / p99 ms | batch (on) | on / off |\n|---|---|---|---|---|---|---|\n");
            let (off, on) = (&b["off"][key], &b["on"][key]);
            let (Some(off), Some(on)) = (off.as_array(), on.as_array()) else {
                continue;
            };
            let mut never_slower = true;
            for (o, n) in off.iter().zip(on) {
                let (ro, rn) = (
                    o["rps"].as_f64().unwrap_or(0.0),
                    n["rps"].as_f64().unwrap_or(0.0),
                );
                let gain = rn / ro;
                never_slower &= gain >= 0.95;
                let _ = writeln!(
                    out,
                    "| {} | {ro:.1} | {} / {} | {rn:.1} | {} / {} | {:.1} | {gain:.2}× |",
                    n["concurrency"],
                    ms(&o["p50_us"]),
                    ms(&o["p99_us"]),
                    ms(&n["p50_us"]),
                    ms(&n["p99_us"]),
                    n["mean_batch"].as_f64().unwrap_or(0.0),
                );
            }
            out.push('\n');
            goals.push((
                format!("batching never slower than off: {title}"),
                "≥ 0.95× at every C (run-to-run noise)".into(),
                if never_slower {
                    "yes".into()
                } else {
                    "no".into()
                },
                never_slower,
            ));
            if key == "wide_mlp" {
                let at16 = |side: &Value| {
                    side.as_array()
                        .and_then(|p| p.iter().find(|p| p["concurrency"] == 16))
                        .and_then(|p| p["rps"].as_f64())
                        .unwrap_or(0.0)
                };
                let gain = at16(&b["on"][key]) / at16(&b["off"][key]);
                if let Some(p) = b["on"][key]
                    .as_array()
                    .and_then(|p| p.iter().find(|p| p["concurrency"] == 16))
                {
                    let requests = p["requests"].as_f64().unwrap_or(0.0).max(1.0);
                    let runs = p["cpu_run_threads_s"].as_f64().unwrap_or(0.0);
                    let host = p["cpu_async_workers_s"].as_f64().unwrap_or(0.0);
                    let _ = writeln!(
                        out,
                        "Where the time goes with batching on at C = 16 (the server's CPU time \
                         by thread over the point): run threads {runs:.2} s, async workers \
                         (HTTP, instances, guests) {host:.2} s, for {requests:.0} requests: \
                         {:.3} ms of runs and {:.3} ms of host path per request, with batches \
                         of {:.1} rows on average. With `max_delay_us = 0` a batch is what \
                         queued while the previous run executed, and the host's own path per \
                         request competes with the runs for the same cores.\n",
                        runs * 1000.0 / requests,
                        host * 1000.0 / requests,
                        p["mean_batch"].as_f64().unwrap_or(0.0),
                    );
                }
                goals.push((
                    "wide MLP at C = 16, batching on / off".into(),
                    "≥ 3×".into(),
                    format!("{gain:.2}×"),
                    gain >= 3.0,
                ));
            }
        }
    }
    if let Some(t) = results.get("threads") {
        let _ = writeln!(out, "## Run threads: how `[inference]` splits the cores\n");
        out.push_str(
            "EfficientNet-Lite0 raw tensors, one tenant, batching off, three splits of the same \
             cores: the default (one intra-op thread per run, one run per core), every core in \
             one run at a time, and what Corral did before the scheduler (up to four runs at \
             once, each with ONNX Runtime's default of one thread per core).\n\n\
             | C | default req/s | p50 / p99 ms | one run, all cores req/s | p50 / p99 ms | before req/s | p50 / p99 ms |\n\
             |---|---|---|---|---|---|---|\n",
        );
        let points = |side: &str| t[side]["points"].as_array().cloned().unwrap_or_default();
        let (d, o, b) = (points("default"), points("one_run"), points("before"));
        for ((d, o), b) in d.iter().zip(&o).zip(&b) {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} / {} | {:.1} | {} / {} | {:.1} | {} / {} |",
                d["concurrency"],
                d["rps"].as_f64().unwrap_or(0.0),
                ms(&d["p50_us"]),
                ms(&d["p99_us"]),
                o["rps"].as_f64().unwrap_or(0.0),
                ms(&o["p50_us"]),
                ms(&o["p99_us"]),
                b["rps"].as_f64().unwrap_or(0.0),
                ms(&b["p50_us"]),
                ms(&b["p99_us"]),
            );
        }
        out.push('\n');
    }
    if let Some(n) = results.get("neighbour") {
        let _ = writeln!(out, "## Noisy neighbour\n");
        out.push_str(
            "A light tenant (the tiny tabular MLP over JSON, 4 connections) alone, then while a \
             heavy tenant floods EfficientNet-Lite0 raw tensors at 32 connections on the same \
             server (default settings: fair shares of the run threads, batching on).\n\n\
             | light tenant | req/s | p50 ms | p99 ms |\n|---|---|---|---|\n",
        );
        for (label, p) in [
            ("alone", &n["alone"]),
            ("during the flood", &n["during_flood"]),
        ] {
            let _ = writeln!(
                out,
                "| {label} | {:.1} | {} | {} |",
                p["rps"].as_f64().unwrap_or(0.0),
                ms(&p["p50_us"]),
                ms(&p["p99_us"])
            );
        }
        let heavy = &n["heavy"];
        let _ = writeln!(
            out,
            "\nThe heavy tenant meanwhile: {} requests, p50 {} ms, p99 {} ms.\n",
            heavy["requests"],
            ms(&heavy["p50_us"]),
            ms(&heavy["p99_us"])
        );
        let alone = n["alone"]["p99_us"].as_f64().unwrap_or(0.0);
        let during = n["during_flood"]["p99_us"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        let bound = (5.0 * alone).max(50_000.0);
        goals.push((
            "light tenant's p99 during a flood".into(),
            "≤ 5× alone or 50 ms, whichever is larger".into(),
            format!("{:.1} ms (bound {:.1} ms)", during / 1000.0, bound / 1000.0),
            during <= bound,
        ));
    }
    if let Some(c) = results.get("churn") {
        let _ = writeln!(out, "## Model churn under a memory budget\n");
        let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1 << 20) as f64;
        let p = &c["point"];
        let _ = writeln!(
            out,
            "{} tenants, each with its own copy of EfficientNet-Lite0 ({:.1} MiB measured \
             loaded), under `[models] memory_bytes` = {:.1} MiB (10.5 models); requests rotate \
             over all of them at 4 connections, so nearly every request finds its model \
             unloaded.\n\n\
             | req/s | p50 ms | p99 ms | loads | evictions | load mean ms | load p50 / p99 ms (bucket bound) | most resident MiB |\n\
             |---|---|---|---|---|---|---|---|\n\
             | {:.1} | {} | {} | {} | {} | {:.1} | ≤ {:.0} / ≤ {:.0} | {:.1} |\n",
            c["models"],
            mib(&c["model_bytes"]),
            mib(&c["budget_bytes"]),
            p["rps"].as_f64().unwrap_or(0.0),
            ms(&p["p50_us"]),
            ms(&p["p99_us"]),
            c["loads"],
            c["evictions"],
            c["load_seconds_mean"].as_f64().unwrap_or(0.0) * 1000.0,
            c["load_p50_le"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            c["load_p99_le"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            mib(&c["most_resident_bytes"]),
        );
        let within = c["most_resident_bytes"].as_f64().unwrap_or(f64::INFINITY)
            <= c["budget_bytes"].as_f64().unwrap_or(0.0);
        goals.push((
            "resident model bytes under churn".into(),
            "never above the budget".into(),
            format!(
                "{:.1} of {:.1} MiB",
                mib(&c["most_resident_bytes"]),
                mib(&c["budget_bytes"])
            ),
            within,
        ));
    }
    out
}
