//! Scheduler scenario `neighbour`: a light tenant alone and beside a heavy tenant's flood,
//! and its section of the scheduler's part of the document.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{corral_load, tensor_load, wrk, wrk_command};
use crate::bench::report::{Goal, millis};
use crate::bench::server::{Corral, guest};

/// A light tenant (the tiny tabular MLP over JSON, 4 connections) alone, then while a heavy
/// tenant floods EfficientNet-Lite0 raw tensors at 32 connections.
pub(in crate::bench) fn neighbour(kit: &mut Kit) -> Result<Value> {
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

/// The scheduler section's "Noisy neighbour", with its goal.
pub(in crate::bench) fn section(out: &mut String, n: &Value, goals: &mut Vec<Goal>) {
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
            millis(&p["p50_us"]),
            millis(&p["p99_us"])
        );
    }
    let heavy = &n["heavy"];
    let _ = writeln!(
        out,
        "\nThe heavy tenant meanwhile: {} requests, p50 {} ms, p99 {} ms.\n",
        heavy["requests"],
        millis(&heavy["p50_us"]),
        millis(&heavy["p99_us"])
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
