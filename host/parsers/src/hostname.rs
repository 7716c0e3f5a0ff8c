//! Host names as routing compares them, and the decision that picks the name a request is
//! routed by from its Host (or authority) and its connection's SNI.

/// Normalizes a host name as routing compares it: lower case, no port, no trailing dot.
/// `None` when it is not a plausible DNS name.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then_some(host)
}

/// Whether two spellings of a host name name the same host, as routing compares them.
pub fn same_host(a: &str, b: &str) -> bool {
    match (normalize_host(a), normalize_host(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Why a request cannot be routed by its names.
#[derive(Debug, PartialEq, Eq)]
pub enum Unroutable<T> {
    /// The request named no host, or not a plausible one.
    BadHost,
    /// The connection's TLS handshake named one tenant's host and the request another's
    /// (`421`): the client picked the certificate, and so the trust, for the first.
    Misdirected {
        /// The server name the TLS handshake asked for.
        sni: String,
        /// The request's host name.
        host: String,
        /// The tenant serving `host`, if any.
        host_tenant: Option<T>,
    },
}

/// The normalized name a request naming `host` is routed by, on a connection whose handshake
/// named `sni` (if any); `tenant_of` gives the tenant serving a normalized name.
pub fn routed_name<T: PartialEq>(
    host: Option<&str>,
    sni: Option<&str>,
    tenant_of: impl Fn(&str) -> Option<T>,
) -> Result<String, Unroutable<T>> {
    let name = host.and_then(normalize_host).ok_or(Unroutable::BadHost)?;
    if let Some(sni) = sni.and_then(normalize_host)
        && sni != name
    {
        let host_tenant = tenant_of(&name);
        if tenant_of(&sni) != host_tenant {
            return Err(Unroutable::Misdirected {
                sni,
                host: name,
                host_tenant,
            });
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_without_case_port_or_trailing_dot() {
        assert_eq!(
            normalize_host("Acme.Example.com:8443").as_deref(),
            Some("acme.example.com")
        );
        assert_eq!(
            normalize_host("acme.localhost.").as_deref(),
            Some("acme.localhost")
        );
        for bad in [
            "",
            "a..b",
            "a b",
            "a/b",
            "x:",
            &format!("{}.com", "y".repeat(64)),
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
        assert!(same_host("acme.localhost:80", "ACME.localhost."));
        assert!(!same_host("acme.localhost", "other.localhost"));
    }

    #[test]
    fn a_connection_for_one_tenant_carries_no_request_for_another() {
        let tenant_of = |name: &str| match name {
            "a.test" | "www.a.test" => Some("a"),
            "b.test" => Some("b"),
            _ => None,
        };
        assert_eq!(
            routed_name(Some("A.test:443"), Some("a.test"), tenant_of),
            Ok("a.test".to_owned())
        );
        // Two names of one tenant share a connection (one certificate covers both).
        assert_eq!(
            routed_name(Some("www.a.test"), Some("a.test"), tenant_of),
            Ok("www.a.test".to_owned())
        );
        assert_eq!(
            routed_name(Some("b.test"), Some("a.test"), tenant_of),
            Err(Unroutable::Misdirected {
                sni: "a.test".into(),
                host: "b.test".into(),
                host_tenant: Some("b"),
            })
        );
        assert_eq!(
            routed_name(Some("nobody.test"), Some("a.test"), tenant_of),
            Err(Unroutable::Misdirected {
                sni: "a.test".into(),
                host: "nobody.test".into(),
                host_tenant: None,
            })
        );
        assert_eq!(
            routed_name(None, Some("a.test"), tenant_of),
            Err(Unroutable::BadHost)
        );
        assert_eq!(
            routed_name(Some("b.test"), None, tenant_of),
            Ok("b.test".into())
        );
    }
}
