//! The TorchScript backend (cargo feature `torch`): one `tch` module per model file, shared by
//! every tenant and request, run under `no_grad` on the CPU or on the GPU it was placed on
//! (inputs moved there once, outputs moved back once).
//!
//! TorchScript has no input metadata to check against: the guest's inputs are passed to the
//! module's `forward` in the order the guest gives them (their names are for the guest), and
//! libtorch's own checks report what does not fit, as a `runtime-error`. Outputs are named
//! `output0`, `output1`, ...: a module returning one tensor has `output0`, one returning a
//! tuple or list of tensors has one output per element.
//!
//! PyTorch's security policy: a TorchScript file is a program. Corral loads one only for
//! tenants the operator marked `trusted_models` (and in `corral run`).

use std::sync::Arc;

use tch::{CModule, Device, IValue, Kind};

use super::tensor::{ElementType, Tensor, TensorBytes};
use super::{
    Backend, Concurrency, ErrorKind, InferenceError, LoadedModel, Placement, RunControl, Signature,
};

/// TorchScript models through libtorch. Concurrency policy: [`Concurrency::Shared`]: a
/// module's `forward` runs from many threads at once under `no_grad` (libtorch's intra-op
/// pool is sized to `[inference] threads` at start). A TorchScript file declares no inputs,
/// outputs or shapes, so its signature is empty and it has no batch axis.
#[derive(Debug)]
pub struct TorchBackend;

impl Backend for TorchBackend {
    fn load(
        &self,
        bytes: &[u8],
        placement: Placement,
    ) -> Result<Arc<dyn LoadedModel>, InferenceError> {
        let device = device(placement)?;
        let load = || TorchSession::load(bytes, device);
        let (session, resident) = match placement {
            Placement::Cpu => super::measured_load(bytes.len(), load),
            // On a GPU, what the card lost (libtorch's caching allocator included).
            Placement::Cuda(ordinal) => super::cuda::measured_load(ordinal, bytes.len(), load),
        };
        let mut session = session?;
        session.resident_bytes = resident;
        Ok(Arc::new(session))
    }
}

/// libtorch's device for a placement; a GPU this libtorch cannot reach is an error naming why.
fn device(placement: Placement) -> Result<Device, InferenceError> {
    match placement {
        Placement::Cpu => Ok(Device::Cpu),
        Placement::Cuda(ordinal) => {
            let unreachable = |why: String| {
                InferenceError::runtime(format!(
                    "libtorch cannot place the TorchScript model on cuda:{ordinal}: {why}"
                ))
            };
            if !tch::Cuda::is_available() {
                return Err(unreachable(
                    "this libtorch has no CUDA (a CPU build, or its CUDA libraries were not \
                     linked: build with -Wl,--no-as-needed -ltorch_cuda)"
                        .into(),
                ));
            }
            let count = tch::Cuda::device_count();
            if i64::from(ordinal) >= count {
                return Err(unreachable(format!("it sees {count} GPU(s)")));
            }
            Ok(Device::Cuda(ordinal as usize))
        }
    }
}

/// Sets libtorch's intra-op threads for every run in the process.
pub fn set_threads(threads: usize) {
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
}

/// A loaded TorchScript module. libtorch runs `forward` from many threads at once.
pub struct TorchSession {
    module: CModule,
    device: Device,
    signature: Signature,
    resident_bytes: u64,
}

impl LoadedModel for TorchSession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn concurrency(&self) -> Concurrency {
        Concurrency::Shared
    }

    fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    fn placement(&self) -> Placement {
        match self.device {
            Device::Cuda(ordinal) => Placement::Cuda(ordinal as u32),
            _ => Placement::Cpu,
        }
    }

    fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        control: &RunControl,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        if control.is_stopped() {
            return Err(InferenceError::stopped());
        }
        TorchSession::run(self, inputs)
    }
}

impl std::fmt::Debug for TorchSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchSession").finish_non_exhaustive()
    }
}

fn kind(ty: ElementType) -> Kind {
    match ty {
        ElementType::F16 => Kind::Half,
        ElementType::Bf16 => Kind::BFloat16,
        ElementType::F32 => Kind::Float,
        ElementType::F64 => Kind::Double,
        ElementType::U8 => Kind::Uint8,
        ElementType::I32 => Kind::Int,
        ElementType::I64 => Kind::Int64,
    }
}

fn element_type(kind: Kind) -> Option<ElementType> {
    Some(match kind {
        Kind::Half => ElementType::F16,
        Kind::BFloat16 => ElementType::Bf16,
        Kind::Float => ElementType::F32,
        Kind::Double => ElementType::F64,
        Kind::Uint8 => ElementType::U8,
        Kind::Int => ElementType::I32,
        Kind::Int64 => ElementType::I64,
        _ => return None,
    })
}

/// libtorch's messages carry a C++ backtrace after the first lines; the guest gets the gist.
fn gist(error: &tch::TchError) -> String {
    let text = error.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Exception raised from"))
        .take(3)
        .collect();
    let mut gist = lines.join(" ");
    if gist.len() > 500 {
        gist.truncate(gist.floor_char_boundary(500));
        gist.push_str("...");
    }
    gist
}

impl TorchSession {
    /// Loads a TorchScript file (as `torch.jit.save` writes it) onto `device`, in eval mode.
    pub fn load(bytes: &[u8], device: Device) -> Result<Self, InferenceError> {
        let mut module = CModule::load_data_on_device(&mut &bytes[..], device).map_err(|e| {
            InferenceError::new(
                ErrorKind::InvalidEncoding,
                format!("libtorch cannot load the TorchScript model: {}", gist(&e)),
            )
        })?;
        module.f_set_eval().map_err(|e| {
            InferenceError::new(
                ErrorKind::InvalidEncoding,
                format!("cannot set eval mode: {}", gist(&e)),
            )
        })?;
        Ok(Self {
            module,
            device,
            signature: Signature::default(),
            resident_bytes: 0,
        })
    }

    /// Runs `forward` on the inputs, in the guest's order. Each input is copied once into a
    /// libtorch tensor (and once more to the GPU, if the model is on one); each output once
    /// out of it (after a copy back from the GPU).
    pub fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        let mut arguments = Vec::with_capacity(inputs.len());
        for (name, tensor) in &inputs {
            // libtorch reads product(shape) × element size bytes without checking the slice:
            // validate() has checked exactly that length (and the kinds below match sizes).
            tensor.validate(name)?;
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| i64::from(d)).collect();
            let value =
                tch::Tensor::f_from_data_size(tensor.bytes.as_slice(), &shape, kind(tensor.ty))
                    .and_then(|value| match self.device {
                        Device::Cpu => Ok(value),
                        device => value.f_to_device(device),
                    })
                    .map_err(|e| {
                        InferenceError::invalid(format!("input '{name}': {}", gist(&e)))
                    })?;
            arguments.push(IValue::Tensor(value));
        }
        drop(inputs);
        let output = tch::no_grad(|| self.module.forward_is(&arguments)).map_err(|e| {
            InferenceError::runtime(format!("the TorchScript model failed: {}", gist(&e)))
        })?;
        let tensors = match output {
            IValue::Tensor(tensor) => vec![tensor],
            IValue::Tuple(values) | IValue::GenericList(values) => values
                .into_iter()
                .enumerate()
                .map(|(n, value)| match value {
                    IValue::Tensor(tensor) => Ok(tensor),
                    _ => Err(InferenceError::new(
                        ErrorKind::UnsupportedOperation,
                        format!(
                            "output {n} of the model is not a tensor; Corral returns tensors only"
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
            IValue::TensorList(tensors) => tensors,
            _ => {
                return Err(InferenceError::new(
                    ErrorKind::UnsupportedOperation,
                    "the model returns something other than a tensor or a tuple of tensors",
                ));
            }
        };
        tensors
            .into_iter()
            .enumerate()
            .map(|(n, tensor)| {
                let name = format!("output{n}");
                let out = to_host(&name, &tensor)?;
                Ok((name, out))
            })
            .collect()
    }
}

/// Copies a libtorch tensor (any layout, on any device) into a host tensor.
fn to_host(name: &str, tensor: &tch::Tensor) -> Result<Tensor, InferenceError> {
    let ty = element_type(tensor.kind()).ok_or_else(|| {
        InferenceError::new(
            ErrorKind::UnsupportedOperation,
            format!(
                "output '{name}' is {:?}, which wasi:nn cannot describe",
                tensor.kind()
            ),
        )
    })?;
    let shape = tensor
        .size()
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| {
            InferenceError::runtime(format!("output '{name}' has a dimension beyond u32"))
        })?;
    let numel = tensor.numel();
    let mut bytes = vec![0u8; numel * ty.size()];
    let contiguous = tensor
        .f_to_device(Device::Cpu)
        .map_err(|e| InferenceError::runtime(format!("cannot read output '{name}': {}", gist(&e))))?
        .contiguous();
    contiguous.f_copy_data_u8(&mut bytes, numel).map_err(|e| {
        InferenceError::runtime(format!("cannot read output '{name}': {}", gist(&e)))
    })?;
    Ok(Tensor {
        shape,
        ty,
        bytes: TensorBytes::Host(bytes),
    })
}
