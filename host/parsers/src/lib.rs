//! Everything Corral reads from a tenant or an operator that can be parsed and checked on its
//! own: ONNX files (the self-contained check), deployment uploads (`multipart/form-data`),
//! host names and the routing decision, the TOML configuration, `wasi:nn` tensor shapes, and
//! TLS certificates.
//!
//! It is its own crate so that its fuzz targets (`fuzz/`) build without wasmtime or ONNX
//! Runtime. [`fuzz`] holds each target's body; the committed corpora are replayed through it
//! as ordinary tests (`tests/corpus.rs`).

#![deny(missing_docs)]

pub mod certs;
pub mod clock;
pub mod config;
pub mod digest;
pub mod fuzz;
pub mod hostname;
pub mod limits;
pub mod multipart;
pub mod onnx;
pub mod tensor;
