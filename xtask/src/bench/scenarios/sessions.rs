//! Scenario 7, shared sessions: 100 tenants on the same model bytes against 100 separate
//! ONNX Runtime sessions, and its section of the document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{Load, probe, sweep};
use crate::bench::report::{peak, sweep_table};
use crate::bench::server::{Corral, guest};

/// 7. 100 tenants on the same model bytes (one shared session) against 100 separate sessions.
pub(in crate::bench) fn sessions(kit: &mut Kit) -> Result<Value> {
    let count = 100;
    let classifier = kit.classifier.clone();
    let separate = probe(kit, &[&"sessions", &classifier, &count.to_string()])?;
    let corral = Corral::start(kit, "sessions")?;
    let one = corral.server.rss_mib()?;
    let model = format!("model={}", classifier.display());
    corral.tenants(kit, 0..count, &guest("bench-nn"), &model, false)?;
    let deployed = corral.server.rss_mib()?;
    let load = Load {
        url: format!("http://{}/tensor", corral.data),
        method: "POST",
        body: Some(kit.tensor.clone()),
        headers: vec![
            "x-shape: 1,3,224,224".into(),
            "Content-Type: application/octet-stream".into(),
        ],
        hosts: Some(("t%d.localhost".into(), count)),
    };
    let levels: Vec<u32> = kit
        .plan
        .concurrency
        .iter()
        .copied()
        .filter(|&c| c >= 4)
        .collect();
    let points = sweep(kit, &load, &levels)?;
    let loaded = corral.server.rss_mib()?;
    Ok(json!({
        "tenants": count,
        "separate": separate.first().cloned().unwrap_or(Value::Null),
        "corral_rss_mib": { "empty": one, "deployed": deployed, "after_load": loaded },
        "corral_100_tenants": points,
    }))
}

/// Section 7 of the document (its throughput against section 1's).
pub(in crate::bench) fn section(out: &mut String, results: &Value) {
    let s = &results["sessions"];
    let corral_peak = peak(&results["overhead"]["corral"]);
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    let _ = writeln!(out, "## 7. Shared sessions\n");
    let shared_peak = peak(&s["corral_100_tenants"]);
    let _ = writeln!(
        out,
        "{} tenants deploy the same EfficientNet-Lite0 bytes with `bench-nn`; Corral keeps one \
         session for all of them. `bench_probe sessions` loads the same file as {} separate \
         ONNX Runtime sessions (what a server without sharing holds) and as {} loads through \
         Corral's session pool, measuring resident memory.\n\n\
         | | memory |\n|---|---|\n\
         | {} separate sessions (in process) | {:.0} MiB |\n\
         | {} loads through the shared pool (in process) | {:.0} MiB |\n\
         | `corral serve`, empty | {:.0} MiB |\n\
         | `corral serve`, {} tenants deployed on the one model | {:.0} MiB |\n\
         | `corral serve`, after the load below | {:.0} MiB |\n\n\
         Throughput with requests spread over all {} tenants' host names (raw tensor, as in 1):\n",
        s["tenants"],
        s["tenants"],
        s["tenants"],
        s["tenants"],
        mib(&s["separate"]["separate_sessions_bytes"]),
        s["tenants"],
        mib(&s["separate"]["shared_sessions_bytes"]),
        s["corral_rss_mib"]["empty"].as_f64().unwrap_or(0.0),
        s["tenants"],
        s["corral_rss_mib"]["deployed"].as_f64().unwrap_or(0.0),
        s["corral_rss_mib"]["after_load"].as_f64().unwrap_or(0.0),
        s["tenants"],
    );
    sweep_table(
        out,
        &[("100 tenants, one session", &s["corral_100_tenants"])],
    );
    let _ = writeln!(
        out,
        "- Peak {:.1} req/s over {} tenants against {:.1} req/s for one tenant in 1 ({:.0}%).\n",
        shared_peak.1,
        s["tenants"],
        corral_peak.1,
        shared_peak.1 / corral_peak.1 * 100.0
    );
}
