//! Scenario 1, host overhead: EfficientNet-Lite0 on a raw tensor through Corral against ONNX
//! Runtime alone, and its section of the document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{corral_load, probe, sweep, wrk};
use crate::bench::report::{Goal, ms, peak, single, sweep_table};
use crate::bench::server::{Corral, guest, metric_sum, metrics};

/// Intra-op threads per run in `corral serve`'s default `[inference]` split.
const CORRAL_THREADS: &str = "1";

/// The native model-only ceiling: ONNX Runtime alone at its best thread setting (the better
/// peak of its default and Corral's split), as (concurrency, runs/s, p50, p99).
pub(in crate::bench) fn native_ceiling(results: &Value) -> (u64, f64, f64, f64) {
    let o = &results["overhead"];
    [peak(&o["native"]), peak(&o["native_corral_threads"])]
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}

/// 1. The host's overhead over ONNX Runtime itself on EfficientNet-Lite0, preprocessing
///    excluded (the guest takes the raw tensor).
pub(in crate::bench) fn overhead(kit: &mut Kit) -> Result<Value> {
    let seconds = kit.plan.seconds.to_string();
    let native_levels = "1,2,4,8".to_owned();
    let classifier = kit.classifier.clone();
    // ONNX Runtime's own default (one intra-op thread per core), and the split `corral serve`
    // makes by default (one intra-op thread per run, one run per core).
    let mut natives = Vec::new();
    for threads in ["0", CORRAL_THREADS] {
        natives.push(probe(
            kit,
            &[
                &"native",
                &classifier,
                &"input",
                &"1,3,224,224",
                &seconds,
                &native_levels,
                &threads,
            ],
        )?);
    }
    let native_corral_threads = natives.pop();
    let native = natives.pop();
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
    // The same request without wasi:nn or a model: what the transport, the instance and the
    // body into guest memory cost on their own.
    let read = corral_load(
        &corral,
        0,
        "/read",
        "POST",
        Some(&kit.tensor.clone()),
        &["Content-Type: application/octet-stream"],
    );
    let read_levels: Vec<u32> = levels.iter().copied().filter(|&c| c <= 8).collect();
    let read = sweep(kit, &read, &read_levels)?;
    // Concurrency 1 once more, with the server's own count of its runs' time around it: how
    // long a run takes inside the server, next to native's.
    let before = metrics(&corral.admin)?;
    let single = wrk(kit, &load, 1, kit.plan.seconds, false)?;
    let after = metrics(&corral.admin)?;
    let delta = |name: &str| metric_sum(&after, name) - metric_sum(&before, name);
    let runs = delta("corral_nn_compute_seconds_count");
    let run_us = delta("corral_nn_compute_seconds_sum") / runs.max(1.0) * 1e6;
    Ok(json!({
        "native": native,
        "native_corral_threads": native_corral_threads,
        "corral": http,
        "corral_read": read,
        "corral_single": { "point": single, "runs": runs, "run_mean_us": run_us },
    }))
}

/// Section 1 of the document, with its goals.
pub(in crate::bench) fn section(
    out: &mut String,
    results: &Value,
    goals: &mut Vec<Goal>,
    plot: &impl Fn(&str) -> String,
) {
    let o = &results["overhead"];
    // Latency at concurrency 1 against ONNX Runtime with the threads Corral gives a run (older
    // results without that column: its default); throughput against its best setting.
    let same_threads = if o["native_corral_threads"].is_array() {
        &o["native_corral_threads"]
    } else {
        &o["native"]
    };
    let (native_c1, corral_c1) = (single(same_threads), single(&o["corral"]));
    let (native_peak, corral_peak) = (native_ceiling(results), peak(&o["corral"]));
    let added = corral_c1.2 - native_c1.2;
    let ratio = corral_peak.1 / native_peak.1;
    let _ = writeln!(
        out,
        "## 1. Host overhead: EfficientNet-Lite0 on a raw tensor\n"
    );
    out.push_str(
        "ONNX Runtime alone, in process (`bench_probe native`: threads calling `Run` on one shared \
         session, the same session code and settings `corral serve` uses), with its default \
         threads (one intra-op thread per core) and with the split `corral serve` makes by \
         default (one intra-op thread per run, one run per core), against the same model \
         through Corral end to end: loopback HTTP, routing, a fresh instance of the `bench-nn` \
         guest per request, which passes the 602,112-byte body to `wasi:nn` as the input tensor \
         and answers the raw 4,000-byte output. No preprocessing on either side.\n\n",
    );
    let mut columns = vec![("native, ORT threads", &o["native"])];
    if o["native_corral_threads"].is_array() {
        columns.push(("native, Corral's threads", &o["native_corral_threads"]));
    }
    columns.push(("Corral", &o["corral"]));
    if o["corral_read"].is_array() {
        columns.push(("Corral, body only (`/read`)", &o["corral_read"]));
    }
    sweep_table(out, &columns);
    let _ = writeln!(
        out,
        "- Concurrency 1: p50 {} native with Corral's threads, {} through Corral: **{:+.0} µs** \
         added; p99 {} vs {}.\n\
         - Saturation: native at its best {:.1} runs/s (at {}), Corral {:.1} req/s (at {}): \
         **{:.1}%** of native.\n",
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
    if o["corral_read"].is_array() && o["corral_single"].is_object() {
        let read_peak = peak(&o["corral_read"]);
        let mean_at_1 = |v: &Value| {
            v.as_array()
                .and_then(|points| points.iter().find(|p| p["concurrency"] == 1))
                .and_then(|p| p["mean_us"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let extra = &o["corral_single"];
        let request = extra["point"]["mean_us"].as_f64().unwrap_or(f64::NAN);
        let body = mean_at_1(&o["corral_read"]);
        let run = extra["run_mean_us"].as_f64().unwrap_or(f64::NAN);
        // One thread running back to back: its mean run is the inverse of its rate.
        let native_run = 1e6 / native_c1.1;
        let _ = writeln!(
            out,
            "- Without the model: the same 602,112-byte request to `bench-nn`'s `/read`, which \
             reads the whole body into guest memory and answers 4,000 bytes (no `wasi:nn`, no \
             run), peaks at {:.1} req/s (at {}).\n\
             - Where a request's time goes at concurrency 1 (means of one more {:.0} s point, with \
             the server's own count of its runs' time around it): {} through Corral = {} for \
             the request without the model (`/read`: loopback HTTP with wrk on the same cores, \
             the instance, the body into guest memory) + {} for the run inside the server \
             (ONNX Runtime alone with the same threads: {} per run, so {} of it is the run \
             itself being slower among the server's other work) + {} for the rest of the \
             `wasi:nn` path (the tensor out of guest memory, the hand-off to a run thread and \
             back, the output into the guest).",
            read_peak.1,
            read_peak.0,
            extra["point"]["duration_us"].as_f64().unwrap_or(0.0) / 1e6,
            ms(request),
            ms(body),
            ms(run),
            ms(native_run),
            ms(run - native_run),
            ms(request - body - run),
        );
        // wrk's CPU per request at Corral's peak, and the share of the machine's cores it took.
        let client_ms = o["corral"]
            .as_array()
            .and_then(|points| {
                points
                    .iter()
                    .find(|p| p["concurrency"].as_u64() == Some(corral_peak.0))
            })
            .and_then(|p| p["client_cpu_ms_per_request"].as_f64())
            .unwrap_or(f64::NAN);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let _ = writeln!(
            out,
            "- The load generator runs on the same cores: wrk itself used {client_ms:.2} ms of \
             CPU per request at Corral's peak (native has no client), {:.1}% of the machine's \
             {cores} cores at that rate.",
            client_ms * corral_peak.1 / 10.0 / cores,
        );
        if let Some(when) = o["remeasured"].as_str() {
            let _ = writeln!(
                out,
                "- This section was measured again on its own (`cargo xtask bench --only \
                 overhead`, {when}), after the rest of the run; the image classifier's ratio to \
                 the native ceiling in section 3 uses these native figures."
            );
        }
        out.push('\n');
    }
    out.push_str(&plot("overhead"));
    goals.push((
        "1. throughput vs native ONNX Runtime".into(),
        "≥ 95%".into(),
        format!("{:.1}%", ratio * 100.0),
        ratio >= 0.95,
    ));
    goals.push((
        "1. added p50 latency at concurrency 1 (native with Corral's threads)".into(),
        "≤ 300 µs".into(),
        format!("{added:.0} µs"),
        added <= 300.0,
    ));
}
