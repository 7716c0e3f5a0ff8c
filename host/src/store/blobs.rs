//! Content-addressed bytes (components, models): the [`BlobStore`] seam and today's
//! implementation, a directory of files named by their sha256 ([`DirBlobs`]).
//!
//! A blob is stored under the digest of its bytes and verified against it when read, so a
//! damaged file is an error naming it, never a silently different model or component. Which
//! blobs are still needed is not the blob store's business: [`super::Blobs`] keeps that.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};

use super::Digest;
use super::dir::{BLOBS, DataDir, list, sync_dir};

/// Where blobs are kept. Every call may block on I/O: call it from a blocking pool.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// A blob written piece by piece: nothing is stored until [`BlobWriter::commit`], and a
    /// writer dropped before it leaves nothing.
    fn writer(&self) -> anyhow::Result<BlobWriter>;
    /// The blob's bytes, checked against its digest.
    fn read(&self, digest: &Digest) -> anyhow::Result<Vec<u8>>;
    /// Its size, if it is stored.
    fn len(&self, digest: &Digest) -> Option<u64>;
    /// A file on this node holding the blob's bytes, for what reads a path (the backends load
    /// models from files). A remote store fetches it into a node-local copy first.
    fn local_path(&self, digest: &Digest) -> anyhow::Result<PathBuf>;
    /// Removes the blob; whether it was there.
    fn remove(&self, digest: &Digest) -> anyhow::Result<bool>;
    /// Every stored blob, its size and when it was stored.
    fn list(&self) -> anyhow::Result<Vec<Listed>>;
    /// Whether other servers use the same blobs (then this one cannot know every holder).
    fn shared(&self) -> bool {
        false
    }
}

/// A stored blob, as [`BlobStore::list`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub digest: Digest,
    pub len: u64,
    /// When it was last written, in seconds since the Unix epoch.
    pub modified: u64,
}

/// Told of each blob an upload is about to store, before anything of it is stored: a store
/// shared by several servers keeps these marks, so that collection spares blobs whose
/// deployment is not recorded yet (see [`super::postgres`]).
pub trait UploadMarks: Send + Sync + fmt::Debug {
    /// Marks `digest` as being uploaded now (blocks on I/O).
    fn mark(&self, digest: &Digest) -> anyhow::Result<()>;
}

/// The bytes of a blob being written, as a store receives them.
pub trait BlobWrite: Send + fmt::Debug {
    /// Appends `bytes` (blocks on I/O).
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()>;
    /// Makes the bytes written so far durable (blocks on I/O).
    fn sync(&self) -> anyhow::Result<()>;
    /// Stores the bytes under their digest (storing bytes the store already holds is a
    /// no-op). Returns the digest and length.
    fn commit(self: Box<Self>) -> anyhow::Result<(Digest, u64)>;
}

/// A blob being written; see [`BlobStore::writer`].
#[derive(Debug)]
pub struct BlobWriter(Box<dyn BlobWrite>);

impl BlobWriter {
    pub fn new(inner: impl BlobWrite + 'static) -> Self {
        Self(Box::new(inner))
    }

    /// Makes the bytes written so far durable (blocks on I/O).
    pub fn sync(&self) -> anyhow::Result<()> {
        self.0.sync()
    }

    /// Appends `bytes` (blocks on I/O).
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.0.write(bytes)
    }

    /// Stores the bytes under their digest; see [`BlobWrite::commit`].
    pub fn commit(self) -> anyhow::Result<(Digest, u64)> {
        self.0.commit()
    }
}

/// Blobs as files `blobs/sha256/<hex>` in the data directory.
#[derive(Debug)]
pub struct DirBlobs {
    dir: Arc<DataDir>,
    blobs: PathBuf,
}

impl DirBlobs {
    pub fn open(dir: Arc<DataDir>) -> anyhow::Result<Self> {
        let blobs = dir.root().join(BLOBS);
        fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
        Ok(Self { dir, blobs })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }
}

impl BlobStore for DirBlobs {
    fn writer(&self) -> anyhow::Result<BlobWriter> {
        Ok(BlobWriter::new(FileWriter {
            file: HashedFile::new(self.dir.temp_file()?),
            blobs: self.blobs.clone(),
        }))
    }

    fn read(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.path(digest);
        let bytes =
            fs::read(&path).with_context(|| format!("cannot read blob {}", path.display()))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            bail!(
                "blob {} is damaged: its content hashes to {actual}",
                path.display()
            );
        }
        Ok(bytes)
    }

    fn len(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    fn local_path(&self, digest: &Digest) -> anyhow::Result<PathBuf> {
        Ok(self.path(digest))
    }

    fn remove(&self, digest: &Digest) -> anyhow::Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    fn list(&self) -> anyhow::Result<Vec<Listed>> {
        let mut all = Vec::new();
        for name in list(&self.blobs)? {
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let Ok(meta) = fs::metadata(self.path(&digest)) else {
                continue; // Removed meanwhile.
            };
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            all.push(Listed {
                digest,
                len: meta.len(),
                modified,
            });
        }
        Ok(all)
    }
}

/// A temporary file being written while its bytes are hashed: where every store's writer
/// keeps a blob until it commits. The file is removed when this is dropped, unless
/// [`HashedFile::kept`] says it was moved into place.
#[derive(Debug)]
pub(super) struct HashedFile {
    pub(super) temp: PathBuf,
    file: File,
    hasher: Sha256,
    pub(super) len: u64,
    kept: bool,
}

impl HashedFile {
    pub(super) fn new((temp, file): (PathBuf, File)) -> Self {
        Self {
            temp,
            file,
            hasher: Sha256::new(),
            len: 0,
            kept: false,
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.temp.display()))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub(super) fn sync(&self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.temp.display()))
    }

    /// Syncs the file; the digest of what was written.
    pub(super) fn finish(&mut self) -> anyhow::Result<Digest> {
        self.sync()?;
        Ok(Digest::from_bytes(
            std::mem::take(&mut self.hasher).finalize().into(),
        ))
    }

    /// Moves the file to `path` (it is no longer removed on drop).
    pub(super) fn keep_as(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        fs::rename(&self.temp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for HashedFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A blob being written to a temporary file of the data directory.
#[derive(Debug)]
struct FileWriter {
    file: HashedFile,
    blobs: PathBuf,
}

impl BlobWrite for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file.write(bytes)
    }

    fn sync(&self) -> anyhow::Result<()> {
        self.file.sync()
    }

    fn commit(mut self: Box<Self>) -> anyhow::Result<(Digest, u64)> {
        let digest = self.file.finish()?;
        let path = self.blobs.join(digest.hex());
        if !path.is_file() {
            self.file.keep_as(&path)?;
            sync_dir(&self.blobs)?;
        }
        Ok((digest, self.file.len))
    }
}
