//! Tenants' own TLS certificates: installed, removed, restored at start, and served by host
//! name.

use std::sync::Arc;

use super::{Refusal, Tenancy, blocking};
use crate::error::ErrorCode;
use crate::store::Records;
use crate::store::records::CertificateRecord;
use crate::tls::CertificateSource;
use crate::tls::certs::{self, CertInfo, Certificate};

impl CertificateSource for Tenancy {
    /// The certificate of the tenant serving `host` (already normalized), if it has one.
    fn certificate_for_host(&self, host: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let tenant = self.tenant_of_host(host)?;
        let entry = self.tenants.get(&*tenant)?;
        let certificate = entry.certificate.load();
        certificate.as_ref().map(|c| Arc::clone(&c.key))
    }

    fn serves_host(&self, host: &str) -> bool {
        self.tenant_of_host(host).is_some()
    }
}

impl Tenancy {
    /// What the tenant's certificate is, if it has one.
    pub fn certificate(&self, name: &str) -> Result<Option<CertInfo>, Refusal> {
        let tenant = self.tenant(name)?;
        let certificate = tenant.certificate.load();
        Ok(certificate.as_ref().map(|c| c.info.clone()))
    }

    /// Installs the tenant's certificate (PEM chain, leaf first, and its PEM key) after checking
    /// that the key matches, the certificate is valid now and it covers every host name of
    /// the tenant. New TLS connections use it at once; the one it replaces stays in use by
    /// connections already open.
    pub async fn put_certificate(
        &self,
        name: &str,
        cert: String,
        key: String,
    ) -> Result<CertInfo, Refusal> {
        let _changes = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        let invalid = |message: String| Refusal::new(ErrorCode::InvalidCertificate, message);
        let parsed = certs::parse(&cert, &key).map_err(invalid)?;
        let hosts = tenant.record.load().hosts.clone();
        let now = i64::try_from(crate::clock::now()).unwrap_or(i64::MAX);
        certs::check_usable(&parsed, &hosts, now).map_err(invalid)?;
        let stored = CertificateRecord {
            cert,
            key,
            uploaded: crate::clock::now(),
        };
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        blocking(move || {
            Ok(platform
                .store
                .records
                .put_certificate(&store_name, &stored)?)
        })
        .await?;
        let info = parsed.info.clone();
        tenant.certificate.store(Some(Arc::new(parsed)));
        tracing::info!(tenant = %name, names = ?info.names, not_after = %crate::clock::format_time(info.not_after), "certificate installed");
        Ok(info)
    }

    /// Removes the tenant's certificate; its host names get the default certificate again.
    pub async fn delete_certificate(&self, name: &str) -> Result<(), Refusal> {
        let _changes = self.changes.lock().await;
        let tenant = self.tenant(name)?;
        if tenant.certificate.load().is_none() {
            return Err(Refusal::not_found(format!(
                "tenant '{name}' has no certificate"
            )));
        }
        let platform = Arc::clone(&self.platform);
        let store_name = name.to_owned();
        blocking(move || Ok(platform.store.records.remove_certificate(&store_name)?)).await?;
        tenant.certificate.store(None);
        tracing::info!(tenant = %name, "certificate removed");
        Ok(())
    }
}

/// The certificate stored for a tenant, if it still parses. An expired one is still served
/// (and logged): the tenant or operator replaces it.
pub(super) fn restore_certificate(records: &dyn Records, tenant: &str) -> Option<Certificate> {
    let stored = match records.certificate(tenant) {
        Ok(stored) => stored?,
        Err(e) => {
            tracing::error!(tenant = %tenant, error = ?e, "cannot read the tenant's certificate; it gets the default one");
            return None;
        }
    };
    match certs::parse(&stored.cert, &stored.key) {
        Ok(certificate) => {
            let now = i64::try_from(crate::clock::now()).unwrap_or(i64::MAX);
            if certificate.info.not_after < now {
                tracing::warn!(tenant = %tenant, not_after = %crate::clock::format_time(certificate.info.not_after), "the tenant's certificate has expired");
            }
            Some(certificate)
        }
        Err(message) => {
            tracing::error!(tenant = %tenant, error = %message, "the stored certificate does not parse; the tenant gets the default one");
            None
        }
    }
}
