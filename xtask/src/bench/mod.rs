//! `cargo xtask bench [--quick | --report | --cluster | --preprocess | --profile | --only ..]`: Corral against the real
//! alternatives, side by side in one run on this machine, written to `docs/benchmarks.md` with
//! plots in `docs/benchmarks/` (`--quick`: shorter, under `target/bench/`; `--report`: the
//! document again from the last full run's `target/bench/results.json`, measuring nothing;
//! `--only batching|neighbour|churn|threads`: the inference scheduler's scenarios alone,
//! rewriting only their section of the document; `--only overhead`: section 1 again, into the
//! last full run's results; `--cluster`: three replicas sharing PostgreSQL and S3,
//! rewriting only their section; `--preprocess`: the image classifier's preprocessing in the
//! guest against Pillow's, on photos of ordinary sizes, rewriting only its section;
//! `--profile`: where a request's CPU time goes, from `perf record` of the server under load,
//! rewriting only its section). A full run keeps those sections as they are, and the notes
//! between [`NOTES`]' markers, which only people write.
//!
//! Load comes from `wrk` (Debian's `wrk` package) with `xtask/bench/wrk.lua`; in-process
//! figures (native ONNX Runtime, instantiation, session memory, tenant deployment) come from
//! `host/examples/bench_probe.rs`; the Python server is `xtask/bench/python_server.py` in a
//! virtualenv under `.corral/bench-venv`; `wasmtime serve` is wasmtime-cli at the wasmtime
//! release Corral links, installed under `.corral/tools`. Every server gets the same machine,
//! the same ONNX Runtime thread settings (its defaults) and no access log.
//!
//! `tools` installs and finds the load generator, the Python server's virtualenv and
//! `wasmtime serve`; `server` starts and stops the servers under test; `load` drives them
//! (`wrk`, `bench_probe`); `report` holds the statistics, the Markdown tables and the
//! document's frame; `scenarios/` holds one file per scenario, each with its own section.

mod load;
mod report;
mod scenarios;
mod server;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Result, build_guests, cargo, root, run, setup, target_dir};
use report::{machine, report, scheduler_report, splice, splice_between};
use scenarios::{
    cold_start::cold_start, density::density, fixed::fixed, instantiation::instantiation,
    overhead::overhead, python::python_pair, sessions::sessions,
};
use tools::{install_wasmtime, python_env, which};

/// How much of everything to run.
struct Plan {
    /// Seconds of load per point.
    seconds: u32,
    concurrency: Vec<u32>,
    /// Concurrency levels for the photos against the Python server: one at a time, and past
    /// both servers' saturation.
    photo_concurrency: Vec<u32>,
    /// Tenant counts for the density runs, same component and model.
    tenants: Vec<usize>,
    /// Tenant counts with a distinct component each (each one compiled).
    distinct: Vec<usize>,
    instantiations: usize,
    cold_starts: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                seconds: 2,
                concurrency: vec![1, 4, 16],
                photo_concurrency: vec![1, 8],
                tenants: vec![1, 100],
                distinct: vec![1, 10],
                instantiations: 2_000,
                cold_starts: 3,
            }
        } else {
            Self {
                seconds: 5,
                concurrency: vec![1, 2, 4, 8, 16, 32, 64],
                photo_concurrency: vec![1, 8, 32],
                tenants: vec![1, 100, 1_000, 10_000],
                distinct: vec![1, 100, 1_000],
                instantiations: 20_000,
                cold_starts: 10,
            }
        }
    }
}

/// Everything a run needs to find.
struct Kit {
    plan: Plan,
    corral: PathBuf,
    probe: PathBuf,
    wasmtime: PathBuf,
    python: PathBuf,
    work: PathBuf,
    classifier: PathBuf,
    labels: PathBuf,
    dog: PathBuf,
    mlp: PathBuf,
    features: PathBuf,
    tensor: PathBuf,
    /// Every command run, for the report.
    commands: Vec<String>,
}

pub fn bench(args: &[String]) -> Result {
    let usage = || {
        format!(
            "usage: cargo xtask bench [--quick | --report | --cluster | --preprocess | --profile | --only overhead | --only SCENARIO...] \
             (scenarios: {})",
            scenarios::SCENARIOS.join(", ")
        )
    };
    let (quick, only) = match args {
        [] => (false, Vec::new()),
        [flag] if flag == "--quick" => (true, Vec::new()),
        [flag] if ["--cluster", "--preprocess", "--profile"].contains(&flag.as_str()) => {
            (false, vec![flag.clone()])
        }
        [flag] if flag == "--report" => return rewrite_report(),
        [flag, name] if flag == "--only" && name == "overhead" => (false, vec![name.clone()]),
        [flag, names @ ..] if flag == "--only" && !names.is_empty() => {
            if let Some(name) = names
                .iter()
                .find(|n| !scenarios::SCENARIOS.contains(&n.as_str()))
            {
                return Err(format!("unknown scenario {name}; {}", usage()));
            }
            (false, names.to_vec())
        }
        _ => return Err(usage()),
    };
    setup()?;
    build_guests()?;
    run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "corral",
        "--bin",
        "corral",
        "--example",
        "bench_probe",
    ]))?;
    // The cluster's scenario drives its servers itself; preprocessing sends one request at a
    // time.
    if only != ["--cluster"] && only != ["--preprocess"] {
        let wrk = which("wrk").ok_or(
            "wrk is not installed: on Debian or Ubuntu, `sudo apt-get install wrk` (the load \
             generator every comparison uses)",
        )?;
        eprintln!("xtask: load generator {}", wrk.display());
    }
    let python = python_env()?;
    // The scheduler's scenarios alone never start `wasmtime serve`.
    let wasmtime = if only.is_empty() {
        install_wasmtime()?
    } else {
        PathBuf::new()
    };
    let work = target_dir().join("bench");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let model = root().join("examples/image-classifier/model");
    let dog = root().join("examples/image-classifier/samples/dog.jpg");
    run(Command::new(&python)
        .arg(root().join("xtask/bench/fixtures.py"))
        .arg(&work)
        .arg(&dog))?;
    let release = target_dir().join("release");
    let mut kit = Kit {
        plan: Plan::new(quick),
        corral: release.join("corral"),
        probe: release.join("examples/bench_probe"),
        wasmtime,
        python,
        classifier: model.join("efficientnet-lite0.onnx"),
        labels: model.join("labels.txt"),
        dog,
        mlp: work.join("mlp.onnx"),
        features: work.join("features.json"),
        tensor: work.join("dog.f32"),
        work,
        commands: Vec::new(),
    };
    let started = Instant::now();
    if only == ["--cluster"] {
        return cluster_only(&mut kit);
    }
    if only == ["--preprocess"] {
        let results = scenarios::preprocess::preprocess(&mut kit)?;
        let section = scenarios::preprocess::section(&results, &kit.commands);
        let markers = (scenarios::preprocess::BEGIN, scenarios::preprocess::END);
        return own_section(&kit, "preprocess", &results, &section, markers);
    }
    if only == ["--profile"] {
        let results = scenarios::profile::profile(&mut kit)?;
        let section = scenarios::profile::section(&results, &kit.commands);
        let markers = (scenarios::profile::BEGIN, scenarios::profile::END);
        return own_section(&kit, "profile", &results, &section, markers);
    }
    if only == ["overhead"] {
        return overhead_only(&mut kit);
    }
    if !only.is_empty() {
        return scheduler_only(&mut kit, &only);
    }
    let mut results = BTreeMap::new();
    results.insert("machine", machine());
    results.insert("overhead", overhead(&mut kit)?);
    results.insert("fixed", fixed(&mut kit)?);
    results.insert("python", python_pair(&mut kit)?);
    results.insert("instantiation", instantiation(&mut kit)?);
    results.insert("density", density(&mut kit)?);
    results.insert("cold_start", cold_start(&mut kit)?);
    results.insert("sessions", sessions(&mut kit)?);
    results.insert(
        "run",
        json!({
            "quick": quick,
            "seconds_per_point": kit.plan.seconds,
            "concurrency": kit.plan.concurrency,
            "minutes": started.elapsed().as_secs_f64() / 60.0,
            "commands": kit.commands,
        }),
    );
    let results = serde_json::to_value(&results).map_err(|e| e.to_string())?;
    let json_path = kit.work.join(if quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&json_path, format!("{results:#}")).map_err(|e| e.to_string())?;
    let (doc, plots) = if quick {
        (kit.work.join("benchmarks-quick.md"), kit.work.join("plots"))
    } else {
        (
            root().join("docs/benchmarks.md"),
            root().join("docs/benchmarks"),
        )
    };
    std::fs::create_dir_all(&plots).map_err(|e| e.to_string())?;
    run(Command::new(&kit.python)
        .arg(root().join("xtask/bench/plot.py"))
        .arg(&json_path)
        .arg(&plots))?;
    let mut report = report(&results, &plots, &doc)?;
    // The scheduler's scenarios keep their own section (and their own results file), so that
    // `--only` can rewrite them alone.
    if !quick {
        let commands = std::mem::take(&mut kit.commands);
        let scheduler = run_scheduler(&mut kit, scenarios::SCENARIOS)?;
        report = splice(&report, &scheduler_report(&scheduler, &kit.commands));
        kit.commands = commands;
        report = keep_sections(&doc, report, &kept_sections());
    }
    std::fs::write(&doc, report).map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!(
        "xtask: benchmark written to {} ({:.1} min)",
        doc.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Where the notes of `docs/benchmarks.md` begin and end: what people wrote about the
/// figures (before and after a change, what a profile shows), which no command rewrites.
pub(super) const NOTES: (&str, &str) = (
    "<!-- notes: written by people; cargo xtask bench keeps them -->",
    "<!-- end of notes -->",
);

/// The sections of `docs/benchmarks.md` a full run keeps: those `--cluster`, `--preprocess`
/// and `--profile` write, and the notes.
fn kept_sections() -> [(&'static str, &'static str); 4] {
    [
        (scenarios::cluster::BEGIN, scenarios::cluster::END),
        (scenarios::preprocess::BEGIN, scenarios::preprocess::END),
        (scenarios::profile::BEGIN, scenarios::profile::END),
        NOTES,
    ]
}

/// `report` with each of `sections` as `doc` (the document it replaces) has it.
fn keep_sections(doc: &std::path::Path, mut report: String, sections: &[(&str, &str)]) -> String {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    for &markers in sections {
        if let Some(section) = section_of(&old, markers) {
            report = splice_between(&report, section, markers);
        }
    }
    report
}

/// The text between `begin` and `end` in `doc` (what [`splice_between`] put there).
fn section_of<'a>(doc: &'a str, (begin, end): (&str, &str)) -> Option<&'a str> {
    let from = doc.find(begin)? + begin.len();
    let to = doc[from..].find(end)? + from;
    Some(doc[from..to].trim_start_matches('\n'))
}

/// Runs the scheduler's `scenarios`, merged into `target/bench/results-scheduler.json` (so a
/// later `--only` of one scenario keeps the others' last results).
fn run_scheduler(kit: &mut Kit, scenarios: &[impl AsRef<str>]) -> Result<Value> {
    let path = kit.work.join("results-scheduler.json");
    let mut results: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    for name in scenarios {
        let name = name.as_ref();
        let result = scenarios::scenario(kit, name)?;
        results[name] = result;
    }
    results["run"] = json!({
        "date": machine()["date"],
        "seconds_per_point": kit.plan.seconds,
    });
    std::fs::write(&path, format!("{results:#}")).map_err(|e| e.to_string())?;
    Ok(results)
}

/// `--only`: the named scheduler scenarios, and their section of docs/benchmarks.md rewritten
/// in place.
fn scheduler_only(kit: &mut Kit, scenarios: &[String]) -> Result {
    let results = run_scheduler(kit, scenarios)?;
    let doc = root().join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let section = scheduler_report(&results, &kit.commands);
    std::fs::write(&doc, splice(&text, &section)).map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!("xtask: scheduler benchmarks written to {}", doc.display());
    Ok(())
}

/// `--cluster`: three replicas sharing PostgreSQL and S3, into their own section of
/// docs/benchmarks.md (results in `target/bench/results-cluster.json`).
fn cluster_only(kit: &mut Kit) -> Result {
    let results = scenarios::cluster::cluster(kit)?;
    let section = scenarios::cluster::section(&results, &kit.commands);
    let markers = (scenarios::cluster::BEGIN, scenarios::cluster::END);
    own_section(kit, "cluster", &results, &section, markers)
}

/// A scenario run alone: its results in `target/bench/results-NAME.json` and its section of
/// docs/benchmarks.md, between its markers, rewritten in place.
fn own_section(
    kit: &Kit,
    name: &str,
    results: &Value,
    section: &str,
    markers: (&str, &str),
) -> Result {
    std::fs::write(
        kit.work.join(format!("results-{name}.json")),
        format!("{results:#}"),
    )
    .map_err(|e| e.to_string())?;
    let doc = root().join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    std::fs::write(&doc, splice_between(&text, section, markers))
        .map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!("xtask: {name} benchmarks written to {}", doc.display());
    Ok(())
}

/// `--report`: writes docs/benchmarks.md and its plots again from the last full run's
/// results (after a change to the report's layout; no measurement is repeated).
/// `--only overhead`: section 1 measured again on its own, into the last full run's results
/// (marked as measured later), and the document rewritten from them as `--report` does.
fn overhead_only(kit: &mut Kit) -> Result {
    let json_path = target_dir().join("bench/results.json");
    let mut results = full_results(&json_path)?;
    let mut overhead = overhead(kit)?;
    overhead["remeasured"] = machine()["date"].clone();
    results["overhead"] = overhead;
    std::fs::write(&json_path, format!("{results:#}")).map_err(|e| e.to_string())?;
    rewrite_report()
}

/// The last full run's results, from `json_path`.
fn full_results(json_path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(json_path).map_err(|e| {
        format!(
            "{}: {e} (run `cargo xtask bench` first)",
            json_path.display()
        )
    })?;
    let results: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if results["run"]["quick"].as_bool() != Some(false) {
        return Err(format!("{} is from a --quick run", json_path.display()));
    }
    Ok(results)
}

fn rewrite_report() -> Result {
    let json_path = target_dir().join("bench/results.json");
    let results = full_results(&json_path)?;
    let (doc, plots) = (
        root().join("docs/benchmarks.md"),
        root().join("docs/benchmarks"),
    );
    run(Command::new(python_env()?)
        .arg(root().join("xtask/bench/plot.py"))
        .arg(&json_path)
        .arg(&plots))?;
    // Every other section stays as it is, the scheduler's included.
    let mut sections = vec![(report::BEGIN, report::END)];
    sections.extend(kept_sections());
    let text = keep_sections(&doc, report(&results, &plots, &doc)?, &sections);
    std::fs::write(&doc, text).map_err(|e| e.to_string())
}
