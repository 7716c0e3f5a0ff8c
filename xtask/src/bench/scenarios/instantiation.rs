//! Scenario 4, instantiation per request, timed in process by `bench_probe instantiate`, and
//! its section of the document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{AsRefOsStr, probe};
use crate::bench::report::Goal;
use crate::bench::server::guest;

/// 4. Per-request instance creation, in process.
pub(in crate::bench) fn instantiation(kit: &mut Kit) -> Result<Value> {
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

/// Section 4 of the document, with its goal.
pub(in crate::bench) fn section(out: &mut String, results: &Value, goals: &mut Vec<Goal>) {
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
}
