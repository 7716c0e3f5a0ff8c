//! HTTPS on a real `corral serve`: real rustls clients, certificates chosen by SNI, tenant
//! certificates uploaded, rotated and removed without a restart, every refused certificate,
//! `421` when SNI and Host name different tenants, HTTP/2 and HTTP/1.1 by ALPN.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::serve::{Corral, DataDir};
use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA of the test's own, standing in for a public one.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, valid from `from_days` to `to_days` (relative to now): its PEM
    /// chain, its PEM key and its DER.
    fn leaf(&self, names: &[&str], from_days: i64, to_days: i64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.pem),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

struct Leaf {
    chain: String,
    key: String,
    der: CertificateDer<'static>,
}

/// A rustls client trusting `root`, offering `alpn`, sending SNI when `sni`.
fn client(root: &CertificateDer<'static>, alpn: &[&[u8]], sni: bool) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni;
    // Every connection is a full handshake, so it shows the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

fn leaf_of(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// An HTTP connection over TLS, speaking what ALPN chose.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(stream: TlsStream<TcpStream>) -> Self {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            Self::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Self::H1(sender)
        }
    }

    async fn get(&mut self, host: &str, path: &str) -> (StatusCode, Value) {
        let response = match self {
            Self::H1(sender) => {
                let request = Request::get(path)
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                sender.send_request(request).await.unwrap()
            }
            Self::H2(sender) => {
                let request = Request::get(format!("https://{host}{path}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                sender.send_request(request).await.unwrap()
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, value)
    }
}

struct Setup {
    _dir: DataDir,
    corral: Corral,
    tls: SocketAddr,
    local_ca: CertificateDer<'static>,
    acme: String,
}

/// A server with tenants `acme` (acme.localhost) and `beta` (beta.localhost), both serving the
/// probe component.
async fn setup(name: &str) -> Setup {
    let dir = DataDir::new(name);
    let corral = Corral::start(&dir, "");
    let tls = corral.tls.expect("HTTPS is on by default");
    let acme = corral.create_tenant("acme", "acme.localhost").await;
    let beta = corral.create_tenant("beta", "beta.localhost").await;
    for (tenant, token) in [("acme", &acme), ("beta", &beta)] {
        let (status, body) = corral
            .deploy(
                tenant,
                token,
                &guest("nn-probe"),
                &[("add", &fixture("add.onnx"))],
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let ca_pem = std::fs::read(dir.data().join("ca.pem")).expect("the local CA is in the data dir");
    let local_ca = CertificateDer::from_pem_slice(&ca_pem).unwrap();
    Setup {
        _dir: dir,
        corral,
        tls,
        local_ca,
        acme,
    }
}

async fn put_certificate(corral: &Corral, token: &str, leaf: &Leaf) -> (StatusCode, Value) {
    let body = json!({ "cert": leaf.chain, "key": leaf.key }).to_string();
    corral
        .admin(
            "PUT",
            "/v1/tenants/acme/certificate",
            Some(token),
            Some(("application/json".into(), body.into_bytes())),
        )
        .await
}

#[tokio::test]
async fn each_tenant_gets_its_certificate_by_sni_and_uploads_take_effect_without_a_restart() {
    let s = setup("https-sni").await;
    let trust_local = client(&s.local_ca, &[b"h2", b"http/1.1"], true);

    // Development default: the local CA signs a certificate for each tenant's name, and both
    // protocols are served (ALPN picks).
    for (host, alpn) in [
        ("acme.localhost", &b"h2"[..]),
        ("beta.localhost", &b"http/1.1"[..]),
    ] {
        let config = client(&s.local_ca, &[alpn], true);
        let stream = connect(s.tls, host, config).await.expect("handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        assert_eq!(names_of(&leaf_of(&stream)), [host]);
        let (status, body) = Conn::open(stream).await.get(host, "/case/add").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["ok"], true, "{body}");
    }

    // The tenant uploads its own certificate (from another CA): new handshakes use it.
    let ca = TestCa::new("Test CA");
    let first = ca.leaf(&["acme.localhost"], -1, 30);
    let (status, body) = put_certificate(&s.corral, &s.acme, &first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["certificate"]["names"], json!(["acme.localhost"]));
    let trust_test = client(&ca.der, &[b"h2", b"http/1.1"], true);
    let stream = connect(s.tls, "acme.localhost", Arc::clone(&trust_test))
        .await
        .expect("the tenant's certificate is served");
    assert_eq!(leaf_of(&stream), first.der);
    let mut old_connection = Conn::open(stream).await;
    assert_eq!(
        old_connection.get("acme.localhost", "/case/add").await.0,
        StatusCode::OK
    );
    // The other tenant still gets the local CA's.
    let stream = connect(s.tls, "beta.localhost", Arc::clone(&trust_local)).await;
    assert!(stream.is_ok(), "beta keeps its development certificate");
    assert!(
        connect(s.tls, "acme.localhost", Arc::clone(&trust_local))
            .await
            .is_err(),
        "acme no longer presents the local CA's certificate"
    );

    // Rotation: the next handshake gets the new one; an open connection keeps working.
    let second = ca.leaf(&["acme.localhost", "www.acme.localhost"], -1, 60);
    let (status, body) = put_certificate(&s.corral, &s.acme, &second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stream = connect(s.tls, "acme.localhost", Arc::clone(&trust_test))
        .await
        .unwrap();
    assert_eq!(leaf_of(&stream), second.der);
    assert_eq!(
        old_connection.get("acme.localhost", "/case/add").await.0,
        StatusCode::OK
    );
    let (status, body) = s
        .corral
        .admin("GET", "/v1/tenants/acme/certificate", Some(&s.acme), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["certificate"]["names"],
        json!(["acme.localhost", "www.acme.localhost"])
    );
    assert!(
        body["certificate"].get("key").is_none(),
        "the key is never shown"
    );

    // Another tenant's token cannot touch acme's certificate.
    let gamma_token = s.corral.create_tenant("gamma", "gamma.localhost").await;
    let body = json!({ "cert": second.chain, "key": second.key }).to_string();
    let (status, _) = s
        .corral
        .admin(
            "PUT",
            "/v1/tenants/acme/certificate",
            Some(&gamma_token),
            Some(("application/json".into(), body.into_bytes())),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Removal: back to the development certificate, still without a restart.
    let (status, body) = s
        .corral
        .admin(
            "DELETE",
            "/v1/tenants/acme/certificate",
            Some(&s.acme),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stream = connect(s.tls, "acme.localhost", Arc::clone(&trust_local)).await;
    assert!(stream.is_ok(), "the local CA's certificate is back");
    let (status, _) = s
        .corral
        .admin("GET", "/v1/tenants/acme/certificate", Some(&s.acme), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .corral
        .admin(
            "DELETE",
            "/v1/tenants/acme/certificate",
            Some(&s.acme),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_uploaded_certificate_survives_a_restart() {
    let dir = DataDir::new("https-restart");
    let corral = Corral::start(&dir, "");
    let acme = corral.create_tenant("acme", "acme.localhost").await;
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(&["acme.localhost"], -1, 30);
    assert_eq!(
        put_certificate(&corral, &acme, &leaf).await.0,
        StatusCode::OK
    );
    let mode = std::fs::metadata(dir.data().join("tenants/acme/certificate.json"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600, "the stored key is readable by its owner only");
    corral.kill();

    let corral = Corral::start(&dir, "");
    let config = client(&ca.der, &[b"http/1.1"], true);
    let stream = connect(corral.tls.unwrap(), "acme.localhost", config)
        .await
        .expect("the certificate is restored");
    assert_eq!(leaf_of(&stream), leaf.der);
}

#[tokio::test]
async fn every_unusable_certificate_is_refused_with_400_and_the_current_one_stays() {
    let s = setup("https-refused").await;
    let ca = TestCa::new("Test CA");
    let good = ca.leaf(&["acme.localhost"], -1, 30);
    assert_eq!(
        put_certificate(&s.corral, &s.acme, &good).await.0,
        StatusCode::OK
    );

    let other_key = ca.leaf(&["acme.localhost"], -1, 30).key;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "key of another certificate",
            json!({ "cert": good.chain, "key": other_key }),
            "is not the private key of the certificate",
        ),
        (
            "chain that is not PEM",
            json!({ "cert": "hello", "key": good.key }),
            "holds no PEM certificate",
        ),
        (
            "chain that does not parse",
            json!({ "cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "key": good.key }),
            "does not parse",
        ),
        (
            "key that is not PEM",
            json!({ "cert": good.chain, "key": "secret" }),
            "'key' is not a PEM private key",
        ),
        (
            "expired",
            {
                let leaf = ca.leaf(&["acme.localhost"], -30, -1);
                json!({ "cert": leaf.chain, "key": leaf.key })
            },
            "expired on",
        ),
        (
            "not yet valid",
            {
                let leaf = ca.leaf(&["acme.localhost"], 2, 30);
                json!({ "cert": leaf.chain, "key": leaf.key })
            },
            "not valid before",
        ),
        (
            "another name",
            {
                let leaf = ca.leaf(&["other.localhost"], -1, 30);
                json!({ "cert": leaf.chain, "key": leaf.key })
            },
            "does not cover acme.localhost (its names: other.localhost)",
        ),
        (
            "a wildcard one level too deep",
            {
                let leaf = ca.leaf(&["*.acme.localhost"], -1, 30);
                json!({ "cert": leaf.chain, "key": leaf.key })
            },
            "does not cover acme.localhost",
        ),
        (
            "a wildcard directly under one label (clients refuse it)",
            {
                let leaf = ca.leaf(&["*.localhost"], -1, 30);
                json!({ "cert": leaf.chain, "key": leaf.key })
            },
            "does not cover acme.localhost (its names: *.localhost)",
        ),
        (
            "missing field",
            json!({ "cert": good.chain }),
            "missing field `key`",
        ),
    ];
    let trust_test = client(&ca.der, &[b"http/1.1"], true);
    for (case, body, expected) in cases {
        let (status, answer) = s
            .corral
            .admin(
                "PUT",
                "/v1/tenants/acme/certificate",
                Some(&s.acme),
                Some(("application/json".into(), body.to_string().into_bytes())),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{case}: {answer}");
        // Nothing changed: the good certificate is still the one served.
        let stream = connect(s.tls, "acme.localhost", Arc::clone(&trust_test))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(leaf_of(&stream), good.der, "{case}");
    }
}

#[tokio::test]
async fn a_request_for_another_tenant_than_the_handshake_named_is_misdirected() {
    let s = setup("https-421").await;
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let config = client(&s.local_ca, &[alpn], true);
        let stream = connect(s.tls, "acme.localhost", config).await.unwrap();
        let mut conn = Conn::open(stream).await;
        let (status, body) = conn.get("beta.localhost", "/case/add").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "misdirected_request");
        let (status, _) = conn.get("nowhere.localhost", "/case/add").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        // The same connection still serves its own tenant.
        let (status, body) = conn.get("acme.localhost:443", "/case/add").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // No SNI: the default certificate (the local CA's, for localhost), routed by Host alone.
    let config = client(&s.local_ca, &[b"http/1.1"], false);
    let stream = connect(s.tls, "localhost", config)
        .await
        .expect("handshake without SNI");
    assert_eq!(names_of(&leaf_of(&stream)), ["localhost"]);
    let mut conn = Conn::open(stream).await;
    assert_eq!(
        conn.get("beta.localhost", "/case/add").await.0,
        StatusCode::OK
    );
    assert_eq!(
        conn.get("acme.localhost", "/case/add").await.0,
        StatusCode::OK
    );

    // An unknown name gets the localhost certificate, not one minted for it.
    let config = client(&s.local_ca, &[b"http/1.1"], true);
    assert!(connect(s.tls, "evil.localhost", config).await.is_err());
}

#[tokio::test]
async fn an_operator_default_certificate_serves_names_without_their_own() {
    let dir = DataDir::new("https-default");
    let ca = TestCa::new("Operator CA");
    let wildcard = ca.leaf(&["*.apps.localhost"], -1, 30);
    std::fs::write(dir.0.join("default.crt"), &wildcard.chain).unwrap();
    std::fs::write(dir.0.join("default.key"), &wildcard.key).unwrap();
    let config = format!(
        "plain_http = false\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nlocal_ca = false\n",
        dir.0.join("default.crt").display(),
        dir.0.join("default.key").display()
    );
    let corral = Corral::start(&dir, &config);
    assert_eq!(corral.data.port(), 0, "no cleartext listener");
    assert!(!dir.data().join("ca.pem").exists(), "no local CA was made");
    let tls = corral.tls.unwrap();
    let acme = corral.create_tenant("acme", "acme.apps.localhost").await;
    corral.create_tenant("beta", "beta.apps.localhost").await;
    let own = TestCa::new("Acme's CA").leaf(&["acme.apps.localhost"], -1, 30);
    assert_eq!(
        put_certificate(&corral, &acme, &own).await.0,
        StatusCode::OK
    );

    let trust_operator = client(&ca.der, &[b"http/1.1"], true);
    let stream = connect(tls, "beta.apps.localhost", Arc::clone(&trust_operator))
        .await
        .expect("beta gets the default certificate");
    assert_eq!(leaf_of(&stream), wildcard.der);
    let stream = connect(tls, "acme.apps.localhost", trust_operator).await;
    assert!(
        stream.is_err(),
        "acme's own certificate wins over the default"
    );

    // A default whose key is not its certificate's stops the server, naming the files.
    corral.kill();
    let other = ca.leaf(&["*.apps.localhost"], -1, 30);
    std::fs::write(dir.0.join("default.key"), &other.key).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["serve", "--config"])
        .arg(dir.0.join("corral.toml"))
        .arg("--data")
        .arg(dir.data())
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("CORRAL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("default.key") && stderr.contains("is not the private key"),
        "{stderr}"
    );
}

/// A tenant with its own certificate gets a new host name only when the certificate covers it:
/// otherwise clients of that name would be handed a certificate that fails verification.
#[tokio::test]
async fn a_host_the_tenants_certificate_does_not_cover_is_refused() {
    let dir = DataDir::new("https-new-host");
    let corral = Corral::start(&dir, "");
    let acme = corral.create_tenant("acme", "acme.localhost").await;
    let ca = TestCa::new("Test CA");
    let narrow = ca.leaf(&["acme.localhost"], -1, 30);
    assert_eq!(
        put_certificate(&corral, &acme, &narrow).await.0,
        StatusCode::OK
    );
    let hosts = json!({ "hosts": ["acme.localhost", "www.acme.localhost"] });
    let (status, body) = corral
        .operator("PUT", "/v1/tenants/acme", hosts.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "certificate_mismatch", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("www.acme.localhost"),
        "{body}"
    );
    let (_, tenant) = corral.operator("GET", "/v1/tenants/acme", json!({})).await;
    assert_eq!(
        tenant["hosts"],
        json!(["acme.localhost"]),
        "nothing changed"
    );

    // With a certificate for both names first, the name is added.
    let wide = ca.leaf(&["acme.localhost", "www.acme.localhost"], -1, 30);
    assert_eq!(
        put_certificate(&corral, &acme, &wide).await.0,
        StatusCode::OK
    );
    let (status, body) = corral.operator("PUT", "/v1/tenants/acme", hosts).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["hosts"],
        json!(["acme.localhost", "www.acme.localhost"])
    );
}
