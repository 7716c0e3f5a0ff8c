//! Scheduler scenario `batching`: batching off against on, on EfficientNet-Lite0 for one and
//! for 8 tenants and on a wide MLP, and its section of the scheduler's part of the document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{Load, tensor_load, wrk};
use crate::bench::report::{Goal, millis};
use crate::bench::server::{Corral, guest, metric_sum, metrics};

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
pub(in crate::bench) fn batching(kit: &mut Kit) -> Result<Value> {
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

/// The scheduler section's "Batching off against on", with its goals.
pub(in crate::bench) fn section(out: &mut String, b: &Value, goals: &mut Vec<Goal>) {
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
                millis(&o["p50_us"]),
                millis(&o["p99_us"]),
                millis(&n["p50_us"]),
                millis(&n["p99_us"]),
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
