//! Scenario 1, host overhead: EfficientNet-Lite0 on a raw tensor through Corral against ONNX
//! Runtime alone, and its section of the document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{corral_load, probe, sweep};
use crate::bench::report::{Goal, ms, peak, single, sweep_table};
use crate::bench::server::{Corral, guest};

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
    Ok(json!({
        "native": native,
        "native_corral_threads": native_corral_threads,
        "corral": http,
        "corral_read": read,
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
    if o["corral_read"].is_array() {
        let read_c1 = single(&o["corral_read"]);
        let read_peak = peak(&o["corral_read"]);
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
            "- Without the model: the same 602,112-byte request to `bench-nn`'s `/read`, which \
             reads the whole body into guest memory and answers 4,000 bytes (no `wasi:nn`, no \
             run), takes {} p50 at concurrency 1 and peaks at {:.1} req/s (at {}). So of the \
             {:+.0} µs added at concurrency 1, about {:.0} µs is the request's transport, \
             instance and body (the loopback connection and wrk included, which native has \
             not), and {:.0} µs the `wasi:nn` path: the tensor out of guest memory, the hand-off \
             to a run thread and back, the output into the guest.\n\
             - The load generator runs on the same cores: wrk itself used {:.2} ms of CPU per \
             request at Corral's peak (native has no client), {:.1}% of the machine's {} cores \
             at that rate.\n",
            ms(read_c1.2),
            read_peak.1,
            read_peak.0,
            added,
            read_c1.2,
            added - read_c1.2,
            client_ms,
            client_ms * corral_peak.1 / 10.0 / cores,
            cores,
        );
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
