//! The `corral` command line: one file per command; [`run`] dispatches.

mod config;
mod deploy;
mod deployments;
mod new;
mod output;
mod run;
mod serve;
mod tenant;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use config::ConfigCommand;
use deploy::DeployArgs;
use deployments::{DeploymentsArgs, RollbackArgs};
use new::NewArgs;
use run::RunArgs;
use serve::ServeArgs;
use tenant::TenantCommand;

/// The parsed command line (`Cli::parse()`), run by [`run`].
#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Serve sandboxed WebAssembly components that run shared ML models",
    long_about = None
)]
pub struct Cli {
    /// Log lines on stderr: `text` (readable) or `json` (one object per line).
    #[arg(long, global = true, env = "CORRAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the multi-tenant server: tenants, deployments and the admin API.
    Serve(ServeArgs),
    /// Create, list or delete tenants (admin API).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Upload a component and its models as a tenant's new active deployment.
    Deploy(DeployArgs),
    /// List a tenant's deployments.
    Deployments(DeploymentsArgs),
    /// Make an earlier (or later) deployment version active again.
    Rollback(RollbackArgs),
    /// Serve one component and its models over HTTP (single-tenant development mode).
    Run(RunArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create a guest project (Rust, wasm32-wasip2) that builds with `cargo build --release`.
    New(NewArgs),
}

/// How to reach the admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// The admin API.
    #[arg(long, env = "CORRAL_SERVER", default_value = "http://127.0.0.1:9080")]
    pub server: String,
    /// Operator or tenant token.
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
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
        Command::Serve(args) => serve::serve(args).await,
        Command::Tenant(command) => tenant::tenant(command).await,
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Deployments(args) => deployments::deployments(args).await,
        Command::Rollback(args) => deployments::rollback(args).await,
        Command::Run(args) => run::run_dev(args).await,
        Command::New(args) => new::new(args),
        Command::Config(command) => config::config(command),
    }
}

/// A status line on stdout; a closed stdout (e.g. a supervisor that stopped reading) must not
/// take the server down.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
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
