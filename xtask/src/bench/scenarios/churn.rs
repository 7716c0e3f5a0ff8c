//! Scheduler scenario `churn`: 50 distinct models under a memory budget that holds 10, and
//! its section of the scheduler's part of the document.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{Load, tensor_load, wrk};
use crate::bench::report::{Goal, millis};
use crate::bench::server::{Corral, guest, metric_sum, metrics};

/// EfficientNet-Lite0 with a `doc_string` naming `n` appended (field 6 of ModelProto): the
/// same network, distinct bytes.
pub(in crate::bench) fn distinct_classifier(kit: &Kit, dir: &Path, n: usize) -> Result<PathBuf> {
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
pub(in crate::bench) fn churn(kit: &mut Kit) -> Result<Value> {
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

/// The scheduler section's "Model churn under a memory budget", with its goal.
pub(in crate::bench) fn section(out: &mut String, c: &Value, goals: &mut Vec<Goal>) {
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
        millis(&p["p50_us"]),
        millis(&p["p99_us"]),
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
