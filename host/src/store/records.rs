//! What the store keeps about tenants and their deployments (kept as JSON by
//! [`DirRecords`](super::DirRecords)), and the rules for the names records are keyed by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Digest;
use crate::backends::models::ModelFormat;
use crate::limits::LimitOverrides;

/// A tenant as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    pub name: String,
    pub hosts: Vec<String>,
    /// sha256 of the tenant's token; the token itself is shown once and never stored.
    pub token_sha256: Digest,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The version requests are served by, if any.
    pub active: Option<u32>,
    /// The operator's overrides of the default limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitOverrides,
    /// Hosts the tenant's components may send HTTP requests to (normalized; any port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing_hosts: Vec<String>,
    /// The operator trusts this tenant's models to run as code (TorchScript).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted_models: bool,
}

fn is_default(overrides: &LimitOverrides) -> bool {
    *overrides == LimitOverrides::default()
}

/// One deployment of a tenant, as stored: everything pinned by content digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRecord {
    pub version: u32,
    pub component: Digest,
    pub models: BTreeMap<String, ModelRef>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The upload's optional `config` part.
    #[serde(default, skip_serializing_if = "DeploymentConfig::is_empty")]
    pub config: DeploymentConfig,
}

/// A deployment's own settings: the upload's optional `config` part, JSON.
///
/// ```json
/// {"batching": {"max_batch_size": 8, "max_delay_us": 2000},
///  "models": {"classifier": {"batch_axis": 0}},
///  "component": {"labels": ["cat", "dog"]}}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Overrides of the server's `[batching]` for this deployment's runs.
    #[serde(default, skip_serializing_if = "BatchingOverride::is_empty")]
    pub batching: BatchingOverride,
    /// Per model (by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelConfig>,
    /// The component's own settings, any JSON (labels, preprocessing, ...): Corral keeps
    /// them and hands them to the component (`corral:service/models.config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<serde_json::Value>,
}

/// `[batching]` for one deployment; unset keys keep the server's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingOverride {
    /// Most rows in one of this deployment's batches (1: never batch its jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u32>,
    /// Longest one of its jobs waits for company, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_us: Option<u64>,
}

impl BatchingOverride {
    fn is_empty(&self) -> bool {
        self.max_batch_size.is_none() && self.max_delay_us.is_none()
    }
}

/// One model's settings in a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The axis requests are stacked on, for a TorchScript model (whose file declares no
    /// shapes); only the leading axis, 0. ONNX models declare theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_axis: Option<u32>,
}

/// Largest `config` part accepted (room for a component's labels inline).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Longest batching delay a deployment may ask for, in microseconds.
pub const MAX_DELAY_US: u64 = 1_000_000;

impl DeploymentConfig {
    pub fn is_empty(&self) -> bool {
        self.batching.is_empty() && self.models.is_empty() && self.component.is_none()
    }

    /// Parses a `config` part and checks it against the deployment's models. Errors name the
    /// field at fault.
    pub fn parse(bytes: &[u8], models: &BTreeMap<String, ModelRef>) -> Result<Self, String> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "the 'config' part is larger than {MAX_CONFIG_BYTES} bytes"
            ));
        }
        let config: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("the 'config' part is not a valid deployment config: {e}"))?;
        if let Some(size) = config.batching.max_batch_size
            && size == 0
        {
            return Err("config.batching.max_batch_size must be at least 1".into());
        }
        if config
            .batching
            .max_delay_us
            .is_some_and(|d| d > MAX_DELAY_US)
        {
            return Err(format!(
                "config.batching.max_delay_us must be at most {MAX_DELAY_US}"
            ));
        }
        for (name, model) in &config.models {
            let Some(stored) = models.get(name) else {
                return Err(format!(
                    "config.models names '{}', which is not a model of this deployment",
                    name.escape_debug()
                ));
            };
            match model.batch_axis {
                None => {}
                Some(_) if stored.format == ModelFormat::Onnx => {
                    return Err(format!(
                        "config.models.{name}.batch_axis: an ONNX model declares its own batch \
                         axis (a dynamic leading dimension on every input and output)"
                    ));
                }
                Some(0) => {}
                Some(axis) => {
                    return Err(format!(
                        "config.models.{name}.batch_axis is {axis}: only the leading axis, 0, \
                         can batch"
                    ));
                }
            }
        }
        Ok(config)
    }
}

impl DeploymentRecord {
    /// Every blob the deployment refers to (a digest once per reference).
    pub fn blobs(&self) -> Vec<Digest> {
        std::iter::once(self.component)
            .chain(self.models.values().map(|m| m.digest))
            .collect()
    }
}

/// A model of a deployment: its bytes and how to load them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub digest: Digest,
    pub format: ModelFormat,
}

/// A tenant's TLS certificate as uploaded (the file is readable by Corral's user only).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRecord {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Seconds since the Unix epoch.
    pub uploaded: u64,
}

/// Tenant names are DNS-label-like: `[a-z0-9-]{1,63}`.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid tenant name: use 1 to 63 characters from a-z, 0-9 and '-'",
            name.escape_debug()
        ))
    }
}

/// Model names are what guests pass to `load-by-name`: `[A-Za-z0-9_.-]{1,128}`.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let valid = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid model name: use 1 to 128 characters from A-Z, a-z, 0-9, '-', '_' and '.'",
            name.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_follow_dns_labels() {
        for good in ["acme", "a", "team-42", &"x".repeat(63)] {
            assert!(check_tenant_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "a_b", "a.b", "../x", &"x".repeat(64), "é"] {
            assert!(check_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
