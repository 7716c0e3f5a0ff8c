//! `corral run`: one component and its models, single-tenant, for development.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{parse_model, say, shutdown_signal};
use crate::dev::{DevOptions, DevServer};
use crate::engine::EngineSettings;
use crate::limits::Limits;

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The component to serve (a wasi:http/proxy component, e.g. built for wasm32-wasip2).
    pub component: PathBuf,
    /// A model the component can load by name: NAME=PATH (repeatable). PATH ends in .onnx.
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a request may take before the client gets a 504.
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Inference runs that may execute at once [default: one per core]
    /// (`--max-parallel-inference` is its deprecated alias).
    #[arg(long, alias = "max-parallel-inference", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,
}

pub(super) async fn run_dev(args: RunArgs) -> anyhow::Result<()> {
    let options = DevOptions {
        component: args.component.clone(),
        models: args.models,
        listen: args.listen,
        engine: EngineSettings::default(),
        limits: Limits {
            timeout_ms: Duration::from_secs(args.request_timeout.max(1)).as_millis() as u64,
            ..Limits::default()
        },
        inherit_stdio: true,
        runs: args.runs.map(|n| n as usize),
    };
    let server = DevServer::start(options).await?;
    say(&format!(
        "corral: serving {} on http://{}",
        args.component.display(),
        server.addr()
    ));
    for (name, digest) in server.models() {
        say(&format!("corral:   model '{name}' ({digest})"));
    }
    shutdown_signal().await;
    say("corral: shutting down");
    server.stop().await;
    Ok(())
}
