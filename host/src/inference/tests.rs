//! Devices without a GPU: the CPU backend stands in for two GPUs (marked accelerators), so the
//! placement, each device's budget and each device's run threads are tested on any machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Device, Inference, InferenceOptions, Model, Room, Submission};
use crate::backends::Placement;
use crate::backends::models::{ModelFile, ModelFormat, ModelKey};
use crate::backends::tensor::{ElementType, Tensor, TensorBytes};

/// Whether ONNX Runtime is installed; under `CI=true` it must be.
fn onnx_runtime() -> bool {
    match crate::backends::onnx::OnnxRuntime::global() {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {e:#}");
            false
        }
        Err(e) => panic!("ONNX Runtime must be installed under CI: {e:#}"),
    }
}

fn stand_in(name: &str, memory_bytes: u64) -> Device {
    Device {
        name: Arc::from(name),
        placement: Placement::Cpu,
        accelerator: true,
        memory_bytes,
        runs: 1,
    }
}

fn inference(devices: Vec<Device>) -> Arc<Inference> {
    Arc::new(Inference::new(InferenceOptions {
        threads: 1,
        max_batch_size: 1,
        max_delay: Duration::ZERO,
        devices,
    }))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The model at `original` with a `doc_string` naming `n` appended: distinct bytes, so a
/// distinct model to load.
fn copy(dir: &Path, original: &Path, n: usize) -> ModelFile {
    let mut bytes = std::fs::read(original).unwrap();
    bytes.extend(corral_parsers::onnx::testing::field(
        6,
        format!("copy {n}").as_bytes(),
    ));
    let path = dir.join(format!("model-{n}.onnx"));
    std::fs::write(&path, &bytes).unwrap();
    ModelFile {
        path,
        digest: crate::store::Digest::of(&bytes),
    }
}

fn key(file: &ModelFile) -> ModelKey {
    ModelKey {
        digest: file.digest,
        format: ModelFormat::Onnx,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two models go to the two stand-in GPUs, the second to the one with fewer bytes; each runs
/// on its own device's run thread, and its tenant's compute time is counted by device.
#[tokio::test]
async fn models_spread_over_the_gpus_and_run_on_their_own_devices() {
    if !onnx_runtime() {
        return;
    }
    let inference = inference(vec![stand_in("gpu-a", 1 << 30), stand_in("gpu-b", 1 << 30)]);
    let dir = scratch("spread");
    let tenant: Arc<str> = Arc::from("acme");
    let mut placed = Vec::new();
    for n in 0..2 {
        let file = copy(&dir, &repo().join("tests/fixtures/add.onnx"), n);
        let model = Arc::new(Model {
            name: format!("m{n}"),
            key: key(&file),
            hold: inference.cache().hold(key(&file), &tenant),
            source: Arc::new(file),
            batch_axis: None,
        });
        let loaded = inference.loaded(&model, &tenant).await.unwrap();
        let two_by_two = |v: f32| Tensor {
            shape: vec![2, 2],
            ty: ElementType::F32,
            bytes: TensorBytes::Host(bytemuck::cast_slice(&[v; 4]).to_vec()),
        };
        let submission = Submission {
            tenant: Arc::clone(&tenant),
            weight: 1,
            queue_bound: 8,
            max_batch_size: 1,
            max_delay: Duration::ZERO,
            batch_axis: None,
            keep_alive: None,
        };
        let inputs = vec![("a".into(), two_by_two(1.0)), ("b".into(), two_by_two(2.0))];
        let device = loaded.device;
        let outputs = inference
            .run(&model, loaded, submission, inputs)
            .await
            .unwrap();
        let sum: &[f32] = bytemuck::cast_slice(outputs[0].1.bytes.as_slice());
        assert_eq!(sum, [3.0; 4]);
        placed.push((model, device));
    }
    let devices: Vec<usize> = placed.iter().map(|(_, d)| *d).collect();
    assert_eq!(devices, [0, 1], "the second model goes to the emptier GPU");
    let on: Vec<String> = placed
        .iter()
        .map(|(m, _)| inference.cache().device_of(&m.key).unwrap().to_string())
        .collect();
    assert_eq!(on, ["gpu-a", "gpu-b"]);
    let seconds = inference.compute_seconds();
    let by_device: Vec<(&str, &str)> = seconds.iter().map(|(t, d, _)| (&**t, &**d)).collect();
    assert_eq!(by_device, [("acme", "gpu-a"), ("acme", "gpu-b")]);
    assert!(seconds.iter().all(|(_, _, s)| *s > 0.0), "{seconds:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the test `name` (this module's) again in a child process of this test binary with no
/// other test beside it; true in that child, where the test's body is to run. A load's size is
/// the allocator's growth across it, process-wide, so other tests allocating or freeing in
/// parallel would change what the budgets see.
fn alone(name: &str) -> bool {
    const ALONE: &str = "CORRAL_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&format!("inference::tests::{name}"), "--exact"])
        .args(["--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{name}, run alone: {status}");
    false
}

/// Each stand-in GPU holds one classifier under its budget. A third goes to a GPU by unloading
/// that GPU's idle model (one eviction, on that device alone), not to the roomy CPU; with both
/// GPUs' models in use, the next goes to the CPU, the last resort. No device's models ever
/// pass its budget.
#[test]
fn each_device_keeps_its_own_budget_and_the_cpu_comes_last() {
    if !alone("each_device_keeps_its_own_budget_and_the_cpu_comes_last") || !onnx_runtime() {
        return;
    }
    let classifier = repo().join("examples/image-classifier/model/efficientnet-lite0.onnx");
    let dir = scratch("budgets");
    let files: Vec<ModelFile> = (0..5).map(|n| copy(&dir, &classifier, n)).collect();
    // What one classifier measures (a session holds more than its file).
    let size = {
        let alone = super::ModelCache::new(u64::MAX, Placement::Cpu);
        alone
            .load(key(&files[4]), &files[4], Room::MakeRoom, "t")
            .unwrap();
        alone.measured_bytes(&key(&files[4])).unwrap()
    };
    let budget = size * 3 / 2;
    let inference = inference(vec![
        Device::cpu(1, size * 10),
        stand_in("gpu-a", budget),
        stand_in("gpu-b", budget),
    ]);
    let cache = inference.cache();
    let load = |n: usize| {
        cache
            .load(key(&files[n]), &files[n], Room::MakeRoom, "t")
            .unwrap()
            .unwrap()
    };
    let first = load(0).device;
    let second = load(1).device;
    assert_eq!(
        (first, second),
        (1, 2),
        "one classifier per GPU, none on the CPU"
    );
    let third = load(2);
    assert_ne!(third.device, 0, "a GPU made room before the CPU was used");
    assert_eq!(cache.evictions_total(), 1);
    let evicted = if third.device == 1 { 0 } else { 1 };
    let kept = 1 - evicted;
    assert!(
        !cache.is_loaded(&key(&files[evicted])),
        "the third's GPU unloaded its model"
    );
    assert!(
        cache.is_loaded(&key(&files[kept])),
        "the other GPU kept its model"
    );
    // Both GPUs' models in use now (held by runs): the fourth goes to the CPU.
    let in_use = [third, load(kept)];
    let fourth = load(3);
    assert_eq!(fourth.device, 0);
    assert_eq!(cache.device_of(&key(&files[3])).as_deref(), Some("cpu"));
    assert_eq!(cache.evictions_total(), 1, "nothing in use was unloaded");
    for device in cache.devices() {
        let resident: u64 = cache
            .residents()
            .iter()
            .filter(|r| r.device == device.name)
            .map(|r| r.bytes)
            .sum();
        assert!(
            resident <= device.budget,
            "{}: {resident} > {}",
            device.name,
            device.budget
        );
    }
    drop(in_use);
    let _ = std::fs::remove_dir_all(dir);
}
