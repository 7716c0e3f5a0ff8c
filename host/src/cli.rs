//! The `corral` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::dev::{DevOptions, DevServer};
use crate::engine::SandboxSettings;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Serve sandboxed WebAssembly components that run shared ML models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one component and its models over HTTP (single-tenant development mode).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
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
    /// Model runs that may execute at once, across all models [default: 2 × CPUs, at least 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel_inference: Option<u32>,
}

fn parse_model(value: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH (e.g. classifier=model.onnx), got '{value}'"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!(
            "expected NAME=PATH with both parts non-empty, got '{value}'"
        ));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// Runs a parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_dev(args).await,
    }
}

async fn run_dev(args: RunArgs) -> anyhow::Result<()> {
    let options = DevOptions {
        component: args.component.clone(),
        models: args.models,
        listen: args.listen,
        sandbox: SandboxSettings {
            request_timeout: Duration::from_secs(args.request_timeout.max(1)),
            inherit_stdio: true,
            ..SandboxSettings::default()
        },
        max_parallel_inference: args.max_parallel_inference.map(|n| n as usize),
    };
    let server = DevServer::start(options).await?;
    println!(
        "corral: serving {} on http://{}",
        args.component.display(),
        server.addr()
    );
    for (name, digest) in server.models() {
        println!("corral:   model '{name}' ({digest})");
    }
    shutdown_signal().await;
    println!("corral: shutting down");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flags_parse_name_and_path() {
        assert_eq!(
            parse_model("clf=a/b.onnx").unwrap(),
            ("clf".into(), PathBuf::from("a/b.onnx"))
        );
        assert!(parse_model("clf").unwrap_err().contains("NAME=PATH"));
        assert!(parse_model("=x.onnx").is_err());
    }
}
