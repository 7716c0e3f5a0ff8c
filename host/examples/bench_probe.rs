//! In-process measurements for `cargo xtask bench`, the parts no HTTP load generator can see.
//! Each mode prints one JSON object per line on stdout.
//!
//! - `native MODEL INPUT SHAPE SECONDS C1,C2,.. [THREADS [DEVICE]]`: ONNX Runtime on its own,
//!   in this process, with the session settings `corral serve` uses (Corral's session wrapper:
//!   the C API `Run`, inputs passed without copying) and THREADS intra-op threads per run
//!   (default `0`: ONNX Runtime's own default, one per core), on DEVICE (`cpu`, the default,
//!   or `cuda:N`). For each concurrency, that many threads call `Run` on one shared session in
//!   a loop; prints runs/s and latency percentiles. The physical limit the HTTP numbers are
//!   compared with.
//! - `load ADDR HOST PATH BODY SECONDS C1,C2,.. [NAME:VALUE ..]`: an HTTP/1.1 load generator
//!   for machines without wrk (the GPU check's): for each concurrency, that many keep-alive
//!   connections POST BODY (a file) to PATH with `Host: HOST` and the given headers, for
//!   SECONDS; prints requests/s, latency percentiles and the answers that were not 200.
//! - `instantiate COMPONENT ITERATIONS [NAME=MODEL ...]`: the per-request work `corral serve`
//!   does before the guest's handler runs: a new store with the tenant's limits, then
//!   instantiating the pre-instantiated component from the pooling allocator. Prints the
//!   percentiles of each part.
//! - `sessions MODEL COUNT`: resident memory of COUNT separately loaded sessions of one
//!   model file (what a server without session sharing holds), against one shared session.
//! - `tenants ADMIN TOKEN FROM TO COMPONENT NAME=MODEL|none [DISTINCT_DIR]`: creates tenants
//!   `tFROM`..`tTO-1` (host `tN.localhost`) through the admin API and deploys the component
//!   and model to each, four at a time. With DISTINCT_DIR, each tenant gets its own component:
//!   the same code with a custom section naming the tenant appended, so its digest (and its
//!   compiled artifact) differs. `{tenant}` in MODEL's path is replaced by the tenant's name
//!   (a model file per tenant). Prints the count and the seconds taken.
//! - `first ADDR PATH BODY HOST..`: one request to each host on a fresh connection, as a
//!   client that has never talked to it would send; prints each latency (connect to the last
//!   byte of the answer), failing on any answer but 200.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral::client::Component;
use corral::probe::{Instantiation, NativeModel, separate_sessions, shared_sessions};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [
            "native",
            model,
            input,
            shape,
            seconds,
            concurrency,
            rest @ ..,
        ] if rest.len() <= 2 => native(
            Path::new(model),
            input,
            &parse_list(shape)?,
            Duration::from_secs_f64(seconds.parse().context("SECONDS")?),
            &parse_list(concurrency)?,
            rest.first()
                .map_or(Ok(0), |t| t.parse())
                .context("THREADS")?,
            rest.get(1).copied().unwrap_or("cpu"),
        ),
        [
            "load",
            addr,
            host,
            path,
            body,
            seconds,
            concurrency,
            headers @ ..,
        ] => load(
            addr,
            host,
            path,
            &std::fs::read(body).with_context(|| format!("cannot read {body}"))?,
            Duration::from_secs_f64(seconds.parse().context("SECONDS")?),
            &parse_list(concurrency)?,
            headers,
        ),
        ["instantiate", component, iterations, models @ ..] => instantiate(
            Path::new(component),
            iterations.parse().context("ITERATIONS")?,
            models,
        ),
        ["sessions", model, count] => sessions(Path::new(model), count.parse().context("COUNT")?),
        [
            "tenants",
            admin,
            token,
            from,
            to,
            component,
            model,
            distinct @ ..,
        ] => tenants(
            admin,
            token,
            from.parse().context("FROM")?..to.parse().context("TO")?,
            Path::new(component),
            model,
            distinct.first().map(Path::new),
        ),
        ["first", addr, path, body, hosts @ ..] => {
            first_requests(addr, path, Path::new(body), hosts)
        }
        _ => bail!(
            "usage: bench_probe native MODEL INPUT SHAPE SECONDS C1,C2.. [THREADS [DEVICE]] | \
             load ADDR HOST PATH BODY SECONDS C1,C2.. [NAME:VALUE ..] | \
             instantiate COMPONENT ITERATIONS [NAME=MODEL ..] | sessions MODEL COUNT | \
             tenants ADMIN TOKEN FROM TO COMPONENT NAME=MODEL [DISTINCT_DIR] | \
             first ADDR PATH BODY HOST.."
        ),
    }
}

fn parse_list<T: std::str::FromStr>(text: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .ok()
                .context(format!("bad list '{text}'"))
        })
        .collect()
}

/// The value at quantile `q` of sorted durations, in microseconds.
fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

fn native(
    model: &Path,
    input: &str,
    shape: &[u32],
    seconds: Duration,
    concurrency: &[usize],
    threads: usize,
    device: &str,
) -> anyhow::Result<()> {
    let session = NativeModel::load_on(model, threads, device)?;
    let elements: usize = shape.iter().map(|&d| d as usize).product();
    // A deterministic, image-like input: values in [-2, 2].
    let data: Vec<u8> = (0..elements)
        .flat_map(|i| (((i * 7919) % 1000) as f32 / 250.0 - 2.0).to_le_bytes())
        .collect();
    let run = |session: &NativeModel| session.run_f32(input, shape, &data);
    for _ in 0..20 {
        run(&session)?; // Warm up ONNX Runtime's allocations and thread pool.
    }
    for &c in concurrency {
        let started = Instant::now();
        let deadline = started + seconds;
        let latencies = std::thread::scope(|scope| -> anyhow::Result<Vec<Duration>> {
            let workers: Vec<_> = (0..c)
                .map(|_| {
                    let session = &session;
                    let run = &run;
                    scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            run(session)?;
                            latencies.push(t.elapsed());
                        }
                        Ok(latencies)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for worker in workers {
                all.extend(worker.join().expect("worker thread")?);
            }
            Ok(all)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let mut sorted = latencies;
        sorted.sort();
        println!(
            "{}",
            json!({
                "concurrency": c,
                "requests": sorted.len(),
                "rps": sorted.len() as f64 / elapsed,
                "p50_us": percentile_us(&sorted, 0.50),
                "p99_us": percentile_us(&sorted, 0.99),
            })
        );
    }
    Ok(())
}

fn instantiate(component: &Path, iterations: usize, models: &[&str]) -> anyhow::Result<()> {
    let models: Vec<(String, std::path::PathBuf)> = models
        .iter()
        .map(|m| {
            let (name, path) = m.split_once('=').context("models are NAME=PATH")?;
            Ok((name.to_owned(), path.into()))
        })
        .collect::<anyhow::Result<_>>()?;
    let probe = Instantiation::new(component, &models)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut stores, mut instances) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for i in 0..iterations + 100 {
            let (store, instance) = probe.once().await?;
            if i >= 100 {
                stores.push(store);
                instances.push(instance);
            }
        }
        anyhow::Ok(())
    })?;
    let total: Vec<Duration> = stores
        .iter()
        .zip(&instances)
        .map(|(a, b)| *a + *b)
        .collect();
    for (part, mut times) in [
        ("store", stores),
        ("instantiate", instances),
        ("total", total),
    ] {
        times.sort();
        println!(
            "{}",
            json!({
                "part": part,
                "iterations": times.len(),
                "p50_us": percentile_us(&times, 0.50),
                "p99_us": percentile_us(&times, 0.99),
            })
        );
    }
    Ok(())
}

/// Resident memory of this process, in bytes (from /proc).
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

fn sessions(model: &Path, count: usize) -> anyhow::Result<()> {
    // Load ONNX Runtime itself before the first measurement.
    drop(NativeModel::load(model, 0)?);
    let before = rss_bytes()?;
    let shared = shared_sessions(model, count)?;
    let after_shared = rss_bytes()?;
    let separate = separate_sessions(model, count)?;
    let after_separate = rss_bytes()?;
    println!(
        "{}",
        json!({
            "count": count,
            "shared_sessions_bytes": after_shared.saturating_sub(before),
            "separate_sessions_bytes": after_separate.saturating_sub(after_shared),
        })
    );
    drop((shared, separate));
    Ok(())
}

/// `component` with a custom section `corral-bench-tenant` holding `tenant` appended: the same
/// code, a different digest.
fn distinct_component(component: &[u8], tenant: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"corral-bench-tenant";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tenant.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn tenants(
    admin: &str,
    token: &str,
    range: std::ops::Range<usize>,
    component: &Path,
    model: &str,
    distinct: Option<&Path>,
) -> anyhow::Result<()> {
    let client = corral::client::AdminClient::new(admin, Some(token.to_owned()))?;
    let models = match model {
        "none" => Vec::new(),
        model => {
            let (name, path) = model
                .split_once('=')
                .context("the model is NAME=PATH or none")?;
            vec![(name.to_owned(), std::path::PathBuf::from(path))]
        }
    };
    let code = std::fs::read(component)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let count = range.len();
    runtime.block_on(async {
        let mut next = range.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < 4 {
                let Some(i) = next.next() else { break };
                let tenant = format!("t{i}");
                let file = match distinct {
                    Some(dir) => {
                        let file = dir.join(format!("{tenant}.wasm"));
                        std::fs::write(&file, distinct_component(&code, &tenant))?;
                        file
                    }
                    None => component.to_path_buf(),
                };
                // `{tenant}` in a model's path names a file per tenant (distinct models).
                let models: Vec<(String, std::path::PathBuf)> = models
                    .iter()
                    .map(|(name, path)| {
                        let path = path.to_string_lossy().replace("{tenant}", &tenant);
                        (name.clone(), path.into())
                    })
                    .collect();
                let client = client.clone();
                let scratch = distinct.is_some();
                tasks.spawn(async move {
                    let host = format!("{tenant}.localhost");
                    client
                        .put_json(
                            &format!("/v1/tenants/{tenant}"),
                            &json!({ "hosts": [host] }),
                        )
                        .await?;
                    // The server validates `[store] concurrent_deploys` uploads at once and
                    // asks the others to retry, as a client should.
                    loop {
                        match client
                            .deploy(&tenant, Some(Component::File(&file)), &models, None)
                            .await
                        {
                            Err(e) if e.to_string().contains("deploys_busy") => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            result => break result.map(drop)?,
                        };
                    }
                    if scratch {
                        std::fs::remove_file(&file)?;
                    }
                    anyhow::Ok(())
                });
            }
            match tasks.join_next().await {
                Some(result) => result??,
                None => break,
            }
        }
        anyhow::Ok(())
    })?;
    println!(
        "{}",
        json!({ "deployed": count, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}

fn first_requests(addr: &str, path: &str, body: &Path, hosts: &[&str]) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let body = std::fs::read(body)?;
    for host in hosts {
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with("HTTP/1.1 200") {
            bail!("{host}: {}", text.lines().next().unwrap_or("no answer"));
        }
        println!(
            "{}",
            json!({ "host": host, "latency_us": elapsed.as_secs_f64() * 1e6 })
        );
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection's requests: POSTs `head` + `body` until `deadline`;
/// each answer's latency and whether it was 200.
fn connection(
    addr: &str,
    head: &[u8],
    body: &[u8],
    deadline: Instant,
) -> anyhow::Result<Vec<(Duration, bool)>> {
    use std::io::{BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    let mut line = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        writer.write_all(head)?;
        writer.write_all(body)?;
        let ok = read_line(&mut reader, &mut line)?.starts_with(b"HTTP/1.1 200");
        let (mut length, mut chunked) = (0u64, false);
        loop {
            let header = String::from_utf8_lossy(read_line(&mut reader, &mut line)?).into_owned();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().context("Content-Length")?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if chunked {
            // Each chunk: its size in hex, CRLF, the bytes, CRLF; size 0 ends the body, then
            // trailers up to an empty line.
            loop {
                let size = String::from_utf8_lossy(read_line(&mut reader, &mut line)?).into_owned();
                let size = size.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size, 16).context("chunk size")?;
                if size == 0 {
                    while !read_line(&mut reader, &mut line)?.is_empty() {}
                    break;
                }
                std::io::copy(&mut (&mut reader).take(size), &mut std::io::sink())?;
                read_line(&mut reader, &mut line)?;
            }
        } else {
            std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        }
        answers.push((started.elapsed(), ok));
    }
    Ok(answers)
}

/// One line of an HTTP head, without its CRLF; an error when the server closed the connection.
fn read_line<'a>(
    reader: &mut impl std::io::BufRead,
    line: &'a mut Vec<u8>,
) -> anyhow::Result<&'a [u8]> {
    line.clear();
    if reader.read_until(b'\n', line)? == 0 {
        bail!("the server closed the connection");
    }
    Ok(line.trim_ascii_end())
}

fn load(
    addr: &str,
    host: &str,
    path: &str,
    body: &[u8],
    seconds: Duration,
    concurrency: &[usize],
    headers: &[&str],
) -> anyhow::Result<()> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        let (name, value) = header.split_once(':').context("headers are NAME:VALUE")?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A short warm-up: models load, GPU kernels are chosen.
    connection(
        addr,
        head.as_bytes(),
        body,
        Instant::now() + Duration::from_secs(1),
    )?;
    for &c in concurrency {
        let started = Instant::now();
        let deadline = started + seconds;
        let answers = std::thread::scope(|scope| -> anyhow::Result<Vec<(Duration, bool)>> {
            let workers: Vec<_> = (0..c)
                .map(|_| scope.spawn(|| connection(addr, head.as_bytes(), body, deadline)))
                .collect();
            let mut all = Vec::new();
            for worker in workers {
                all.extend(worker.join().expect("connection thread")?);
            }
            Ok(all)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let failed = answers.iter().filter(|(_, ok)| !ok).count();
        let mut sorted: Vec<Duration> = answers.iter().map(|(d, _)| *d).collect();
        sorted.sort();
        println!(
            "{}",
            json!({
                "concurrency": c,
                "requests": sorted.len(),
                "not_ok": failed,
                "rps": sorted.len() as f64 / elapsed,
                "p50_us": percentile_us(&sorted, 0.50),
                "p99_us": percentile_us(&sorted, 0.99),
            })
        );
    }
    Ok(())
}
