//! The report: what the run says about the machine and the commands it ran, statistics over
//! sweeps, Markdown tables, and the frames of `docs/benchmarks.md` and of its scheduler
//! section, into which each scenario writes its own section.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::scenarios::{
    batching, churn, cold_start, density, fixed, instantiation, neighbour, overhead, python,
    sessions, threads,
};
use crate::setup::ONNXRUNTIME_VERSION;
use crate::{Result, root, target_dir};

/// A row of a goals table: the goal, its target, what was measured, and whether it was met.
pub(super) type Goal = (String, String, String, bool);

pub(super) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    let command_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": memory,
        "kernel": command_line("uname", &["-sr"]),
        "rustc": command_line("rustc", &["--version"]),
        "wrk": command_line("wrk", &["--version"]).lines().next().unwrap_or("").to_owned(),
        "onnxruntime": ONNXRUNTIME_VERSION,
        "date": command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    })
}

/// A command as a reader would type it: paths relative to the repository, tokens elided.
pub(super) fn describe(command: &Command) -> String {
    let mut text = String::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            let _ = write!(
                text,
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            );
        }
    }
    let program = command.get_program().to_string_lossy();
    let program = program
        .strip_prefix(&format!("{}/", root().display()))
        .unwrap_or(&program)
        .to_owned();
    text.push_str(&program);
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        let arg = arg
            .strip_prefix(&format!("{}/", root().display()))
            .unwrap_or(&arg);
        let _ = write!(text, " {arg}");
    }
    text.replace(&format!("{}/", root().display()), "")
        .split(' ')
        .map(|word| {
            if word.starts_with("corral_op_") {
                "$TOKEN"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sweep's points as `(concurrency, rps, p50 µs, p99 µs)`.
pub(super) fn points(value: &Value) -> Vec<(u64, f64, f64, f64)> {
    value
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|p| {
                    (
                        p["concurrency"].as_u64().unwrap_or(0),
                        p["rps"].as_f64().unwrap_or(0.0),
                        p["p50_us"].as_f64().unwrap_or(0.0),
                        p["p99_us"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The best throughput of a sweep and the point it was reached at.
pub(super) fn peak(value: &Value) -> (u64, f64, f64, f64) {
    points(value)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}

/// The point at concurrency 1.
pub(super) fn single(value: &Value) -> (u64, f64, f64, f64) {
    points(value)
        .into_iter()
        .find(|p| p.0 == 1)
        .unwrap_or_default()
}

pub(super) fn ms(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub(super) fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// A table of several sweeps side by side: one row per concurrency.
pub(super) fn sweep_table(out: &mut String, columns: &[(&str, &Value)]) {
    let _ = write!(out, "| concurrency |");
    for (name, _) in columns {
        let _ = write!(out, " {name} req/s | p50 | p99 |");
    }
    out.push_str("\n|---|");
    for _ in columns {
        out.push_str("---|---|---|");
    }
    out.push('\n');
    let mut levels: Vec<u64> = columns
        .iter()
        .flat_map(|(_, v)| points(v).into_iter().map(|p| p.0))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    for c in levels {
        let _ = write!(out, "| {c} |");
        for (_, value) in columns {
            match points(value).into_iter().find(|p| p.0 == c) {
                Some((_, rps, p50, p99)) => {
                    let _ = write!(out, " {rps:.1} | {} | {} |", ms(p50), ms(p99));
                }
                None => out.push_str(" – | – | – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

/// Microseconds (a JSON number) as milliseconds to one decimal, without the unit: the
/// scheduler's tables.
pub(super) fn millis(us: &Value) -> String {
    format!("{:.1}", us.as_f64().unwrap_or(f64::NAN) / 1000.0)
}

pub(super) fn report(results: &Value, plots: &Path, doc: &Path) -> Result<String> {
    let plot = |name: &str| {
        let file = plots.join(format!("{name}.png"));
        let relative = doc
            .parent()
            .and_then(|dir| file.strip_prefix(dir).ok())
            .map_or(file.clone(), Path::to_path_buf);
        format!("![{name}]({})\n\n", relative.display())
    };
    let m = &results["machine"];
    let r = &results["run"];
    let mut goals: Vec<Goal> = Vec::new();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench{}` ({:.0} minutes) on {}. Every comparison ran in the same \
         run on the same machine: {} ({} cores), {:.0} GiB, {}; {}; ONNX Runtime {} (CPU, its \
         default thread settings for every server); load from {} with one thread and C \
         connections for {} s per point, on the same cores as the server. Servers log no access \
         lines (Corral `RUST_LOG=warn`, uvicorn `--no-access-log`). Corral is the release \
         build of `corral serve` with one tenant per service, reached by Host header.\n",
        if r["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        r["minutes"].as_f64().unwrap_or(0.0),
        m["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"].as_f64().unwrap_or(0.0),
        m["kernel"].as_str().unwrap_or(""),
        m["rustc"].as_str().unwrap_or(""),
        m["onnxruntime"].as_str().unwrap_or(""),
        m["wrk"].as_str().unwrap_or("wrk"),
        r["seconds_per_point"],
    );
    let summary_at = out.len();

    overhead::section(&mut out, results, &mut goals, &plot);
    fixed::section(&mut out, results, &mut goals, &plot);
    python::section(&mut out, results, &mut goals, &plot);
    instantiation::section(&mut out, results, &mut goals);
    density::section(&mut out, results, &mut goals, &plot);
    cold_start::section(&mut out, results);
    sessions::section(&mut out, results);

    // The commands.
    out.push_str("## Commands\n\nEvery process the run started, in order (paths relative to the repository; `C` and `N` are the concurrency and seconds of each point):\n\n```\n");
    let mut seen = std::collections::BTreeSet::new();
    for command in r["commands"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let command = command.replace(&target_dir().display().to_string(), "$TARGET");
        if seen.insert(command.clone()) {
            let _ = writeln!(out, "{command}");
        }
    }
    out.push_str("```\n");

    // The goals, first.
    let mut summary =
        String::from("## Goals\n\n| goal | target | measured | |\n|---|---|---|---|\n");
    for (goal, target, measured, met) in &goals {
        let _ = writeln!(
            summary,
            "| {goal} | {target} | {measured} | {} |",
            verdict(*met)
        );
    }
    summary.push('\n');
    out.insert_str(summary_at, &summary);
    Ok(out)
}

/// Where the scheduler's section of `docs/benchmarks.md` begins and ends.
pub(super) const BEGIN: &str = "<!-- scheduler benchmarks: written by cargo xtask bench --only \
                         batching|neighbour|churn|threads -->";
pub(super) const END: &str = "<!-- end of scheduler benchmarks -->";

/// `doc` with its scheduler section (between [`BEGIN`] and [`END`]) replaced by `section`, or
/// `section` appended.
pub(super) fn splice(doc: &str, section: &str) -> String {
    splice_between(doc, section, (BEGIN, END))
}

/// `doc` with the section between the `begin` and `end` markers replaced by `section`, or
/// `section` appended with them.
pub(super) fn splice_between(doc: &str, section: &str, (begin, end): (&str, &str)) -> String {
    let block = format!("{begin}\n{section}{end}\n");
    match (doc.find(begin), doc.find(end)) {
        (Some(from), Some(to)) if to > from => {
            format!(
                "{}{block}{}",
                &doc[..from],
                &doc[to + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{block}", doc.trim_end()),
    }
}

/// The scheduler's section of `docs/benchmarks.md`, from the results by scenario name, with
/// its goals.
pub(super) fn scheduler_report(results: &Value, commands: &[String]) -> String {
    let mut goals: Vec<Goal> = Vec::new();
    let body = sections(results, &mut goals);
    let mut out = String::from("# The inference scheduler\n\n");
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench --only SCENARIO` ({}), on the same machine as the rest \
         of this document; each comparison's sides in the same run, {} s per point. The \
         sections above were measured before the scheduler existed (one first-come pool of \
         runs, ONNX Runtime's default threads); a full `cargo xtask bench` measures them \
         again.\n",
        results["run"]["date"].as_str().unwrap_or(""),
        results["run"]["seconds_per_point"],
    );
    out.push_str("| goal | target | result | met |\n|---|---|---|---|\n");
    for (goal, target, result, met) in &goals {
        let _ = writeln!(
            out,
            "| {goal} | {target} | {result} | {} |",
            if *met { "yes" } else { "**no**" }
        );
    }
    out.push('\n');
    out.push_str(&body);
    if !commands.is_empty() {
        out.push_str("Commands:\n\n```\n");
        for command in commands {
            let _ = writeln!(out, "{command}");
        }
        out.push_str("```\n\n");
    }
    out
}

/// The scheduler's scenarios' sections, each from its results when there are any.
fn sections(results: &Value, goals: &mut Vec<Goal>) -> String {
    let mut out = String::new();
    if let Some(b) = results.get("batching") {
        batching::section(&mut out, b, goals);
    }
    if let Some(t) = results.get("threads") {
        threads::section(&mut out, t);
    }
    if let Some(n) = results.get("neighbour") {
        neighbour::section(&mut out, n, goals);
    }
    if let Some(c) = results.get("churn") {
        churn::section(&mut out, c, goals);
    }
    out
}
