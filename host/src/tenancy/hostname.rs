//! Host names as tenants declare them: the names requests are routed by and the hosts their
//! components may call. One normalization ([`normalize_host`]) serves both, and the TLS
//! certificate lookup and outgoing-HTTP check compare against its output.

pub use corral_parsers::hostname::normalize_host;

use super::Refusal;
use crate::error::ErrorCode;

/// Normalized, de-duplicated host names; `code` names the field when one is invalid.
pub(super) fn normalize_hosts(hosts: &[String], code: ErrorCode) -> Result<Vec<String>, Refusal> {
    let mut normalized = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = normalize_host(host).ok_or_else(|| {
            Refusal::new(
                code,
                format!("'{}' is not a valid host name", host.escape_debug()),
            )
        })?;
        if !normalized.contains(&host) {
            normalized.push(host);
        }
    }
    Ok(normalized)
}

/// Outgoing-HTTP entries: `host` (any port) or `host:port`, normalized.
pub(super) fn normalize_outgoing(entries: &[String]) -> Result<Vec<String>, Refusal> {
    let mut normalized = Vec::with_capacity(entries.len());
    for entry in entries {
        let invalid = || {
            Refusal::new(
                ErrorCode::InvalidOutgoingHost,
                format!("'{}' is not a host name or host:port", entry.escape_debug()),
            )
        };
        let port = match entry.rsplit_once(':') {
            Some((_, port)) => Some(port.parse::<u16>().map_err(|_| invalid())?),
            None => None,
        };
        let host = normalize_host(entry).ok_or_else(invalid)?;
        let value = match port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        if !normalized.contains(&value) {
            normalized.push(value);
        }
    }
    Ok(normalized)
}
