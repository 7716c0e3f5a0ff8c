use std::path::Path;

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("corral-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn blobs_are_stored_under_their_digest_once() {
    let dir = TempDir::new("blobs");
    let store = Store::open(&dir.0).unwrap();
    let digest = store.put_blob(b"model bytes").unwrap();
    assert_eq!(digest, Digest::of(b"model bytes"));
    assert_eq!(
        store.put_blob(b"model bytes").unwrap(),
        digest,
        "storing again is a no-op"
    );
    assert_eq!(store.read_blob(&digest).unwrap(), b"model bytes");
    assert!(store.blob_path(&digest).ends_with(digest.hex()));
    assert_eq!(
        fs::read_dir(dir.0.join(TEMP)).unwrap().count(),
        0,
        "no temporary file is left"
    );
}

#[test]
fn a_blob_over_the_limit_is_refused_and_nothing_is_kept() {
    let dir = TempDir::new("limit");
    let store = Store::open(&dir.0).unwrap();
    let err = store.put_blob_from(&[7u8; 1000][..], 999).unwrap_err();
    assert!(err.to_string().contains("limit of 999 bytes"), "{err}");
    assert!(!store.has_blob(&Digest::of(&[7u8; 1000])));
    assert_eq!(fs::read_dir(dir.0.join(TEMP)).unwrap().count(), 0);
    assert_eq!(store.put_blob_from(&[7u8; 1000][..], 1000).unwrap().1, 1000);
}

#[test]
fn a_damaged_blob_is_an_error_naming_it() {
    let dir = TempDir::new("damaged");
    let store = Store::open(&dir.0).unwrap();
    let digest = store.put_blob(b"component").unwrap();
    fs::write(store.blob_path(&digest), b"c0mponent").unwrap();
    let err = store.read_blob(&digest).unwrap_err().to_string();
    assert!(
        err.contains("damaged") && err.contains(&digest.hex()),
        "{err}"
    );
}

#[test]
fn records_are_replaced_whole_and_read_back() {
    let dir = TempDir::new("records");
    let store = Store::open(&dir.0).unwrap();
    let path = Path::new("tenants/acme.json");
    assert_eq!(store.read_record::<serde_json::Value>(path).unwrap(), None);
    store
        .write_record(path, &serde_json::json!({"hosts": ["a.example"]}))
        .unwrap();
    store
        .write_record(path, &serde_json::json!({"hosts": ["b.example"]}))
        .unwrap();
    let value: serde_json::Value = store.read_record(path).unwrap().unwrap();
    assert_eq!(value["hosts"][0], "b.example");
    store.remove_record(path).unwrap();
    store.remove_record(path).unwrap();
    assert_eq!(store.read_record::<serde_json::Value>(path).unwrap(), None);
}

#[test]
fn a_crash_mid_write_leaves_the_old_record_and_reopening_cleans_up() {
    let dir = TempDir::new("crash");
    let path = Path::new("tenants/acme.json");
    {
        let store = Store::open(&dir.0).unwrap();
        store
            .write_record(path, &serde_json::json!({"version": 1}))
            .unwrap();
        // A write that crashed before its rename: a partial temporary file.
        fs::write(dir.0.join(TEMP).join("999-0"), b"{\"version\": 2, \"tru").unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    let value: serde_json::Value = store.read_record(path).unwrap().unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(fs::read_dir(dir.0.join(TEMP)).unwrap().count(), 0);
}

#[test]
fn a_corrupt_record_names_the_file() {
    let dir = TempDir::new("corrupt");
    let store = Store::open(&dir.0).unwrap();
    fs::create_dir_all(dir.0.join("tenants")).unwrap();
    fs::write(dir.0.join("tenants/acme.json"), b"{not json").unwrap();
    let err = store
        .read_record::<serde_json::Value>(Path::new("tenants/acme.json"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("tenants/acme.json"), "{err:#}");
}

#[test]
fn record_paths_cannot_escape_or_touch_blobs() {
    let dir = TempDir::new("paths");
    let store = Store::open(&dir.0).unwrap();
    for bad in ["../x.json", "/etc/passwd", "blobs/sha256/x", "tmp/x", ""] {
        assert!(
            store.write_record(Path::new(bad), &1).is_err(),
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
    let first = Store::open(&dir.0).unwrap();
    fs::write(dir.0.join(TEMP).join("in-flight"), b"another's upload").unwrap();
    let err = Store::open(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("in use by another Corral process")
            && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert!(
        dir.0.join(TEMP).join("in-flight").is_file(),
        "a refused open clears nothing"
    );
    drop(first);
    Store::open(&dir.0).unwrap();
    assert!(!dir.0.join(TEMP).join("in-flight").exists());
}

/// A blob stays while a record refers to it or an upload pins it, and goes the moment neither
/// does; a sweep removes exactly the blobs nothing holds.
#[test]
fn a_blob_lives_exactly_as_long_as_something_holds_it() {
    let dir = TempDir::new("owners");
    let store = Store::open(&dir.0).unwrap();
    let commit = |bytes: &[u8]| {
        let mut writer = store.blob_writer().unwrap();
        writer.write(bytes).unwrap();
        store.commit_pinned(writer).unwrap().0
    };
    let model = commit(b"model");
    let component = commit(b"component");
    store.refer([model, component]);
    store.unpin(&model);
    store.unpin(&component);
    assert!(store.has_blob(&model) && store.has_blob(&component));

    // A second upload of the same bytes pins them again; the record going does not remove
    // them while that upload lasts.
    assert_eq!(commit(b"model"), model);
    store.release([model, component]);
    assert!(store.has_blob(&model), "pinned by the second upload");
    assert!(!store.has_blob(&component), "nothing holds it");
    store.unpin(&model);
    assert!(!store.has_blob(&model));

    // A sweep takes what a crash orphaned and nothing held.
    let orphan = store.put_blob(b"orphan").unwrap();
    let held = commit(b"held");
    assert_eq!(store.sweep().unwrap(), (1, 6));
    assert!(!store.has_blob(&orphan) && store.has_blob(&held));

    // Once some record could not be read, nothing is removed.
    store.keep_all_blobs();
    store.unpin(&held);
    assert!(store.has_blob(&held));
}
