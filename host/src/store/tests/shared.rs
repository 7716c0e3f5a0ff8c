//! PostgreSQL's records, in what only a shared database must do (races between replicas,
//! migrations, reconnection, TLS, notifications), against the server the test process
//! starts. Blobs in object storage are in `bucket.rs`.

use std::fs;
use std::sync::Arc;

use super::super::postgres::PgRecords;
use super::super::record_store::Changes;
use super::super::*;
use super::{TempDir, postgres_server, tenant};

/// PostgreSQL's records where it is installed (under `CI=true` it must be): a fresh database.
fn pg_database(name: &str) -> Option<String> {
    postgres_server::postgres().map(|server| server.database(name))
}

/// Two replicas (two connections to one database) race to create tenants claiming the same
/// host names: for each name exactly one wins, the loser is told which host, and the change
/// log numbers every write that won, in order, without gaps.
#[test]
fn replicas_racing_for_a_host_name_cannot_both_win() {
    let Some(url) = pg_database("race") else {
        return;
    };
    let replicas = [
        PgRecords::open(&url, None).unwrap(),
        PgRecords::open(&url, None).unwrap(),
    ];
    let start = replicas[0].revision().unwrap();
    const NAMES: usize = 20;
    let wins: Vec<usize> = std::thread::scope(|scope| {
        let racers: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(side, records)| {
                scope.spawn(move || {
                    let mut won = 0;
                    for i in 0..NAMES {
                        let mut record = tenant(&format!("r{side}-{i}"));
                        record.hosts = vec![format!("race-{i}.example")];
                        match records.put_tenant(&record, Generation::ABSENT) {
                            Ok(_) => won += 1,
                            Err(RecordError::HostTaken { host, .. }) => {
                                assert_eq!(host, format!("race-{i}.example"));
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    won
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().sum::<usize>(), NAMES, "{wins:?}");
    let owners: Vec<String> = replicas[1]
        .tenant_names()
        .unwrap()
        .into_iter()
        .map(|name| replicas[1].tenant(&name).unwrap().unwrap().value.hosts[0].clone())
        .collect();
    let mut unique = owners.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), NAMES, "{owners:?}");
    let Changes::Since { changes, revision } = replicas[1].changes_since(start).unwrap() else {
        panic!("the log reaches back");
    };
    assert_eq!(changes.len(), NAMES);
    assert_eq!(revision, start + NAMES as u64, "revisions have no gaps");
}

/// The schema is migrated once, by whichever replica opens first; a database migrated by a
/// newer Corral is refused, saying so.
#[test]
fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let Some(server) = postgres_server::postgres() else {
        return;
    };
    let url = server.database("migrations");
    let name = url.rsplit('/').next().unwrap().to_owned();
    let records = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| PgRecords::open(&url, None)))
            .collect();
        openers
            .into_iter()
            .map(|o| o.join().unwrap().unwrap())
            .collect::<Vec<_>>()
    });
    records[0]
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    assert_eq!(
        server
            .psql(&name, "SELECT count(*) FROM corral_schema_migrations")
            .unwrap(),
        "2",
        "each migration applied once"
    );
    drop(records);
    PgRecords::open(&url, None).unwrap();
    server
        .psql(
            &name,
            "INSERT INTO corral_schema_migrations (version) VALUES (99)",
        )
        .unwrap();
    let err = format!("{:#}", PgRecords::open(&url, None).unwrap_err());
    assert!(err.contains("version 99") && err.contains("newer"), "{err}");
}

/// A connection the server drops is reopened, and the call that found it broken runs again
/// on the new one: reads and writes after a database restart succeed at once.
#[test]
fn a_dropped_connection_is_reopened() {
    let Some(server) = postgres_server::postgres() else {
        return;
    };
    let url = server.database("reconnect");
    let name = url.rsplit('/').next().unwrap().to_owned();
    let records = PgRecords::open(&url, None).unwrap();
    let generation = records
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    let cut = || {
        server
            .psql(
                "postgres",
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND application_name = 'corral'"
                ),
            )
            .unwrap()
    };
    cut();
    assert_eq!(records.tenant_names().unwrap(), ["acme"]);
    cut();
    let mut update = tenant("acme");
    update.active = Some(1);
    let next = records.put_tenant(&update, generation).unwrap();
    assert_eq!(records.tenant("acme").unwrap().unwrap().generation, next);
    let err = format!(
        "{:#}",
        PgRecords::open(&server.url("no_such_database"), None).unwrap_err()
    );
    assert!(err.contains("no_such_database"), "{err}");
}

/// A CA, and a certificate it signed for 127.0.0.1 with its key: (CA PEM, cert PEM, key PEM).
fn test_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// With `sslmode=require` the connection is TLS, verified against `database_ca_file`; a
/// server whose certificate is not trusted, or one without TLS, is refused, saying why.
#[test]
fn the_database_connection_can_be_tls_and_is_verified() {
    if postgres_server::postgres().is_none() {
        return;
    }
    let (ca, cert, key) = test_certificates();
    let server = postgres_server::own_postgres_tls(&cert, &key).unwrap();
    let dir = TempDir::new("pg-tls");
    fs::create_dir_all(&dir.0).unwrap();
    let ca_file = dir.0.join("ca.pem");
    fs::write(&ca_file, ca).unwrap();
    let url = format!("{}?sslmode=require", server.database("tls"));
    let records = PgRecords::open(&url, Some(&ca_file)).unwrap();
    records
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    assert_eq!(
        server
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE ssl AND application_name = 'corral'"
            )
            .unwrap(),
        "1",
        "the connection is TLS"
    );

    // A CA that did not sign the server's certificate.
    let (other_ca, _, _) = test_certificates();
    let other = dir.0.join("other.pem");
    fs::write(&other, other_ca).unwrap();
    let err = format!("{:#}", PgRecords::open(&url, Some(&other)).unwrap_err());
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A server without TLS, when TLS is required.
    let plain = format!(
        "{}?sslmode=require",
        postgres_server::postgres().unwrap().database("tls_plain")
    );
    let err = format!("{:#}", PgRecords::open(&plain, Some(&ca_file)).unwrap_err());
    assert!(err.contains("TLS"), "{err}");
}

/// A server listening hears every other server's write at once, and keeps hearing them after
/// its listening connection is cut; dropping what it wakes stops it.
#[test]
fn a_listening_server_hears_each_write_and_survives_a_cut() {
    let Some(server) = postgres_server::postgres() else {
        return;
    };
    let url = server.database("listen");
    let name = url.rsplit('/').next().unwrap().to_owned();
    let (listener, writer) = (
        PgRecords::open(&url, None).unwrap(),
        PgRecords::open(&url, None).unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let wake = Arc::new(tokio::sync::Notify::new());
    assert!(listener.listen(Arc::downgrade(&wake)));
    let woken = |what: &str| {
        runtime
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(20), wake.notified()).await
            })
            .unwrap_or_else(|_| panic!("not woken {what} within 20 s"));
    };
    woken("once listening");
    writer
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    woken("by a write");
    let listening = || {
        server
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND application_name = 'corral-listen'"
                ),
            )
            .unwrap()
    };
    assert_eq!(listening(), "1");
    server
        .psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND application_name = 'corral-listen'"
            ),
        )
        .unwrap();
    woken("after reconnecting");
    writer
        .put_tenant(&tenant("beta"), Generation::ABSENT)
        .unwrap();
    woken("by a write after the cut");
    drop(wake);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while listening() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "still listening with nothing to wake"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
