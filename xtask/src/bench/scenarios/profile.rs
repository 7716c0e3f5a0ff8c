//! `cargo xtask bench --profile`: where `corral serve`'s CPU time goes per request, by part of
//! the request path, from `perf record` of the server under load (the image classifier on a
//! photo and on the small sample, and the raw tensor); and its section of the document.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::bench::Kit;
use crate::bench::load::{Load, corral_load, script_json, wrk};
use crate::bench::report::{describe, ms};
use crate::bench::server::{Corral, guest};
use crate::bench::tools::which;
use crate::{Result, root};

pub(in crate::bench) const BEGIN: &str = "<!-- profile: written by cargo xtask bench --profile -->";
pub(in crate::bench) const END: &str = "<!-- end of profile -->";

/// Samples per second per CPU.
const HZ: u32 = 997;
/// Seconds of load (and of recording) per point.
const SECONDS: u32 = 8;
/// One request at a time, and past saturation on this machine's two cores.
const LEVELS: &[u32] = &[1, 8];

/// The requests profiled, each named: the classifier on a photo and on the sample (tenant
/// `t0`), and the raw tensor (`t1`).
fn cases(kit: &Kit, corral: &Corral) -> Vec<(&'static str, Load)> {
    let image = |file: &std::path::Path| {
        corral_load(
            corral,
            0,
            "/",
            "POST",
            Some(file),
            &["Content-Type: image/jpeg"],
        )
    };
    vec![
        (
            "classifier, 640×480 JPEG",
            image(&kit.work.join("photo-640x480.jpg")),
        ),
        ("classifier, dog.jpg (224×224)", image(&kit.dog)),
        (
            "raw tensor",
            corral_load(
                corral,
                1,
                "/tensor",
                "POST",
                Some(&kit.tensor),
                &[
                    "x-shape: 1,3,224,224",
                    "Content-Type: application/octet-stream",
                ],
            ),
        ),
    ]
}

/// Each case at each level: wrk's point and the breakdown of one `perf record` of the server
/// over the same seconds.
pub(in crate::bench) fn profile(kit: &mut Kit) -> Result<Value> {
    let perf = which("perf").ok_or(
        "perf is not installed: on Debian, `sudo apt-get install linux-perf` (it samples the \
         server's threads; it needs /proc/sys/kernel/perf_event_paranoid at 1 or less, or root)",
    )?;
    let corral = Corral::start(kit, "profile")?;
    let classifier = format!("classifier={}", kit.classifier.display());
    corral.tenants(kit, 0..1, &guest("image-classifier"), &classifier, false)?;
    let model = format!("model={}", kit.classifier.display());
    corral.tenants(kit, 1..2, &guest("bench-nn"), &model, false)?;
    let pid = corral.server.pid().to_string();
    let mut results = Vec::new();
    for (name, load) in cases(kit, &corral) {
        wrk(kit, &load, 2, 2, false)?; // Warm up.
        for &c in LEVELS {
            let data = kit
                .work
                .join(format!("profile-{}-c{c}.data", results.len()));
            let mut record = Command::new(&perf);
            record
                .args(["record", "-q", "-F", &HZ.to_string(), "-p", &pid, "-o"])
                .arg(&data)
                .args(["--", "sleep", &SECONDS.to_string()])
                .stdout(Stdio::null());
            if results.is_empty() {
                kit.commands.push(describe(&record));
            }
            let mut recording = record
                .spawn()
                .map_err(|e| format!("cannot run perf: {e}"))?;
            let point = wrk(kit, &load, c, SECONDS, results.is_empty());
            let recorded = recording.wait().map_err(|e| e.to_string())?;
            let point = point?;
            if !recorded.success() {
                return Err(format!(
                    "perf record failed ({recorded}): is perf_event_paranoid at 1 or less?"
                ));
            }
            let mut breakdown = Command::new(&kit.python);
            breakdown
                .arg(root().join("xtask/bench/perf_breakdown.py"))
                .arg(&data)
                .arg(point["requests"].to_string())
                .arg(HZ.to_string());
            if results.is_empty() {
                kit.commands.push(describe(&breakdown));
            }
            let parts = script_json(&mut breakdown)?;
            let _ = std::fs::remove_file(&data);
            results.push(json!({ "case": name, "concurrency": c, "point": point, "cpu": parts }));
        }
    }
    Ok(json!({ "date": crate::bench::machine()["date"], "cases": results }))
}

/// The section: one column per case and level, one row per part of the request path, in CPU
/// milliseconds per request.
pub(in crate::bench) fn section(results: &Value, commands: &[String]) -> String {
    let mut out = String::from("## Where a request's time goes\n\n");
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench --profile` ({}) on the same machine: `perf record` of \
         `corral serve` (default settings, every thread of the process, {HZ} samples/s) while \
         wrk sends one kind of request for {SECONDS} s, then each sample attributed by thread, \
         shared object and symbol (`xtask/bench/perf_breakdown.py`; the guest's code is named \
         because compiled components carry a symbol per WebAssembly function). Figures are CPU \
         milliseconds per request; at concurrency 1 they add up to about the latency, since \
         the request's steps run one after another.\n",
        results["date"].as_str().unwrap_or("?")
    );
    let cases = results["cases"].as_array().cloned().unwrap_or_default();
    out.push_str("| part |");
    for case in &cases {
        let _ = write!(
            out,
            " {}, C = {} |",
            case["case"].as_str().unwrap_or("?"),
            case["concurrency"]
        );
    }
    out.push_str("\n|---|");
    for _ in &cases {
        out.push_str("---|");
    }
    out.push('\n');
    let mut parts: Vec<String> = Vec::new();
    for case in &cases {
        if let Some(map) = case["cpu"]["parts"].as_object() {
            for name in map.keys() {
                if !parts.contains(name) {
                    parts.push(name.clone());
                }
            }
        }
    }
    let row = |out: &mut String, label: &str, value: &dyn Fn(&Value) -> String| {
        let _ = write!(out, "| {label} |");
        for case in &cases {
            let _ = write!(out, " {} |", value(case));
        }
        out.push('\n');
    };
    let cpu = |v: &Value| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.2}"));
    for part in &parts {
        row(&mut out, part, &|case| cpu(&case["cpu"]["parts"][part]));
    }
    row(&mut out, "**CPU ms per request**", &|case| {
        format!("**{}**", cpu(&case["cpu"]["cpu_ms_per_request"]))
    });
    row(&mut out, "of which run threads / async workers", &|case| {
        format!(
            "{} / {}",
            cpu(&case["cpu"]["threads"]["run"]),
            cpu(&case["cpu"]["threads"]["async"])
        )
    });
    row(&mut out, "req/s", &|case| {
        case["point"]["rps"]
            .as_f64()
            .map_or("?".into(), |r| format!("{r:.1}"))
    });
    row(&mut out, "latency p50 / p99", &|case| {
        format!(
            "{} / {}",
            ms(case["point"]["p50_us"].as_f64().unwrap_or(f64::NAN)),
            ms(case["point"]["p99_us"].as_f64().unwrap_or(f64::NAN))
        )
    });
    out.push_str("\nCommands:\n\n```\n");
    for command in commands {
        out.push_str(command);
        out.push('\n');
    }
    out.push_str("```\n");
    out
}
