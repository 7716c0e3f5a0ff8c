//! Scheduler scenario `threads`: how `[inference]` splits the cores (the default, one run
//! with every core, a run per core with every core each, and the split before the scheduler),
//! and its section.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{tensor_load, wrk};
use crate::bench::report::millis;
use crate::bench::server::{Corral, guest};

/// The `[inference]` split: one thread per run and a run per core (the default) against all
/// cores in one run, a run per core with every core each (a lone run gets them all, runs at
/// once share the session's threads), and what Corral did before the scheduler (four runs at
/// once, each with ONNX Runtime's default of a thread per core), on the raw-tensor
/// EfficientNet-Lite0.
pub(in crate::bench) fn threads(kit: &mut Kit) -> Result<Value> {
    let levels = [1, 2, 8, 32];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sides = BTreeMap::new();
    for (side, runs, threads) in [
        ("default", 0, 0),
        ("one_run", 1, cores),
        ("wide", cores, cores),
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

/// The splits in the order of the section's columns, with their headings.
const SIDES: [(&str, &str); 4] = [
    ("default", "default"),
    ("one_run", "one run, all cores"),
    ("wide", "a run per core, all cores each"),
    ("before", "before"),
];

/// The scheduler section's "Run threads".
pub(in crate::bench) fn section(out: &mut String, t: &Value) {
    let _ = writeln!(out, "## Run threads: how `[inference]` splits the cores\n");
    out.push_str(
        "EfficientNet-Lite0 raw tensors, one tenant, batching off, splits of the same cores: \
         the default (one intra-op thread per run, one run per core), every core in one run at \
         a time, one run per core with every core each (a run alone has them all; runs at once \
         share the session's intra-op threads), and what Corral did before the scheduler (up \
         to four runs at once, each with ONNX Runtime's default of one thread per core).\n\n",
    );
    // Results from before the `wide` split was measured have three columns.
    let sides: Vec<(&str, &str)> = SIDES
        .into_iter()
        .filter(|(side, _)| t[*side]["points"].is_array())
        .collect();
    out.push_str("| C |");
    for (_, heading) in &sides {
        let _ = write!(out, " {heading} req/s | p50 / p99 ms |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|---|".repeat(sides.len()));
    out.push('\n');
    let points: Vec<Vec<Value>> = sides
        .iter()
        .map(|(side, _)| t[*side]["points"].as_array().cloned().unwrap_or_default())
        .collect();
    let Some(rows) = points.first() else {
        return;
    };
    for (i, first) in rows.iter().enumerate() {
        let _ = write!(out, "| {} |", first["concurrency"]);
        for side in &points {
            let Some(p) = side.get(i) else {
                out.push_str(" – | – |");
                continue;
            };
            let _ = write!(
                out,
                " {:.1} | {} / {} |",
                p["rps"].as_f64().unwrap_or(0.0),
                millis(&p["p50_us"]),
                millis(&p["p99_us"]),
            );
        }
        out.push('\n');
    }
    out.push('\n');
}
