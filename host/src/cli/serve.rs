//! `corral serve`: the multi-tenant server until a signal stops it.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{say, shutdown_signal};
use crate::config::Config;
use crate::server::{Server, TokenSource};

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
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
    /// Data-plane HTTPS listener [default: the config's `[tls]` listen, else 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
