//! The store: content-addressed blobs (components, models), the records of tenants and their
//! deployments, and a node-local cache, each behind a seam so another store (a database, an
//! object store) can take its place:
//!
//! - [`BlobStore`](blobs::BlobStore) keeps bytes by digest; [`Blobs`] adds who holds each one ([`DirBlobs`]:
//!   `blobs/sha256/<hex>` in the data directory);
//! - [`Records`] keeps tenants, deployments and certificates, with compare-and-swap on each
//!   tenant's [`Generation`], versions allocated by the store and a change log a watcher can
//!   follow ([`DirRecords`]: JSON files under `tenants/`);
//! - [`CacheDir`] keeps what can be made again on this node (`cache/`).
//!
//! Today all three live in one data directory ([`DataDir`]), held by one process at a time.
//! Every write goes through a synced temporary file renamed into place, so a crash at any
//! point leaves the old or the new version, never a torn file. All calls block on I/O: call
//! them from a blocking pool.

pub mod blobs;
mod cache;
mod dir;
mod owners;
pub mod postgres;
pub mod record_store;
pub mod records;
pub mod s3;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::ClusterSettings;
use blobs::{BlobStore, UploadMarks};
use postgres::{Collected, PgRecords};
use s3::S3Blobs;

pub use blobs::{BlobWriter, DirBlobs};
pub use cache::CacheDir;
pub use corral_parsers::digest::Digest;
pub use dir::DataDir;
pub use owners::Blobs;
pub use record_store::{DirRecords, Generation, RecordError, Records, stored_deployments};

/// A data directory's blobs, records and cache.
#[derive(Debug)]
pub struct Store {
    pub dir: Arc<DataDir>,
    pub blobs: Blobs,
    pub records: Arc<dyn Records>,
    pub cache: CacheDir,
    shared: Option<Shared>,
}

impl Store {
    /// Opens (creating if needed) the data directory at `root`: locked for this process,
    /// temporary files a crash left cleared, incomplete tenant directories removed. Records
    /// are kept in it too, unless `cluster` names a database (whose schema is then brought up
    /// to date). Failures name the directory or the database (never its password).
    pub fn open(root: impl Into<PathBuf>, cluster: &ClusterSettings) -> anyhow::Result<Self> {
        let root = root.into();
        let dir = Arc::new(
            DataDir::open(&root)
                .with_context(|| format!("cannot open the data directory {}", root.display()))?,
        );
        let database = if cluster.database_url.is_empty() {
            None
        } else {
            let shown = ClusterSettings::redact(&cluster.database_url);
            let ca_file = (!cluster.database_ca_file.as_os_str().is_empty())
                .then_some(cluster.database_ca_file.as_path());
            let records = PgRecords::open(&cluster.database_url, ca_file)
                .with_context(|| format!("cannot open the database {shown}"))?;
            tracing::info!(database = %shown, "records are kept in the database");
            Some(Arc::new(records))
        };
        let records: Arc<dyn Records> =
            match &database {
                Some(records) => Arc::clone(records) as Arc<dyn Records>,
                None => Arc::new(DirRecords::open(Arc::clone(&dir)).with_context(|| {
                    format!("cannot open the data directory {}", root.display())
                })?),
            };
        let bucket = if cluster.blob_url.is_empty() {
            None
        } else {
            let blobs = S3Blobs::open(&cluster.blob_url, Arc::clone(&dir), cluster.cache_bytes)
                .with_context(|| format!("cannot open the blob store {}", cluster.blob_url))?;
            tracing::info!(url = %cluster.blob_url, cache_bytes = cluster.cache_bytes, "blobs are kept in object storage");
            Some(Arc::new(blobs))
        };
        let blobs: Arc<dyn BlobStore> = match &bucket {
            Some(bucket) => Arc::clone(bucket) as Arc<dyn BlobStore>,
            None => Arc::new(DirBlobs::open(Arc::clone(&dir))?),
        };
        let shared = database.zip(bucket).map(|(records, bucket)| {
            bucket.mark_uploads(Arc::clone(&records) as Arc<dyn UploadMarks>);
            Shared { records, bucket }
        });
        Ok(Self {
            blobs: Blobs::new(blobs),
            records,
            cache: CacheDir::new(Arc::clone(&dir)),
            shared,
            dir,
        })
    }

    /// Whether records and blobs are both shared with other servers, so that
    /// [`Store::collect_shared`] has work.
    pub fn collects_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Removes from a bucket that servers share the blobs nothing holds any more, when this
    /// server holds the collection lock (see [`postgres::collect`]); `None` when blobs and
    /// records are not both shared. Blocking.
    pub fn collect_shared(&self, grace: Duration) -> anyhow::Result<Option<Collected>> {
        self.shared
            .as_ref()
            .map(|shared| shared.records.collect_blobs(&*shared.bucket, grace))
            .transpose()
    }
}

/// Records in a database and blobs in a bucket, shared by servers: collected under a lock.
#[derive(Debug)]
struct Shared {
    records: Arc<PgRecords>,
    bucket: Arc<S3Blobs>,
}

#[cfg(test)]
mod tests;
