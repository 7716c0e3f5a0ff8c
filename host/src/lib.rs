//! Corral: one process that serves many tenants' sandboxed WebAssembly components, which run
//! ML models on shared inference sessions through `wasi:nn`.
//!
//! What other code may use: [`cli`] (the `corral` binary is `cli::run`), [`server`]
//! (`corral serve`) with its [`config`], [`dev`] (`corral run`), [`client`] (the admin API's
//! client), [`limits`], [`error`] (every error code a client can receive), [`Digest`], and
//! [`probe`] (the in-process measurements `cargo xtask bench` takes).
//!
//! Internal to the crate (see ARCHITECTURE.md): `http` (listeners, routing, host-made
//! errors), `tls`, `engine` (wasmtime, the per-request sandbox), `nn` (the `wasi:nn` host),
//! `inference` (model cache, scheduler), `backends` (ONNX Runtime, TorchScript, tensors),
//! `metrics`, `tenancy` (tenants and their deployments), `deployment` (building one),
//! `store` (blob, record and cache seams), `admin` (the control-plane API) and `scaffold`
//! (`corral new`).

#![deny(missing_docs)]

pub(crate) mod admin;
pub(crate) mod backends;
pub(crate) mod builtins;
pub mod cli;
pub mod client;
pub(crate) use corral_parsers::clock;
pub use corral_parsers::config;
pub(crate) mod deployment;
pub mod dev;
pub(crate) mod engine;
pub mod error;
pub(crate) mod http;
pub(crate) mod inference;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod nn;
pub mod probe;
pub(crate) mod scaffold;
pub mod server;
pub(crate) mod store;
/// The sha256 digest blobs (components, models) are stored and named by.
pub use store::Digest;
pub(crate) mod tenancy;
pub(crate) mod tls;

#[cfg(test)]
mod layering;
