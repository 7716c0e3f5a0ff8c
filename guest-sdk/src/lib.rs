//! Build [Corral](https://github.com/corral-dev/corral) guest components in Rust.
//!
//! A Corral guest is a `wasi:http/proxy` component (write the handler with
//! [`wstd`](https://docs.rs/wstd)'s `#[wstd::http_server]`) that runs models the host holds
//! through `wasi:nn`. This crate wraps `wasi:nn@0.2.0-rc-2024-10-28` in a small typed API:
//!
//! ```no_run
//! use corral_guest::{Model, Tensor};
//!
//! # fn main() -> Result<(), corral_guest::Error> {
//! # let pixels = vec![0f32; 3 * 224 * 224];
//! let model = Model::load("classifier")?; // a name given at deploy time
//! let input = Tensor::f32(&[1, 3, 224, 224], &pixels);
//! let outputs = model.run(vec![("input", input)])?;
//! let logits: Vec<f32> = outputs.get("logits").unwrap().to_f32()?;
//! # Ok(()) }
//! ```
//!
//! [`http`] reads and answers JSON; `vision` (with the feature `vision`) turns JPEG/PNG into
//! an image tensor. Build with `cargo build --release --target wasm32-wasip2`; serve with
//! `corral run target/wasm32-wasip2/release/NAME.wasm --model classifier=model.onnx`.
#![deny(missing_docs)]

use std::fmt;

pub mod http;
pub mod metadata;
#[cfg(feature = "text")]
pub mod text;
#[cfg(feature = "vision")]
pub mod vision;

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "corral:service/nn-models",
        path: "../wit",
        generate_all,
    });
}

/// The raw `wasi:nn` bindings, for anything the typed API does not cover.
pub use bindings::wasi::nn as wasi_nn;

/// The raw bindings of Corral's own `corral:service/models` interface ([`metadata`] wraps it).
pub use bindings::corral::service::models as corral_models;

use wasi_nn::errors::ErrorCode;
use wasi_nn::tensor::TensorType;

/// A `wasi:nn` failure: its code and the host's explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure the host reported.
    pub code: ErrorCode,
    /// The host's message, naming the model, input or limit involved.
    pub message: String,
}

impl Error {
    fn from_wasi(error: wasi_nn::errors::Error) -> Self {
        Self {
            code: error.code(),
            message: error.data(),
        }
    }

    fn guest(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }

    /// The code as the WIT spells it (`invalid-argument`, `not-found`, ...).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::InvalidEncoding => "invalid-encoding",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RuntimeError => "runtime-error",
            ErrorCode::UnsupportedOperation => "unsupported-operation",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Security => "security",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wasi:nn {}: {}", self.code_name(), self.message)
    }
}

impl std::error::Error for Error {}

/// A model the host serves for this component's deployment.
pub struct Model {
    graph: wasi_nn::graph::Graph,
}

impl Model {
    /// Loads the model deployed under `name` (e.g. `corral run ... --model NAME=PATH`).
    /// Loading is cheap: the host shares one session per model across all requests.
    pub fn load(name: &str) -> Result<Self, Error> {
        let graph = wasi_nn::graph::load_by_name(name).map_err(Error::from_wasi)?;
        Ok(Self { graph })
    }

    /// What the model takes and gives: its inputs' and outputs' names, element types and
    /// shapes. Corral only (`corral:service/models`): a component that calls it no longer
    /// runs under `wasmtime serve`.
    pub fn describe(&self) -> Result<metadata::Signature, Error> {
        let described = corral_models::describe(&self.graph).map_err(Error::from_wasi)?;
        Ok(metadata::Signature::from_wit(described))
    }

    /// Runs the model on named inputs and returns every output.
    pub fn run<N: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (N, Tensor)>,
    ) -> Result<Outputs, Error> {
        let context = self
            .graph
            .init_execution_context()
            .map_err(Error::from_wasi)?;
        let inputs = inputs
            .into_iter()
            .map(|(name, tensor)| (name.into(), tensor.0))
            .collect();
        let outputs = context.compute(inputs).map_err(Error::from_wasi)?;
        Ok(Outputs(
            outputs
                .into_iter()
                .map(|(name, tensor)| (name, Tensor(tensor)))
                .collect(),
        ))
    }
}

/// A tensor: dimensions, element type and row-major data, held by the host.
pub struct Tensor(wasi_nn::tensor::Tensor);

// WebAssembly is little-endian, so a tensor's values are already its bytes: the host copies
// them straight out of the guest's slice, and a reader takes one aligned copy. A big-endian
// target converts value by value.
macro_rules! constructor {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $tt:ident) => {
        $(#[$doc])*
        pub fn $name(shape: &[u32], data: &[$ty]) -> Tensor {
            #[cfg(target_endian = "little")]
            let bytes: &[u8] = bytemuck::cast_slice(data);
            #[cfg(target_endian = "big")]
            let bytes: &[u8] = &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
            Tensor::from_bytes(shape, TensorType::$tt, bytes)
        }
    };
}

macro_rules! reader {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $tt:ident) => {
        $(#[$doc])*
        pub fn $name(&self) -> Result<Vec<$ty>, Error> {
            if self.ty() != TensorType::$tt {
                return Err(Error::guest(format!(
                    "tensor is {:?}, not {}",
                    self.ty(),
                    stringify!($ty)
                )));
            }
            const SIZE: usize = std::mem::size_of::<$ty>();
            let bytes = self.bytes();
            // A trailing partial value is dropped either way.
            let whole = &bytes[..bytes.len() / SIZE * SIZE];
            #[cfg(target_endian = "little")]
            let values = bytemuck::pod_collect_to_vec(whole);
            #[cfg(target_endian = "big")]
            let values = whole
                .chunks_exact(SIZE)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk of SIZE bytes")))
                .collect();
            Ok(values)
        }
    };
}

impl Tensor {
    /// A tensor from raw little-endian bytes. The host checks that `bytes.len()` equals the
    /// product of `shape` times the element size when the tensor is used.
    pub fn from_bytes(shape: &[u32], ty: TensorType, bytes: &[u8]) -> Tensor {
        Tensor(wasi_nn::tensor::Tensor::new(shape, ty, bytes))
    }

    constructor!(
        /// An `f32` tensor.
        f32, f32, Fp32
    );
    constructor!(
        /// An `f64` tensor.
        f64, f64, Fp64
    );
    constructor!(
        /// An `i32` tensor.
        i32, i32, I32
    );
    constructor!(
        /// An `i64` tensor.
        i64, i64, I64
    );

    /// A `u8` tensor.
    pub fn u8(shape: &[u32], data: &[u8]) -> Tensor {
        Tensor::from_bytes(shape, TensorType::U8, data)
    }

    /// The tensor's dimensions.
    pub fn shape(&self) -> Vec<u32> {
        self.0.dimensions()
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.0.ty()
    }

    /// The raw little-endian bytes (copied out of the host once per call).
    pub fn bytes(&self) -> Vec<u8> {
        self.0.data()
    }

    reader!(
        /// The data as `f32`s; an error if the tensor holds another type.
        to_f32, f32, Fp32
    );
    reader!(
        /// The data as `f64`s; an error if the tensor holds another type.
        to_f64, f64, Fp64
    );
    reader!(
        /// The data as `i32`s; an error if the tensor holds another type.
        to_i32, i32, I32
    );
    reader!(
        /// The data as `i64`s; an error if the tensor holds another type.
        to_i64, i64, I64
    );
}

/// A model's outputs, by name, in the model's order.
pub struct Outputs(Vec<(String, Tensor)>);

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// All outputs as `(name, tensor)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.0.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Takes the outputs apart.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.0
    }
}
