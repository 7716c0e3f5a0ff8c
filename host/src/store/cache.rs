//! Node-local files that can always be made again (compiled components): never shared
//! between servers, never backed up, and an unreadable one is rebuilt, never fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dir::DataDir;

/// `cache/` in the data directory.
#[derive(Debug, Clone)]
pub struct CacheDir {
    dir: Arc<DataDir>,
}

impl CacheDir {
    pub fn new(dir: Arc<DataDir>) -> Self {
        Self { dir }
    }

    /// Where the entry `name` (e.g. `components/<digest>-<engine>.cwasm`) is kept.
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.dir.path(&Self::relative(name))
    }

    /// Atomically replaces the entry `name` with `bytes`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.dir.write_file(&Self::relative(name), bytes)
    }

    fn relative(name: &str) -> PathBuf {
        Path::new("cache").join(name)
    }
}
