//! `corral serve`'s configuration file (TOML). Every key is optional: no file at all gives a
//! working server on loopback. Unknown keys are refused, naming the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::engine::EngineSettings;
use crate::limits::Limits;

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (tenants, deployments, blobs, compiled-component cache).
    pub data_dir: Option<PathBuf>,
    /// Data-plane HTTP listener.
    pub listen: Option<SocketAddr>,
    /// Admin API listener (keep it private: it serves /metrics without a token).
    pub admin_listen: Option<SocketAddr>,
    /// Operator token (`CORRAL_ADMIN_TOKEN` overrides it).
    pub admin_token: Option<String>,
    /// Largest deployment upload, in bytes.
    pub max_upload_bytes: Option<u64>,
    /// Model runs that may execute at once, across all tenants and models.
    pub max_parallel_inference: Option<usize>,
    /// Seconds validating an upload (compiling, loading models) may take.
    pub deploy_timeout_secs: Option<u64>,
    /// The engine's instance pool (`[engine]`).
    #[serde(default)]
    pub engine: EngineSettings,
    /// Default per-tenant limits (`[limits]`); tenants may be given their own.
    #[serde(default)]
    pub limits: Limits,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if config.max_upload_bytes == Some(0) {
            anyhow::bail!("max_upload_bytes must be at least 1");
        }
        if config.deploy_timeout_secs == Some(0) {
            anyhow::bail!("deploy_timeout_secs must be at least 1");
        }
        if config.max_parallel_inference == Some(0) {
            anyhow::bail!("max_parallel_inference must be at least 1");
        }
        config.engine.check().map_err(anyhow::Error::msg)?;
        config
            .limits
            .check()
            .map_err(|m| anyhow::anyhow!("[limits]: {m}"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_a_valid_configuration() {
        let config = Config::parse("").unwrap();
        assert!(config.listen.is_none() && config.data_dir.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line() {
        let err = Config::parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("listen_port") && text.contains("line 2"),
            "{text}"
        );
        let err = Config::parse("admin_listen = \"nowhere\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("admin_listen"), "{err:#}");
        assert!(Config::parse("max_upload_bytes = 0").is_err());
        let err = Config::parse("[limits]\ncpu_ms = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("cpu_ms"), "{err:#}");
        let err = Config::parse("[limits]\ncpu_msec = 5\n").unwrap_err();
        assert!(format!("{err:#}").contains("cpu_msec"), "{err:#}");
        let config = Config::parse("[engine]\ninstances = 8\n[limits]\ncpu_ms = 50\n").unwrap();
        assert_eq!((config.engine.instances, config.limits.cpu_ms), (8, 50));
    }
}
