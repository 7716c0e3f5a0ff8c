//! `corral serve`'s configuration: one TOML file, every key optional, every key overridable
//! by an environment variable, embedded defaults that give a working server on loopback.
//!
//! Precedence, lowest first: defaults, the file, `CORRAL_<KEY>` / `CORRAL_<SECTION>_<KEY>`
//! environment variables (e.g. `CORRAL_LISTEN`, `CORRAL_LIMITS_CPU_MS`), then command-line
//! flags. Unknown keys and bad values are refused, naming the file, line and key (or the
//! environment variable). `docs/config.md` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory (tenants, deployments, blobs, compiled-component cache, admin token).
    pub data_dir: PathBuf,
    /// Data-plane cleartext HTTP listener (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Whether the cleartext data-plane listener runs (HTTPS is `[tls]`).
    pub plain_http: bool,
    /// Admin API listener (keep it private: it serves /metrics without a token).
    pub admin_listen: SocketAddr,
    /// Operator token; when unset, one is generated into `<data_dir>/admin-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Largest deployment upload, in bytes.
    pub max_upload_bytes: u64,
    /// Slowest upload accepted: each 10 s of an upload must carry at least 10 × this many
    /// bytes (`408 upload_too_slow` otherwise).
    pub upload_min_bytes_per_sec: u64,
    /// Deprecated alias of `[inference] runs` (kept one release; logs a warning when set).
    pub max_parallel_inference: usize,
    /// Seconds validating an upload (compiling, loading models) may take.
    pub deploy_timeout_secs: u64,
    /// Seconds requests in flight may take to finish after SIGTERM/SIGINT.
    pub drain_timeout_secs: u64,
    /// HTTPS (`[tls]`).
    pub tls: TlsSettings,
    /// The front door's limits on every connection (`[http]`).
    pub http: HttpSettings,
    /// ONNX Runtime (`[onnx]`).
    pub onnx: OnnxSettings,
    /// Run threads and intra-op threads (`[inference]`).
    pub inference: InferenceSettings,
    /// Dynamic batching (`[batching]`).
    pub batching: BatchingSettings,
    /// The loaded models' memory budget (`[models]`).
    pub models: ModelsSettings,
    /// The engine's instance pool (`[engine]`).
    pub engine: EngineSettings,
    /// Deployments kept and validated (`[store]`).
    pub store: StoreSettings,
    /// Shared state for several replicas (`[cluster]`).
    pub cluster: ClusterSettings,
    /// Default per-tenant limits (`[limits]`); tenants may be given their own.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("corral-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            plain_http: true,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            admin_token: None,
            max_upload_bytes: 2 << 30,
            upload_min_bytes_per_sec: 16 * 1024,
            max_parallel_inference: 0,
            deploy_timeout_secs: 300,
            drain_timeout_secs: 30,
            tls: TlsSettings::default(),
            http: HttpSettings::default(),
            onnx: OnnxSettings::default(),
            inference: InferenceSettings::default(),
            batching: BatchingSettings::default(),
            models: ModelsSettings::default(),
            engine: EngineSettings::default(),
            store: StoreSettings::default(),
            cluster: ClusterSettings::default(),
            limits: Limits::default(),
        }
    }
}

/// HTTPS on the data plane. The certificate for a connection is the tenant's own (chosen by
/// SNI), else the operator's default (`cert_file`/`key_file`), else one signed by the local
/// development CA (`<data_dir>/ca.pem`) when `local_ca` is on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Whether the HTTPS listener runs.
    pub enabled: bool,
    /// HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen: SocketAddr,
    /// The operator's default certificate chain (PEM, leaf first), e.g. a wildcard; empty for
    /// none.
    pub cert_file: PathBuf,
    /// The default certificate's private key (PEM).
    pub key_file: PathBuf,
    /// Sign certificates for tenant host names that have none with a CA Corral keeps in the
    /// data directory (for development: clients must be told to trust `ca.pem`).
    pub local_ca: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            local_ca: true,
        }
    }
}

/// Limits on every connection (data plane and admin API), enforced before any tenant code
/// runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Time for a TLS handshake, and for an HTTP/1.1 request head, to arrive (slow clients are
    /// disconnected).
    pub header_read_timeout_ms: u64,
    /// Most header fields in one request (`431` beyond).
    pub max_headers: usize,
    /// Most bytes in one request head (`431` beyond); at least 8192.
    pub max_header_bytes: usize,
    /// Most bytes an HTTP/1.1 connection reads from its socket at once: a request body reaches
    /// its guest in pieces of at most this size, so a small value costs a hand-off per piece;
    /// it is also what an idle connection may keep buffered. At least `max_header_bytes`.
    pub read_buffer_bytes: usize,
    /// Most connections open at once per listener; more are closed as soon as accepted.
    pub max_connections: usize,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most concurrent streams (requests) on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Most streams an HTTP/2 client may open and reset before they are served; past it the
    /// connection is closed (`ENHANCE_YOUR_CALM`): the rapid-reset attack.
    pub h2_max_pending_reset_streams: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            read_buffer_bytes: 256 * 1024,
            max_connections: 10_000,
            idle_timeout_ms: 60_000,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
        }
    }
}

impl HttpSettings {
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("max_headers", self.max_headers as u64),
            ("max_connections", self.max_connections as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            (
                "h2_max_concurrent_streams",
                u64::from(self.h2_max_concurrent_streams),
            ),
            (
                "h2_max_pending_reset_streams",
                self.h2_max_pending_reset_streams as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(format!(
                "max_header_bytes must be at least 8192 (it is {})",
                self.max_header_bytes
            ));
        }
        if self.read_buffer_bytes < self.max_header_bytes {
            return Err(format!(
                "read_buffer_bytes ({}) must be at least max_header_bytes ({}): a request head \
                 is read into that buffer whole",
                self.read_buffer_bytes, self.max_header_bytes
            ));
        }
        Ok(())
    }
}

/// How inference runs use the CPUs: `runs` batches execute at once, each with `threads`
/// intra-op threads. By default runs × threads = cores (one thread per run, one run per core),
/// so concurrent runs never oversubscribe the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSettings {
    /// Intra-op threads of one run (0: 1).
    pub threads: usize,
    /// Runs that may execute at once on the CPU, across all tenants and models
    /// (0: cores / threads).
    pub runs: usize,
    /// Where models are placed: `"cpu"` and `"cuda:N"` (the N-th NVIDIA GPU), in any order.
    /// Each model goes to the GPU with the fewest resident bytes that can hold it; the CPU is
    /// the last resort, and only when listed.
    pub devices: Vec<String>,
    /// Each GPU's model memory budget, in bytes (0: 90% of the card's memory).
    pub device_memory_bytes: u64,
    /// Runs that may execute at once on each GPU (0: 2).
    pub device_runs: usize,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            runs: 0,
            devices: vec!["cpu".into()],
            device_memory_bytes: 0,
            device_runs: 0,
        }
    }
}

/// A device named in `[inference] devices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceName {
    /// The machine's CPUs (`"cpu"`).
    Cpu,
    /// The NVIDIA GPU with this CUDA ordinal (`"cuda:N"`).
    Cuda(u32),
}

/// The most GPUs one machine is taken to have (CUDA ordinals 0 to 63).
pub const MAX_CUDA_ORDINAL: u32 = 63;

impl DeviceName {
    /// Reads `"cpu"` or `"cuda:N"`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name == "cpu" {
            return Ok(Self::Cpu);
        }
        let ordinal = name
            .strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok());
        match ordinal {
            Some(n) if n <= MAX_CUDA_ORDINAL => Ok(Self::Cuda(n)),
            Some(n) => Err(format!(
                "'{name}' names GPU {n}, past the last one Corral addresses (cuda:{MAX_CUDA_ORDINAL})"
            )),
            None => Err(format!(
                "'{name}' is not a device: write \"cpu\" or \"cuda:N\" (N = 0 for the first NVIDIA GPU)"
            )),
        }
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Dynamic batching: queued `compute`s of one model (from any tenant) that agree on all but
/// the leading axis run as one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSettings {
    /// Most rows in one batch; 1 turns batching off. The scheduler may cap a model lower when
    /// its measured run times say larger batches run slower per row.
    pub max_batch_size: u32,
    /// Longest a job waits for others to batch with, in microseconds (0: never wait; a batch
    /// is what queued while the previous run executed).
    pub max_delay_us: u64,
}

impl Default for BatchingSettings {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_delay_us: 0,
        }
    }
}

/// Loaded models are kept least-recently-used under a memory budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSettings {
    /// Measured resident bytes all loaded models together may hold (0: half the memory the
    /// process may use: its cgroup limit if set, else the machine's).
    pub memory_bytes: u64,
}

/// How ONNX Runtime sessions are built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxSettings {
    /// Deprecated alias of `[inference] threads` (kept one release; logs a warning when set).
    pub intra_op_threads: usize,
    /// Threads one run may use across independent operators (0: ONNX Runtime's default).
    pub inter_op_threads: usize,
    /// Whether idle intra-op threads spin waiting for work: a little lower latency for one run
    /// at a time, but spinning threads take CPU from concurrent runs and other tenants.
    pub intra_op_spinning: bool,
    /// Deprecated alias of `[inference] devices` (kept one release; logs a warning when set
    /// to anything but `["cpu"]`): `"cpu"` is the CPU, `"cuda"` the first GPU.
    pub execution_providers: Vec<String>,
    /// Memory all ONNX Runtime runs together may use for their tensors, in bytes (0: half the
    /// machine's memory). A run that needs more fails with a `wasi:nn` runtime error instead
    /// of taking the process's memory.
    pub run_memory_bytes: u64,
}

impl Default for OnnxSettings {
    fn default() -> Self {
        Self {
            intra_op_threads: 0,
            inter_op_threads: 0,
            intra_op_spinning: false,
            execution_providers: vec!["cpu".into()],
            run_memory_bytes: 0,
        }
    }
}

/// The engine's fixed resources: the pooling allocator's slots, sized once at start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Component instances that may exist at once, across all tenants (the pool's slots).
    pub instances: u32,
    /// The most linear memory any instance may have, in bytes: a tenant's `memory_bytes`
    /// limit cannot exceed it. Each slot reserves this much address space (not memory).
    pub max_memory_bytes: u64,
    /// WebAssembly stack per instance, in bytes: deeper recursion traps.
    pub stack_bytes: u64,
    /// Linear memory an instance slot keeps mapped when its request ends, in bytes: zeroed in
    /// place instead of returned to the kernel, so the next request in that slot does not
    /// page-fault it in again. Costs up to this much resident memory per recently used slot;
    /// capped at `max_memory_bytes`.
    pub keep_resident_bytes: u64,
    /// `"perfmap"`: wasmtime writes `/tmp/perf-PID.map` naming every compiled guest function,
    /// so `perf record` / `perf report` show guest frames by name (for profiling; the map
    /// grows with every component compiled). `"none"` (the default): no map.
    pub profiling: String,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            instances: 1000,
            max_memory_bytes: 1 << 30,
            stack_bytes: 1 << 20,
            keep_resident_bytes: 2 << 20,
            profiling: "none".into(),
        }
    }
}

impl EngineSettings {
    /// Refuses settings the engine cannot start with, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.instances == 0 {
            return Err("engine.instances must be at least 1".into());
        }
        if !(64 << 10..=4 << 30).contains(&self.max_memory_bytes) {
            return Err("engine.max_memory_bytes must be between 64 KiB and 4 GiB".into());
        }
        if !(64 << 10..=64 << 20).contains(&self.stack_bytes) {
            return Err("engine.stack_bytes must be between 64 KiB and 64 MiB".into());
        }
        if !["none", "perfmap"].contains(&self.profiling.as_str()) {
            return Err(format!(
                "engine.profiling must be \"none\" or \"perfmap\", not {:?}",
                self.profiling
            ));
        }
        Ok(())
    }

    /// Refuses `limits` this engine cannot give a request: the one place a tenant's memory
    /// limit is held against the engine's maximum (the defaults at start, each tenant's
    /// overrides when the operator sets them).
    pub fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        if limits.memory_bytes > self.max_memory_bytes {
            return Err(format!(
                "limit 'memory_bytes' ({}) must be at most the engine's max_memory_bytes ({})",
                limits.memory_bytes, self.max_memory_bytes
            ));
        }
        Ok(())
    }
}

/// Where replicas share their state. Empty: everything lives in `data_dir` (one server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// PostgreSQL holding tenants, host names, token hashes, limits, certificates and
    /// deployments (`postgres://user:password@host:5432/dbname`); empty: the data directory.
    pub database_url: String,
    /// PEM certificates that the database's TLS certificate must chain to (with `sslmode`
    /// `prefer` or `require` in `database_url`); empty: the system's certificate bundle.
    pub database_ca_file: PathBuf,
    /// S3-compatible object storage holding components and models (`s3://bucket` or
    /// `s3://bucket/prefix`; endpoint and credentials from the `AWS_*` variables); empty:
    /// the data directory.
    pub blob_url: String,
    /// Most bytes of blobs this server keeps copies of (`<data_dir>/cache/blobs`), least
    /// recently used dropped first.
    pub cache_bytes: u64,
    /// How often a server reads the database's change log to apply what other servers
    /// changed, in milliseconds, besides reading it whenever the database notifies a change
    /// (notifications are not durable: polling catches what one missed).
    pub poll_interval_ms: u64,
    /// How often a server collects the shared bucket's unused blobs, in seconds (one server
    /// at a time, with both `database_url` and `blob_url`).
    pub collect_interval_secs: u64,
    /// How long a blob uploaded to the shared bucket is kept though no deployment refers to
    /// it yet, in seconds: longer than any upload takes from storing its blobs to recording
    /// its deployment.
    pub blob_grace_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            database_ca_file: PathBuf::new(),
            blob_url: String::new(),
            cache_bytes: 20 << 30,
            poll_interval_ms: 5000,
            collect_interval_secs: 3600,
            blob_grace_secs: 3600,
        }
    }
}

impl ClusterSettings {
    /// `url` with any password in it replaced, for logs and `corral config check`.
    pub fn redact(url: &str) -> String {
        redact_url(url)
    }
}

/// A URL or libpq connection string with its password replaced by `(not shown)`: the
/// userinfo's password (`scheme://user:password@host`) and a `password=` setting.
fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "(not shown)";
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let tail = redact_url_settings(tail, HIDDEN);
        return match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:{HIDDEN}@{host}{tail}"),
                None => format!("{scheme}://{userinfo}@{host}{tail}"),
            },
            None => format!("{scheme}://{authority}{tail}"),
        };
    }
    redact_url_settings(url, HIDDEN)
}

/// `password=...` replaced, in a query string (`&`-separated) or a libpq key=value string
/// (space-separated, the value possibly quoted).
fn redact_url_settings(text: &str, hidden: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let starts_key = at == 0 || matches!(rest.as_bytes()[at - 1], b' ' | b'&' | b'?' | b'\t');
        out.push_str(&rest[..at + "password=".len()]);
        rest = &rest[at + "password=".len()..];
        if !starts_key {
            continue;
        }
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'').map_or(rest.len(), |e| e + 2)
        } else {
            rest.find([' ', '&', '#']).unwrap_or(rest.len())
        };
        out.push_str(hidden);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What the store keeps, and how many uploads are validated at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Deployments kept per tenant, newest first (the active one always); older ones and the
    /// blobs only they use are removed after each deploy.
    pub keep_deployments: u32,
    /// Deployments being validated (compiled, models loaded) at once across the process;
    /// more get `503 deploys_busy`.
    pub concurrent_deploys: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            keep_deployments: 10,
            concurrent_deploys: 2,
        }
    }
}

/// Top-level keys that are not sections (sections' keys come from their defaults).
const TOP_LEVEL: &[&str] = &[
    "data_dir",
    "listen",
    "plain_http",
    "admin_listen",
    "admin_token",
    "max_upload_bytes",
    "upload_min_bytes_per_sec",
    "max_parallel_inference",
    "deploy_timeout_secs",
    "drain_timeout_secs",
];

impl Config {
    /// The configuration from `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?,
            None => String::new(),
        };
        let origin = file.map_or_else(|| "the configuration".into(), |p| p.display().to_string());
        // Only CORRAL_* variables matter; others may not even be UTF-8.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::parse(&text, env).with_context(|| origin)
    }

    /// Parses `text` (TOML) with overrides from `env` (`CORRAL_...` variables).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        // The file alone first: its errors carry the line and key.
        let from_file: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut table: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut overridden = Vec::new();
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CORRAL_"))
            .collect();
        secrets_from_files(&mut env)?;
        let defaults = toml::Value::try_from(Config::default()).ok();
        for (path, variable) in env_keys() {
            // An empty variable counts as unset.
            let Some((_, raw)) = env.iter().find(|(k, v)| *k == variable && !v.is_empty()) else {
                continue;
            };
            let value = parse_env_value(raw, default_is_string(defaults.as_ref(), &path));
            match path.split_once('.') {
                Some((section, key)) => {
                    let entry = table
                        .entry(section.to_owned())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let toml::Value::Table(section_table) = entry else {
                        anyhow::bail!("'{section}' must be a table ([{section}])");
                    };
                    section_table.insert(key.to_owned(), value);
                }
                None => {
                    table.insert(path.clone(), value);
                }
            }
            overridden.push(variable);
        }
        let config = if overridden.is_empty() {
            from_file
        } else {
            Config::deserialize(toml::Value::Table(table)).map_err(|e| {
                anyhow::anyhow!("{e} (environment overrides: {})", overridden.join(", "))
            })?
        };
        config.check()?;
        Ok(config)
    }

    /// `[inference]` with the deprecated aliases (`max_parallel_inference`, `[onnx]
    /// intra_op_threads`, `[onnx] execution_providers`) applied where `[inference]` leaves the
    /// key unset, and a warning for each alias in use.
    pub fn inference(&self) -> (InferenceSettings, Vec<String>) {
        let mut settings = self.inference.clone();
        let mut warnings = Vec::new();
        if self.onnx.execution_providers != OnnxSettings::default().execution_providers {
            warnings.push(
                "[onnx] execution_providers is deprecated: use [inference] devices (it is read \
                 as that for now: \"cuda\" as \"cuda:0\")"
                    .to_owned(),
            );
            if settings.devices == InferenceSettings::default().devices {
                settings.devices = self
                    .onnx
                    .execution_providers
                    .iter()
                    .map(|p| {
                        if p == "cuda" {
                            "cuda:0".into()
                        } else {
                            p.clone()
                        }
                    })
                    .collect();
            }
        }
        if self.max_parallel_inference != 0 {
            warnings.push(
                "max_parallel_inference is deprecated: use [inference] runs (it is read as that \
                 for now)"
                    .to_owned(),
            );
            if settings.runs == 0 {
                settings.runs = self.max_parallel_inference;
            }
        }
        if self.onnx.intra_op_threads != 0 {
            warnings.push(
                "[onnx] intra_op_threads is deprecated: use [inference] threads (it is read as \
                 that for now)"
                    .to_owned(),
            );
            if settings.threads == 0 {
                settings.threads = self.onnx.intra_op_threads;
            }
        }
        (settings, warnings)
    }

    /// Every key's value, as TOML (what `corral config check` prints), the token redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.admin_token.is_some() {
            shown.admin_token = Some("(set, not shown)".into());
        }
        shown.cluster.database_url = redact_url(&shown.cluster.database_url);
        toml::to_string(&shown).unwrap_or_default()
    }

    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("max_upload_bytes", self.max_upload_bytes),
            ("upload_min_bytes_per_sec", self.upload_min_bytes_per_sec),
            ("deploy_timeout_secs", self.deploy_timeout_secs),
            ("drain_timeout_secs", self.drain_timeout_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                anyhow::bail!("{key} must be at least 1");
            }
        }
        self.engine.check().map_err(anyhow::Error::msg)?;
        let cluster = &self.cluster;
        if cluster.cache_bytes == 0
            || cluster.poll_interval_ms == 0
            || cluster.collect_interval_secs == 0
            || cluster.blob_grace_secs == 0
        {
            anyhow::bail!(
                "[cluster]: cache_bytes, poll_interval_ms, collect_interval_secs and \
                 blob_grace_secs must be at least 1"
            );
        }
        if !self.cluster.blob_url.is_empty() && !self.cluster.blob_url.starts_with("s3://") {
            anyhow::bail!(
                "[cluster]: blob_url must look like s3://bucket or s3://bucket/prefix, not '{}'",
                self.cluster.blob_url
            );
        }
        if self.store.keep_deployments == 0 || self.store.concurrent_deploys == 0 {
            anyhow::bail!("[store]: keep_deployments and concurrent_deploys must be at least 1");
        }
        self.http
            .check()
            .map_err(|m| anyhow::anyhow!("[http]: {m}"))?;
        if self.tls.cert_file.as_os_str().is_empty() != self.tls.key_file.as_os_str().is_empty() {
            anyhow::bail!("[tls]: cert_file and key_file go together: set both or neither");
        }
        if !self.plain_http && !self.tls.enabled {
            anyhow::bail!("plain_http is false and [tls] enabled is false: nothing would serve");
        }
        self.limits
            .check()
            .map_err(|m| anyhow::anyhow!("[limits]: {m}"))?;
        self.engine
            .check_limits(&self.limits)
            .map_err(|m| anyhow::anyhow!("[limits]: {m}"))?;
        if self.batching.max_batch_size == 0 {
            anyhow::bail!("[batching] max_batch_size must be at least 1 (1 turns batching off)");
        }
        if self.batching.max_delay_us > 1_000_000 {
            anyhow::bail!("[batching] max_delay_us must be at most 1000000 (one second)");
        }
        if self.inference.threads > 1024 || self.inference.runs > 1024 {
            anyhow::bail!("[inference] threads and runs must each be at most 1024");
        }
        for provider in &self.onnx.execution_providers {
            if provider != "cpu" && provider != "cuda" {
                anyhow::bail!(
                    "[onnx] execution_providers: '{provider}' is not one Corral has (it has: cpu, \
                     cuda); the key is deprecated: use [inference] devices"
                );
            }
        }
        self.devices()?;
        if self.inference.device_runs > 1024 {
            anyhow::bail!("[inference] device_runs must be at most 1024");
        }
        Ok(())
    }

    /// `[inference] devices` (or its deprecated alias) read: at least one, each once.
    pub fn devices(&self) -> anyhow::Result<Vec<DeviceName>> {
        let (settings, _) = self.inference();
        if settings.devices.is_empty() {
            anyhow::bail!("[inference] devices is empty: list at least one, such as [\"cpu\"]");
        }
        let mut devices = Vec::with_capacity(settings.devices.len());
        for name in &settings.devices {
            let device =
                DeviceName::parse(name).map_err(|e| anyhow::anyhow!("[inference] devices: {e}"))?;
            if devices.contains(&device) {
                anyhow::bail!("[inference] devices: '{device}' is listed twice");
            }
            devices.push(device);
        }
        Ok(devices)
    }
}

/// `(key path, environment variable)` for every key: `listen` → `CORRAL_LISTEN`,
/// `limits.cpu_ms` → `CORRAL_LIMITS_CPU_MS`.
pub fn env_keys() -> Vec<(String, String)> {
    let mut keys: Vec<String> = TOP_LEVEL.iter().map(|k| (*k).to_owned()).collect();
    if let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(Config::default()) {
        for (section, value) in defaults {
            if let toml::Value::Table(fields) = value {
                keys.extend(fields.keys().map(|k| format!("{section}.{k}")));
            }
        }
    }
    keys.into_iter()
        .map(|path| {
            let variable = format!("CORRAL_{}", path.replace('.', "_").to_ascii_uppercase());
            (path, variable)
        })
        .collect()
}

/// The keys that hold secrets: each may also be given as a file's content through
/// `CORRAL_..._FILE` (a mounted Kubernetes or Docker secret).
const SECRETS: &[&str] = &["CORRAL_ADMIN_TOKEN", "CORRAL_CLUSTER_DATABASE_URL"];

/// Adds to `env` each secret given as `CORRAL_..._FILE` (the file's content without its
/// trailing newline) and not given directly; a file that cannot be read is an error naming
/// the variable and the file.
fn secrets_from_files(env: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    for secret in SECRETS {
        let file_variable = format!("{secret}_FILE");
        let Some((_, path)) = env
            .iter()
            .find(|(k, v)| *k == file_variable && !v.is_empty())
            .cloned()
        else {
            continue;
        };
        if env.iter().any(|(k, v)| k == secret && !v.is_empty()) {
            anyhow::bail!("{secret} and {file_variable} are both set: give one");
        }
        let content = std::fs::read_to_string(&path)
            .with_context(|| format!("{file_variable}: cannot read {path}"))?;
        env.push((
            (*secret).to_owned(),
            content.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    Ok(())
}

/// An environment value: as given for keys that hold strings, else as a TOML value (`500`,
/// `true`, `["cpu"]`), falling back to a string (which then fails with the key named).
fn parse_env_value(raw: &str, string_key: bool) -> toml::Value {
    if string_key {
        return toml::Value::String(raw.to_owned());
    }
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Whether `path`'s default is a string (unset optional keys, such as `admin_token`, are).
fn default_is_string(defaults: Option<&toml::Value>, path: &str) -> bool {
    let Some(defaults) = defaults else {
        return true;
    };
    let value = path
        .split('.')
        .try_fold(defaults, |value, key| value.get(key));
    value.is_none_or(toml::Value::is_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_old_inference_keys_still_start_a_server_with_a_warning() {
        let config = Config::parse(
            "max_parallel_inference = 3\n[onnx]\nintra_op_threads = 2\n",
            env(&[]),
        )
        .unwrap();
        let (settings, warnings) = config.inference();
        assert_eq!((settings.runs, settings.threads), (3, 2));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("[inference] runs"), "{warnings:?}");
        // The new keys win where both are set.
        let config = Config::parse(
            "max_parallel_inference = 3\n[inference]\nruns = 5\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(config.inference().0.runs, 5);
        assert!(Config::default().inference().1.is_empty());
    }

    #[test]
    fn batching_and_the_model_budget_come_from_the_environment_too() {
        let config = Config::parse(
            "",
            env(&[
                ("CORRAL_BATCHING_MAX_BATCH_SIZE", "1"),
                ("CORRAL_MODELS_MEMORY_BYTES", "1048576"),
            ]),
        )
        .unwrap();
        assert_eq!(config.batching.max_batch_size, 1);
        assert_eq!(config.models.memory_bytes, 1 << 20);
        assert!(Config::parse("[batching]\nmax_batch_size = 0\n", env(&[])).is_err());
    }

    #[test]
    fn the_cluster_database_comes_from_the_environment_and_its_password_is_never_shown() {
        let config = Config::parse(
            "",
            env(&[(
                "CORRAL_CLUSTER_DATABASE_URL",
                "postgres://corral:s3cret@db:5432/corral?sslmode=disable&password=again",
            )]),
        )
        .unwrap();
        assert_eq!(
            config.cluster.database_url,
            "postgres://corral:s3cret@db:5432/corral?sslmode=disable&password=again"
        );
        let shown = config.to_toml();
        assert!(
            !shown.contains("s3cret") && !shown.contains("again"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://corral:(not shown)@db:5432/corral"),
            "{shown}"
        );
        for (url, redacted) in [
            ("postgres://db/corral", "postgres://db/corral"),
            ("postgres://me@db/corral", "postgres://me@db/corral"),
            (
                "postgres://me:p%40ss@db/x",
                "postgres://me:(not shown)@db/x",
            ),
            (
                "host=db user=me password='a b' dbname=x",
                "host=db user=me password=(not shown) dbname=x",
            ),
            ("host=db password=pw", "host=db password=(not shown)"),
            ("host=db nopassword=1", "host=db nopassword=1"),
            ("", ""),
        ] {
            assert_eq!(ClusterSettings::redact(url), redacted, "{url}");
        }
        let err = Config::parse("[cluster]\nblob_url = \"https://s3.example/b\"\n", env(&[]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("s3://bucket"), "{err:#}");
        assert!(Config::parse("[cluster]\ncache_bytes = 0\n", env(&[])).is_err());
        let config = Config::parse("", env(&[("CORRAL_CLUSTER_BLOB_URL", "s3://b/p")])).unwrap();
        assert_eq!(config.cluster.blob_url, "s3://b/p");
    }

    #[test]
    fn no_file_at_all_is_the_default_configuration() {
        assert_eq!(Config::parse("", env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line() {
        let err =
            Config::parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n", env(&[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("listen_port") && text.contains("line 2"),
            "{text}"
        );
        let err = Config::parse("admin_listen = \"nowhere\"\n", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("admin_listen"), "{err:#}");
        assert!(Config::parse("max_upload_bytes = 0", env(&[])).is_err());
        let err = Config::parse("[limits]\ncpu_ms = 0\n", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("cpu_ms"), "{err:#}");
        let err = Config::parse("[limits]\ncpu_msec = 5\n", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("cpu_msec"), "{err:#}");
        let err = Config::parse("[http]\nmax_header_bytes = 100\n", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("at least 8192"), "{err:#}");
        let err = Config::parse("[http]\nread_buffer_bytes = 8192\n", env(&[])).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("read_buffer_bytes (8192) must be at least max_header_bytes (16384)"),
            "{err:#}"
        );
        let err = Config::parse("[tls]\ncert_file = \"a.pem\"\n", env(&[])).unwrap_err();
        assert!(
            format!("{err:#}").contains("set both or neither"),
            "{err:#}"
        );
        let err =
            Config::parse("plain_http = false\n[tls]\nenabled = false\n", env(&[])).unwrap_err();
        assert!(
            format!("{err:#}").contains("nothing would serve"),
            "{err:#}"
        );
        let err = Config::parse("[onnx]\nexecution_providers = [\"tpu\"]\n", env(&[])).unwrap_err();
        assert!(
            format!("{err:#}").contains("'tpu' is not one Corral has"),
            "{err:#}"
        );
    }

    #[test]
    fn devices_are_cpu_and_cuda_ordinals_each_listed_once() {
        let config = Config::parse("", env(&[])).unwrap();
        assert_eq!(config.devices().unwrap(), vec![DeviceName::Cpu]);
        let config = Config::parse(
            "[inference]\ndevices = [\"cuda:1\", \"cuda:0\", \"cpu\"]\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(
            config.devices().unwrap(),
            vec![DeviceName::Cuda(1), DeviceName::Cuda(0), DeviceName::Cpu]
        );
        let config =
            Config::parse("", env(&[("CORRAL_INFERENCE_DEVICES", "[\"cuda:0\"]")])).unwrap();
        assert_eq!(config.devices().unwrap(), vec![DeviceName::Cuda(0)]);
        for (devices, expected) in [
            ("[]", "devices is empty"),
            ("[\"gpu0\"]", "'gpu0' is not a device"),
            ("[\"cuda\"]", "'cuda' is not a device"),
            ("[\"cuda:\"]", "'cuda:' is not a device"),
            ("[\"cuda:-1\"]", "'cuda:-1' is not a device"),
            ("[\"cuda:+1\"]", "'cuda:+1' is not a device"),
            ("[\"CPU\"]", "'CPU' is not a device"),
            ("[\"cuda:64\"]", "past the last one"),
            ("[\"cuda:99999999999999\"]", "is not a device"),
            (
                "[\"cuda:0\", \"cpu\", \"cuda:0\"]",
                "'cuda:0' is listed twice",
            ),
        ] {
            let err = Config::parse(&format!("[inference]\ndevices = {devices}\n"), env(&[]))
                .unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{devices}: {err:#}");
        }
    }

    #[test]
    fn execution_providers_is_read_as_devices_with_a_warning() {
        let config = Config::parse(
            "[onnx]\nexecution_providers = [\"cuda\", \"cpu\"]\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(
            config.devices().unwrap(),
            vec![DeviceName::Cuda(0), DeviceName::Cpu]
        );
        let (_, warnings) = config.inference();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("execution_providers is deprecated")),
            "{warnings:?}"
        );
        // The alias is read only while [inference] devices is left at its default.
        let config = Config::parse(
            "[onnx]\nexecution_providers = [\"cuda\"]\n[inference]\ndevices = [\"cuda:1\"]\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(config.devices().unwrap(), vec![DeviceName::Cuda(1)]);
        let (_, warnings) = Config::parse("", env(&[])).unwrap().inference();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let file = "listen = \"127.0.0.1:1000\"\n[limits]\ncpu_ms = 50\n";
        let config = Config::parse(
            file,
            env(&[
                ("CORRAL_LISTEN", "0.0.0.0:8000"),
                ("CORRAL_LIMITS_TIMEOUT_MS", "900"),
                ("CORRAL_ENGINE_INSTANCES", "8"),
                ("CORRAL_ONNX_INTRA_OP_SPINNING", "true"),
                ("CORRAL_TOKEN", "not a configuration key"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8000");
        assert_eq!((config.limits.cpu_ms, config.limits.timeout_ms), (50, 900));
        assert_eq!(config.engine.instances, 8);
        assert!(config.onnx.intra_op_spinning);
        let strings = Config::parse(
            "",
            env(&[
                ("CORRAL_ADMIN_TOKEN", "1234567890123456789"),
                ("CORRAL_DATA_DIR", "2024"),
                ("CORRAL_LISTEN", ""),
            ]),
        )
        .unwrap();
        assert_eq!(strings.admin_token.as_deref(), Some("1234567890123456789"));
        assert_eq!(strings.data_dir, PathBuf::from("2024"));
        assert_eq!(
            strings.listen,
            Config::default().listen,
            "an empty variable is unset"
        );
        assert!(
            !strings.to_toml().contains("1234567890"),
            "the token is not printed"
        );
        let err = Config::parse("", env(&[("CORRAL_LIMITS_CPU_MS", "lots")])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("cpu_ms") && text.contains("CORRAL_LIMITS_CPU_MS"),
            "{text}"
        );
    }
    /// Secrets may come from files (`CORRAL_..._FILE`, as Kubernetes and Docker mount them),
    /// never from both a file and the variable.
    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("corral-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "secret-token-from-a-file-0123\n").unwrap();
        let file = |k: &str| (k.to_owned(), token.display().to_string());
        let config = Config::parse("", [file("CORRAL_ADMIN_TOKEN_FILE")]).unwrap();
        assert_eq!(
            config.admin_token.as_deref(),
            Some("secret-token-from-a-file-0123")
        );
        let config = Config::parse("", [file("CORRAL_CLUSTER_DATABASE_URL_FILE")]).unwrap();
        assert_eq!(config.cluster.database_url, "secret-token-from-a-file-0123");
        let both = Config::parse(
            "",
            [
                file("CORRAL_ADMIN_TOKEN_FILE"),
                ("CORRAL_ADMIN_TOKEN".into(), "x".repeat(20)),
            ],
        )
        .unwrap_err();
        assert!(format!("{both:#}").contains("both set"), "{both:#}");
        let missing = dir.join("absent");
        let err = Config::parse(
            "",
            [(
                "CORRAL_ADMIN_TOKEN_FILE".into(),
                missing.display().to_string(),
            )],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("CORRAL_ADMIN_TOKEN_FILE")
                && format!("{err:#}").contains("absent"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn profiling_is_none_or_perfmap_and_anything_else_is_named() {
        let env = |v: &str| vec![("CORRAL_ENGINE_PROFILING".to_owned(), v.to_owned())];
        assert_eq!(Config::parse("", vec![]).unwrap().engine.profiling, "none");
        let config = Config::parse("", env("perfmap")).unwrap();
        assert_eq!(config.engine.profiling, "perfmap");
        let err = Config::parse("[engine]\nprofiling = \"jitdump\"\n", vec![]).unwrap_err();
        assert!(
            format!("{err:#}").contains("engine.profiling must be"),
            "{err:#}"
        );
    }

    #[test]
    fn every_key_has_an_environment_variable() {
        let keys = env_keys();
        for expected in [
            "CORRAL_DATA_DIR",
            "CORRAL_ADMIN_TOKEN",
            "CORRAL_ENGINE_STACK_BYTES",
            "CORRAL_LIMITS_LOG_BYTES_PER_MINUTE",
            "CORRAL_ONNX_EXECUTION_PROVIDERS",
            "CORRAL_PLAIN_HTTP",
            "CORRAL_TLS_LISTEN",
            "CORRAL_TLS_CERT_FILE",
            "CORRAL_HTTP_IDLE_TIMEOUT_MS",
        ] {
            assert!(keys.iter().any(|(_, v)| v == expected), "{expected}");
        }
    }
}
