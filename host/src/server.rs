//! `corral serve`: the multi-tenant server. Reads tenants from the data directory, serves the
//! data plane (routed by host name) and the admin API on their own listeners, and builds the
//! tenants' active deployments in parallel meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corral_parsers::hostname::{Unroutable, routed_name};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::backends::Placement;
use crate::backends::onnx::{CudaArena, OnnxRuntime};
use crate::config::DeviceName;
use crate::config::{ClusterSettings, Config};
use crate::deployment::DeploymentBuilder;
use crate::engine;
use crate::http::error::HostError;
use crate::http::listener::Listener;
use crate::http::{self, Router, Target};
use crate::inference::{Device, Inference, InferenceOptions};
use crate::metrics::ConnectionStats;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tenancy::tokens::{new_token, token_hash};
use crate::tenancy::{Platform, Route, Tenancy};
use crate::tls::{self, CertResolver};

/// The inference layer's options from the configuration (deprecated keys applied, with their
/// warnings logged), and ONNX Runtime and libtorch configured to match: each run gets
/// `threads` intra-op threads. A GPU in `[inference] devices` must be on this machine, with
/// the libraries that drive it: otherwise the error names what is missing.
pub fn inference_options(config: &Config) -> anyhow::Result<InferenceOptions> {
    let (settings, warnings) = config.inference();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (runs, threads) = InferenceOptions::split(cores, settings.runs, settings.threads);
    if runs * threads > cores {
        tracing::warn!(
            runs,
            threads,
            cores,
            "[inference] runs x threads is more than the cores: concurrent runs will compete for them"
        );
    }
    let names = config.devices()?;
    let gpus = names.iter().any(|d| *d != DeviceName::Cpu);
    #[cfg(feature = "torch")]
    crate::backends::torch::set_threads(threads);
    let memory_bytes = match config.models.memory_bytes {
        0 => crate::backends::memory_available() / 2,
        bytes => bytes,
    };
    let driver = if gpus {
        let listed = names.iter().filter(|d| **d != DeviceName::Cpu);
        let listed = listed
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let driver = crate::backends::cuda::driver()
            .map_err(|e| anyhow::anyhow!("[inference] devices lists {listed}, but {e}"))?;
        OnnxRuntime::check_cuda().with_context(|| {
            format!("[inference] devices lists {listed}, but ONNX Runtime cannot drive it")
        })?;
        Some(driver)
    } else {
        None
    };
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        let device = match (name, &driver) {
            (DeviceName::Cuda(ordinal), Some(driver)) => {
                let gpu = driver
                    .gpu(ordinal)
                    .map_err(|e| anyhow::anyhow!("[inference] devices: {e}"))?;
                let memory_bytes = match settings.device_memory_bytes {
                    0 => gpu.memory_bytes / 10 * 9,
                    bytes if bytes > gpu.memory_bytes => anyhow::bail!(
                        "[inference] device_memory_bytes is {bytes}, more than {name} ({}) has: \
                         {} bytes",
                        gpu.name,
                        gpu.memory_bytes
                    ),
                    bytes => bytes,
                };
                tracing::info!(device = %name, gpu = %gpu.name, card_bytes = gpu.memory_bytes, memory_bytes, driver = driver.version, "GPU");
                Device {
                    name: Arc::from(name.to_string()),
                    placement: Placement::Cuda(ordinal),
                    accelerator: true,
                    memory_bytes,
                    runs: match settings.device_runs {
                        0 => DEFAULT_DEVICE_RUNS,
                        runs => runs,
                    },
                }
            }
            _ => Device::cpu(runs, memory_bytes),
        };
        devices.push(device);
    }
    let mut onnx = config.onnx.clone();
    onnx.intra_op_threads = threads;
    let arenas = devices.iter().filter_map(|d| match d.placement {
        Placement::Cuda(ordinal) => Some(CudaArena {
            ordinal,
            limit_bytes: d.memory_bytes,
        }),
        Placement::Cpu => None,
    });
    OnnxRuntime::configure(onnx, arenas.collect());
    tracing::info!(
        runs,
        threads,
        max_batch_size = config.batching.max_batch_size,
        memory_bytes,
        devices = %devices.iter().map(|d| &*d.name).collect::<Vec<_>>().join(","),
        "inference"
    );
    Ok(InferenceOptions {
        threads,
        max_batch_size: config.batching.max_batch_size,
        max_delay: Duration::from_micros(config.batching.max_delay_us),
        devices,
    })
}

/// Run threads per GPU when `[inference] device_runs` is 0: one run executing while the next
/// batch is copied in and the last one's outputs copied out.
pub const DEFAULT_DEVICE_RUNS: usize = 2;

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
    data_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    local_ca: Option<PathBuf>,
    token_source: TokenSource,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the data directory, restores every tenant, binds both listeners and starts
    /// serving. Failures name the directory, file or address at fault.
    pub async fn start(options: Config) -> anyhow::Result<Self> {
        let data_dir = options.data_dir.clone();
        let given_token = options.admin_token.clone();
        let cluster = options.cluster.clone();
        if !cluster.database_url.is_empty() && given_token.is_none() {
            anyhow::bail!(
                "[cluster] database_url is set, so the operator token must be given \
                 (admin_token, or CORRAL_ADMIN_TOKEN), the same for every replica"
            );
        }
        let (store, operator_token, token_source) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&data_dir, &cluster)?;
            let (token, source) = match given_token {
                Some(token) => (token, TokenSource::Given),
                None => {
                    let token = operator_token_file(&store)?;
                    (token, TokenSource::File(data_dir.join(TOKEN_FILE)))
                }
            };
            anyhow::Ok((store, token, source))
        })
        .await??;
        if operator_token.trim().len() < 16 {
            anyhow::bail!("the operator token must be at least 16 characters long");
        }
        let operator_token_sha256 = token_hash(operator_token.trim());
        let store = tokio::task::spawn_blocking(move || {
            store
                .records
                .agree_operator_token(&operator_token_sha256)
                .map(|()| store)
        })
        .await??;
        let inference = Arc::new(Inference::new(inference_options(&options)?));
        let engine = engine::new_engine(&options.engine)?;
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(store);
        let collected = store.collects_shared().then(|| Arc::clone(&store));
        let platform = Arc::new(Platform {
            builder: DeploymentBuilder::new(
                engine,
                Arc::clone(&inference),
                Some(store.cache.clone()),
            ),
            store: Arc::clone(&store),
            engine_settings: options.engine.clone(),
            default_limits: options.limits.clone(),
            metrics: Arc::clone(&metrics),
            deploy_timeout: Duration::from_secs(options.deploy_timeout_secs),
            deploy_slots: Arc::new(tokio::sync::Semaphore::new(
                options.store.concurrent_deploys as usize,
            )),
            deploy_slots_total: options.store.concurrent_deploys as usize,
            keep_deployments: options.store.keep_deployments as usize,
        });
        let tenancy = tokio::task::spawn_blocking(move || Tenancy::open(platform)).await??;
        let tenancy = Arc::new(tenancy);

        let data = if options.plain_http {
            Some(
                TcpListener::bind(options.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (data plane)", options.listen))?,
            )
        } else {
            None
        };
        let (https, resolver) = if options.tls.enabled {
            let resolver = Arc::new(CertResolver::new(
                &options.tls,
                &options.data_dir,
                Arc::clone(&tenancy) as Arc<dyn crate::tls::CertificateSource>,
            )?);
            let socket = TcpListener::bind(options.tls.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (data plane, HTTPS)",
                        options.tls.listen
                    )
                })?;
            (Some(socket), Some(resolver))
        } else {
            (None, None)
        };
        let admin_listener = TcpListener::bind(options.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", options.admin_listen))?;
        let data_addr = data.as_ref().map(TcpListener::local_addr).transpose()?;
        let tls_addr = https.as_ref().map(TcpListener::local_addr).transpose()?;
        let admin_addr = admin_listener.local_addr()?;
        let local_ca = resolver
            .as_ref()
            .and_then(|r| r.local_ca_path().map(Path::to_path_buf));

        let (shutdown, stopped) = watch::channel(false);
        let following = stopped.clone();
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let router: Arc<dyn Router> = Arc::new(TenantRouter {
            tenancy: Arc::clone(&tenancy),
            metrics: Arc::clone(&metrics),
        });
        let data_stats = Arc::new(ConnectionStats::default());
        let tls_stats = Arc::new(ConnectionStats::default());
        let admin = Arc::new(Admin {
            tenancy: Arc::clone(&tenancy),
            inference,
            store,
            instance_slots: options.engine.instances,
            metrics,
            operator_token_sha256,
            uploads: admin::UploadSettings {
                max_bytes: options.max_upload_bytes,
                min_bytes_per_sec: options.upload_min_bytes_per_sec,
            },
            body_timeout: Duration::from_millis(options.http.header_read_timeout_ms),
            data_addr,
            tls_addr,
            connections: vec![
                ("http", Arc::clone(&data_stats)),
                ("https", Arc::clone(&tls_stats)),
            ],
        });
        let drain = Duration::from_secs(options.drain_timeout_secs);
        let mut tasks = Vec::new();
        if let Some(socket) = data {
            let listener = Listener {
                name: "http",
                socket,
                tls: None,
                settings: options.http.clone(),
                stats: data_stats,
            };
            tasks.push(tokio::spawn(http::serve(
                listener,
                Arc::clone(&router),
                until_stopped(stopped.clone()),
                drain,
            )));
        }
        if let (Some(socket), Some(resolver)) = (https, resolver) {
            let listener = Listener {
                name: "https",
                socket,
                tls: Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                    resolver,
                )?)),
                settings: options.http.clone(),
                stats: tls_stats,
            };
            tasks.push(tokio::spawn(http::serve(
                listener,
                router,
                until_stopped(stopped.clone()),
                drain,
            )));
        }
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            options.http.clone(),
            admin,
            until_stopped(stopped),
            drain,
        )));
        // Tenants' deployments are built while the listeners already answer (503 for a
        // tenant not built yet, /readyz 503 until all are).
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        tokio::spawn(Arc::clone(&tenancy).restore(parallel));
        // Servers sharing a database apply each other's changes.
        if !options.cluster.database_url.is_empty() {
            let interval = Duration::from_millis(options.cluster.poll_interval_ms);
            tokio::spawn(Arc::clone(&tenancy).follow(interval, following.clone()));
        }
        if let Some(store) = collected {
            tokio::spawn(collect_shared_blobs(
                store,
                options.cluster.clone(),
                following,
            ));
        }
        Ok(Self {
            data_addr,
            tls_addr,
            admin_addr,
            local_ca,
            token_source,
            shutdown,
            tasks,
        })
    }

    /// The cleartext data-plane listener's address (none when `plain_http` is off).
    pub fn data_addr(&self) -> Option<SocketAddr> {
        self.data_addr
    }

    /// The HTTPS listener's address (none when `[tls] enabled` is off).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The local development CA's certificate, when it is on.
    pub fn local_ca(&self) -> Option<&Path> {
        self.local_ca.as_deref()
    }

    /// The admin API's address (the port actually bound).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the operator token came from.
    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
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
    fn route(
        &self,
        host: Option<&str>,
        sni: Option<&str>,
    ) -> (Arc<str>, Result<Target, HostError>) {
        let unrouted = || Arc::<str>::from("");
        // A connection opened for one tenant (SNI) must not carry requests for another: the
        // client picked the certificate, and so the trust, for the first.
        let name = match routed_name(host, sni, |name| self.tenancy.tenant_of_host(name)) {
            Ok(name) => name,
            Err(Unroutable::BadHost) => {
                return (
                    unrouted(),
                    Err(HostError::UnknownHost(host.map(str::to_owned))),
                );
            }
            Err(Unroutable::Misdirected {
                sni,
                host,
                host_tenant,
            }) => {
                let label = host_tenant.unwrap_or_else(unrouted);
                return (label, Err(HostError::Misdirected { sni, host }));
            }
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
            Route::Unavailable { tenant, restoring } => {
                (tenant, Err(HostError::DeploymentUnavailable { restoring }))
            }
            Route::UnknownHost => (unrouted(), Err(HostError::UnknownHost(Some(name)))),
        }
    }

    fn record(&self, label: &str, status: u16, elapsed: std::time::Duration) {
        self.metrics.record_request(label, status, elapsed);
    }
}

/// Collects the blobs of a bucket servers share every `collect_interval_secs` (one server at a
/// time: the others find the lock taken and skip), until `stopped`.
async fn collect_shared_blobs(
    store: Arc<Store>,
    cluster: ClusterSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let grace = Duration::from_secs(cluster.blob_grace_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cluster.collect_interval_secs)) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.collect_shared(grace)).await {
            Ok(Ok(Some(collected))) if !collected.busy => tracing::info!(
                listed = collected.listed,
                removed = collected.removed,
                bytes = collected.bytes,
                "collected the shared bucket's unused blobs"
            ),
            Ok(Ok(_)) => tracing::debug!("another server is collecting the shared bucket"),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot collect the shared bucket's unused blobs; trying again later")
            }
            Err(e) => tracing::error!(error = %e, "the collection of shared blobs failed"),
        }
    }
}

/// Reads the operator token from `path`, creating it (mode 0600) on first start.
fn operator_token_file(store: &Store) -> anyhow::Result<String> {
    let path = store.dir.path(TOKEN_FILE.as_ref())?;
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        // Written atomically, so an empty file is one someone else left: write it again.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = new_token("corral_op")?;
    // A temporary file (mode 0600), synced, then renamed: never a torn or empty token.
    store
        .dir
        .write_file(TOKEN_FILE.as_ref(), format!("{token}\n").as_bytes())?;
    Ok(token)
}
