//! The store: content-addressed blobs (components, models) and small JSON records in a local
//! data directory.
//!
//! Guarantees:
//! - every write goes to a temporary file, is fsynced, then renamed into place and the
//!   directory fsynced, so a crash at any point leaves either the old or the new version,
//!   never a torn file; temporary files left by a crash are removed on [`Store::open`];
//! - a blob is stored under the sha256 of its bytes and verified against it when read, so a
//!   damaged file is an error naming it, never a silently different model or component;
//! - errors name the file at fault.
//!
//! All calls block on the file system: call them from a blocking pool.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

pub use corral_parsers::digest::Digest;

/// A data directory, held by one process at a time.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    next_temp: AtomicU64,
    /// Who holds each blob; a blob nobody holds is removed.
    owners: Mutex<Owners>,
    /// The open `lock` file, locked exclusively for as long as the store is open.
    _lock: File,
}

const BLOBS: &str = "blobs/sha256";
const TEMP: &str = "tmp";
const LOCK: &str = "lock";

impl Store {
    /// Opens (creating if needed) the data directory at `root`, clearing temporary files a
    /// crash may have left.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        for dir in [BLOBS, TEMP] {
            let path = root.join(dir);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        // Before anything is cleared: another process using this directory keeps its files.
        let lock = lock(&root)?;
        let temp = root.join(TEMP);
        for entry in
            fs::read_dir(&temp).with_context(|| format!("cannot list {}", temp.display()))?
        {
            let path = entry?.path();
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove leftover {}", path.display()))?;
        }
        Ok(Self {
            root,
            next_temp: AtomicU64::new(0),
            owners: Mutex::default(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `bytes` and returns their digest. Storing the same bytes again is a no-op.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let (digest, _) = self.put_blob_from(bytes, u64::MAX)?;
        Ok(digest)
    }

    /// Streams a blob into the store, refusing it once it exceeds `limit` bytes (nothing is
    /// kept then). Returns its digest and length.
    pub fn put_blob_from(
        &self,
        mut reader: impl Read,
        limit: u64,
    ) -> anyhow::Result<(Digest, u64)> {
        let mut writer = self.blob_writer()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).context("cannot read the upload")?;
            if n == 0 {
                break;
            }
            if writer.len() + n as u64 > limit {
                bail!("the blob is larger than the limit of {limit} bytes");
            }
            writer.write(&buf[..n])?;
        }
        writer.commit()
    }

    /// A blob written piece by piece (each call blocks only for its own write): nothing is
    /// stored until [`BlobWriter::commit`], and a writer dropped before it leaves nothing.
    pub fn blob_writer(&self) -> anyhow::Result<BlobWriter> {
        let (temp, file) = self.temp_file()?;
        Ok(BlobWriter {
            temp,
            file,
            hasher: Sha256::new(),
            len: 0,
            blobs: self.root.join(BLOBS),
            committed: false,
        })
    }

    /// Commits `writer` and pins its blob, so that no collection removes it until
    /// [`Store::unpin`] (for an upload whose deployment is not recorded yet). Blocking.
    pub fn commit_pinned(&self, writer: BlobWriter) -> anyhow::Result<(Digest, u64)> {
        // The slow part (syncing a large file) outside the lock every collection takes.
        writer.sync()?;
        let mut owners = self.owners();
        let (digest, len) = writer.commit()?;
        *owners.pins.entry(digest).or_default() += 1;
        Ok((digest, len))
    }

    /// Releases a pin from [`Store::commit_pinned`]; the blob is removed if nothing else holds
    /// it. Blocking.
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
    /// been [`Store::refer`]red. Returns the blobs and bytes removed. Blocking.
    pub fn sweep(&self) -> anyhow::Result<(usize, u64)> {
        let owners = self.owners();
        let dir = self.root.join(BLOBS);
        let (mut removed, mut bytes) = (0, 0);
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|name| format!("sha256:{name}").parse::<Digest>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map_or(0, |m| m.len());
            if self.remove_if_unheld(&owners, &digest) {
                removed += 1;
                bytes += len;
            }
        }
        Ok((removed, bytes))
    }

    /// Size of a stored blob, in bytes (0 if it is not stored).
    pub fn blob_len(&self, digest: &Digest) -> u64 {
        fs::metadata(self.blob_path(digest)).map_or(0, |m| m.len())
    }

    /// Stops every removal of blobs: some record could not be read, so what it refers to is
    /// unknown (collection resumes at the next start with every record readable).
    pub fn keep_all_blobs(&self) {
        self.owners().keep_all = true;
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the blob if nothing holds it; whether it did.
    fn remove_if_unheld(&self, owners: &Owners, digest: &Digest) -> bool {
        if owners.keep_all || owners.refs.contains_key(digest) || owners.pins.contains_key(digest) {
            return false;
        }
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(blob = %digest, "blob collected");
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused blob");
                false
            }
        }
    }

    /// Reads a blob, checking it still has the digest it is stored under.
    pub fn read_blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest);
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

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(BLOBS).join(digest.hex())
    }

    /// Atomically replaces the JSON record at `relative` (e.g. `tenants/acme/tenant.json`).
    pub fn write_record<T: Serialize>(&self, relative: &Path, value: &T) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(value).context("cannot encode the record")?;
        self.write_file(relative, &json)
    }

    /// Atomically replaces the file at `relative` with `bytes`.
    pub fn write_file(&self, relative: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.record_path(relative)?;
        let (temp, mut file) = self.temp_file()?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        if let Some(parent) = path.parent() {
            self.create_dirs(parent)?;
        }
        self.commit(&temp, &path)
    }

    /// Creates `dir` and its missing ancestors durably: each new directory's entry is synced
    /// in its parent, so a record acknowledged after a crash is still reachable.
    fn create_dirs(&self, dir: &Path) -> anyhow::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
        sync_dir(dir.parent().unwrap_or(&self.root))
    }

    /// The file names in the record directory `relative` (empty if it does not exist).
    pub fn list(&self, relative: &Path) -> anyhow::Result<Vec<String>> {
        let path = self.record_path(relative)?;
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", path.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// Removes the record directory `relative` and everything in it (durably).
    pub fn remove_dir(&self, relative: &Path) -> anyhow::Result<()> {
        let path = self.record_path(relative)?;
        match fs::remove_dir_all(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// The absolute path of the record or file at `relative`.
    pub fn path(&self, relative: &Path) -> anyhow::Result<PathBuf> {
        self.record_path(relative)
    }

    /// Reads the JSON record at `relative`; `None` if there is none.
    pub fn read_record<T: DeserializeOwned>(&self, relative: &Path) -> anyhow::Result<Option<T>> {
        let path = self.record_path(relative)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a valid record", path.display()))
    }

    /// Removes the record at `relative` (durably); removing a missing record is not an error.
    pub fn remove_record(&self, relative: &Path) -> anyhow::Result<()> {
        let path = self.record_path(relative)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Records are plain relative paths below the root, never blobs or temporary files.
    fn record_path(&self, relative: &Path) -> anyhow::Result<PathBuf> {
        let plain = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let reserved = relative.starts_with("blobs")
            || relative.starts_with(TEMP)
            || relative.starts_with(LOCK);
        if !plain || reserved || relative.as_os_str().is_empty() {
            bail!("{} is not a record path", relative.display());
        }
        Ok(self.root.join(relative))
    }

    fn temp_file(&self) -> anyhow::Result<(PathBuf, File)> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(TEMP)
            .join(format!("{}-{n}", std::process::id()));
        // Owner-only: records include private keys (tenant certificates).
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok((path, file))
    }

    /// Renames a synced temporary file into place and makes the rename durable.
    fn commit(&self, temp: &Path, path: &Path) -> anyhow::Result<()> {
        fs::rename(temp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }
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

/// A blob being written; see [`Store::blob_writer`].
#[derive(Debug)]
pub struct BlobWriter {
    temp: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    blobs: PathBuf,
    committed: bool,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the bytes written so far durable (blocks on the file system).
    pub fn sync(&self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.temp.display()))
    }

    /// Appends `bytes` (blocks on the file system).
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.temp.display()))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the bytes and moves them into place under their digest (storing bytes the store
    /// already holds is a no-op). Returns the digest and length.
    pub fn commit(mut self) -> anyhow::Result<(Digest, u64)> {
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

impl Drop for BlobWriter {
    /// Removes the temporary file unless it was moved into place.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Locks the data directory at `root` for this process (an advisory lock the kernel drops
/// when the process exits, however it exits), recording the process id in the lock file for
/// the message another process gets.
fn lock(root: &Path) -> anyhow::Result<File> {
    let path = root.join(LOCK);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "the data directory {} is in use by another Corral process (pid {}); \
                 stop it first, or give this one its own --data",
                root.display(),
                holder.trim()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

#[cfg(test)]
mod tests;
