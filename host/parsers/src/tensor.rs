//! Tensor shapes as a guest declares them through `wasi:nn`: every size comes from the guest,
//! so every computation is checked (an overflow is `None`, never a wrap or a panic).

/// The element types `wasi:nn` can describe; every one of them reaches the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Unsigned bytes.
    U8,
    /// 32-bit signed integers.
    I32,
    /// 64-bit signed integers.
    I64,
}

impl ElementType {
    /// Every element type.
    pub const ALL: [Self; 7] = [
        Self::F16,
        Self::Bf16,
        Self::F32,
        Self::F64,
        Self::U8,
        Self::I32,
        Self::I64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    /// The lower-case name used in error messages (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::U8 => "u8",
            Self::I32 => "i32",
            Self::I64 => "i64",
        }
    }
}

/// `size(ty) * product(shape)`, or `None` when it, or any product of the size and the leading
/// dimensions, does not fit in `usize`: a shape with absurd dimensions is refused even when a
/// later zero would make it empty.
pub fn byte_len(shape: &[u32], ty: ElementType) -> Option<usize> {
    shape.iter().try_fold(ty.size(), |acc, &dim| {
        acc.checked_mul(usize::try_from(dim).ok()?)
    })
}

/// `product(shape)`, or `None` when it, or any product of the leading dimensions, does not
/// fit in `u64` (as for [`byte_len`]).
pub fn element_count(shape: &[u32]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |n, &dim| n.checked_mul(u64::from(dim)))
}
