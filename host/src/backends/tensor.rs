//! Tensors as the host holds them between a guest's `wasi:nn` calls and a backend's run.
//!
//! Every size here comes from a guest, so every computation is checked: a shape whose element
//! count overflows, or data whose length does not match shape × element size, is an
//! [`InferenceError`] before anything is allocated or handed to a backend.

use super::InferenceError;

pub use corral_parsers::tensor::{ElementType, byte_len, element_count};

/// Where a tensor's bytes live: a buffer lifted from the guest, or a backend's own output
/// buffer (read in place; copied only when the guest asks for the data).
#[derive(Debug)]
pub enum TensorBytes {
    Host(Vec<u8>),
    Backend(Box<dyn OutputBuffer>),
}

/// A backend's own output buffer, held until the guest has read it (e.g. an ONNX Runtime
/// output value, freed by its drop).
pub trait OutputBuffer: Send + Sync + std::fmt::Debug {
    /// The tensor's bytes, in place.
    fn bytes(&self) -> &[u8];
}

impl TensorBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Host(bytes) => bytes,
            Self::Backend(output) => output.bytes(),
        }
    }
}

/// A tensor held by the host: its shape and type exactly as the guest declared them.
///
/// Construction never fails (the `wasi:nn` constructor cannot return an error); a tensor whose
/// data does not match its shape is refused by [`Tensor::validate`] when it is used.
#[derive(Debug)]
pub struct Tensor {
    pub shape: Vec<u32>,
    pub ty: ElementType,
    pub bytes: TensorBytes,
}

impl Tensor {
    /// Checks that the data length is exactly `product(shape) * size(ty)`.
    pub fn validate(&self, name: &str) -> Result<(), InferenceError> {
        let expected = byte_len(&self.shape, self.ty).ok_or_else(|| {
            InferenceError::invalid(format!(
                "tensor '{name}': dimensions {:?} of {} overflow the addressable size",
                self.shape,
                self.ty.name()
            ))
        })?;
        let actual = self.bytes.as_slice().len();
        if actual != expected {
            return Err(InferenceError::invalid(format!(
                "tensor '{name}': {actual} bytes of data, but dimensions {:?} of {} need {expected}",
                self.shape,
                self.ty.name()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(shape: &[u32], ty: ElementType, len: usize) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            ty,
            bytes: TensorBytes::Host(vec![0; len]),
        }
    }

    #[test]
    fn byte_len_multiplies_dimensions_by_element_size() {
        assert_eq!(byte_len(&[2, 3], ElementType::F32), Some(24));
        assert_eq!(byte_len(&[2, 3], ElementType::Bf16), Some(12));
        assert_eq!(
            byte_len(&[], ElementType::I64),
            Some(8),
            "a scalar is one element"
        );
        assert_eq!(byte_len(&[4, 0], ElementType::U8), Some(0));
    }

    #[test]
    fn byte_len_reports_overflow_instead_of_wrapping() {
        assert_eq!(
            byte_len(&[u32::MAX, u32::MAX, u32::MAX], ElementType::F64),
            None
        );
    }

    #[test]
    fn validate_names_the_mismatch() {
        assert!(host(&[1, 4], ElementType::F32, 16).validate("x").is_ok());
        let err = host(&[1, 4], ElementType::F32, 15)
            .validate("x")
            .unwrap_err();
        assert!(err.message.contains("15 bytes"), "{}", err.message);
        assert!(err.message.contains("need 16"), "{}", err.message);
        let err = host(&[u32::MAX; 3], ElementType::F32, 4)
            .validate("x")
            .unwrap_err();
        assert!(err.message.contains("overflow"), "{}", err.message);
    }
}
