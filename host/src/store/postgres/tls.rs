//! TLS to PostgreSQL: rustls with ring (as everywhere in Corral) through `postgres_rustls`.
//!
//! The URL's `sslmode` decides, as libpq's does: `disable` never uses TLS, `prefer` (the
//! default) uses it when the server offers it, `require` refuses a server without it. Unlike
//! libpq's `prefer` and `require`, a certificate is always verified, against
//! `[cluster] database_ca_file` when it is set and the system's certificate bundle otherwise,
//! and must name the host the URL connects to: TLS that anyone in the middle could answer is
//! not offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use postgres_rustls::MakeTlsConnector;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where Debian, Ubuntu, Alpine (and Fedora, through its compatibility link) keep the
/// system's trusted certificates.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The connector every connection to the database uses: trusting `ca_file`'s certificates,
/// or the system's when `None`.
pub(super) fn connector(ca_file: Option<&Path>) -> anyhow::Result<MakeTlsConnector> {
    let mut roots = RootCertStore::empty();
    let bundle = match ca_file {
        Some(path) => Some(path.to_path_buf()),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file()),
    };
    if let Some(path) = &bundle {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read certificates from {}", path.display()))?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 && ca_file.is_some() {
            anyhow::bail!(
                "[cluster] database_ca_file {} holds no certificate",
                path.display()
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot configure TLS to the database")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    postgres_rustls::set_postgresql_alpn(&mut config);
    Ok(MakeTlsConnector::new(tokio_rustls::TlsConnector::from(
        Arc::new(config),
    )))
}
