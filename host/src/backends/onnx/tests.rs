use super::AlignedBytes;

#[test]
fn aligned_buffers_are_borrowed_without_copying() {
    let words = [1u64, 2, 3];
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    let aligned = AlignedBytes::new(bytes, 8);
    assert!(matches!(aligned, AlignedBytes::Borrowed(_)));
    assert_eq!(aligned.as_slice().as_ptr(), bytes.as_ptr());
}

#[test]
fn misaligned_buffers_are_copied_once_into_aligned_storage() {
    let words = [0x0807_0605_0403_0201u64, 0x100f_0e0d_0c0b_0a09];
    let bytes: &[u8] = &bytemuck::cast_slice::<u64, u8>(&words)[1..13];
    let aligned = AlignedBytes::new(bytes, 4);
    assert!(matches!(aligned, AlignedBytes::Copied(..)));
    assert_eq!(aligned.as_slice(), bytes);
    assert!((aligned.as_slice().as_ptr() as usize).is_multiple_of(8));
}

#[test]
fn empty_buffers_get_an_aligned_address() {
    let aligned = AlignedBytes::new(&[], 8);
    assert!(aligned.as_slice().is_empty());
    assert!((aligned.as_slice().as_ptr() as usize).is_multiple_of(8));
}

/// The process's ONNX Runtime, or `None` (with a note) when it is not installed locally; under
/// `CI=true` a missing runtime fails the test.
fn runtime() -> Option<&'static super::OnnxRuntime> {
    match super::OnnxRuntime::global() {
        Ok(runtime) => Some(runtime),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {e:#}");
            None
        }
        Err(e) => panic!("ONNX Runtime must be installed under CI: {e:#}"),
    }
}

/// The security issue's model, with the file it reads placed in a folder of the test's own.
fn secret_beside_model(test: &str) -> (std::path::PathBuf, Vec<u8>) {
    let folder = std::env::temp_dir().join(format!("corral-onnx-{test}-{}", std::process::id()));
    std::fs::create_dir_all(folder.join("corral-data")).unwrap();
    std::fs::write(folder.join("corral-data/admin-token"), b"operator-secret").unwrap();
    let model = corral_parsers::onnx::testing::function_default_attribute_model(
        "corral-data/admin-token",
        15,
    );
    (folder, model)
}

/// Shows what the defence below stops: handed the model with its external data resolved in a
/// folder that holds the file, ONNX Runtime reads the file and returns it as the output.
#[test]
fn onnx_runtime_reads_a_function_default_attribute_from_disk() {
    let Some(runtime) = runtime() else { return };
    let (folder, model) = secret_beside_model("reads");
    let session = runtime
        .session_in(&model, &folder, crate::backends::Placement::Cpu)
        .expect("the model loads");
    let session =
        super::OnnxSession::from_session(runtime, session, crate::backends::Placement::Cpu)
            .unwrap();
    let outputs = session
        .run(Vec::new(), &crate::backends::RunControl::default())
        .expect("the model runs");
    assert_eq!(outputs[0].1.bytes.as_slice(), b"operator-secret");
    let _ = std::fs::remove_dir_all(folder);
}

/// Corral's own sessions resolve external data under /dev/null, where no file can be, so the
/// same model fails to load even if the upload check were bypassed.
#[test]
fn corral_sessions_read_no_external_data() {
    let Some(runtime) = runtime() else { return };
    let (folder, model) = secret_beside_model("refuses");
    let error = runtime
        .session_from_memory(&model, crate::backends::Placement::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("/dev/null/corral-data/admin-token"),
        "ONNX Runtime looked elsewhere: {error}"
    );
    let _ = std::fs::remove_dir_all(folder);
}

/// A model loaded from several threads at once is loaded once, and the per-model lock that
/// serialises those loads is gone once they end (whether the load worked or failed): the cache
/// keeps nothing for models that were only ever loading.
#[test]
fn loading_locks_do_not_outlive_their_loads() {
    use crate::backends::Placement;
    use crate::backends::models::{ModelFile, ModelFormat, ModelKey};
    use crate::inference::{ModelCache, Room};
    if runtime().is_none() {
        return;
    }
    let path = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/add.onnx"
    ));
    let add = ModelFile {
        digest: crate::store::Digest::of(&std::fs::read(&path).unwrap()),
        path,
    };
    let key = ModelKey {
        digest: add.digest,
        format: ModelFormat::Onnx,
    };
    let cache = ModelCache::new(1 << 30, Placement::Cpu);
    let models: Vec<_> = std::thread::scope(|scope| {
        let loads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| cache.load(key, &add, Room::MakeRoom, "").unwrap().unwrap()))
            .collect();
        loads.into_iter().map(|load| load.join().unwrap()).collect()
    });
    assert!(
        models
            .iter()
            .all(|s| std::sync::Arc::ptr_eq(&s.model, &models[0].model))
    );
    assert_eq!(cache.loads_total(), 1);
    assert_eq!(cache.loads_in_progress(), 0);
    let dir = std::env::temp_dir().join(format!("corral-bad-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..100u8 {
        let bytes = [8, 7, n];
        let bad = ModelFile {
            path: dir.join(format!("{n}.onnx")),
            digest: crate::store::Digest::of(&bytes),
        };
        std::fs::write(&bad.path, bytes).unwrap();
        let key = ModelKey {
            digest: bad.digest,
            format: ModelFormat::Onnx,
        };
        assert!(cache.load(key, &bad, Room::MakeRoom, "").is_err());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(cache.loads_in_progress(), 0);
    assert_eq!(cache.residents().len(), 1);
}

/// The CPU build of ONNX Runtime (what `cargo xtask setup` installs) is refused for a GPU,
/// the message naming the file that is missing and how to install the GPU build.
#[test]
fn the_cpu_build_is_refused_for_a_gpu_naming_the_gpu_build() {
    if runtime().is_none() {
        return;
    }
    let library = super::runtime::find_library_for(false).unwrap();
    let error = super::runtime::cuda_provider_beside(&library)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("without its CUDA execution provider")
            && error.contains("libonnxruntime_providers_shared.so")
            && error.contains("cargo xtask setup --gpu")
            && error.contains(".corral/onnxruntime-gpu"),
        "{error}"
    );
}

/// Without NVIDIA's CUDA libraries (a machine without a GPU, as CI's), the check names the
/// first library it cannot load, where it looked, and how to provide them.
#[test]
fn missing_cuda_libraries_are_named() {
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        // A GPU machine may have them on its library path: then they load.
        if let Err(e) = super::runtime::preload_cuda_libraries(std::path::Path::new("/nowhere/x")) {
            assert!(e.to_string().contains("CORRAL_CUDA_LIBRARY_PATH"), "{e}");
        }
        return;
    }
    let error = super::runtime::preload_cuda_libraries(std::path::Path::new("/nowhere/lib.so"))
        .unwrap_err()
        .to_string();
    assert!(
        // The first that does not load: libcudart.so.13 itself is loaded already where
        // libtorch (feature `torch`) is linked.
        error.contains("the CUDA execution provider needs lib")
            && error.contains("/nowhere/nvidia")
            && error.contains("CORRAL_CUDA_LIBRARY_PATH")
            && error.contains("cargo xtask setup --gpu"),
        "{error}"
    );
}
