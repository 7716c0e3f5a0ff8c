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
    /// Every stored blob and its size.
    fn list(&self) -> anyhow::Result<Vec<(Digest, u64)>>;
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
        let (temp, file) = self.dir.temp_file()?;
        Ok(BlobWriter::new(FileWriter {
            temp,
            file,
            hasher: Sha256::new(),
            len: 0,
            blobs: self.blobs.clone(),
            committed: false,
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

    fn list(&self) -> anyhow::Result<Vec<(Digest, u64)>> {
        let mut all = Vec::new();
        for name in list(&self.blobs)? {
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            all.push((digest, self.len(&digest).unwrap_or(0)));
        }
        Ok(all)
    }
}

/// A blob being written to a temporary file of the data directory.
#[derive(Debug)]
struct FileWriter {
    temp: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    blobs: PathBuf,
    committed: bool,
}

impl BlobWrite for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.temp.display()))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.temp.display()))
    }

    fn commit(mut self: Box<Self>) -> anyhow::Result<(Digest, u64)> {
        self.sync()?;
        let digest = Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        let path = self.blobs.join(digest.hex());
        if !path.is_file() {
            fs::rename(&self.temp, &path)
                .with_context(|| format!("cannot move {} into place", path.display()))?;
            self.committed = true;
            sync_dir(&self.blobs)?;
        }
        Ok((digest, self.len))
    }
}

impl Drop for FileWriter {
    /// Removes the temporary file unless it was moved into place.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
