//! `cargo xtask bench --cluster`: three replicas sharing a real PostgreSQL and a real S3 server
//! (the test suite's own, `tests/support/`): how long a deploy takes to reach every replica,
//! and how long a replica with an empty disk takes to be ready with 1,000 tenants. Its own
//! section of `docs/benchmarks.md`.

#[path = "../../../../tests/support/postgres.rs"]
mod postgres_server;
#[path = "../../../../tests/support/s3.rs"]
mod s3_server;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::churn::distinct_classifier;
use crate::Result;
use crate::bench::Kit;
use crate::bench::report::{describe, percentile};
use crate::bench::server::{Corral, guest, until_ready};

const TOKEN: &str = "corral-bench-cluster-operator-token";
/// Deploys timed for propagation.
const DEPLOYS: usize = 10;
/// Tenants a new replica starts with.
const TENANTS: usize = 1_000;

/// Where `docs/benchmarks.md` keeps this section.
pub(in crate::bench) const BEGIN: &str =
    "<!-- cluster benchmarks: written by cargo xtask bench --cluster -->";
pub(in crate::bench) const END: &str = "<!-- end of cluster benchmarks -->";

/// `GET path` on an admin API (`http://ADDR`) with the operator token; the JSON body.
fn admin_get(admin: &str, path: &str) -> Result<Value> {
    let addr = admin.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        crate::dechunk(body)
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).map_err(|e| format!("GET {path} on {addr}: {e}: {text}"))
}

/// Runs a `corral` command against `admin`, failing with its stderr.
fn corral(kit: &mut Kit, admin: &str, args: &[&str], record: bool) -> Result<String> {
    let mut command = Command::new(&kit.corral);
    command
        .args(args)
        .args(["--server", admin])
        .env("CORRAL_TOKEN", TOKEN);
    if record {
        kit.commands.push(describe(&command));
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "{}: {}",
            describe(&command),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The version tenant `tenant` runs on the replica at `admin`.
fn active(admin: &str, tenant: &str) -> Result<Option<u64>> {
    Ok(admin_get(admin, &format!("/v1/tenants/{tenant}/deployments"))?["active"].as_u64())
}

pub(in crate::bench) fn cluster(kit: &mut Kit) -> Result<Value> {
    let postgres =
        postgres_server::own_postgres().ok_or("PostgreSQL 15 is missing: run cargo xtask setup")?;
    let s3 = s3_server::s3().ok_or("SeaweedFS is missing: run cargo xtask setup")?;
    let database = postgres.database("bench");
    let blob_url = format!("s3://{}/corral", s3.bucket("bench"));
    let mut env: Vec<(&str, String)> = s3.env().to_vec();
    env.push(("CORRAL_CLUSTER_DATABASE_URL", database));
    env.push(("CORRAL_CLUSTER_BLOB_URL", blob_url));
    env.push(("CORRAL_ADMIN_TOKEN", TOKEN.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replicas: Vec<Corral> = ["a", "b", "c"]
        .iter()
        .map(|name| Corral::start_with(kit, &format!("cluster-{name}"), &env))
        .collect::<Result<_>>()?;
    let admins: Vec<String> = replicas.iter().map(|r| r.admin.clone()).collect();

    // Propagation: each deploy (a new copy of EfficientNet-Lite0, through each replica in
    // turn) from the moment `corral deploy` returns to the moment all three run it.
    corral(
        kit,
        &admins[0],
        &["tenant", "create", "p", "--host", "p.localhost"],
        true,
    )?;
    let models = kit.work.join("cluster-models");
    std::fs::create_dir_all(&models).map_err(|e| e.to_string())?;
    let component = guest("image-classifier");
    let mut propagation = Vec::new();
    for i in 0..DEPLOYS {
        let model = distinct_classifier(kit, &models, i)?;
        let through = &admins[i % admins.len()];
        corral(
            kit,
            through,
            &[
                "deploy",
                "--tenant",
                "p",
                &component.display().to_string(),
                "--model",
                &format!("classifier={}", model.display()),
            ],
            i == 0,
        )?;
        let returned = Instant::now();
        let version = active(through, "p")?.ok_or("no active version after the deploy")?;
        for admin in &admins {
            while active(admin, "p")? != Some(version) {
                if returned.elapsed() > Duration::from_secs(120) {
                    return Err(format!(
                        "{admin} did not run version {version} within 120 s"
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        propagation.push(returned.elapsed().as_secs_f64() * 1e3);
    }

    // 1,000 tenants (one component and one small model for all, as in the density runs),
    // then a fourth replica on an empty disk, and again on the disk it filled.
    let created = Instant::now();
    let model = format!("model={}", kit.mlp.display());
    replicas[0].tenants(kit, 0..TENANTS, &guest("bench-nn"), &model, false)?;
    let create_s = created.elapsed().as_secs_f64();
    let started = Instant::now();
    let fresh = Corral::start_with(kit, "cluster-d", &env)?;
    let empty_s = until_ready(&fresh.admin, started)?.as_secs_f64();
    let dir = fresh.dir.clone();
    drop(fresh);
    let started = Instant::now();
    let again = Corral::start_in_with(kit, "cluster-d-again", dir, &env)?;
    let warm_s = until_ready(&again.admin, started)?.as_secs_f64();
    let last = active(&again.admin, &format!("t{}", TENANTS - 1))?;
    drop(again);
    drop(replicas);
    Ok(json!({
        "date": crate::bench::report::machine()["date"],
        "propagation_ms": propagation,
        "tenants": TENANTS,
        "create_s": create_s,
        "empty_disk_s": empty_s,
        "warm_disk_s": warm_s,
        "last_tenant_active": last,
    }))
}

/// The cluster section of `docs/benchmarks.md`.
pub(in crate::bench) fn section(results: &Value, commands: &[String]) -> String {
    let propagation: Vec<f64> = results["propagation_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let mut out = String::from("# Cluster: three replicas sharing PostgreSQL and S3\n\n");
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench --cluster` ({}) on the same machine: three `corral serve` \
         replicas sharing one PostgreSQL 15 and one SeaweedFS S3 server on loopback (the test \
         suite's own, started by the run), default `[cluster]` settings (notifications, a 5 s \
         poll as fallback).\n",
        results["date"].as_str().unwrap_or("")
    );
    out.push_str("| measurement | result |\n|---|---|\n");
    let _ = writeln!(
        out,
        "| propagation: `corral deploy` returns → all three replicas run the new version \
         ({} deploys of the image classifier, each a new copy of EfficientNet-Lite0, through \
         each replica in turn) | p50 **{:.0} ms**, max {:.0} ms |",
        propagation.len(),
        percentile(&propagation, 0.5),
        percentile(&propagation, 1.0),
    );
    let _ = writeln!(
        out,
        "| a new replica, empty disk, {} tenants sharing one component and one small model (as \
         in section 5): start → `/readyz` 200 (read every record, fetch the blobs from S3, \
         compile, load) | **{:.1} s** |",
        results["tenants"],
        results["empty_disk_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "| the same replica restarted on the disk it filled (blobs and compiled components \
         cached) | **{:.1} s** |",
        results["warm_disk_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "| creating and deploying the {} tenants through one replica (4 at a time) | {:.1} s |\n",
        results["tenants"],
        results["create_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "Propagation per deploy, ms: {}. The first includes compiling the image classifier's \
         component on the two replicas that had not seen it (the deploying replica compiled it \
         while validating); every later one fetches a new 18.6 MB model from S3 and loads it \
         on both, on this machine's two cores. After the warm restart, the last tenant's \
         active version there: {}.\n",
        propagation
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        results["last_tenant_active"]
    );
    if !commands.is_empty() {
        out.push_str("Commands:\n\n```\n");
        for command in commands {
            let _ = writeln!(out, "{}", command.replace(TOKEN, "$TOKEN"));
        }
        out.push_str("```\n\n");
    }
    out
}
