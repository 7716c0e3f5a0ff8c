//! The [`Records`] contract, run on each kind of records: the data directory's and
//! PostgreSQL's.

use super::super::postgres::PgRecords;
use super::super::record_store::{Change, Changes};
use super::super::*;
use super::{TempDir, deployment, postgres_server, tenant};

/// Runs `case` on each kind of records: the data directory's, then PostgreSQL's (a fresh
/// database on the test process's server) where PostgreSQL is installed; under `CI=true` it
/// must be.
fn each_records(name: &str, case: impl Fn(&dyn Records)) {
    let dir = TempDir::new(name);
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    case(&*store.records);
    if let Some(server) = postgres_server::postgres() {
        let records = PgRecords::open(&server.database(name), None).unwrap();
        case(&records);
    }
}

/// Two writers that read the same generation: the second is refused, and a tenant deleted and
/// created again never matches a generation read before.
#[test]
fn tenant_writes_are_compare_and_swap_on_the_generation() {
    each_records("cas", |records| {
        let first = records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        assert!(matches!(
            records.put_tenant(&tenant("acme"), Generation::ABSENT),
            Err(RecordError::Conflict { .. })
        ));
        let mut update = tenant("acme");
        update.active = Some(1);
        let second = records.put_tenant(&update, first).unwrap();
        assert!(second > first);
        let stale = records.put_tenant(&tenant("acme"), first).unwrap_err();
        assert!(stale.to_string().contains("changed meanwhile"), "{stale}");
        let stored = records.tenant("acme").unwrap().unwrap();
        assert_eq!(stored.value.active, Some(1));
        assert_eq!(stored.generation, second);

        assert!(matches!(
            records.delete_tenant("acme", first),
            Err(RecordError::Conflict { .. })
        ));
        records.delete_tenant("acme", second).unwrap();
        assert!(records.tenant("acme").unwrap().is_none());
        let again = records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        assert!(again > second, "generations only grow");
        assert!(matches!(
            records.put_tenant(&tenant("acme"), second),
            Err(RecordError::Conflict { .. })
        ));
    });
}

/// A host name belongs to one tenant: another tenant claiming it is refused, naming it; the
/// owner may keep it, give it up, and then another may take it.
#[test]
fn a_host_name_belongs_to_one_tenant() {
    each_records("hosts", |records| {
        let acme = records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        let mut thief = tenant("thief");
        thief.hosts = vec!["other.example".into(), "acme.example".into()];
        match records.put_tenant(&thief, Generation::ABSENT) {
            Err(RecordError::HostTaken { host, owner }) => {
                assert_eq!((host.as_str(), owner.as_str()), ("acme.example", "acme"));
            }
            other => panic!("expected HostTaken, got {other:?}"),
        }
        assert!(
            records.tenant("thief").unwrap().is_none(),
            "nothing written"
        );
        let mut moved = tenant("acme");
        moved.hosts = vec!["acme.example".into(), "www.acme.example".into()];
        let acme = records.put_tenant(&moved, acme).unwrap();
        moved.hosts = vec!["www.acme.example".into()];
        records.put_tenant(&moved, acme).unwrap();
        records.put_tenant(&thief, Generation::ABSENT).unwrap();
        let taken = tenant("late");
        let mut late = taken.clone();
        late.hosts = vec!["www.acme.example".into()];
        assert!(matches!(
            records.put_tenant(&late, Generation::ABSENT),
            Err(RecordError::HostTaken { .. })
        ));
        // A deleted tenant's names are free again.
        let generation = records.tenant("acme").unwrap().unwrap().generation;
        records.delete_tenant("acme", generation).unwrap();
        records.put_tenant(&late, Generation::ABSENT).unwrap();
    });
}

#[test]
fn the_store_allocates_versions_and_a_deleted_tenant_takes_its_deployments() {
    each_records("versions", |records| {
        let generation = records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        for expected in 1..=3 {
            let stored = records.add_deployment("acme", deployment(b"c")).unwrap();
            assert_eq!(stored.version, expected);
            assert_eq!(
                records.deployment("acme", expected).unwrap().as_ref(),
                Some(&stored)
            );
        }
        let removed = records.remove_deployment("acme", 2).unwrap().unwrap();
        assert_eq!(removed.version, 2);
        assert!(records.remove_deployment("acme", 2).unwrap().is_none());
        assert_eq!(records.versions("acme").unwrap(), [1, 3]);
        assert_eq!(
            records
                .add_deployment("acme", deployment(b"d"))
                .unwrap()
                .version,
            4
        );
        records.put_certificate("acme", &certificate()).unwrap();
        // The version the tenant runs cannot be removed, whoever asks.
        let mut active = tenant("acme");
        active.active = Some(3);
        let generation = records.put_tenant(&active, generation).unwrap();
        let refused = records.remove_deployment("acme", 3).unwrap_err();
        assert!(
            refused
                .downcast_ref::<record_store::ActiveDeployment>()
                .is_some(),
            "{refused:#}"
        );
        assert_eq!(records.versions("acme").unwrap(), [1, 3, 4]);

        let gone = records.delete_tenant("acme", generation).unwrap();
        assert_eq!(
            gone.iter().map(|d| d.version).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert!(records.versions("acme").unwrap().is_empty());
        assert!(records.certificate("acme").unwrap().is_none());
        assert!(records.tenant_names().unwrap().is_empty());
    });
}

#[test]
fn a_deleted_tenant_leaves_no_directory() {
    let dir = TempDir::new("deleted");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let generation = store
        .records
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    store
        .records
        .add_deployment("acme", deployment(b"c"))
        .unwrap();
    store.records.delete_tenant("acme", generation).unwrap();
    assert!(!dir.0.join("tenants/acme").exists());
}

fn certificate() -> records::CertificateRecord {
    records::CertificateRecord {
        cert: "c".into(),
        key: "k".into(),
        uploaded: 1,
    }
}

/// A watcher follows every change by revision, and one that fell behind the log is told to
/// reload.
#[test]
fn a_watcher_follows_the_change_log() {
    each_records("changes", |records| {
        let start = records.revision().unwrap();
        let generation = records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        records.add_deployment("acme", deployment(b"c")).unwrap();
        records.put_certificate("acme", &certificate()).unwrap();
        let Changes::Since { changes, revision } = records.changes_since(start).unwrap() else {
            panic!("the log reaches back to the start");
        };
        assert_eq!(
            changes,
            [
                Change::Tenant("acme".into()),
                Change::Deployment {
                    tenant: "acme".into(),
                    version: 1
                },
                Change::Certificate("acme".into()),
            ]
        );
        assert_eq!(revision, records.revision().unwrap());
        assert_eq!(
            records.changes_since(revision).unwrap(),
            Changes::Since {
                changes: Vec::new(),
                revision
            }
        );
        assert_eq!(
            records.changes_since(revision + 1).unwrap(),
            Changes::Reload { revision },
            "a watcher ahead of the store (restored from an older backup) reloads"
        );

        let mut generation = generation;
        for _ in 0..5000 {
            generation = records.put_tenant(&tenant("acme"), generation).unwrap();
        }
        assert_eq!(
            records.changes_since(revision).unwrap(),
            Changes::Reload {
                revision: records.revision().unwrap()
            },
            "5000 changes later, the log no longer reaches back"
        );
    });
}
