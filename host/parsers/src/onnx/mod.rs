//! ONNX files as tenants upload them.

mod check;
pub mod testing;

pub use check::{ModelCheckError, check_self_contained};
