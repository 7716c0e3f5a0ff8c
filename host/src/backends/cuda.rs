//! NVIDIA GPUs as the driver reports them, read through the driver's own library
//! (`libcuda.so.1`, opened at run time): nothing is linked at build time, so a build without
//! a GPU runs anywhere, and a configuration naming `cuda:N` is checked against the machine
//! before the server starts.
//!
//! Calling the driver's C functions is `unsafe`: each call says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

use libloading::{Library, Symbol};

/// One GPU the driver reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its CUDA ordinal (`cuda:N`).
    pub ordinal: u32,
    /// The card's name (`NVIDIA H200`).
    pub name: String,
    /// The card's whole memory, in bytes.
    pub memory_bytes: u64,
}

/// What the driver reports: its version (`13000` for CUDA 13.0) and the GPUs it sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Driver {
    pub version: i32,
    pub gpus: Vec<Gpu>,
}

/// The driver's library, as the loader finds it.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

type CuResult = c_int;
const CUDA_SUCCESS: CuResult = 0;
/// `CUDA_ERROR_NO_DEVICE`: a driver with no GPU to drive.
const CUDA_ERROR_NO_DEVICE: CuResult = 100;

/// The driver's library, loaded once for the process (CUDA cannot be unloaded safely).
fn library() -> Result<&'static Library, String> {
    static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            // SAFETY: libcuda.so.1 is NVIDIA's driver library; loading it runs its
            // initialisers, which have no preconditions.
            unsafe { Library::new(DRIVER_LIBRARY) }.map_err(|e| {
                format!(
                    "no NVIDIA driver: {DRIVER_LIBRARY} cannot be loaded ({}); a GPU listed in \
                     [inference] devices needs the NVIDIA driver installed on this machine",
                    loader_error(&e)
                )
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// What the dynamic loader said (libloading's own message is only "dlopen failed").
pub fn loader_error(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => cause.to_string(),
        None => error.to_string(),
    }
}

/// The driver and its GPUs; an error naming what is missing when there is no NVIDIA driver or
/// it cannot start.
pub fn driver() -> Result<Driver, String> {
    read(library()?)
}

/// The device memory free now on GPU `ordinal`, in bytes, read in its primary context (the
/// one ONNX Runtime and libtorch use), which this keeps for the process; `None` if the driver
/// cannot say.
pub fn free_bytes(ordinal: u32) -> Option<u64> {
    type Context = *mut c_void;
    let library = library().ok()?;
    // SAFETY: each symbol is given the signature cuda.h declares for it; out-pointers are
    // valid for each call; the primary context is retained (never released: it lives as long
    // as the process, as ONNX Runtime's use of it does) before it is made current, and popped
    // after, leaving the thread's context stack as it was.
    unsafe {
        let get: Symbol<unsafe extern "C" fn(*mut c_int, c_int) -> CuResult> =
            library.get(b"cuDeviceGet\0").ok()?;
        let retain: Symbol<unsafe extern "C" fn(*mut Context, c_int) -> CuResult> =
            library.get(b"cuDevicePrimaryCtxRetain\0").ok()?;
        let push: Symbol<unsafe extern "C" fn(Context) -> CuResult> =
            library.get(b"cuCtxPushCurrent_v2\0").ok()?;
        let pop: Symbol<unsafe extern "C" fn(*mut Context) -> CuResult> =
            library.get(b"cuCtxPopCurrent_v2\0").ok()?;
        let info: Symbol<unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult> =
            library.get(b"cuMemGetInfo_v2\0").ok()?;
        let mut device: c_int = 0;
        if get(&mut device, c_int::try_from(ordinal).ok()?) != CUDA_SUCCESS {
            return None;
        }
        let mut context: Context = std::ptr::null_mut();
        if retain(&mut context, device) != CUDA_SUCCESS || push(context) != CUDA_SUCCESS {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let read = info(&mut free, &mut total);
        let mut popped: Context = std::ptr::null_mut();
        pop(&mut popped);
        (read == CUDA_SUCCESS).then_some(free as u64)
    }
}

/// Measures a load onto GPU `ordinal`: the drop in the device's free memory across it (loads
/// are measured one at a time), at least the file's size.
pub fn measured_load<T>(ordinal: u32, file_bytes: usize, load: impl FnOnce() -> T) -> (T, u64) {
    let ((loaded, before, after), _host) = super::measured_load(file_bytes, || {
        let before = free_bytes(ordinal);
        let loaded = load();
        (loaded, before, free_bytes(ordinal))
    });
    let dropped = match (before, after) {
        (Some(before), Some(after)) => before.saturating_sub(after),
        _ => 0,
    };
    (loaded, dropped.max(file_bytes as u64))
}

fn read(library: &'static Library) -> Result<Driver, String> {
    let symbol = |name: &str| format!("{DRIVER_LIBRARY} has no {name}: it is not NVIDIA's driver");
    // SAFETY: each symbol is looked up by its documented name and given the signature the
    // CUDA driver API declares for it (cuda.h, CUDA 12 and 13: `CUresult` is an int,
    // `CUdevice` an int, sizes `size_t`).
    let (init, version, count, get, name, memory) = unsafe {
        let init: Symbol<unsafe extern "C" fn(c_uint) -> CuResult> =
            library.get(b"cuInit\0").map_err(|_| symbol("cuInit"))?;
        let version: Symbol<unsafe extern "C" fn(*mut c_int) -> CuResult> = library
            .get(b"cuDriverGetVersion\0")
            .map_err(|_| symbol("cuDriverGetVersion"))?;
        let count: Symbol<unsafe extern "C" fn(*mut c_int) -> CuResult> = library
            .get(b"cuDeviceGetCount\0")
            .map_err(|_| symbol("cuDeviceGetCount"))?;
        let get: Symbol<unsafe extern "C" fn(*mut c_int, c_int) -> CuResult> = library
            .get(b"cuDeviceGet\0")
            .map_err(|_| symbol("cuDeviceGet"))?;
        let name: Symbol<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult> = library
            .get(b"cuDeviceGetName\0")
            .map_err(|_| symbol("cuDeviceGetName"))?;
        let memory: Symbol<unsafe extern "C" fn(*mut usize, c_int) -> CuResult> = library
            .get(b"cuDeviceTotalMem_v2\0")
            .map_err(|_| symbol("cuDeviceTotalMem_v2"))?;
        (init, version, count, get, name, memory)
    };
    let check = |what: &str, code: CuResult| {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(format!(
                "the NVIDIA driver's {what} failed (CUresult {code})"
            ))
        }
    };
    let mut driver_version: c_int = 0;
    // SAFETY: the out-pointer is a valid, writable int for the call's duration.
    check("cuDriverGetVersion", unsafe {
        version(&mut driver_version)
    })?;
    // SAFETY: cuInit takes flags (0 is the only defined value) and may be called repeatedly.
    let code = unsafe { init(0) };
    if code == CUDA_ERROR_NO_DEVICE {
        return Ok(Driver {
            version: driver_version,
            gpus: Vec::new(),
        });
    }
    check("cuInit", code)?;
    let mut n: c_int = 0;
    // SAFETY: as above, a valid out-pointer; the driver is initialised.
    check("cuDeviceGetCount", unsafe { count(&mut n) })?;
    let mut gpus = Vec::new();
    for ordinal in 0..n.max(0) {
        let mut device: c_int = 0;
        // SAFETY: `ordinal` is below the count the driver gave; valid out-pointer.
        check("cuDeviceGet", unsafe { get(&mut device, ordinal) })?;
        let mut buffer = [0 as c_char; 256];
        // SAFETY: the driver writes at most `len` bytes, NUL-terminated, into the buffer.
        check("cuDeviceGetName", unsafe {
            name(buffer.as_mut_ptr(), buffer.len() as c_int, device)
        })?;
        let bytes: Vec<u8> = buffer
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let mut total: usize = 0;
        // SAFETY: valid out-pointer for a size_t; `device` came from cuDeviceGet.
        check("cuDeviceTotalMem_v2", unsafe { memory(&mut total, device) })?;
        gpus.push(Gpu {
            ordinal: ordinal as u32,
            name: String::from_utf8_lossy(&bytes).into_owned(),
            memory_bytes: total as u64,
        });
    }
    Ok(Driver {
        version: driver_version,
        gpus,
    })
}

impl Driver {
    /// The GPU `cuda:ordinal`, or an error naming the GPUs there are.
    pub fn gpu(&self, ordinal: u32) -> Result<&Gpu, String> {
        self.gpus
            .iter()
            .find(|g| g.ordinal == ordinal)
            .ok_or_else(|| {
                let seen = if self.gpus.is_empty() {
                    "the driver sees no GPU".to_owned()
                } else {
                    format!(
                        "the driver sees {}",
                        self.gpus
                            .iter()
                            .map(|g| format!("cuda:{} ({})", g.ordinal, g.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!("cuda:{ordinal} is not on this machine: {seen}")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{Driver, Gpu};

    #[test]
    fn a_missing_gpu_is_named_with_the_ones_there_are() {
        let none = Driver {
            version: 13000,
            gpus: Vec::new(),
        };
        assert_eq!(
            none.gpu(0).unwrap_err(),
            "cuda:0 is not on this machine: the driver sees no GPU"
        );
        let one = Driver {
            version: 13000,
            gpus: vec![Gpu {
                ordinal: 0,
                name: "NVIDIA H200".into(),
                memory_bytes: 140 << 30,
            }],
        };
        assert_eq!(one.gpu(0).unwrap().name, "NVIDIA H200");
        assert_eq!(
            one.gpu(1).unwrap_err(),
            "cuda:1 is not on this machine: the driver sees cuda:0 (NVIDIA H200)"
        );
    }

    /// On a machine without NVIDIA's driver (CI's), asking for it says so by name; on one with
    /// it, the driver names its GPUs.
    #[test]
    fn the_driver_is_read_or_its_absence_named() {
        if std::path::Path::new("/proc/driver/nvidia/gpus").exists() {
            let driver = super::driver().unwrap();
            assert!(
                !driver.gpus.is_empty() && driver.gpus[0].memory_bytes > 0,
                "{driver:?}"
            );
        } else {
            let err = super::driver().unwrap_err();
            assert!(err.contains("no NVIDIA driver: libcuda.so.1"), "{err}");
        }
    }
}
