//! The one place Corral calls ONNX Runtime's C API directly.
//!
//! `ort` 2.0's safe `Session::run` takes `&mut self`, which would force one run at a time per
//! model. ONNX Runtime documents `OrtApi::Run` as safe to call from many threads on one session
//! (the CPU execution provider, which is what Corral configures), so concurrent requests share
//! one session here, with one copy of the weights, instead of queueing behind a lock.
//!
//! Inputs are wrapped around the host's buffers without copying (`CreateTensorWithDataAsOrtValue`);
//! outputs stay in ONNX Runtime's buffers until the guest reads them.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use ort::AsPointer;
use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{RunOptions, SharedSessionInner};
use ort::sys::{ONNXTensorElementDataType, OrtArenaCfg, OrtStatusPtr, OrtValue};
use ort::value::TensorElementType;

fn check(status: OrtStatusPtr) -> ort::Result<()> {
    // SAFETY: every status passed here was just returned by an `OrtApi` call, and ownership of
    // it passes to `result_from_status`, which releases it.
    unsafe { ort::Error::result_from_status(status) }
}

/// An input tensor that borrows the host's bytes for as long as it lives.
pub(super) struct InputValue<'a> {
    ptr: NonNull<OrtValue>,
    _data: PhantomData<&'a [u8]>,
}

impl<'a> InputValue<'a> {
    /// Wraps `data` (already validated: `len == product(shape) * element size`, and aligned to
    /// the element size) as an ONNX Runtime tensor without copying it.
    pub(super) fn wrap(
        memory: &MemoryInfo<'static>,
        data: &'a [u8],
        shape: &[i64],
        ty: TensorElementType,
    ) -> ort::Result<Self> {
        let mut out: *mut OrtValue = ptr::null_mut();
        let ty: ONNXTensorElementDataType = ty.into();
        // SAFETY: `data` outlives the returned value (the lifetime `'a` ties them together);
        // ONNX Runtime only reads input tensors, so handing it a `*mut` view of shared bytes is
        // sound; `shape` is only read during the call.
        let status = unsafe {
            (ort::api().CreateTensorWithDataAsOrtValue)(
                memory.ptr(),
                data.as_ptr().cast_mut().cast(),
                data.len(),
                shape.as_ptr(),
                shape.len(),
                ty,
                &mut out,
            )
        };
        check(status)?;
        let ptr = NonNull::new(out)
            .ok_or_else(|| ort::Error::new("ONNX Runtime returned no tensor for an input"))?;
        Ok(Self {
            ptr,
            _data: PhantomData,
        })
    }
}

impl Drop for InputValue<'_> {
    fn drop(&mut self) {
        // SAFETY: the value was created by `CreateTensorWithDataAsOrtValue` and is released once.
        unsafe { (ort::api().ReleaseValue)(self.ptr.as_ptr()) }
    }
}

/// An output tensor in ONNX Runtime's memory. It keeps the session alive because the memory
/// may come from the session's allocator.
pub struct OutputTensor {
    ptr: NonNull<OrtValue>,
    _session: Arc<SharedSessionInner>,
    element_type: TensorElementType,
    shape: Vec<i64>,
    data: *const u8,
    len: usize,
}

// SAFETY: an `OrtValue` is a plain buffer with no thread affinity; this wrapper only reads it
// (`bytes`) and releases it once (`Drop`), so moving it to or sharing it with other threads is
// sound.
unsafe impl Send for OutputTensor {}
// SAFETY: see `Send`; there is no interior mutability.
unsafe impl Sync for OutputTensor {}

impl std::fmt::Debug for OutputTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputTensor")
            .field("element_type", &self.element_type)
            .field("shape", &self.shape)
            .field("len", &self.len)
            .finish()
    }
}

impl OutputTensor {
    /// Takes ownership of an output value returned by `Run`, reading its type and shape.
    /// Non-tensor outputs (sequences, maps) and element types without a fixed size (strings)
    /// are refused with an error naming the type.
    ///
    /// # Safety
    /// `ptr` must be a valid `OrtValue` owned by the caller, produced by `session`.
    unsafe fn from_run(
        ptr: NonNull<OrtValue>,
        session: &Arc<SharedSessionInner>,
    ) -> ort::Result<Self> {
        let api = ort::api();
        let mut output = Self {
            ptr,
            _session: Arc::clone(session),
            element_type: TensorElementType::Float32,
            shape: Vec::new(),
            data: ptr::null(),
            len: 0,
        };
        let mut is_tensor = 0;
        // SAFETY: `ptr` is a valid value (caller's contract); `is_tensor` is a valid out pointer.
        check(unsafe { (api.IsTensor)(ptr.as_ptr(), &mut is_tensor) })?;
        if is_tensor == 0 {
            return Err(ort::Error::new(
                "the model produced an output that is not a tensor",
            ));
        }
        let mut ty = ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        let mut dims: *const i64 = ptr::null();
        let mut rank = 0usize;
        // SAFETY: `ptr` is a valid tensor; the out pointers are valid. The returned shape pointer
        // borrows from the value, which `output` keeps alive while we copy it.
        check(unsafe {
            (api.GetTensorElementTypeAndShapeDataReference)(
                ptr.as_ptr(),
                &mut ty,
                &mut dims,
                &mut rank,
            )
        })?;
        output.element_type = TensorElementType::from(ty);
        if rank > 0 {
            // SAFETY: ONNX Runtime returned `rank` dimensions at `dims`, valid while the value lives.
            output.shape = unsafe { std::slice::from_raw_parts(dims, rank) }.to_vec();
        }
        let Some(element_size) = element_size(output.element_type) else {
            return Ok(output); // The caller refuses the type by name; no data pointer needed.
        };
        let count = output
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| ort::Error::new("the model produced an output with an invalid shape"))?;
        output.len = count
            .checked_mul(element_size)
            .ok_or_else(|| ort::Error::new("the model produced an output too large to address"))?;
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: `ptr` is a valid tensor with a fixed-size element type.
        check(unsafe { (api.GetTensorMutableData)(ptr.as_ptr(), &mut data) })?;
        if data.is_null() && output.len > 0 {
            return Err(ort::Error::new("the model produced an output without data"));
        }
        output.data = data.cast_const().cast();
        Ok(output)
    }

    pub fn element_type(&self) -> TensorElementType {
        self.element_type
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The tensor's bytes, in place in ONNX Runtime's buffer.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `data` points at `len` initialized bytes owned by the value in `ptr`, which
        // lives (and is not written to) for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl crate::backends::tensor::OutputBuffer for OutputTensor {
    fn bytes(&self) -> &[u8] {
        OutputTensor::bytes(self)
    }
}

impl Drop for OutputTensor {
    fn drop(&mut self) {
        // SAFETY: we own the value returned by `Run` and release it exactly once.
        unsafe { (ort::api().ReleaseValue)(self.ptr.as_ptr()) }
    }
}

/// Bytes per element for the fixed-size types ONNX Runtime can hand back.
fn element_size(ty: TensorElementType) -> Option<usize> {
    use TensorElementType::*;
    Some(match ty {
        Uint8 | Int8 | Bool => 1,
        Float16 | Bfloat16 | Int16 | Uint16 => 2,
        Float32 | Int32 | Uint32 => 4,
        Float64 | Int64 | Uint64 | Complex64 => 8,
        Complex128 => 16,
        _ => return None,
    })
}

/// Runs `session` once under `options` (which can stop it). Safe to call from many threads at
/// once on the same session.
///
/// `input_names` and `output_names` are NUL-terminated and as long as their value lists.
pub(super) fn run(
    session: &Arc<SharedSessionInner>,
    options: &RunOptions,
    input_names: &[&CStr],
    inputs: &[InputValue<'_>],
    output_names: &[&CStr],
) -> ort::Result<Vec<OutputTensor>> {
    assert_eq!(input_names.len(), inputs.len(), "one name per input value");
    let input_name_ptrs: Vec<*const c_char> = input_names.iter().map(|n| n.as_ptr()).collect();
    let input_ptrs: Vec<*const OrtValue> =
        inputs.iter().map(|v| v.ptr.as_ptr().cast_const()).collect();
    let output_name_ptrs: Vec<*const c_char> = output_names.iter().map(|n| n.as_ptr()).collect();
    let mut outputs: Vec<*mut OrtValue> = vec![ptr::null_mut(); output_names.len()];
    // SAFETY: the session pointer is valid while `session` lives. ONNX Runtime documents
    // concurrent `Run` calls on one session as supported; Corral only registers the CPU
    // execution provider. All arrays have the lengths passed alongside them and outlive the
    // call; the output slots start null, so ONNX Runtime allocates every output and hands us
    // ownership of it. The run options outlive the call; another thread may set their
    // terminate flag meanwhile, which ONNX Runtime documents as supported.
    let status = unsafe {
        (ort::api().Run)(
            session.ptr().cast_mut(),
            options.ptr(),
            input_name_ptrs.as_ptr(),
            input_ptrs.as_ptr(),
            input_ptrs.len(),
            output_name_ptrs.as_ptr(),
            output_name_ptrs.len(),
            outputs.as_mut_ptr(),
        )
    };
    // Take ownership of every returned value first so that none leaks if one is refused.
    let owned: Vec<Option<NonNull<OrtValue>>> = outputs.into_iter().map(NonNull::new).collect();
    let guards: Vec<ReleaseOnDrop> = owned
        .iter()
        .flatten()
        .map(|p| ReleaseOnDrop(Some(*p)))
        .collect();
    check(status)?;
    let mut result = Vec::with_capacity(guards.len());
    for mut guard in guards {
        let ptr = guard.0.take().expect("each guard holds one value");
        // SAFETY: `ptr` came from this `Run` on `session` and we own it.
        result.push(unsafe { OutputTensor::from_run(ptr, session) }?);
    }
    if result.len() != output_names.len() {
        return Err(ort::Error::new(
            "ONNX Runtime returned fewer outputs than requested",
        ));
    }
    Ok(result)
}

/// Registers the process-wide CPU arena that every session's runs allocate their tensors from
/// (sessions opt in with `session.use_env_allocators`), capped at `max_bytes`: past that, an
/// allocation fails and so does the run, with an error, instead of the process running out of
/// memory. The arena grows by what is asked (not by powers of two), so the cap is what a run
/// can really take.
pub(super) fn register_run_arena(environment: &Environment, max_bytes: usize) -> ort::Result<()> {
    const SAME_AS_REQUESTED: usize = 1;
    let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    let values = [max_bytes, SAME_AS_REQUESTED];
    let memory = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )?;
    let api = ort::api();
    let mut config: *mut OrtArenaCfg = ptr::null_mut();
    // SAFETY: `keys` and `values` have the length passed and outlive the call; `config` is a
    // valid out pointer.
    check(unsafe {
        (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut config)
    })?;
    // SAFETY: the environment and the memory description are valid for the call; ONNX Runtime
    // copies what it needs from `config`, which is released right after, once.
    let status = unsafe {
        (api.CreateAndRegisterAllocator)(environment.ptr().cast_mut(), memory.ptr(), config)
    };
    // SAFETY: `config` was created above and is not used again.
    unsafe { (api.ReleaseArenaCfg)(config) };
    check(status)
}

/// Releases an output value nobody took ownership of.
struct ReleaseOnDrop(Option<NonNull<OrtValue>>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(ptr) = self.0.take() {
            // SAFETY: an output value returned by `Run` that no `OutputTensor` owns.
            unsafe { (ort::api().ReleaseValue)(ptr.as_ptr()) }
        }
    }
}
