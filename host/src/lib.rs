//! Corral: one process that serves many tenants' sandboxed WebAssembly components, which run
//! ML models on shared inference sessions through `wasi:nn`.
//!
//! - [`engine`]: wasmtime configuration, sandbox limits, the per-request instance;
//! - [`nn`]: the `wasi:nn` host implementation guests call;
//! - [`backends`]: the backend seam (ONNX Runtime, TorchScript) and tensors;
//! - [`inference`]: the model cache (memory budget) and the scheduler (batching, fair shares);
//! - [`http`]: the data-plane listener and host-generated error responses;
//! - [`store`]: content-addressed blobs and crash-safe JSON records in the data directory;
//! - [`tenancy`]: tenants, deployments, activation, the registry requests are routed by;
//! - [`admin`]: the control-plane API; [`client`]: the CLI's client for it;
//! - [`server`]: `corral serve`, the multi-tenant server; [`config`]: its configuration file;
//! - [`error`]: every error code a client can receive, its status and meaning;
//! - [`limits`]: per-tenant limits and where each is enforced;
//! - [`metrics`]: Prometheus counters;
//! - [`deployment`]: the one way a deployment is built (compile, load models, link);
//! - [`dev`]: single-tenant development mode (`corral run`);
//! - [`scaffold`]: `corral new`, a guest project to start from;
//! - [`cli`]: the command line.

pub mod admin;
pub mod backends;
pub mod cli;
pub mod client;
pub use corral_parsers::clock;
pub use corral_parsers::config;
pub mod deployment;
pub mod dev;
pub mod engine;
pub mod error;
pub mod http;
pub mod inference;
pub mod limits;
pub mod metrics;
pub mod nn;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod tenancy;
pub mod tls;

#[cfg(test)]
mod layering;
