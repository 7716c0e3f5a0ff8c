//! Certificates as operators and tenants hand them in: a PEM chain (leaf first) and a PEM
//! private key, turned into what rustls serves, or refused with a message naming the problem.

use std::sync::{Arc, OnceLock};

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use x509_parser::extensions::GeneralName;

use crate::clock::format_time;
use crate::digest::Digest;

/// The crypto provider every TLS object of the process uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// What Corral shows about a certificate (never the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The DNS names and IP addresses the leaf certificate covers (`*.example.com` included).
    pub names: Vec<String>,
    /// Start of validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The leaf's issuer, as text.
    pub issuer: String,
    /// sha256 of the leaf certificate (DER).
    pub sha256: String,
}

/// A parsed certificate chain with its matching key.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The chain and key as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// What the chain's leaf says, as the admin API reports it.
    pub info: CertInfo,
}

/// Parses `chain_pem` (one or more certificates, the leaf first) and `key_pem` (PKCS#8,
/// PKCS#1 or SEC1), and checks that the key is the leaf's.
pub fn parse(chain_pem: &str, key_pem: &str) -> Result<Certificate, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("'cert' is not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("'cert' holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    };
    for (n, der) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} of 'cert' does not parse: {e}", n + 1))?;
    }
    let info = info(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("'key' is not a PEM private key: {e}"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("'key' cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| "'key' is not the private key of the certificate in 'cert'".to_owned())?;
    Ok(Certificate {
        key: Arc::new(certified),
        info,
    })
}

fn info(leaf: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        names.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        names.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        sha256: Digest::of(leaf).to_string(),
    })
}

/// Refuses a certificate that is not valid at `now` (seconds since the Unix epoch) or that a
/// client would not accept for every one of `hosts` (rustls's own name check: exact names, and
/// wildcards for one label under a parent of two labels or more).
pub fn check_usable(certificate: &Certificate, hosts: &[String], now: i64) -> Result<(), String> {
    let info = &certificate.info;
    if info.not_after < now {
        return Err(format!(
            "the certificate expired on {}",
            format_time(info.not_after)
        ));
    }
    if info.not_before > now {
        return Err(format!(
            "the certificate is not valid before {}",
            format_time(info.not_before)
        ));
    }
    check_covers(certificate, hosts)
}

/// Checks that `certificate` covers every name in `hosts`.
pub fn check_covers(certificate: &Certificate, hosts: &[String]) -> Result<(), String> {
    let info = &certificate.info;
    let leaf = certificate
        .key
        .end_entity_cert()
        .map_err(|e| format!("the chain has no certificate: {e}"))?;
    let parsed = ParsedCertificate::try_from(leaf)
        .map_err(|e| format!("the certificate cannot be used for TLS: {e}"))?;
    let uncovered: Vec<&str> = hosts
        .iter()
        .filter(|host| {
            ServerName::try_from(host.as_str())
                .map_or(true, |name| verify_server_name(&parsed, &name).is_err())
        })
        .map(String::as_str)
        .collect();
    if !uncovered.is_empty() {
        return Err(format!(
            "the certificate does not cover {} (its names: {})",
            uncovered.join(", "),
            if info.names.is_empty() {
                "none".to_owned()
            } else {
                info.names.join(", ")
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        parse(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_are_covered_as_clients_check_them() {
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let cert = certificate(&["*.example.com", "api.test"]);
        assert_eq!(cert.info.names, ["*.example.com", "api.test"]);
        assert!(check_usable(&cert, &hosts(&["a.example.com", "api.test"]), now).is_ok());
        for uncovered in ["example.com", "a.b.example.com", "www.api.test"] {
            let err = check_usable(&cert, &hosts(&[uncovered]), now).unwrap_err();
            assert!(
                err.contains(&format!("does not cover {uncovered} ")),
                "{err}"
            );
        }
        // Clients refuse a wildcard directly under a single label.
        let cert = certificate(&["*.localhost"]);
        assert!(check_usable(&cert, &hosts(&["acme.localhost"]), now).is_err());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let err = parse(&cert.pem(), &other.serialize_pem()).unwrap_err();
        assert!(err.contains("is not the private key"), "{err}");
    }
}
