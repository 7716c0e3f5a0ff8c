//! `corral serve`: the multi-tenant server. Restores tenants from the data directory, then
//! serves the data plane (routed by host name) and the admin API on their own listeners.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::backends::models::{InferencePool, SessionPool};
use crate::backends::onnx::OnnxRuntime;
use crate::config::Config;
use crate::engine::{self, ComponentCache};
use crate::http::error::HostError;
use crate::http::{self, Router, Target};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tenancy::records::{new_token, normalize_host, token_hash};
use crate::tenancy::{Platform, Route, Tenancy};

/// Where the operator token file lives in the data directory.
const TOKEN_FILE: &str = "admin-token";

/// Where the operator token came from, for the start-up banner.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenSource {
    /// Given in the environment or the configuration.
    Given,
    /// Read from (or created in) this file.
    File(PathBuf),
}

/// A running multi-tenant server.
#[derive(Debug)]
pub struct Server {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    token_source: TokenSource,
    tenancy: Arc<Tenancy>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the data directory, restores every tenant, binds both listeners and starts
    /// serving. Failures name the directory, file or address at fault.
    pub async fn start(options: Config) -> anyhow::Result<Self> {
        let data_dir = options.data_dir.clone();
        let given_token = options.admin_token.clone();
        let (store, operator_token, token_source) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&data_dir).with_context(|| {
                format!("cannot open the data directory {}", data_dir.display())
            })?;
            let (token, source) = match given_token {
                Some(token) => (token, TokenSource::Given),
                None => {
                    let path = data_dir.join(TOKEN_FILE);
                    (operator_token_file(&path)?, TokenSource::File(path))
                }
            };
            anyhow::Ok((store, token, source))
        })
        .await??;
        if operator_token.trim().len() < 16 {
            anyhow::bail!("the operator token must be at least 16 characters long");
        }
        OnnxRuntime::configure(options.onnx.clone());
        let engine = engine::new_engine(&options.engine)?;
        let metrics = Arc::new(Metrics::default());
        let platform = Arc::new(Platform {
            components: ComponentCache::new(&engine),
            engine,
            store,
            sessions: SessionPool::default(),
            inference: Arc::new(InferencePool::new(match options.max_parallel_inference {
                0 => InferencePool::default_limit(),
                n => n,
            })),
            engine_settings: options.engine.clone(),
            default_limits: options.limits.clone(),
            metrics: Arc::clone(&metrics),
            deploy_timeout: Duration::from_secs(options.deploy_timeout_secs),
        });
        let tenancy = tokio::task::spawn_blocking(move || Tenancy::open(platform)).await??;
        let tenancy = Arc::new(tenancy);

        let data = TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {} (data plane)", options.listen))?;
        let admin_listener = TcpListener::bind(options.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", options.admin_listen))?;
        let data_addr = data.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (shutdown, stopped) = watch::channel(false);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let router: Arc<dyn Router> = Arc::new(TenantRouter {
            tenancy: Arc::clone(&tenancy),
            metrics: Arc::clone(&metrics),
        });
        let admin = Arc::new(Admin {
            tenancy: Arc::clone(&tenancy),
            metrics,
            operator_token_sha256: token_hash(operator_token.trim()),
            max_upload_bytes: options.max_upload_bytes,
            data_addr,
        });
        let drain = Duration::from_secs(options.drain_timeout_secs);
        let tasks = vec![
            tokio::spawn(http::serve(
                data,
                router,
                until_stopped(stopped.clone()),
                drain,
            )),
            tokio::spawn(admin::serve(
                admin_listener,
                admin,
                until_stopped(stopped),
                drain,
            )),
        ];
        Ok(Self {
            data_addr,
            admin_addr,
            token_source,
            tenancy,
            shutdown,
            tasks,
        })
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
    }

    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    /// Stops accepting connections, lets requests in flight finish (up to the drain timeout)
    /// and returns when both listeners are done. Every store write is already durable, so
    /// nothing else needs flushing.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Routes data-plane requests by host name to the tenant's active deployment.
struct TenantRouter {
    tenancy: Arc<Tenancy>,
    metrics: Arc<Metrics>,
}

impl Router for TenantRouter {
    fn route(&self, host: Option<&str>) -> (Arc<str>, Result<Target, HostError>) {
        let unrouted = || Arc::<str>::from("");
        let Some(name) = host.and_then(normalize_host) else {
            return (
                unrouted(),
                Err(HostError::UnknownHost(host.map(str::to_owned))),
            );
        };
        match self.tenancy.route(&name) {
            Route::Serve {
                tenant,
                deployment,
                bounds,
            } => {
                let target = Target {
                    service: Arc::clone(&deployment.service),
                    sandbox: bounds.sandbox.clone(),
                    gate: Some(Arc::clone(&bounds.gate)),
                };
                (tenant, Ok(target))
            }
            Route::NoDeployment { tenant } => (tenant, Err(HostError::NoDeployment)),
            Route::UnknownHost => (unrouted(), Err(HostError::UnknownHost(Some(name)))),
        }
    }

    fn record(&self, label: &str, status: u16, elapsed: std::time::Duration) {
        self.metrics.record_request(label, status, elapsed);
    }
}

/// Reads the operator token from `path`, creating it (mode 0600) on first start.
fn operator_token_file(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        // An empty file is what a crash right after creating it leaves: write it again.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = new_token("corral_op")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}
