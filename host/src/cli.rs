//! The `corral` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::{AdminClient, format_time};
use crate::config::Config;
use crate::dev::{DevOptions, DevServer};
use crate::engine::EngineSettings;
use crate::limits::Limits;
use crate::server::{Server, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Serve sandboxed WebAssembly components that run shared ML models"
)]
pub struct Cli {
    /// Log lines on stderr: `text` (readable) or `json` (one object per line).
    #[arg(long, global = true, env = "CORRAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Project (and component) name: a-z, 0-9, '-' and '_'.
    pub name: String,
    /// Where to create it [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The corral-guest crate [default: CORRAL_GUEST_SDK, else guest-sdk/ of this checkout].
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (with CORRAL_* overrides) without starting; prints the
    /// effective configuration.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (every key optional; unknown keys are refused; CORRAL_* variables override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: the configuration's data_dir, ./corral-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Data-plane HTTP listener [default: the config's listen, else 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin API listener [default: the config's admin_listen, else 127.0.0.1:9080].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Data-plane HTTPS listener [default: the config's [tls] listen, else 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
}

/// How to reach the admin API.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
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

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (or replace its host names) and print its token.
    Create {
        /// Tenant name: 1 to 63 characters from a-z, 0-9 and '-'.
        name: String,
        /// A host name the tenant is reached by (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tenants (operator token).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a tenant and its deployments (operator token).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The tenant to deploy to.
    #[arg(long)]
    pub tenant: String,
    /// The component (.wasm) to serve.
    pub component: PathBuf,
    /// A model the component loads by name: NAME=PATH (repeatable). PATH ends in .onnx.
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// The deployment's settings, a JSON file: batching overrides and TorchScript batch axes
    /// (docs/config.md, "Per deployment").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeploymentsArgs {
    /// The tenant.
    pub tenant: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The tenant.
    pub tenant: String,
    /// The version to make active.
    pub version: u32,
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// Inference runs that may execute at once [default: one per core]
    /// (`--max-parallel-inference` is its deprecated alias).
    #[arg(long, alias = "max-parallel-inference", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,
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
        Command::Serve(args) => serve(args).await,
        Command::Tenant(command) => tenant(command).await,
        Command::Deploy(args) => deploy(args).await,
        Command::Deployments(args) => deployments(args).await,
        Command::Rollback(args) => rollback(args).await,
        Command::Run(args) => run_dev(args).await,
        Command::New(args) => {
            let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
            let sdk = match args.sdk {
                Some(sdk) => sdk,
                None => crate::scaffold::find_sdk()?,
            };
            crate::scaffold::create(&args.name, &dir, &sdk)?;
            println!("created {} in {}", args.name, dir.display());
            println!("  build:  cd {} && cargo build --release", dir.display());
            println!(
                "  try it: corral run target/wasm32-wasip2/release/{}.wasm --model model=MODEL.onnx",
                args.name
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(Some(&file))?;
            println!("# {}: valid; the effective configuration:", file.display());
            print!("{}", config.to_toml());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut options = Config::load(args.config.as_deref())?;
    if let Some(data) = args.data {
        options.data_dir = data;
    }
    if let Some(listen) = args.listen {
        options.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        options.admin_listen = admin;
    }
    if let Some(tls) = args.tls_listen {
        options.tls.listen = tls;
    }
    let data_dir = options.data_dir.clone();
    let server = Server::start(options).await?;
    say(&format!("corral: data directory {}", data_dir.display()));
    if let Some(addr) = server.data_addr() {
        say(&format!("corral: serving tenants on http://{addr}"));
    }
    if let Some(addr) = server.tls_addr() {
        say(&format!("corral: serving tenants on https://{addr}"));
    }
    if let Some(ca) = server.local_ca() {
        say(&format!(
            "corral: local development CA in {} (trust it for https: curl --cacert {})",
            ca.display(),
            ca.display()
        ));
    }
    say(&format!(
        "corral: admin API on http://{}",
        server.admin_addr()
    ));
    match server.token_source() {
        TokenSource::File(path) => say(&format!("corral: operator token in {}", path.display())),
        TokenSource::Given => {
            say("corral: operator token from CORRAL_ADMIN_TOKEN or the configuration")
        }
    }
    shutdown_signal().await;
    say("corral: shutting down");
    server.stop().await;
    Ok(())
}

async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create {
            name,
            hosts,
            client,
        } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api
                .put_json(&format!("/v1/tenants/{name}"), &json!({ "hosts": hosts }))
                .await?;
            if client.json {
                return print_json(&answer);
            }
            let hosts = join(&answer["hosts"]);
            match answer["token"].as_str() {
                Some(token) => {
                    println!("created tenant '{name}' (hosts: {hosts})");
                    println!("token: {token}");
                    println!("(shown once: Corral keeps only its hash)");
                }
                None => println!("updated tenant '{name}' (hosts: {hosts})"),
            }
        }
        TenantCommand::List { client } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api.get("/v1/tenants").await?;
            if client.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["tenants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        t["tenant"].as_str().unwrap_or_default().to_owned(),
                        version(&t["active"]),
                        join(&t["hosts"]),
                    ]
                })
                .collect();
            print_table(&["TENANT", "ACTIVE", "HOSTS"], &rows);
        }
        TenantCommand::Delete { name, client } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api.delete(&format!("/v1/tenants/{name}")).await?;
            if client.json {
                return print_json(&answer);
            }
            println!("deleted tenant '{name}'");
        }
    }
    Ok(())
}

async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    for (name, path) in &args.models {
        crate::backends::models::ModelFormat::from_path(path)
            .with_context(|| format!("--model {name}={}", path.display()))?;
    }
    let answer = api
        .deploy(
            &args.tenant,
            &args.component,
            &args.models,
            args.config.as_deref(),
        )
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    println!(
        "deployed '{}' version {} (active)",
        args.tenant,
        version(&answer["version"])
    );
    println!(
        "  component {}",
        answer["component"].as_str().unwrap_or_default()
    );
    if let Some(models) = answer["models"].as_object() {
        for (name, digest) in models {
            println!("  model {name} {}", digest.as_str().unwrap_or_default());
        }
    }
    for url in answer["urls"].as_array().into_iter().flatten() {
        println!("  call it: curl {}", url.as_str().unwrap_or_default());
    }
    Ok(())
}

async fn deployments(args: DeploymentsArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    let answer = api
        .get(&format!("/v1/tenants/{}/deployments", args.tenant))
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = answer["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let models = d["models"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(name, digest)| format!("{name}={}", short(digest)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![
                version(&d["version"]),
                if d["active"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                d["created"].as_u64().map(format_time).unwrap_or_default(),
                short(&d["component"]),
                models,
            ]
        })
        .collect();
    print_table(
        &["VERSION", "ACTIVE", "CREATED", "COMPONENT", "MODELS"],
        &rows,
    );
    Ok(())
}

async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    let answer = api
        .post(&format!(
            "/v1/tenants/{}/deployments/{}/activate",
            args.tenant, args.version
        ))
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    println!("'{}': version {} is active", args.tenant, args.version);
    Ok(())
}

/// A status line on stdout; a closed stdout (e.g. a supervisor that stopped reading) must not
/// take the server down.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn join(values: &Value) -> String {
    let items: Vec<&str> = values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn version(value: &Value) -> String {
    value.as_u64().map_or_else(|| "-".into(), |v| v.to_string())
}

/// `sha256:0123456789ab` (12 hex digits) for tables.
fn short(digest: &Value) -> String {
    let text = digest.as_str().unwrap_or_default();
    text.get(..19).unwrap_or(text).to_owned()
}

async fn run_dev(args: RunArgs) -> anyhow::Result<()> {
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
