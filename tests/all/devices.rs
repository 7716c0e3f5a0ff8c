//! `[inference] devices` as an operator meets it on a machine: a GPU named in the
//! configuration must be there, with the libraries that drive it, or the server does not
//! start and says which is missing. (The placement across devices and each device's budget
//! and run threads are tested inside the crate, with the CPU standing in for two GPUs.)

use crate::common::serve::serve_refused;

/// Whether this machine has an NVIDIA driver with a GPU.
fn has_gpu() -> bool {
    std::path::Path::new("/proc/driver/nvidia/gpus").exists()
}

/// A GPU the machine does not have stops `corral serve` before it serves, naming the device
/// and what is missing: the driver (on a machine without one, as CI's), or the GPU itself.
#[test]
fn a_gpu_that_is_not_there_stops_the_server_naming_it() {
    let stderr = serve_refused(
        "devices-absent",
        "[inference]\ndevices = [\"cuda:63\", \"cpu\"]\n",
    );
    if has_gpu() {
        assert!(
            stderr.contains("cuda:63 is not on this machine")
                || stderr.contains("without its CUDA execution provider"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains(
                "[inference] devices lists cuda:63, but no NVIDIA driver: libcuda.so.1 cannot \
                 be loaded"
            ),
            "{stderr}"
        );
    }
}

/// The deprecated `[onnx] execution_providers = ["cuda"]` is read as `cuda:0`, with a warning
/// that names its replacement, and checked the same way.
#[test]
fn the_deprecated_execution_providers_key_is_read_as_devices() {
    let stderr = serve_refused(
        "devices-alias",
        "[onnx]\nexecution_providers = [\"cuda\", \"cpu\"]\n",
    );
    assert!(
        stderr.contains("execution_providers is deprecated: use [inference] devices"),
        "{stderr}"
    );
    if !has_gpu() {
        assert!(
            stderr.contains("[inference] devices lists cuda:0, but no NVIDIA driver"),
            "{stderr}"
        );
    }
}

/// A device that is not one, or one listed twice, is refused before anything starts.
#[test]
fn a_device_that_is_not_one_is_refused_by_name() {
    let stderr = serve_refused("devices-bad", "[inference]\ndevices = [\"gpu0\"]\n");
    assert!(
        stderr.contains("[inference] devices: 'gpu0' is not a device"),
        "{stderr}"
    );
}
