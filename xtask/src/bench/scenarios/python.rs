//! Scenario 3, against a Python server: Corral's image classifier (on the small sample and on
//! photos of ordinary sizes) and a tiny JSON model against Starlette on uvicorn with
//! onnxruntime, and their section of the document.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::bench::Kit;
use crate::bench::load::{Load, corral_load, mlp_sweep, sweep};
use crate::bench::report::{Goal, ms, peak, points, single, sweep_table};
use crate::bench::server::{Corral, Server, free_addr, guest};
use crate::{Result, root};

/// Photos of ordinary sizes from `fixtures.py` (`xtask/bench/photos/README.md`), each sent
/// to both servers at fewer concurrency levels than the sample.
const PHOTOS: &[(&str, &str)] = &[
    ("photo-640x480.jpg", "image/jpeg"),
    ("photo-1280x720.jpg", "image/jpeg"),
    ("photo-1920x1080.jpg", "image/jpeg"),
    ("photo-640x480.png", "image/png"),
];

/// 3. Corral's image-classifier and a tiny JSON model against the Python server a team would
///    write instead, at its best worker/thread setting.
pub(in crate::bench) fn python_pair(kit: &mut Kit) -> Result<Value> {
    let levels = kit.plan.concurrency.clone();
    let photo_levels = kit.plan.photo_concurrency.clone();
    let corral = Corral::start(kit, "python-pair")?;
    let classifier = format!("classifier={}", kit.classifier.display());
    corral.tenants(kit, 0..1, &guest("image-classifier"), &classifier, false)?;
    let dog = kit.dog.clone();
    let corral_image = sweep(
        kit,
        &corral_load(
            &corral,
            0,
            "/",
            "POST",
            Some(&dog),
            &["Content-Type: image/jpeg"],
        ),
        &levels,
    )?;
    let mut corral_photos = serde_json::Map::new();
    for (name, content_type) in PHOTOS {
        let load = corral_load(
            &corral,
            0,
            "/",
            "POST",
            Some(&kit.work.join(name)),
            &[&format!("Content-Type: {content_type}")],
        );
        corral_photos.insert((*name).to_owned(), json!(sweep(kit, &load, &photo_levels)?));
    }
    let corral_json = mlp_sweep(kit, &corral, 1)?;
    drop(corral);

    // Python's settings: one worker process with ONNX Runtime's default threads, or one
    // worker per core with one intra-op thread each.
    let mut python = serde_json::Map::new();
    for (workers, threads) in [(1, 0), (2, 1)] {
        let addr = free_addr()?;
        let mut command = Command::new(&kit.python);
        command
            .args(["-m", "uvicorn", "--app-dir"])
            .arg(root().join("xtask/bench"))
            .args(["python_server:app", "--host", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args([
                "--workers",
                &workers.to_string(),
                "--no-access-log",
                "--log-level",
                "warning",
            ])
            .env("BENCH_CLASSIFIER", &kit.classifier)
            .env("BENCH_LABELS", &kit.labels)
            .env("BENCH_MLP", &kit.mlp)
            .env("BENCH_INTRA_THREADS", threads.to_string());
        let name = format!("python-w{workers}-t{threads}");
        let server = Server::start(kit, &name, &mut command, addr)?;
        // Each worker loads its models after the port opens.
        std::thread::sleep(Duration::from_secs(3));
        let image = sweep(
            kit,
            &Load {
                url: format!("http://{addr}/classify"),
                method: "POST",
                body: Some(dog.clone()),
                headers: vec!["Content-Type: image/jpeg".into()],
                hosts: None,
            },
            &levels,
        )?;
        let mut photos = serde_json::Map::new();
        for (name, content_type) in PHOTOS {
            let load = Load {
                url: format!("http://{addr}/classify"),
                method: "POST",
                body: Some(kit.work.join(name)),
                headers: vec![format!("Content-Type: {content_type}")],
                hosts: None,
            };
            photos.insert((*name).to_owned(), json!(sweep(kit, &load, &photo_levels)?));
        }
        let json_points = sweep(
            kit,
            &Load {
                url: format!("http://{addr}/json"),
                method: "POST",
                body: Some(kit.features.clone()),
                headers: vec!["Content-Type: application/json".into()],
                hosts: None,
            },
            &levels,
        )?;
        drop(server);
        python.insert(
            format!(
                "workers={workers}, intra_op_threads={}",
                if threads == 0 {
                    "default".to_owned()
                } else {
                    threads.to_string()
                }
            ),
            json!({ "image": image, "photos": photos, "json": json_points }),
        );
    }
    Ok(json!({
        "corral_image": corral_image,
        "corral_photos": corral_photos,
        "corral_json": corral_json,
        "python": python,
    }))
}

/// Section 3 of the document, with its goals (one against section 1's native ceiling).
pub(in crate::bench) fn section(
    out: &mut String,
    results: &Value,
    goals: &mut Vec<Goal>,
    plot: &impl Fn(&str) -> String,
) {
    let p = &results["python"];
    let native_peak = super::overhead::native_ceiling(results);
    let _ = writeln!(out, "## 3. Against a Python server\n");
    out.push_str(
        "`xtask/bench/python_server.py`: Starlette on uvicorn, Pillow for decoding and resizing, \
         onnxruntime, inference in the thread pool as FastAPI runs a `def` endpoint; the same \
         preprocessing as the `image-classifier` example. Two settings, both measured: one \
         worker with ONNX Runtime's default threads, and two workers (one per core) with one \
         intra-op thread each. Corral runs the `image-classifier` example (JPEG decode, resize \
         and normalization inside the WebAssembly sandbox) and `bench-nn`'s JSON route.\n\n",
    );
    let pythons: Vec<(String, Value)> = p["python"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let best = |field: &str| {
        pythons
            .iter()
            .map(|(k, v)| (k.clone(), v[field].clone()))
            .max_by(|a, b| peak(&a.1).1.total_cmp(&peak(&b.1).1))
            .unwrap_or_default()
    };
    for (field, corral_field, title) in [
        (
            "image",
            "corral_image",
            "EfficientNet-Lite0, JPEG in, top-5 JSON out",
        ),
        ("json", "corral_json", "tabular MLP, JSON in and out"),
    ] {
        let _ = writeln!(out, "### {title}\n");
        let mut columns: Vec<(&str, &Value)> = vec![("Corral", &p[corral_field])];
        let labels: Vec<String> = pythons
            .iter()
            .map(|(k, _)| format!("Python ({k})"))
            .collect();
        for ((_, v), label) in pythons.iter().zip(&labels) {
            columns.push((label.as_str(), &v[field]));
        }
        sweep_table(out, &columns);
        let (best_name, best_points) = best(field);
        let (c, py) = (peak(&p[corral_field]), peak(&best_points));
        let py_p99_same_c = points(&best_points)
            .into_iter()
            .find(|q| q.0 == c.0)
            .map_or(f64::NAN, |q| q.3);
        let _ = writeln!(
            out,
            "- Saturation: Corral {:.1} req/s (at {}), best Python ({best_name}) {:.1} req/s (at {}): \
             **{:.2}×**. p99 at Corral's peak concurrency: Corral {}, Python {}.\n",
            c.1,
            c.0,
            py.1,
            py.0,
            c.1 / py.1,
            ms(c.3),
            ms(py_p99_same_c),
        );
        if field == "image" {
            let of_native = c.1 / native_peak.1;
            let _ = writeln!(
                out,
                "- Corral's image classifier reaches {:.1}% of native ONNX Runtime's ceiling on the \
                 preprocessed tensor at its best thread setting ({:.1} runs/s, section 1), with \
                 JPEG decoding and resizing in the guest on top.\n",
                of_native * 100.0,
                native_peak.1
            );
            goals.push((
                "3. image classifier vs Python".into(),
                "≥ 1.25×".into(),
                format!("{:.2}×", c.1 / py.1),
                c.1 / py.1 >= 1.25,
            ));
            goals.push((
                "3. image classifier vs native ceiling".into(),
                "≥ 90%".into(),
                format!("{:.1}%", of_native * 100.0),
                of_native >= 0.90,
            ));
            goals.push((
                "3. image classifier p99 vs Python (same concurrency)".into(),
                "≤".into(),
                format!("{} vs {}", ms(c.3), ms(py_p99_same_c)),
                c.3 <= py_p99_same_c,
            ));
            photos_table(out, p, &pythons, goals);
        } else {
            goals.push((
                "3. tiny model vs Python".into(),
                "≥ 3×".into(),
                format!("{:.2}×", c.1 / py.1),
                c.1 / py.1 >= 3.0,
            ));
        }
    }
    out.push_str(&plot("python"));
}

/// The photos against the best Python setting for each: peak throughput, latency one at a
/// time, and p99 at Corral's peak concurrency, with the goals (ahead at every size, 1.25× on
/// the 640×480 JPEG).
fn photos_table(out: &mut String, p: &Value, pythons: &[(String, Value)], goals: &mut Vec<Goal>) {
    let _ = writeln!(
        out,
        "**Photos of ordinary sizes** (`xtask/bench/photos/README.md`), each at concurrency {} \
         against the better Python setting for that photo:\n",
        points(&p["corral_photos"][PHOTOS[0].0])
            .iter()
            .map(|q| q.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str(
        "| image | Corral peak req/s | Python peak req/s | Corral / Python | p50 at 1, Corral | \
         Python (its faster setting at 1) | p99 at Corral's peak, Corral | Python |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut behind = Vec::new();
    for (name, _) in PHOTOS {
        let corral = &p["corral_photos"][name];
        let Some((label, python)) = pythons
            .iter()
            .map(|(k, v)| (k.as_str(), &v["photos"][name]))
            .max_by(|a, b| peak(a.1).1.total_cmp(&peak(b.1).1))
        else {
            continue;
        };
        let (c, py) = (peak(corral), peak(python));
        let py_p99 = points(python)
            .into_iter()
            .find(|q| q.0 == c.0)
            .map_or(f64::NAN, |q| q.3);
        let ratio = c.1 / py.1;
        let py_single = pythons
            .iter()
            .map(|(_, v)| single(&v["photos"][name]).2)
            .fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            out,
            "| {name} | {:.1} (at {}) | {:.1} (at {}; {label}) | **{ratio:.2}×** | {} | {} | {} | {} |",
            c.1,
            c.0,
            py.1,
            py.0,
            ms(single(corral).2),
            ms(py_single),
            ms(c.3),
            ms(py_p99),
        );
        if ratio < 1.0 {
            behind.push(format!("{name} {ratio:.2}×"));
        }
        if *name == "photo-640x480.jpg" {
            goals.push((
                "3. image classifier vs Python, 640×480 JPEG photo".into(),
                "≥ 1.25×".into(),
                format!("{ratio:.2}×"),
                ratio >= 1.25,
            ));
        }
    }
    out.push('\n');
    goals.push((
        "3. image classifier ahead of Python at every photo size".into(),
        "≥ 1.0× each".into(),
        if behind.is_empty() {
            "all".into()
        } else {
            format!("behind: {}", behind.join(", "))
        },
        behind.is_empty(),
    ));
}
