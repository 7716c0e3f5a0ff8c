//! Who holds each blob: stored deployment records refer to theirs, and uploads pin theirs
//! until their deployment is recorded or refused. A blob nothing holds is removed at once;
//! [`Blobs::sweep`] removes those a crash left behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Digest;
use super::blobs::{BlobStore, BlobWriter};

/// A [`BlobStore`] and the holders of its blobs.
#[derive(Debug)]
pub struct Blobs {
    store: Arc<dyn BlobStore>,
    owners: Mutex<Owners>,
}

/// The holders of blobs: how many stored records refer to each, and how many uploads pin
/// each until their deployment is recorded or refused.
#[derive(Debug, Default)]
struct Owners {
    refs: HashMap<Digest, usize>,
    pins: HashMap<Digest, usize>,
    /// Set when some record could not be read: its blobs are unknown, so none is removed.
    keep_all: bool,
}

impl Blobs {
    /// The holders of `store`'s blobs. A store shared with other servers never has a blob
    /// removed from here: this server cannot see the others' holders (the store collects
    /// those across servers, under a lock: [`super::Store::collect_shared`]).
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        let owners = Owners {
            keep_all: store.shared(),
            ..Owners::default()
        };
        Self {
            store,
            owners: Mutex::new(owners),
        }
    }

    /// Stores `bytes` and returns their digest. Storing the same bytes again is a no-op.
    /// Nothing holds the blob: refer to it, or a sweep removes it.
    #[cfg(test)]
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let (digest, _) = self.put_from(bytes, u64::MAX)?;
        Ok(digest)
    }

    /// Streams a blob into the store, refusing it once it exceeds `limit` bytes (nothing is
    /// kept then). Returns its digest and length.
    #[cfg(test)]
    pub fn put_from(
        &self,
        mut reader: impl std::io::Read,
        limit: u64,
    ) -> anyhow::Result<(Digest, u64)> {
        let mut writer = self.writer()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = anyhow::Context::context(reader.read(&mut buf), "cannot read the upload")?;
            if n == 0 {
                break;
            }
            len += n as u64;
            if len > limit {
                anyhow::bail!("the blob is larger than the limit of {limit} bytes");
            }
            writer.write(&buf[..n])?;
        }
        writer.commit()
    }

    /// A blob written piece by piece; see [`BlobStore::writer`].
    pub fn writer(&self) -> anyhow::Result<BlobWriter> {
        self.store.writer()
    }

    /// Commits `writer` and pins its blob, so that no collection removes it until
    /// [`Blobs::unpin`] (for an upload whose deployment is not recorded yet). Blocking.
    pub fn commit_pinned(&self, writer: BlobWriter) -> anyhow::Result<(Digest, u64)> {
        // The slow part (syncing a large file) outside the lock every collection takes.
        writer.sync()?;
        let mut owners = self.owners();
        let (digest, len) = writer.commit()?;
        *owners.pins.entry(digest).or_default() += 1;
        Ok((digest, len))
    }

    /// Releases a pin from [`Blobs::commit_pinned`]; the blob is removed if nothing else
    /// holds it. Blocking.
    pub fn unpin(&self, digest: &Digest) {
        let mut owners = self.owners();
        if let Some(count) = owners.pins.get_mut(digest) {
            *count -= 1;
            if *count == 0 {
                owners.pins.remove(digest);
            }
        }
        self.remove_if_unheld(&owners, digest);
    }

    /// Records that a stored record (a deployment) refers to `digests`.
    pub fn refer(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut owners = self.owners();
        for digest in digests {
            *owners.refs.entry(digest).or_default() += 1;
        }
    }

    /// Records that a record referring to `digests` is gone, removing each blob nothing holds
    /// any more. Blocking.
    pub fn release(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut owners = self.owners();
        for digest in digests {
            if let Some(count) = owners.refs.get_mut(&digest) {
                *count -= 1;
                if *count == 0 {
                    owners.refs.remove(&digest);
                }
            }
            self.remove_if_unheld(&owners, &digest);
        }
    }

    /// Removes every blob no record refers to and no upload pins (those of refused uploads,
    /// deleted tenants and collected deployments a crash kept). Call once every record has
    /// been [`Blobs::refer`]red. Returns the blobs and bytes removed. Blocking.
    pub fn sweep(&self) -> anyhow::Result<(usize, u64)> {
        let owners = self.owners();
        if owners.keep_all {
            return Ok((0, 0)); // Nothing would be removed: no need to list every blob.
        }
        let (mut removed, mut bytes) = (0, 0);
        for blob in self.store.list()? {
            if self.remove_if_unheld(&owners, &blob.digest) {
                removed += 1;
                bytes += blob.len;
            }
        }
        Ok((removed, bytes))
    }

    /// Stops every removal of blobs: some record could not be read, so what it refers to is
    /// unknown (collection resumes at the next start with every record readable).
    pub fn keep_all(&self) {
        self.owners().keep_all = true;
    }

    /// Size of a stored blob, in bytes (0 if it is not stored).
    pub fn len(&self, digest: &Digest) -> u64 {
        self.store.len(digest).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn contains(&self, digest: &Digest) -> bool {
        self.store.len(digest).is_some()
    }

    /// Reads a blob, checking it still has the digest it is stored under.
    pub fn read(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        self.store.read(digest)
    }

    /// A file on this node with the blob's bytes; see [`BlobStore::local_path`].
    pub fn local_path(&self, digest: &Digest) -> anyhow::Result<PathBuf> {
        self.store.local_path(digest)
    }

    fn owners(&self) -> MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the blob if nothing holds it; whether it did.
    fn remove_if_unheld(&self, owners: &Owners, digest: &Digest) -> bool {
        if owners.keep_all || owners.refs.contains_key(digest) || owners.pins.contains_key(digest) {
            return false;
        }
        match self.store.remove(digest) {
            Ok(removed) => {
                if removed {
                    tracing::debug!(blob = %digest, "blob collected");
                }
                removed
            }
            Err(e) => {
                tracing::warn!(blob = %digest, error = %e, "cannot remove an unused blob");
                false
            }
        }
    }
}
