//! `cargo xtask bench --preprocess`: the image classifier's preprocessing (decode, resize,
//! crop, normalize) inside the WebAssembly guest against Pillow's, on photos of ordinary
//! sizes, each timed where it runs; and its section of the document.

use std::fmt::Write as _;
use std::process::Command;

use serde_json::{Value, json};

use crate::bench::Kit;
use crate::bench::load::script_json;
use crate::bench::server::{Corral, guest};
use crate::{Result, post_to, root};

pub(in crate::bench) const BEGIN: &str =
    "<!-- preprocessing benchmarks: written by cargo xtask bench --preprocess -->";
pub(in crate::bench) const END: &str = "<!-- end of preprocessing benchmarks -->";

/// The images, from `fixtures.py`: the classifier's sample, then photos by size.
const IMAGES: &[&str] = &[
    "dog.jpg",
    "photo-640x427.jpg",
    "photo-640x480.jpg",
    "photo-640x480.png",
    "photo-1280x720.jpg",
    "photo-1920x1080.jpg",
];
/// Timed runs of each image on each side (after one untimed).
const ROUNDS: usize = 30;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each image through `bench-nn`'s `/preprocess` on `corral serve` (timed by the guest), and
/// through the Python server's `preprocess` (timed in process).
pub(in crate::bench) fn preprocess(kit: &mut Kit) -> Result<Value> {
    let paths: Vec<_> = IMAGES
        .iter()
        .map(|name| {
            if *name == "dog.jpg" {
                kit.dog.clone()
            } else {
                kit.work.join(name)
            }
        })
        .collect();
    let corral = Corral::start(kit, "preprocess")?;
    let model = format!("model={}", kit.mlp.display());
    corral.tenants(kit, 0..1, &guest("bench-nn"), &model, false)?;
    let mut guest_side = serde_json::Map::new();
    for (name, path) in IMAGES.iter().zip(&paths) {
        let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (mut decode, mut total) = (Vec::new(), Vec::new());
        let mut size = Value::Null;
        for round in 0..=ROUNDS {
            let response = post_to(corral.data, "t0.localhost", "/preprocess", &body)?;
            let answer: Value = response
                .find('{')
                .zip(response.rfind('}'))
                .and_then(|(from, to)| serde_json::from_str(&response[from..=to]).ok())
                .ok_or_else(|| format!("/preprocess of {name} answered: {response}"))?;
            if answer["total_us"].is_null() {
                return Err(format!("/preprocess of {name} answered: {answer}"));
            }
            if round > 0 {
                decode.push(answer["decode_us"].as_f64().unwrap_or(f64::NAN));
                total.push(answer["total_us"].as_f64().unwrap_or(f64::NAN));
            }
            size = json!([answer["width"], answer["height"]]);
        }
        guest_side.insert(
            (*name).to_owned(),
            json!({
                "bytes": body.len(),
                "size": size,
                "decode_us": median(decode),
                "total_us": median(total),
            }),
        );
    }
    drop(corral);

    let mut command = Command::new(&kit.python);
    command
        .arg(root().join("xtask/bench/preprocess_timing.py"))
        .arg(ROUNDS.to_string())
        .args(&paths);
    kit.commands.push(format!("{command:?}"));
    let pillow = script_json(&mut command)?;
    Ok(json!({
        "date": crate::bench::machine()["date"],
        "rounds": ROUNDS,
        "guest": guest_side,
        "pillow": pillow,
    }))
}

/// The section: per image, the guest's and Pillow's medians and their ratio.
pub(in crate::bench) fn section(results: &Value, commands: &[String]) -> String {
    let mut out = String::from("## Image preprocessing: the guest against Pillow\n\n");
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench --preprocess` ({}) on the same machine: the image \
         classifier's preprocessing (decode to RGB, resize to 256×256 with a triangle filter, \
         center crop 224, ImageNet normalization to NCHW f32) as `corral_guest::vision` runs \
         it inside the WebAssembly guest (`bench-nn`'s `/preprocess` on `corral serve`, timed \
         by the guest's own clock, so HTTP is not counted), against the Python server's \
         `preprocess` (Pillow 13, bilinear), timed in process. Medians of {} runs each, one at \
         a time. `decode` is the decode to RGB alone; `total` the whole preprocessing. Photos: \
         `xtask/bench/photos/README.md`.\n",
        results["date"].as_str().unwrap_or("?"),
        results["rounds"]
    );
    out.push_str(
        "| image | pixels | bytes | guest decode | guest total | Pillow decode | Pillow total | guest / Pillow (total) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("?".to_owned(), |us| format!("{:.2} ms", us / 1e3))
    };
    for name in IMAGES {
        let g = &results["guest"][*name];
        let p = &results["pillow"][*name];
        let ratio = match (g["total_us"].as_f64(), p["total_us"].as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "?".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {name} | {}×{} | {} | {} | {} | {} | {} | {ratio} |",
            g["size"][0],
            g["size"][1],
            g["bytes"],
            ms(&g["decode_us"]),
            ms(&g["total_us"]),
            ms(&p["decode_us"]),
            ms(&p["total_us"]),
        );
    }
    let (g, p) = (
        &results["guest"]["photo-640x480.jpg"]["total_us"],
        &results["pillow"]["photo-640x480.jpg"]["total_us"],
    );
    if let (Some(g), Some(p)) = (g.as_f64(), p.as_f64()) {
        let ratio = g / p;
        let _ = writeln!(
            out,
            "\nGoal (issue 18): the guest's preprocessing of a 640×480 JPEG within 2× of \
             Pillow's: **{ratio:.2}×, {}**.",
            if ratio <= 2.0 { "met" } else { "missed" }
        );
    }
    out.push_str("\nCommands:\n\n```\n");
    for command in commands {
        let _ = writeln!(out, "{command}");
    }
    out.push_str("```\n");
    out
}
