//! The local development CA: created once in the data directory (`ca.pem`, `ca-key.pem`), it
//! signs a certificate for any tenant host name that has none of its own, so
//! `curl --cacert corral-data/ca.pem https://acme.localhost:8443/` works out of the box.
//!
//! Only a client that was told to trust `ca.pem` trusts these certificates; production
//! deployments give tenants their own certificates or configure a default one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certs::provider;

pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// How long an issued certificate is valid (they are issued afresh by every process).
const LEAF_DAYS: i64 = 90;

/// The CA that signs development certificates.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    path: PathBuf,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("path", &self.path).finish()
    }
}

/// The CA's own fields; a reopened CA signs with the same name and key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Corral");
    name.push(DnType::CommonName, "Corral local development CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl LocalCa {
    /// Opens the CA in `data_dir`, creating it on first start (the key file mode 0600).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(CA_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(key_pem) => KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a PEM private key", key_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().context("cannot generate the CA key")?;
                write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_path.display())),
        };
        // The certificate follows from the key: after a crash between the two writes it is
        // made again, so there is only ever one CA per data directory.
        let cert_pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = ca_params()
                    .self_signed(&key)
                    .context("cannot create the CA certificate")?;
                write_new(&path, cert.pem().as_bytes(), 0o644)?;
                tracing::info!(path = %path.display(), "created the local development CA");
                cert.pem()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            cert,
            path,
        })
    }

    /// Where the CA certificate is (what clients are told to trust).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new certificate for `name` (a DNS name or an IP address), signed by this CA.
    pub fn issue(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .with_context(|| format!("'{name}' cannot be put in a certificate"))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign a certificate for '{name}'"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = vec![cert.der().clone(), self.cert.clone()];
        let certified = CertifiedKey::from_der(chain, key_der, &provider())
            .with_context(|| format!("cannot use the certificate issued for '{name}'"))?;
        Ok(Arc::new(certified))
    }
}

/// Writes `path` with `mode` atomically (temporary file, fsync, rename, directory fsync).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let temp = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}
