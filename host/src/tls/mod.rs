//! HTTPS for the data plane: rustls, ALPN `h2` and `http/1.1`, and the certificate for each
//! connection chosen by the name the client asks for (SNI):
//!
//! 1. the certificate of the tenant serving that name (`PUT /v1/tenants/{t}/certificate`);
//! 2. else the operator's default certificate (`[tls] cert_file`/`key_file`, e.g. a wildcard);
//! 3. else, with `[tls] local_ca` on, one for that name signed by the local development CA
//!    (`<data_dir>/ca.pem`). Only tenants' host names (and `localhost`) are signed for, so a
//!    client cannot make Corral mint certificates for names of its choosing.
//!
//! A connection without SNI gets the default certificate (or the local CA's `localhost` one)
//! and is routed by its Host header alone.

pub mod ca;
pub use corral_parsers::certs;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dashmap::DashMap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsSettings;
use ca::LocalCa;
use corral_parsers::hostname::normalize_host;

/// Where the certificates of the names Corral serves come from (the tenants): what TLS needs
/// of them, and nothing more.
pub trait CertificateSource: Send + Sync + std::fmt::Debug {
    /// The certificate of whoever serves `host` (normalized), if they have their own.
    fn certificate_for_host(&self, host: &str) -> Option<Arc<CertifiedKey>>;
    /// Whether anyone serves `host` (normalized): only such names get a local-CA certificate.
    fn serves_host(&self, host: &str) -> bool;
}

/// Picks the certificate for each TLS handshake.
#[derive(Debug)]
pub struct CertResolver {
    source: Arc<dyn CertificateSource>,
    default: Option<Arc<CertifiedKey>>,
    local_ca: Option<LocalCa>,
    /// Certificates the local CA issued in this process, by name (bounded by the tenants'
    /// host names).
    issued: DashMap<String, Arc<CertifiedKey>>,
}

impl CertResolver {
    /// The resolver for `settings`: loads the default certificate (refusing one that does not
    /// parse or whose key does not match, naming the file) and opens the local CA in
    /// `data_dir` if it is enabled.
    pub fn new(
        settings: &TlsSettings,
        data_dir: &Path,
        source: Arc<dyn CertificateSource>,
    ) -> anyhow::Result<Self> {
        let default = if settings.cert_file.as_os_str().is_empty() {
            None
        } else {
            Some(load_default(&settings.cert_file, &settings.key_file)?)
        };
        let local_ca = if settings.local_ca {
            Some(LocalCa::open(data_dir)?)
        } else {
            None
        };
        if default.is_none() && local_ca.is_none() {
            tracing::warn!(
                "HTTPS has no default certificate and the local CA is off: only names with a tenant certificate can connect"
            );
        }
        Ok(Self {
            source,
            default,
            local_ca,
            issued: DashMap::new(),
        })
    }

    /// Where the local CA's certificate is, if the local CA is on.
    pub fn local_ca_path(&self) -> Option<&Path> {
        self.local_ca.as_ref().map(LocalCa::path)
    }

    /// The certificate for a handshake that asked for `server_name`.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name.and_then(normalize_host);
        if let Some(name) = &name
            && let Some(key) = self.source.certificate_for_host(name)
        {
            return Some(key);
        }
        if let Some(default) = &self.default {
            return Some(Arc::clone(default));
        }
        let ca = self.local_ca.as_ref()?;
        let name = match name {
            Some(name) if self.source.serves_host(&name) => name,
            _ => "localhost".to_owned(),
        };
        if let Some(key) = self.issued.get(&name) {
            return Some(Arc::clone(key.value()));
        }
        match ca.issue(&name) {
            Ok(key) => {
                self.issued.insert(name, Arc::clone(&key));
                Some(key)
            }
            Err(e) => {
                tracing::error!(name = %name, error = ?e, "the local CA cannot issue a certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate_for(hello.server_name())
    }
}

/// The operator's default certificate from its files.
fn load_default(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert = std::fs::read_to_string(cert_file)
        .with_context(|| format!("[tls] cert_file: cannot read {}", cert_file.display()))?;
    let key = std::fs::read_to_string(key_file)
        .with_context(|| format!("[tls] key_file: cannot read {}", key_file.display()))?;
    let parsed = certs::parse(&cert, &key).map_err(|message| {
        anyhow::anyhow!(
            "[tls] cert_file {} / key_file {}: {message}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    let now = i64::try_from(crate::clock::now()).unwrap_or(i64::MAX);
    if parsed.info.not_after < now {
        tracing::warn!(file = %cert_file.display(), not_after = %crate::clock::format_time(parsed.info.not_after), "the default certificate has expired");
    }
    Ok(parsed.key)
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
