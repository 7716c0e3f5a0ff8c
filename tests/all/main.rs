//! The whole-system tests, one binary: each module is one area of behaviour, driven through
//! real servers (`corral run`, `corral serve`), real components built from this repository and
//! real ONNX Runtime / TorchScript sessions. One binary links wasmtime and the backends once,
//! and the guests are built once for all of it (`cargo xtask test`).
//!
//! Run one area with a filter: `cargo xtask test -- faults::`.

mod common;

mod classifier;
mod cli;
mod cluster;
mod devices;
mod faults;
mod front_door;
mod guest_languages;
mod https;
mod inference;
mod open_inference;
mod operations;
mod tenancy;
mod text_embedding;
mod torchscript;
mod wasi_nn;
