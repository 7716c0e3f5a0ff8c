//! Collecting the blobs of a bucket that servers share: one server at a time, never a blob a
//! deployment refers to or one an upload marked within the grace period.
//!
//! - [`COLLECT_LOCK`] (a session-level advisory lock, tried, on a connection of the
//!   collection's own) lets one server collect at a time; the others skip their turn.
//! - An upload marks its blob (`corral_blob_uploads`) before it asks the bucket whether the
//!   blob is there, holding [`REMOVE_LOCK`] shared for that one statement. The collection
//!   holds it exclusively while it decides what to remove and removes it. So a mark is either
//!   seen by that decision (and the blob spared), or made after the removal (and the upload
//!   finds the blob gone and stores it again): an upload of bytes the bucket already has never
//!   loses them to a collection running at the same moment.
//! - A blob is removed only when no stored deployment refers to it, no mark on it is younger
//!   than the grace period, and the bucket stored it longer ago than that: the grace period
//!   covers an upload's time from mark to recorded deployment (storing, validating), and
//!   must exceed it.

use std::collections::HashSet;
use std::time::Duration;

use postgres::Client;

use super::{PgRecords, db_error, from_json, snapshot};
use crate::clock::now;
use crate::store::Digest;
use crate::store::blobs::{BlobStore, UploadMarks};
use crate::store::records::DeploymentRecord;

/// Held by the one server collecting ("corral-c").
pub(crate) const COLLECT_LOCK: i64 = 0x636f_7272_616c_2d63;
/// Held shared by each upload's mark, exclusively while blobs are chosen and removed
/// ("corral-r").
const REMOVE_LOCK: i64 = 0x636f_7272_616c_2d72;
/// Most blobs one collection removes; the rest wait for the next.
const MAX_REMOVED: usize = 1000;

/// What a collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Another server was collecting: this one did nothing.
    pub busy: bool,
    /// Blobs in the bucket.
    pub listed: usize,
    /// Blobs removed, and their bytes.
    pub removed: usize,
    pub bytes: u64,
}

impl UploadMarks for PgRecords {
    fn mark(&self, digest: &Digest) -> anyhow::Result<()> {
        self.read(|client| {
            let mut tx = client.transaction().map_err(db_error)?;
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&REMOVE_LOCK])
                .map_err(db_error)?;
            tx.execute(
                "INSERT INTO corral_blob_uploads (digest) VALUES ($1)
                 ON CONFLICT (digest) DO UPDATE SET at = now()",
                &[&digest.to_string()],
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)
        })
    }
}

impl PgRecords {
    /// Removes from `blobs` (the bucket these records' deployments refer to) what nothing
    /// holds any more; see the module's description. Blocking.
    pub fn collect_blobs(
        &self,
        blobs: &dyn BlobStore,
        grace: Duration,
    ) -> anyhow::Result<Collected> {
        // A connection of its own: the session's locks go with it, however this ends.
        let mut client = self.connect()?;
        let ours: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECT_LOCK])
            .map_err(db_error)?
            .get(0);
        if !ours {
            return Ok(Collected {
                busy: true,
                ..Collected::default()
            });
        }
        let listed = blobs.list()?;
        let grace_secs = grace.as_secs();
        let old: Vec<_> = listed
            .iter()
            .filter(|blob| blob.modified.saturating_add(grace_secs) <= now())
            .collect();
        let mut collected = Collected {
            listed: listed.len(),
            ..Collected::default()
        };
        if old.is_empty() {
            return Ok(collected);
        }
        client
            .execute("SELECT pg_advisory_lock($1)", &[&REMOVE_LOCK])
            .map_err(db_error)?;
        let held = held(&mut client, grace)?;
        for blob in old
            .into_iter()
            .filter(|blob| !held.contains(&blob.digest))
            .take(MAX_REMOVED)
        {
            if blobs.remove(&blob.digest)? {
                tracing::debug!(blob = %blob.digest, "blob collected from the shared store");
                collected.removed += 1;
                collected.bytes += blob.len;
            }
        }
        client
            .execute(
                "DELETE FROM corral_blob_uploads WHERE at < now() - make_interval(secs => $1)",
                &[&(grace_secs as f64)],
            )
            .map_err(db_error)?;
        Ok(collected)
    }
}

/// Every blob a stored deployment refers to or an upload marked within `grace`, read in one
/// snapshot. A deployment that cannot be read fails the collection: what it refers to is
/// unknown.
fn held(client: &mut Client, grace: Duration) -> anyhow::Result<HashSet<Digest>> {
    let mut tx = snapshot(client)?;
    let mut held = HashSet::new();
    for row in tx
        .query(
            "SELECT tenant, version, record FROM corral_deployments",
            &[],
        )
        .map_err(db_error)?
    {
        let (tenant, version): (String, i32) = (row.get(0), row.get(1));
        let record: DeploymentRecord = from_json(
            row.get(2),
            &format!("deployment {version} of tenant '{tenant}'"),
        )?;
        held.extend(record.blobs());
    }
    for row in tx
        .query(
            "SELECT digest FROM corral_blob_uploads WHERE at >= now() - make_interval(secs => $1)",
            &[&(grace.as_secs() as f64)],
        )
        .map_err(db_error)?
    {
        let digest: String = row.get(0);
        let parsed = digest.parse().map_err(|e| {
            anyhow::anyhow!("the database's upload mark '{digest}' is not valid: {e}")
        })?;
        held.insert(parsed);
    }
    tx.commit().map_err(db_error)?;
    Ok(held)
}
