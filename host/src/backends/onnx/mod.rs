//! The ONNX backend: ONNX Runtime loaded at run time (`ort`'s `load-dynamic`), one session per
//! model shared by every instance and request, many runs of it in flight at once.

mod ffi;
mod runtime;

use std::ffi::CString;
use std::sync::Arc;

use ort::session::{Session, SharedSessionInner};
use ort::value::{TensorElementType, ValueType};

use super::tensor::{ElementType, Tensor, TensorBytes};
use super::{
    Backend, Concurrency, ErrorKind, InferenceError, LoadedModel, Placement, RunControl, Signature,
    TensorSpec,
};

pub use corral_parsers::onnx::{ModelCheckError, check_self_contained};
pub use ffi::OutputTensor;
pub use runtime::{CudaArena, OnnxRuntime};

/// What the model says one input must be.
#[derive(Debug)]
struct InputSpec {
    name: String,
    c_name: CString,
    /// `None` when the model wants an element type `wasi:nn` cannot express.
    ty: Option<ElementType>,
    onnx_ty: TensorElementType,
    /// Negative entries are dynamic dimensions.
    shape: Vec<i64>,
}

/// ONNX models through ONNX Runtime. Concurrency policy: [`Concurrency::Shared`], because
/// `OrtApi::Run` is documented safe to call from many threads on one session (the CPU
/// execution provider); each run uses `[inference] threads` intra-op threads.
#[derive(Debug)]
pub struct OnnxBackend;

impl Backend for OnnxBackend {
    fn load(
        &self,
        bytes: &[u8],
        placement: Placement,
    ) -> Result<Arc<dyn LoadedModel>, InferenceError> {
        // A model naming external data is refused by policy (`security`), one that does not
        // parse is not ONNX (`invalid-encoding`).
        check_self_contained(bytes).map_err(|e| {
            let kind = match e {
                ModelCheckError::ExternalData(_) => ErrorKind::Security,
                ModelCheckError::Malformed(_) => ErrorKind::InvalidEncoding,
            };
            InferenceError::new(kind, e.to_string())
        })?;
        let runtime =
            OnnxRuntime::global().map_err(|e| InferenceError::runtime(format!("{e:#}")))?;
        let (session, resident) = match placement {
            Placement::Cpu => {
                super::measured_load(bytes.len(), || OnnxSession::load(runtime, bytes, placement))
            }
            Placement::Cuda(ordinal) => super::cuda::measured_load(ordinal, bytes.len(), || {
                OnnxSession::load(runtime, bytes, placement)
            }),
        };
        let mut session = session?;
        session.resident_bytes = resident;
        Ok(Arc::new(session))
    }
}

/// A loaded ONNX model, safe to run from many threads at once.
#[derive(Debug)]
pub struct OnnxSession {
    /// Owns the session; runs go through `inner` so they need no `&mut`.
    _session: Session,
    inner: Arc<SharedSessionInner>,
    runtime: &'static OnnxRuntime,
    inputs: Vec<InputSpec>,
    output_names: Vec<String>,
    output_c_names: Vec<CString>,
    signature: Signature,
    resident_bytes: u64,
    placement: Placement,
}

impl LoadedModel for OnnxSession {
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
        self.placement
    }

    fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        control: &RunControl,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        if control.is_stopped() {
            return Err(InferenceError::stopped());
        }
        OnnxSession::run(self, inputs, control)
    }
}

impl OnnxSession {
    /// Builds a session from model bytes. Fails with [`ErrorKind::InvalidEncoding`] when ONNX
    /// Runtime cannot load them, naming its reason.
    pub fn load(
        runtime: &'static OnnxRuntime,
        bytes: &[u8],
        placement: Placement,
    ) -> Result<Self, InferenceError> {
        let session = runtime.session_from_memory(bytes, placement).map_err(|e| {
            InferenceError::new(
                ErrorKind::InvalidEncoding,
                format!("ONNX Runtime cannot load the model: {e}"),
            )
        })?;
        Self::from_session(runtime, session, placement)
    }

    /// Reads a loaded session's inputs and outputs.
    fn from_session(
        runtime: &'static OnnxRuntime,
        session: Session,
        placement: Placement,
    ) -> Result<Self, InferenceError> {
        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(InferenceError::new(
                    ErrorKind::UnsupportedOperation,
                    format!(
                        "model input '{}' is not a tensor; wasi:nn can only pass tensors",
                        outlet.name()
                    ),
                ));
            };
            inputs.push(InputSpec {
                name: outlet.name().to_owned(),
                c_name: c_name(outlet.name())?,
                ty: element_type_from_onnx(*ty),
                onnx_ty: *ty,
                shape: shape.to_vec(),
            });
        }
        let output_names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        let output_c_names = output_names
            .iter()
            .map(|n| c_name(n))
            .collect::<Result<_, _>>()?;
        let input_specs: Vec<TensorSpec> = inputs
            .iter()
            .map(|i| TensorSpec {
                name: i.name.clone(),
                ty: i.ty,
                shape: spec_shape(&i.shape),
            })
            .collect();
        let output_specs: Vec<TensorSpec> = session
            .outputs()
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => TensorSpec {
                    name: o.name().to_owned(),
                    ty: element_type_from_onnx(*ty),
                    shape: spec_shape(shape),
                },
                _ => TensorSpec {
                    name: o.name().to_owned(),
                    ty: None,
                    shape: Vec::new(),
                },
            })
            .collect();
        let signature = Signature {
            batch_axis: Signature::leading_batch_axis(&input_specs, &output_specs),
            inputs: input_specs,
            outputs: output_specs,
        };
        Ok(Self {
            inner: session.inner(),
            _session: session,
            runtime,
            inputs,
            output_names,
            output_c_names,
            signature,
            resident_bytes: 0,
            placement,
        })
    }

    /// Runs the model. Blocking: call it from a blocking pool, never on an async worker.
    ///
    /// Inputs are checked against the model (names, types, ranks, fixed dimensions, byte
    /// lengths) first, so a guest mistake is an [`ErrorKind::InvalidArgument`] naming the input
    /// rather than an ONNX Runtime failure.
    pub fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
        control: &RunControl,
    ) -> Result<Vec<(String, Tensor)>, InferenceError> {
        let ordered = self.check_inputs(&inputs)?;
        // Most buffers are already aligned (the allocator gives at least 8 bytes); the rest,
        // and empty tensors, are copied once into aligned storage.
        let aligned: Vec<AlignedBytes<'_>> = ordered
            .iter()
            .map(|&(_, tensor)| AlignedBytes::new(tensor.bytes.as_slice(), tensor.ty.size()))
            .collect();
        let mut values = Vec::with_capacity(ordered.len());
        let mut names = Vec::with_capacity(ordered.len());
        for ((spec, tensor), bytes) in ordered.iter().zip(&aligned) {
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| i64::from(d)).collect();
            let value =
                ffi::InputValue::wrap(&self.runtime.memory, bytes.as_slice(), &shape, spec.onnx_ty)
                    .map_err(|e| InferenceError::invalid(format!("input '{}': {e}", spec.name)))?;
            values.push(value);
            names.push(spec.c_name.as_c_str());
        }
        let output_names: Vec<_> = self.output_c_names.iter().map(|n| n.as_c_str()).collect();
        let options = Arc::new(runtime::run_options().map_err(|e| {
            InferenceError::runtime(format!("cannot create ONNX Runtime run options: {e}"))
        })?);
        control.attach_onnx(Arc::clone(&options)).map_err(|e| {
            InferenceError::runtime(format!("cannot stop the ONNX Runtime run: {e}"))
        })?;
        let outputs =
            ffi::run(&self.inner, &options, &names, &values, &output_names).map_err(|e| {
                if control.is_stopped() {
                    InferenceError::stopped()
                } else {
                    InferenceError::runtime(format!("ONNX Runtime failed to run the model: {e}"))
                }
            })?;
        drop(values);

        self.output_names
            .iter()
            .zip(outputs)
            .map(|(name, output)| Ok((name.clone(), tensor_from_output(name, output)?)))
            .collect()
    }

    /// Matches the guest's named inputs to the model's, in the model's order.
    fn check_inputs<'a>(
        &'a self,
        inputs: &'a [(String, Tensor)],
    ) -> Result<Vec<(&'a InputSpec, &'a Tensor)>, InferenceError> {
        let expected = || {
            self.inputs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, (name, _)) in inputs.iter().enumerate() {
            if !self.inputs.iter().any(|spec| &spec.name == name) {
                return Err(InferenceError::invalid(format!(
                    "the model has no input named '{name}'; its inputs are: {}",
                    expected()
                )));
            }
            if inputs[..i].iter().any(|(other, _)| other == name) {
                return Err(InferenceError::invalid(format!(
                    "input '{name}' was given more than once"
                )));
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let Some((_, tensor)) = inputs.iter().find(|(name, _)| *name == spec.name) else {
                return Err(InferenceError::invalid(format!(
                    "missing input '{}'; the model's inputs are: {}",
                    spec.name,
                    expected()
                )));
            };
            check_input(spec, tensor)?;
            ordered.push((spec, tensor));
        }
        Ok(ordered)
    }
}

fn check_input(spec: &InputSpec, tensor: &Tensor) -> Result<(), InferenceError> {
    let name = &spec.name;
    tensor.validate(name)?;
    match spec.ty {
        Some(ty) if ty == tensor.ty => {}
        Some(ty) => {
            return Err(InferenceError::invalid(format!(
                "input '{name}' must be {}, got {}",
                ty.name(),
                tensor.ty.name()
            )));
        }
        None => {
            return Err(InferenceError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "input '{name}' has element type {:?}, which wasi:nn cannot express",
                    spec.onnx_ty
                ),
            ));
        }
    }
    let wrong_shape = || {
        InferenceError::invalid(format!(
            "input '{name}' has dimensions {:?}, but the model expects {} (-1 = any)",
            tensor.shape,
            format_shape(&spec.shape)
        ))
    };
    if spec.shape.len() != tensor.shape.len() {
        return Err(wrong_shape());
    }
    for (&want, &got) in spec.shape.iter().zip(&tensor.shape) {
        if want >= 0 && want != i64::from(got) {
            return Err(wrong_shape());
        }
    }
    Ok(())
}

/// ONNX Runtime's dimensions (negative: dynamic) as a signature's.
fn spec_shape(shape: &[i64]) -> Vec<Option<u32>> {
    shape.iter().map(|&d| u32::try_from(d).ok()).collect()
}

fn format_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn tensor_from_output(name: &str, output: OutputTensor) -> Result<Tensor, InferenceError> {
    let ty = element_type_from_onnx(output.element_type()).ok_or_else(|| {
        InferenceError::new(
            ErrorKind::UnsupportedOperation,
            format!(
                "output '{name}' has element type {:?}, which wasi:nn cannot express",
                output.element_type()
            ),
        )
    })?;
    let shape = output
        .shape()
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| {
            InferenceError::runtime(format!("output '{name}' has a dimension outside 0..2^32"))
        })?;
    Ok(Tensor {
        shape,
        ty,
        bytes: TensorBytes::Backend(Box::new(output)),
    })
}

fn element_type_from_onnx(ty: TensorElementType) -> Option<ElementType> {
    Some(match ty {
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Bfloat16 => ElementType::Bf16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        _ => return None,
    })
}

fn c_name(name: &str) -> Result<CString, InferenceError> {
    CString::new(name).map_err(|_| {
        InferenceError::new(
            ErrorKind::InvalidEncoding,
            format!("tensor name {name:?} contains NUL"),
        )
    })
}

/// A tensor's bytes at an address aligned for its element type.
enum AlignedBytes<'a> {
    Borrowed(&'a [u8]),
    /// A copy in `u64` storage (8-byte aligned), for the rare misaligned or empty buffer.
    Copied(Vec<u64>, usize),
}

impl<'a> AlignedBytes<'a> {
    fn new(bytes: &'a [u8], align: usize) -> Self {
        if !bytes.is_empty() && (bytes.as_ptr() as usize).is_multiple_of(align) {
            return Self::Borrowed(bytes);
        }
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::Copied(words, bytes.len())
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Copied(words, len) => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }
}

#[cfg(test)]
mod tests;
