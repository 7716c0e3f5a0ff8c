use std::fs;
use std::path::{Path, PathBuf};

use super::records::{DeploymentRecord, TenantRecord};
use super::*;

mod bucket;
#[path = "../../../../tests/support/postgres.rs"]
mod postgres_server;
mod records;
#[path = "../../../../tests/support/s3.rs"]
mod s3_server;
mod shared;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("corral-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }

    fn temp_files(&self) -> usize {
        fs::read_dir(self.0.join("tmp")).unwrap().count()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tenant(name: &str) -> TenantRecord {
    TenantRecord {
        name: name.to_owned(),
        hosts: vec![format!("{name}.example")],
        token_sha256: Digest::of(name.as_bytes()),
        created: 1,
        active: None,
        limits: Default::default(),
        outgoing_hosts: Vec::new(),
        trusted_models: false,
    }
}

fn deployment(component: &[u8]) -> DeploymentRecord {
    DeploymentRecord {
        version: 0,
        component: Digest::of(component),
        models: Default::default(),
        created: 1,
        config: Default::default(),
    }
}

#[test]
fn blobs_are_stored_under_their_digest_once() {
    let dir = TempDir::new("blobs");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let digest = store.blobs.put(b"model bytes").unwrap();
    assert_eq!(digest, Digest::of(b"model bytes"));
    assert_eq!(
        store.blobs.put(b"model bytes").unwrap(),
        digest,
        "storing again is a no-op"
    );
    assert_eq!(store.blobs.read(&digest).unwrap(), b"model bytes");
    assert!(
        store
            .blobs
            .local_path(&digest)
            .unwrap()
            .ends_with(digest.hex())
    );
    assert_eq!(dir.temp_files(), 0, "no temporary file is left");
}

#[test]
fn a_blob_over_the_limit_is_refused_and_nothing_is_kept() {
    let dir = TempDir::new("limit");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let err = store.blobs.put_from(&[7u8; 1000][..], 999).unwrap_err();
    assert!(err.to_string().contains("limit of 999 bytes"), "{err}");
    assert!(!store.blobs.contains(&Digest::of(&[7u8; 1000])));
    assert_eq!(dir.temp_files(), 0);
    assert_eq!(
        store.blobs.put_from(&[7u8; 1000][..], 1000).unwrap().1,
        1000
    );
}

#[test]
fn a_damaged_blob_is_an_error_naming_it() {
    let dir = TempDir::new("damaged");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let digest = store.blobs.put(b"component").unwrap();
    fs::write(store.blobs.local_path(&digest).unwrap(), b"c0mponent").unwrap();
    let err = store.blobs.read(&digest).unwrap_err().to_string();
    assert!(
        err.contains("damaged") && err.contains(&digest.hex()),
        "{err}"
    );
}

#[test]
fn files_are_replaced_whole_and_read_back() {
    let dir = TempDir::new("files");
    let data = DataDir::open(&dir.0).unwrap();
    let path = Path::new("tenants/acme.json");
    assert_eq!(data.read_file(path).unwrap(), None);
    data.write_file(path, b"one").unwrap();
    data.write_file(path, b"two").unwrap();
    assert_eq!(data.read_file(path).unwrap().unwrap(), b"two");
    assert!(data.remove_file(path).unwrap());
    assert!(
        !data.remove_file(path).unwrap(),
        "removing again is no error"
    );
    assert_eq!(data.read_file(path).unwrap(), None);
}

#[test]
fn a_crash_mid_write_leaves_the_old_record_and_reopening_cleans_up() {
    let dir = TempDir::new("crash");
    {
        let store = Store::open(&dir.0, &Default::default()).unwrap();
        store
            .records
            .put_tenant(&tenant("acme"), Generation::ABSENT)
            .unwrap();
        // A write that crashed before its rename: a partial temporary file.
        fs::write(dir.0.join("tmp/999-0"), b"{\"name\": \"acme\", \"tru").unwrap();
    }
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let read = store.records.tenant("acme").unwrap().unwrap();
    assert_eq!(read.value.hosts, ["acme.example"]);
    assert_eq!(dir.temp_files(), 0);
}

#[test]
fn a_corrupt_record_names_the_file() {
    let dir = TempDir::new("corrupt");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    fs::create_dir_all(dir.0.join("tenants/acme")).unwrap();
    fs::write(dir.0.join("tenants/acme/tenant.json"), b"{not json").unwrap();
    assert_eq!(store.records.tenant_names().unwrap(), ["acme"]);
    let err = store.records.tenant("acme").unwrap_err();
    assert!(
        format!("{err:#}").contains("tenants/acme/tenant.json"),
        "{err:#}"
    );
}

#[test]
fn file_paths_cannot_escape_or_touch_blobs() {
    let dir = TempDir::new("paths");
    let data = DataDir::open(&dir.0).unwrap();
    for bad in [
        "../x.json",
        "/etc/passwd",
        "blobs/sha256/x",
        "tmp/x",
        "lock",
        "",
    ] {
        assert!(
            data.write_file(Path::new(bad), b"1").is_err(),
            "{bad} accepted"
        );
    }
}

#[test]
fn digests_round_trip_through_text_and_refuse_garbage() {
    let digest = Digest::of(b"x");
    assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
    assert_eq!(
        serde_json::from_value::<Digest>(serde_json::to_value(digest).unwrap()).unwrap(),
        digest
    );
    for bad in [
        "",
        "sha256:",
        "md5:00",
        "sha256:zz",
        &format!("sha256:{}", "A".repeat(64)),
    ] {
        assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
    }
}

#[test]
fn one_process_at_a_time_holds_a_data_directory() {
    let dir = TempDir::new("lock");
    let first = Store::open(&dir.0, &Default::default()).unwrap();
    fs::write(dir.0.join("tmp/in-flight"), b"another's upload").unwrap();
    let err = format!(
        "{:#}",
        Store::open(&dir.0, &Default::default()).unwrap_err()
    );
    assert!(
        err.contains("in use by another Corral process")
            && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert!(
        dir.0.join("tmp/in-flight").is_file(),
        "a refused open clears nothing"
    );
    drop(first);
    Store::open(&dir.0, &Default::default()).unwrap();
    assert!(!dir.0.join("tmp/in-flight").exists());
}

/// A blob stays while a record refers to it or an upload pins it, and goes the moment neither
/// does; a sweep removes exactly the blobs nothing holds.
#[test]
fn a_blob_lives_exactly_as_long_as_something_holds_it() {
    let dir = TempDir::new("owners");
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let blobs = &store.blobs;
    let commit = |bytes: &[u8]| {
        let mut writer = blobs.writer().unwrap();
        writer.write(bytes).unwrap();
        blobs.commit_pinned(writer).unwrap().0
    };
    let model = commit(b"model");
    let component = commit(b"component");
    blobs.refer([model, component]);
    blobs.unpin(&model);
    blobs.unpin(&component);
    assert!(blobs.contains(&model) && blobs.contains(&component));

    // A second upload of the same bytes pins them again; the record going does not remove
    // them while that upload lasts.
    assert_eq!(commit(b"model"), model);
    blobs.release([model, component]);
    assert!(blobs.contains(&model), "pinned by the second upload");
    assert!(!blobs.contains(&component), "nothing holds it");
    blobs.unpin(&model);
    assert!(!blobs.contains(&model));

    // A sweep takes what a crash orphaned and nothing held.
    let orphan = blobs.put(b"orphan").unwrap();
    let held = commit(b"held");
    assert_eq!(blobs.sweep().unwrap(), (1, 6));
    assert!(!blobs.contains(&orphan) && blobs.contains(&held));

    // Once some record could not be read, nothing is removed.
    blobs.keep_all();
    blobs.unpin(&held);
    assert!(blobs.contains(&held));
}

/// A data directory written by an earlier Corral (these files, byte for byte) opens, and a
/// tenant directory whose creation a crash interrupted is removed.
#[test]
fn data_directories_from_before_open() {
    let dir = TempDir::new("before");
    let component = Digest::of(b"component");
    let tenant_dir = dir.0.join("tenants/acme");
    fs::create_dir_all(tenant_dir.join("deployments")).unwrap();
    fs::create_dir_all(dir.0.join("tenants/half-made/deployments")).unwrap();
    fs::write(
        tenant_dir.join("tenant.json"),
        format!(
            r#"{{
  "name": "acme",
  "hosts": ["acme.example"],
  "token_sha256": "{component}",
  "created": 1795953600,
  "active": 2
}}"#
        ),
    )
    .unwrap();
    for version in [1, 2] {
        fs::write(
            tenant_dir.join(format!("deployments/{version}.json")),
            format!(
                r#"{{"version": {version}, "component": "{component}", "models": {{}}, "created": 1795953600}}"#
            ),
        )
        .unwrap();
    }
    let store = Store::open(&dir.0, &Default::default()).unwrap();
    let records = &*store.records;
    assert_eq!(records.tenant_names().unwrap(), ["acme"]);
    assert!(!dir.0.join("tenants/half-made").exists());
    let acme = records.tenant("acme").unwrap().unwrap();
    assert_eq!(acme.value.active, Some(2));
    assert_eq!(records.versions("acme").unwrap(), [1, 2]);
    assert_eq!(
        records.deployment("acme", 2).unwrap().unwrap().component,
        component
    );
    assert_eq!(
        records
            .add_deployment("acme", deployment(b"x"))
            .unwrap()
            .version,
        3
    );
    // The generation of a tenant read from disk is one its writer can swap on.
    records.put_tenant(&acme.value, acme.generation).unwrap();
}
