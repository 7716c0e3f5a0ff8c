//! Scenario 5, density: resident memory against the number of tenants, the first request to
//! a cold one, a restart on the same data, and their section of the document.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{AsRefOsStr, probe};
use crate::bench::report::{Goal, ms, percentile};
use crate::bench::server::{Corral, guest, until_ready};

/// One request to each of `hosts`, never asked before; latencies in microseconds.
fn first_requests(kit: &mut Kit, corral: &Corral, hosts: &[String]) -> Result<Vec<f64>> {
    let addr = corral.data.to_string();
    let features = kit.features.clone();
    let mut args: Vec<&dyn AsRefOsStr> = vec![&"first", &addr, &"/json", &features];
    for host in hosts {
        args.push(host);
    }
    Ok(probe(kit, &args)?
        .iter()
        .filter_map(|v| v["latency_us"].as_f64())
        .collect())
}

/// 5. Resident memory against the number of tenants, and the first request to a cold one.
pub(in crate::bench) fn density(kit: &mut Kit) -> Result<Value> {
    let mlp = format!("model={}", kit.mlp.display());
    let component = guest("bench-nn");
    let mut out = serde_json::Map::new();
    for (kind, counts, distinct) in [
        ("same", kit.plan.tenants.clone(), false),
        ("distinct", kit.plan.distinct.clone(), true),
    ] {
        let corral = Corral::start(kit, &format!("density-{kind}"))?;
        let empty = corral.server.rss_mib()?;
        let mut points = Vec::new();
        let mut deployed = 0;
        for &count in &counts {
            let seconds = corral.tenants(kit, deployed..count, &component, &mlp, distinct)?;
            deployed = count;
            std::thread::sleep(Duration::from_secs(1));
            let rss = corral.server.rss_mib()?;
            // Ten tenants deployed but never asked, spread over the range.
            let hosts: Vec<String> = (0..10.min(count))
                .map(|i| format!("t{}.localhost", i * count / 10.min(count)))
                .collect();
            let first = first_requests(kit, &corral, &hosts)?;
            points.push(json!({
                "tenants": count,
                "rss_mib": rss,
                "deploy_seconds": seconds,
                "first_request_us": first,
            }));
            eprintln!("xtask: density {kind}: {count} tenants, {rss:.0} MiB");
        }
        // Restart on the same data: every tenant comes back from the store and the compiled
        // component cache; then first requests to tenants never asked since the restart.
        let dir = corral.dir.clone();
        drop(corral);
        let started = Instant::now();
        let restarted = Corral::start_in(kit, &format!("density-{kind}-restart"), dir)?;
        let listening = started.elapsed().as_secs_f64();
        // Listeners come up first; every tenant is being rebuilt until /readyz answers 200.
        let ready = until_ready(&restarted.admin, started)?.as_secs_f64();
        let rss = restarted.server.rss_mib()?;
        let count = deployed;
        let hosts: Vec<String> = (0..10.min(count))
            .map(|i| format!("t{}.localhost", i * count / 10.min(count) + count / 20))
            .collect();
        let first = first_requests(kit, &restarted, &hosts)?;
        out.insert(
            kind.to_owned(),
            json!({
                "empty_rss_mib": empty,
                "points": points,
                "restart": {
                    "tenants": count,
                    "seconds_to_listen": listening,
                    "seconds_to_ready": ready,
                    "rss_mib": rss,
                    "first_request_us": first,
                },
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Section 5 of the document, with its goals.
pub(in crate::bench) fn section(
    out: &mut String,
    results: &Value,
    goals: &mut Vec<Goal>,
    plot: &impl Fn(&str) -> String,
) {
    let d = &results["density"];
    let _ = writeln!(out, "## 5. Density\n");
    out.push_str(
        "`corral serve` with N tenants, each with its own host name and an active deployment of \
         `bench-nn` plus the tiny MLP, created through the admin API four at a time \
         (`bench_probe tenants`). \"Same\": every tenant uploads the same component and model \
         bytes. \"Distinct\": each tenant's component differs (a custom section naming the tenant \
         is appended), so each is compiled and cached on its own. Resident memory is the \
         process's VmRSS after the deployments; the first-request latencies are one request each \
         to ten tenants never asked before (a new connection, `POST /json`), then again after a \
         restart on the same data directory, where every component comes from the compiled \
         cache.\n\n\
         | tenants | component | RSS | per tenant beyond 1 | deploy time | first request p50 | max |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut per_tenant_same = f64::NAN;
    let mut restart_first = Vec::new();
    for kind in ["same", "distinct"] {
        let pts = d[kind]["points"].as_array().cloned().unwrap_or_default();
        let base = pts
            .first()
            .map_or(0.0, |p| p["rss_mib"].as_f64().unwrap_or(0.0));
        for point in &pts {
            let n = point["tenants"].as_f64().unwrap_or(0.0);
            let rss = point["rss_mib"].as_f64().unwrap_or(0.0);
            let per = if n > 1.0 {
                (rss - base) / (n - 1.0)
            } else {
                f64::NAN
            };
            if kind == "same" && n > 1.0 {
                per_tenant_same = per;
            }
            let first: Vec<f64> = point["first_request_us"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {n:.0} | {kind} | {rss:.0} MiB | {} | {:.1} s | {} | {} |",
                if per.is_nan() {
                    "–".to_owned()
                } else {
                    format!("{:.0} KiB", per * 1024.0)
                },
                point["deploy_seconds"].as_f64().unwrap_or(0.0),
                ms(percentile(&first, 0.5)),
                ms(percentile(&first, 1.0)),
            );
        }
    }
    out.push_str("\nAfter a restart on the same data directory:\n\n| component | tenants | until listening | until ready (`/readyz` 200) | RSS | first request p50 | max |\n|---|---|---|---|---|---|---|\n");
    for kind in ["same", "distinct"] {
        let restart = &d[kind]["restart"];
        let first: Vec<f64> = restart["first_request_us"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        restart_first.extend(first.iter().copied());
        let _ = writeln!(
            out,
            "| {kind} | {} | {:.1} s | {:.1} s | {:.0} MiB | {} | {} |",
            restart["tenants"],
            restart["seconds_to_listen"].as_f64().unwrap_or(0.0),
            restart["seconds_to_ready"].as_f64().unwrap_or(f64::NAN),
            restart["rss_mib"].as_f64().unwrap_or(0.0),
            ms(percentile(&first, 0.5)),
            ms(percentile(&first, 1.0)),
        );
    }
    out.push('\n');
    out.push_str(&plot("density"));
    let most = d["same"]["points"]
        .as_array()
        .and_then(|a| a.last())
        .map_or(0.0, |p| p["tenants"].as_f64().unwrap_or(0.0));
    goals.push((
        format!("5. idle tenant memory ({most:.0} tenants, same component)"),
        "≤ 1 MiB".into(),
        format!("{:.0} KiB", per_tenant_same * 1024.0),
        per_tenant_same <= 1.0,
    ));
    let cold = percentile(&restart_first, 0.5);
    goals.push((
        "5. cold first request p50 (cached compiled component)".into(),
        "≤ 10 ms".into(),
        ms(cold),
        cold <= 10_000.0,
    ));
}
