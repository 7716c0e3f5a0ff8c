//! Blobs in S3-compatible object storage that servers share, against the test process's
//! SeaweedFS: written by one replica and read by another, verified, cached within a budget,
//! and collected under the database's locks.

use std::fs;
use std::sync::Arc;

use super::super::blobs::BlobStore;
use super::super::postgres::PgRecords;
use super::super::*;
use super::{TempDir, postgres_server, s3_server, tenant};

/// A client of the test process's S3 server, configured as the `AWS_*` variables would.
fn s3_builder(server: &s3_server::S3) -> object_store::aws::AmazonS3Builder {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_region("us-east-1")
        .with_access_key_id("corral-test")
        .with_secret_access_key("corral-test-secret")
        .with_allow_http(true)
}

/// Blobs in object storage as one replica writes them and another reads them.
fn s3_replica(
    server: &s3_server::S3,
    bucket: &str,
    dir: &TempDir,
    cache_bytes: u64,
) -> super::s3::S3Blobs {
    let data = Arc::new(DataDir::open(&dir.0).unwrap());
    super::s3::S3Blobs::open_with(
        s3_builder(server),
        &format!("s3://{bucket}/corral"),
        data,
        cache_bytes,
    )
    .unwrap()
}

fn put(blobs: &dyn BlobStore, bytes: &[u8]) -> Digest {
    let mut writer = blobs.writer().unwrap();
    for chunk in bytes.chunks(1 << 20) {
        writer.write(chunk).unwrap();
    }
    let (digest, len) = writer.commit().unwrap();
    assert_eq!(len, bytes.len() as u64);
    digest
}

/// Collecting a shared bucket removes only what no stored deployment refers to, no upload
/// marked within the grace period, and the bucket stored before it: bytes stored long ago
/// and uploaded again just now are spared by their fresh mark. One server collects at a time.
#[test]
fn collection_keeps_every_referenced_or_recently_uploaded_blob() {
    let (Some(server), Some(s3)) = (postgres_server::postgres(), s3_server::s3()) else {
        return;
    };
    let url = server.database("collect");
    let records = Arc::new(PgRecords::open(&url, None).unwrap());
    let dir = TempDir::new("collect");
    let bucket = s3_replica(s3, &s3.bucket("collect"), &dir, 1 << 30);
    bucket.mark_uploads(Arc::clone(&records) as Arc<dyn super::super::blobs::UploadMarks>);

    let component = put(&bucket, b"component");
    let model = put(&bucket, b"model");
    records
        .put_tenant(&tenant("acme"), Generation::ABSENT)
        .unwrap();
    let mut record = super::deployment(b"component");
    record.models.insert(
        "m".into(),
        records::ModelRef {
            digest: model,
            format: crate::backends::models::ModelFormat::Onnx,
        },
    );
    records.add_deployment("acme", record).unwrap();
    let orphan = put(&bucket, b"orphan");
    let again = put(&bucket, b"stored long ago, uploaded again");
    let grace = std::time::Duration::from_secs(3);
    std::thread::sleep(grace + std::time::Duration::from_secs(1));
    assert_eq!(put(&bucket, b"stored long ago, uploaded again"), again);
    let fresh = put(&bucket, b"fresh");

    let collected = records.collect_blobs(&bucket, grace).unwrap();
    assert_eq!(
        (collected.busy, collected.listed, collected.removed),
        (false, 5, 1),
        "{collected:?}"
    );
    assert_eq!(collected.bytes, 6);
    assert_eq!(bucket.len(&orphan), None, "the orphan is gone");
    for kept in [component, model, again, fresh] {
        assert!(bucket.len(&kept).is_some(), "{kept} kept");
    }

    // Another server holding the lock: this one skips its turn.
    let mut other = url
        .parse::<::postgres::Config>()
        .unwrap()
        .connect(::postgres::NoTls)
        .unwrap();
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&super::super::postgres::collect::COLLECT_LOCK],
        )
        .unwrap();
    assert!(records.collect_blobs(&bucket, grace).unwrap().busy);
}

/// What one replica uploads another reads, checked against its digest, from a cached copy
/// after the first read; uploading stored bytes again is a no-op; large blobs go in parts.
#[test]
fn blobs_in_object_storage_are_shared_verified_and_cached() {
    let Some(server) = s3_server::s3() else {
        return;
    };
    let bucket = server.bucket("shared");
    let (dir_a, dir_b) = (TempDir::new("s3-a"), TempDir::new("s3-b"));
    let a = s3_replica(server, &bucket, &dir_a, 1 << 30);
    let b = s3_replica(server, &bucket, &dir_b, 1 << 30);

    let small = put(&a, b"a component");
    // 20 MiB: more than one 8 MiB part.
    let large_bytes: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let large = put(&a, &large_bytes);
    assert_eq!(put(&a, b"a component"), small, "same bytes, same key");

    assert_eq!(b.read(&small).unwrap(), b"a component");
    assert_eq!(b.len(&large), Some(large_bytes.len() as u64));
    let path = b.local_path(&large).unwrap();
    assert!(path.starts_with(&dir_b.0), "{}", path.display());
    assert_eq!(fs::read(&path).unwrap(), large_bytes);
    let mut listed: Vec<(Digest, u64)> = b
        .list()
        .unwrap()
        .into_iter()
        .map(|blob| (blob.digest, blob.len))
        .collect();
    listed.sort();
    let mut expected = vec![(small, 11), (large, large_bytes.len() as u64)];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(b.shared());

    assert!(b.remove(&small).unwrap());
    assert!(!b.remove(&small).unwrap());
    assert!(
        a.len(&small).is_some(),
        "a's cached copy stays until it needs the room"
    );
    assert_eq!(b.len(&small), None);
}

/// Bytes in the bucket that do not hash to their key are refused, naming the blob, and never
/// kept as a copy.
#[test]
fn a_damaged_object_is_refused_and_not_cached() {
    use object_store::ObjectStoreExt as _;
    let Some(server) = s3_server::s3() else {
        return;
    };
    let bucket = server.bucket("damaged");
    let dir = TempDir::new("s3-damaged");
    let blobs = s3_replica(server, &bucket, &dir, 1 << 30);
    let digest = Digest::of(b"the real model");
    let raw = s3_builder(server)
        .with_bucket_name(&bucket)
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("corral/blobs/sha256/{}", digest.hex()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(raw.put(&key, b"a substitute".to_vec().into()))
        .unwrap();
    let err = format!("{:#}", blobs.local_path(&digest).unwrap_err());
    assert!(
        err.contains("damaged") && err.contains(&digest.hex()),
        "{err}"
    );
    assert!(
        !dir.0.join("cache/blobs").join(digest.hex()).exists(),
        "nothing cached"
    );
    assert_eq!(dir.temp_files(), 0, "no temporary file left");
}

/// The cache holds at most its budget, dropping the least recently used copy; a dropped copy
/// is fetched again when it is next needed.
#[test]
fn the_blob_cache_is_bounded_least_recently_used_first() {
    let Some(server) = s3_server::s3() else {
        return;
    };
    let bucket = server.bucket("cache");
    let dir = TempDir::new("s3-cache");
    let blobs = s3_replica(server, &bucket, &dir, 2500);
    let cached = |d: &Digest| dir.0.join("cache/blobs").join(d.hex()).exists();
    let first = put(&blobs, &[1u8; 1000]);
    let second = put(&blobs, &[2u8; 1000]);
    blobs.local_path(&first).unwrap(); // first is now the most recently used
    let third = put(&blobs, &[3u8; 1000]);
    assert!(cached(&first) && cached(&third) && !cached(&second));
    assert_eq!(blobs.read(&second).unwrap(), [2u8; 1000]);
    assert!(
        cached(&second) && !cached(&first),
        "fetched again, the oldest dropped"
    );
}

/// A blob store shared by several servers never has a blob removed by one of them: none sees
/// every holder.
#[test]
fn a_shared_blob_store_removes_nothing_from_one_server() {
    let Some(server) = s3_server::s3() else {
        return;
    };
    let bucket = server.bucket("keep");
    let dir = TempDir::new("s3-keep");
    let store = Arc::new(s3_replica(server, &bucket, &dir, 1 << 30));
    let digest = put(&*store, b"held elsewhere");
    let blobs = Blobs::new(store.clone());
    blobs.refer([digest]);
    blobs.release([digest]);
    assert_eq!(blobs.sweep().unwrap().0, 0);
    assert!(store.len(&digest).is_some());
}
