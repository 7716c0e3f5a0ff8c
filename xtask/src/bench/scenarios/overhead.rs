//! Scenario 1, host overhead: EfficientNet-Lite0 on a raw tensor through Corral against ONNX
//! Runtime alone, and its section of the document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{corral_load, probe, sweep};
use crate::bench::report::{Goal, ms, peak, single, sweep_table};
use crate::bench::server::{Corral, guest};

/// 1. The host's overhead over ONNX Runtime itself on EfficientNet-Lite0, preprocessing
///    excluded (the guest takes the raw tensor).
pub(in crate::bench) fn overhead(kit: &mut Kit) -> Result<Value> {
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

/// Section 1 of the document, with its goals.
pub(in crate::bench) fn section(
    out: &mut String,
    results: &Value,
    goals: &mut Vec<Goal>,
    plot: &impl Fn(&str) -> String,
) {
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
    sweep_table(out, &[("native", &o["native"]), ("Corral", &o["corral"])]);
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
}
