//! Scenario 6, cold start: from `corral deploy` returning to the first 200 from the new
//! deployment, and its section of the document.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::report::{describe, percentile};
use crate::bench::server::{Corral, guest};

/// 6. From `corral deploy` returning to the first 200 from the new deployment.
pub(in crate::bench) fn cold_start(kit: &mut Kit) -> Result<Value> {
    let corral = Corral::start(kit, "cold-start")?;
    let component = guest("image-classifier");
    let mut samples = Vec::new();
    let dog = std::fs::read(&kit.dog).map_err(|e| e.to_string())?;
    for i in 0..kit.plan.cold_starts {
        let tenant = format!("cold{i}");
        let host = format!("{tenant}.localhost");
        let mut create = Command::new(&kit.corral);
        create
            .args([
                "tenant",
                "create",
                &tenant,
                "--host",
                &host,
                "--server",
                &corral.admin,
            ])
            .env("CORRAL_TOKEN", &corral.token);
        let mut deploy = Command::new(&kit.corral);
        deploy
            .args(["deploy", "--tenant", &tenant])
            .arg(&component)
            .arg("--model")
            .arg(format!("classifier={}", kit.classifier.display()))
            .args(["--server", &corral.admin])
            .env("CORRAL_TOKEN", &corral.token);
        if i == 0 {
            kit.commands
                .push(describe(&create).replace(&corral.token, "$TOKEN"));
            kit.commands
                .push(describe(&deploy).replace(&corral.token, "$TOKEN"));
        }
        for command in [&mut create, &mut deploy] {
            let output = command
                .stdout(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(format!(
                    "{}: {}",
                    describe(command),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        // `corral deploy` has returned: the deployment is active. Time the first answer.
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = crate::post_to(corral.data, &host, "/", &dog)?;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("no 200 from {host} within 30 s: {answer}"));
            }
        }
        samples.push(json!({ "ms": started.elapsed().as_secs_f64() * 1e3, "attempts": attempts }));
    }
    // The same request to a warm tenant, for comparison (the median of five).
    let mut warm = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        crate::post_to(corral.data, "cold0.localhost", "/", &dog)?;
        warm.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let warm = percentile(&warm, 0.5);
    Ok(json!({ "samples": samples, "warm_ms": warm }))
}

/// Section 6 of the document.
pub(in crate::bench) fn section(out: &mut String, results: &Value) {
    let c = &results["cold_start"];
    let samples: Vec<f64> = c["samples"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["ms"].as_f64()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "## 6. Cold start: from `corral deploy` returning to the first 200\n"
    );
    let _ = writeln!(
        out,
        "A new tenant each time (`corral tenant create`, then `corral deploy` of the \
         `image-classifier` component and EfficientNet-Lite0); when the deploy command exits the \
         version is active, and the clock runs until the first `POST /` of the dog image \
         answers 200. {} deployments: p50 **{:.1} ms**, max {:.1} ms; the first request answered \
         200 in {} of them. The same request to a warm tenant takes {:.1} ms (median of five).\n",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 1.0),
        c["samples"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["attempts"] == 1).count()),
        c["warm_ms"].as_f64().unwrap_or(0.0)
    );
}
