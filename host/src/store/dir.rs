//! The data directory itself: held by one process at a time, and written only through
//! temporary files that are synced, renamed into place and made durable in their directory,
//! so a crash at any point leaves the old or the new file, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// Where blobs live (the [`DirBlobs`](super::DirBlobs) implementation's own).
pub(super) const BLOBS: &str = "blobs/sha256";
const TEMP: &str = "tmp";
const LOCK: &str = "lock";

/// A data directory, locked for this process while it is open.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    next_temp: AtomicU64,
    /// The open `lock` file, locked exclusively for as long as the directory is open.
    _lock: File,
}

impl DataDir {
    /// Opens (creating if needed) the data directory at `root`, clearing temporary files a
    /// crash may have left. Refused while another process holds it.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        let temp = root.join(TEMP);
        fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
        // Before anything is cleared: another process using this directory keeps its files.
        let lock = lock(&root)?;
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
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of the file at `relative`: a plain relative path below the root,
    /// never the blobs, temporary files or the lock.
    pub fn path(&self, relative: &Path) -> anyhow::Result<PathBuf> {
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        let reserved = relative.starts_with("blobs")
            || relative.starts_with(TEMP)
            || relative.starts_with(LOCK);
        if !plain || reserved || relative.as_os_str().is_empty() {
            bail!("{} is not a record path", relative.display());
        }
        Ok(self.root.join(relative))
    }

    /// Atomically replaces the file at `relative` with `bytes` (readable by this user only:
    /// records include private keys).
    pub fn write_file(&self, relative: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(relative)?;
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
        self.rename_into_place(&temp, &path)
    }

    /// The bytes of the file at `relative`; `None` if there is none.
    pub fn read_file(&self, relative: &Path) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path(relative)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Removes the file at `relative` (durably); whether there was one.
    pub fn remove_file(&self, relative: &Path) -> anyhow::Result<bool> {
        let path = self.path(relative)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Removes the directory `relative` and everything in it (durably).
    pub fn remove_dir(&self, relative: &Path) -> anyhow::Result<()> {
        let path = self.path(relative)?;
        match fs::remove_dir_all(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// The names in the directory `relative`, sorted (empty if it does not exist).
    pub fn list(&self, relative: &Path) -> anyhow::Result<Vec<String>> {
        let path = self.path(relative)?;
        list(&path)
    }

    /// A new temporary file (owner-only) that a crash leaves for the next open to clear.
    pub(super) fn temp_file(&self) -> anyhow::Result<(PathBuf, File)> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(TEMP)
            .join(format!("{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok((path, file))
    }

    /// Creates `dir` and its missing ancestors durably: each new directory's entry is synced
    /// in its parent, so a file acknowledged after a crash is still reachable.
    pub(super) fn create_dirs(&self, dir: &Path) -> anyhow::Result<()> {
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

    /// Renames a synced temporary file into place and makes the rename durable.
    fn rename_into_place(&self, temp: &Path, path: &Path) -> anyhow::Result<()> {
        fs::rename(temp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }
}

/// The names in `dir`, sorted (empty if it does not exist).
pub(super) fn list(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
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

pub(super) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}
