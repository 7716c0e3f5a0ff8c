//! Hostile behaviour for the fault suite: `GET /fault/NAME` misbehaves in one way. Routes that
//! survive answer `200 {"fault":NAME,"ok":true,...}`; a `wasi:nn` error the host returns comes
//! back as `422 {"fault":NAME,"code":...,"message":...}`. The rest never answer on their own:
//! the host stops them and answers for them.

use std::hint::black_box;
use std::io::Write;

use corral_guest::wasi_nn::tensor::TensorType;
use corral_guest::{Error, Model, Tensor};
use serde_json::{Value, json};
use wstd::http::StatusCode;

/// Runs fault `name`; `None` when there is no such fault.
pub async fn run(name: &str, query: &str) -> Option<(StatusCode, Value)> {
    let nn = |result: Result<Value, Error>| match result {
        Ok(detail) => (
            StatusCode::OK,
            json!({ "fault": name, "ok": true, "detail": detail }),
        ),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "fault": name, "code": e.code_name(), "message": e.message }),
        ),
    };
    Some(match name {
        "loop" => {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "grow-memory" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                held.push(vec![1u8; 1 << 20]);
                black_box(&held);
            }
        }
        "recursion" => {
            let depth = recurse(black_box(0));
            (StatusCode::OK, json!({ "fault": name, "depth": depth }))
        }
        "panic" => panic!("the fault suite asked for a panic"),
        "unreachable" => core::arch::wasm32::unreachable(),
        "huge-tensor" => nn(add_with(Tensor::from_bytes(
            &[1_000_000, 1_000_000],
            TensorType::Fp32,
            &[0u8; 16],
        ))),
        "overflow-dims" => nn(add_with(Tensor::from_bytes(
            &[u32::MAX, u32::MAX, u32::MAX],
            TensorType::Fp32,
            &[0u8; 16],
        ))),
        "big-tensor" => nn(add_with(Tensor::f32(&[2, 1000], &[0.0; 2000]))),
        "bad-length" => nn(add_with(Tensor::from_bytes(
            &[2, 2],
            TensorType::Fp32,
            &[0u8; 15],
        ))),
        "many-computes" => {
            let model = Model::load("add").map_err(|e| e.message);
            let mut done = 0u32;
            if let Ok(model) = model {
                for _ in 0..1_000_000 {
                    let inputs = vec![
                        ("a", Tensor::f32(&[2, 2], &[1.0; 4])),
                        ("b", Tensor::f32(&[2, 2], &[1.0; 4])),
                    ];
                    if model.run(inputs).is_err() {
                        break;
                    }
                    done += 1;
                }
            }
            (
                StatusCode::OK,
                json!({ "fault": name, "ok": true, "computes": done }),
            )
        }
        "many-describes" => {
            // Asking again and again for what the models take: every answer is copied into
            // this instance, and every call counts.
            let model = Model::load("add").map_err(|e| e.message);
            let mut done = 0u32;
            if let Ok(model) = model {
                for _ in 0..1_000_000 {
                    if model.describe().is_err() {
                        break;
                    }
                    done += 1;
                }
            }
            (
                StatusCode::OK,
                json!({ "fault": name, "ok": true, "describes": done }),
            )
        }
        "stdout-flood" => {
            let chunk = vec![b'x'; 64 << 10];
            let mut written = 0usize;
            let mut stdout = std::io::stdout();
            while written < 100 << 20 {
                if stdout.write_all(&chunk).is_err() {
                    break;
                }
                written += chunk.len();
            }
            let _ = stdout.write_all(b"\n");
            (
                StatusCode::OK,
                json!({ "fault": name, "ok": true, "written": written }),
            )
        }
        "ort-error" => nn(Model::load("reshape").and_then(|model| {
            model
                .run(vec![
                    ("x", Tensor::f32(&[4], &[1.0; 4])),
                    ("shape", Tensor::i64(&[2], &[3, 3])),
                ])
                .map(|_| json!({}))
        })),
        // A Loop whose trip count is 2^63 - 1: the run never ends unless the host stops it.
        "spin" => nn(Model::load("spin").and_then(|model| {
            model
                .run(vec![("n", Tensor::i64(&[], &[i64::MAX]))])
                .map(|_| json!({}))
        })),
        // ConstantOfShape asked for `n` floats: ONNX Runtime allocates whatever is asked.
        "fill" => {
            let n: i64 = query
                .strip_prefix("n=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            nn(Model::load("fill").and_then(|model| {
                let outputs = model.run(vec![("shape", Tensor::i64(&[1], &[n]))])?;
                let y = outputs.get("y").map(|y| y.shape()).unwrap_or_default();
                Ok(json!({ "shape": y }))
            }))
        }
        // One tensor whose dimension list is a million entries long (4 MB in the host).
        "many-dims" => {
            let dims = vec![1u32; 1_000_000];
            let tensor = Tensor::from_bytes(&dims, TensorType::Fp32, &[0u8; 4]);
            black_box(&tensor);
            (StatusCode::OK, json!({ "fault": name, "ok": true }))
        }
        // Tensors kept alive, one more each time, until the host says no.
        "many-tensors" => {
            let held: Vec<Tensor> = (0..100_000).map(|_| Tensor::f32(&[1], &[0.0])).collect();
            (
                StatusCode::OK,
                json!({ "fault": name, "ok": true, "held": held.len() }),
            )
        }
        // A model name of 4 MiB: the error the host keeps must not repeat it.
        "long-name" => nn(Model::load(&"n".repeat(4 << 20)).map(|_| json!({}))),
        // One output read again and again: every copy counts.
        "reread" => nn(Model::load("fill").and_then(|model| {
            let outputs = model.run(vec![("shape", Tensor::i64(&[1], &[1000]))])?;
            let y = outputs.get("y").expect("fill has output y");
            let mut copied = 0usize;
            for _ in 0..1500 {
                copied += y.bytes().len();
            }
            Ok(json!({ "copied": copied }))
        })),
        "never-respond" => {
            wstd::task::sleep(wstd::time::Duration::from_secs(3600)).await;
            (StatusCode::OK, json!({ "fault": name }))
        }
        "sleep" => {
            let ms = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
            (
                StatusCode::OK,
                json!({ "fault": name, "ok": true, "slept_ms": ms }),
            )
        }
        "big-response" => {
            let bytes: usize = query
                .strip_prefix("bytes=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            return Some((
                StatusCode::OK,
                json!({ "fault": name, "padding": "x".repeat(bytes) }),
            ));
        }
        "print" => {
            let text = query.strip_prefix("text=").unwrap_or("hello");
            println!("stdout says {text}");
            eprintln!("stderr says {text}");
            (StatusCode::OK, json!({ "fault": name, "ok": true }))
        }
        "write-secret" => (StatusCode::OK, write_secret(query)),
        "scan-secret" => (StatusCode::OK, scan_secret(query)),
        _ => return None,
    })
}

fn add_with(a: Tensor) -> Result<Value, Error> {
    Model::load("add")?
        .run(vec![("a", a), ("b", Tensor::f32(&[2, 2], &[0.0; 4]))])
        .map(|_| json!({}))
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(black_box(frame[63] + 1)) + frame[0]
}

/// The 16-byte pattern a request's `secret=` query names, derived at run time so that no
/// copy of it sits in the component's data.
fn pattern(query: &str) -> [u8; 16] {
    let seed = query.strip_prefix("secret=").unwrap_or("0");
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = seed.as_bytes()[i % seed.len().max(1)] ^ 0xa5 ^ (i as u8);
    }
    out
}

/// Fills 8 MiB of this instance's memory with the pattern and keeps it there until the
/// instance ends.
fn write_secret(query: &str) -> Value {
    let pattern = pattern(query);
    let buffer: Vec<u8> = pattern.iter().copied().cycle().take(8 << 20).collect();
    black_box(&buffer);
    let copies = buffer.len() / pattern.len();
    std::mem::forget(buffer);
    // Proves the scanner finds what is there.
    let found_here = scan_secret(query)["found"].clone();
    json!({ "fault": "write-secret", "ok": true, "copies": copies, "found_here": found_here })
}

/// Counts the pattern's occurrences in all of this instance's linear memory. Besides the few
/// copies this function holds, any occurrence came from another instance.
fn scan_secret(query: &str) -> Value {
    let pattern = pattern(query);
    let bytes = core::arch::wasm32::memory_size(0) * 65536;
    // SAFETY: in wasm, every address from 1 up to memory.size is readable linear memory.
    let memory = unsafe { std::slice::from_raw_parts(1 as *const u8, bytes - 1) };
    let found = memory.windows(16).filter(|w| *w == pattern).count();
    json!({ "fault": "scan-secret", "ok": true, "memory_bytes": bytes, "found": found })
}
