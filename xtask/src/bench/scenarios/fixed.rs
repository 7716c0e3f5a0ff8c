//! Scenario 2, fixed overhead: a hello-world component on Corral and on `wasmtime serve`, a
//! tiny model through Corral against ONNX Runtime alone, and their section of the document.

use std::fmt::Write as _;
use std::process::Command;

use serde_json::{Value, json};

use crate::Result;
use crate::bench::Kit;
use crate::bench::load::{Load, corral_load, mlp_sweep, probe, sweep};
use crate::bench::report::{Goal, ms, peak, single, sweep_table};
use crate::bench::server::{Corral, Server, free_addr, guest};

/// 2. Fixed costs: a hello-world component on Corral and on `wasmtime serve`, and a tiny
///    model through Corral against ONNX Runtime alone.
pub(in crate::bench) fn fixed(kit: &mut Kit) -> Result<Value> {
    let levels = kit.plan.concurrency.clone();
    let corral = Corral::start(kit, "fixed")?;
    let hello = guest("bench-hello");
    corral.tenants(kit, 0..1, &hello, "none", false)?;
    let corral_hello = sweep(
        kit,
        &corral_load(&corral, 0, "/", "GET", None, &[]),
        &levels,
    )?;
    let corral_mlp = mlp_sweep(kit, &corral, 1)?;
    drop(corral);

    let addr = free_addr()?;
    let mut command = Command::new(&kit.wasmtime);
    command
        .args(["serve", "-S", "cli", "-O", "pooling-allocator=y", "--addr"])
        .arg(addr.to_string())
        .arg(&hello);
    let wasmtime = Server::start(kit, "wasmtime-serve", &mut command, addr)?;
    let wasmtime_hello = sweep(
        kit,
        &Load {
            url: format!("http://{addr}/"),
            method: "GET",
            ..Load::default()
        },
        &levels,
    )?;
    drop(wasmtime);

    let seconds = kit.plan.seconds.to_string();
    let mlp_path = kit.mlp.clone();
    let native_mlp = probe(
        kit,
        &[&"native", &mlp_path, &"x", &"1,16", &seconds, &"1,2,4"],
    )?;
    Ok(json!({
        "corral_hello": corral_hello,
        "wasmtime_hello": wasmtime_hello,
        "corral_mlp": corral_mlp,
        "native_mlp": native_mlp,
    }))
}

/// Section 2 of the document, with its goal.
pub(in crate::bench) fn section(
    out: &mut String,
    results: &Value,
    goals: &mut Vec<Goal>,
    plot: &impl Fn(&str) -> String,
) {
    let f = &results["fixed"];
    let (hello, wasmtime) = (peak(&f["corral_hello"]), peak(&f["wasmtime_hello"]));
    let (mlp_native, mlp_corral) = (single(&f["native_mlp"]), single(&f["corral_mlp"]));
    let _ = writeln!(out, "## 2. Fixed overhead: hello world and a tiny model\n");
    out.push_str(
        "`bench-hello` answers `hello, world` and imports only `wasi:http` and the WASI it needs, \
         so `wasmtime serve` (wasmtime-cli at the wasmtime release Corral links, pooling \
         allocator on, `-S cli`) runs the same component file.\n\n",
    );
    sweep_table(
        out,
        &[
            ("Corral", &f["corral_hello"]),
            ("wasmtime serve", &f["wasmtime_hello"]),
        ],
    );
    let _ = writeln!(
        out,
        "- Saturation: Corral {:.0} req/s, `wasmtime serve` {:.0} req/s ({:.2}×). Concurrency 1 p50: \
         {} vs {}.\n",
        hello.1,
        wasmtime.1,
        hello.1 / wasmtime.1,
        ms(single(&f["corral_hello"]).2),
        ms(single(&f["wasmtime_hello"]).2),
    );
    out.push_str(
        "The tiny model: a 16→64→64→3 MLP (`xtask/bench/fixtures.py`), JSON in and out through \
         the `bench-nn` guest, against ONNX Runtime alone on the same input.\n\n",
    );
    sweep_table(
        out,
        &[("native", &f["native_mlp"]), ("Corral", &f["corral_mlp"])],
    );
    let _ = writeln!(
        out,
        "- Concurrency 1: the model alone {} per run, the whole request through Corral {}: \
         **{:.0} µs** per request is the host, HTTP, the instance and the JSON.\n",
        ms(mlp_native.2),
        ms(mlp_corral.2),
        mlp_corral.2 - mlp_native.2
    );
    out.push_str(&plot("fixed"));
    goals.push((
        "2. hello-world throughput vs `wasmtime serve`".into(),
        "≥ 1.0×".into(),
        format!("{:.2}×", hello.1 / wasmtime.1),
        hello.1 >= wasmtime.1,
    ));
}
