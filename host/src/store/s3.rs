//! Blobs in S3-compatible object storage (`[cluster] blob_url = "s3://bucket[/prefix]"`),
//! shared by every replica, with a node-local read-through cache.
//!
//! - Keys are `[prefix/]blobs/sha256/<hex>`: immutable and content-addressed, so an upload of
//!   bytes already stored writes nothing and replicas never disagree about a key's content.
//! - A blob being written goes to a temporary file of the data directory while it is hashed;
//!   at commit it is uploaded (in parts, for large models) unless the bucket already has it,
//!   and the file becomes this node's cached copy.
//! - Reads go through the cache (`cache/blobs/<hex>` in the data directory): a missing copy
//!   is downloaded to a temporary file, checked against its digest, and moved into place. The
//!   cache holds at most `[cluster] cache_bytes`, least recently used copies evicted first.
//! - Endpoint, region and credentials come from the standard `AWS_*` environment variables
//!   (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_ALLOW_HTTP` for a local server); requests are path-style unless
//!   `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says otherwise. TLS is rustls with ring.
//!
//! The object store's client is async; [`BlobStore`] calls block, so this store drives it on
//! a small runtime of its own.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest as _, Sha256};

use super::Digest;
use super::blobs::{BlobStore, BlobWrite, BlobWriter, HashedFile, Listed, UploadMarks};
use super::dir::{DataDir, sync_dir};

/// Where this node keeps its copies, under the data directory.
const CACHE: &str = "cache/blobs";
/// Size of the parts a blob is uploaded and read in.
const CHUNK: usize = 8 << 20;

/// Blobs in an S3 bucket, cached on this node.
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    prefix: Path,
    dir: Arc<DataDir>,
    cache: PathBuf,
    lru: Arc<Lru>,
    runtime: Runtime,
    /// Told of each upload before it is stored, once the store is shared through a database.
    marks: OnceLock<Arc<dyn UploadMarks>>,
}

impl fmt::Debug for S3Blobs {
    /// The bucket and prefix only: the client's configuration holds the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Blobs")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The cache's copies by last use, bounded in bytes.
#[derive(Debug)]
struct Lru {
    budget: u64,
    tick: AtomicU64,
    copies: Mutex<HashMap<Digest, (u64, u64)>>,
}

impl Lru {
    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, (u64, u64)>> {
        self.copies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn touch(&self, digest: &Digest) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = self.lock().get_mut(digest) {
            entry.1 = tick;
        }
    }

    /// Records a new copy of `len` bytes and returns the copies to remove (least recently
    /// used first, never `digest` itself) to stay within the budget.
    fn insert(&self, digest: Digest, len: u64) -> Vec<Digest> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut copies = self.lock();
        copies.insert(digest, (len, tick));
        let mut total: u64 = copies.values().map(|(len, _)| len).sum();
        let mut by_age: Vec<(u64, Digest, u64)> = copies
            .iter()
            .filter(|(d, _)| **d != digest)
            .map(|(d, (len, tick))| (*tick, *d, *len))
            .collect();
        by_age.sort_unstable();
        let mut evicted = Vec::new();
        for (_, old, len) in by_age {
            if total <= self.budget {
                break;
            }
            copies.remove(&old);
            total -= len;
            evicted.push(old);
        }
        evicted
    }

    fn remove(&self, digest: &Digest) {
        self.lock().remove(digest);
    }
}

/// A multi-threaded runtime dropped without waiting, so this store may be dropped anywhere
/// (even on an async task).
#[derive(Debug)]
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("until dropped").block_on(future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl S3Blobs {
    /// The bucket named by `url` (`s3://bucket` or `s3://bucket/prefix`), configured from the
    /// standard `AWS_*` environment variables, cached in `dir` up to `cache_bytes`.
    pub fn open(url: &str, dir: Arc<DataDir>, cache_bytes: u64) -> anyhow::Result<Self> {
        Self::open_with(AmazonS3Builder::from_env(), url, dir, cache_bytes)
    }

    /// [`S3Blobs::open`] with the client configured by `builder` (tests give the endpoint
    /// and credentials here, not through the process environment).
    pub fn open_with(
        builder: AmazonS3Builder,
        url: &str,
        dir: Arc<DataDir>,
        cache_bytes: u64,
    ) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!(
                "[cluster] blob_url must look like s3://bucket or s3://bucket/prefix, not '{url}'"
            );
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // The HTTP client's TLS uses the process's rustls provider: ring, as everywhere in
        // Corral (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if bucket.is_empty() {
            bail!("[cluster] blob_url '{url}' names no bucket");
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("cannot configure object storage for {url}"))?;
        let prefix = Path::parse(prefix.trim_matches('/'))
            .with_context(|| format!("[cluster] blob_url '{url}' has an invalid prefix"))?
            .join("blobs")
            .join("sha256");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("corral-s3")
            .enable_all()
            .build()
            .context("cannot start the object storage client's runtime")?;
        let cache = dir.root().join(CACHE);
        fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
        let lru = Arc::new(Lru {
            budget: cache_bytes,
            tick: AtomicU64::new(0),
            copies: Mutex::new(HashMap::new()),
        });
        let blobs = Self {
            store: Arc::new(store),
            prefix,
            dir,
            cache,
            lru,
            runtime: Runtime(Some(runtime)),
            marks: OnceLock::new(),
        };
        // Copies a previous run left count against the budget (oldest names first).
        for name in super::dir::list(&blobs.cache)? {
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let len = fs::metadata(blobs.cache.join(&name)).map_or(0, |m| m.len());
            for old in blobs.lru.insert(digest, len) {
                let _ = fs::remove_file(blobs.cached(&old));
            }
        }
        // Reach the bucket now, so a wrong endpoint or credentials stop the start.
        blobs
            .runtime
            .block_on(blobs.store.list(Some(&blobs.prefix)).next())
            .transpose()
            .with_context(|| format!("cannot list the bucket of {url}"))?;
        Ok(blobs)
    }

    /// Tells `marks` of every blob an upload is about to store, before it is stored (the
    /// first call only).
    pub fn mark_uploads(&self, marks: Arc<dyn UploadMarks>) {
        let _ = self.marks.set(marks);
    }

    fn key(&self, digest: &Digest) -> Path {
        self.prefix.clone().join(digest.hex())
    }

    fn cached(&self, digest: &Digest) -> PathBuf {
        self.cache.join(digest.hex())
    }

    /// Moves `file` into the cache as `digest`'s copy, evicting what the budget needs.
    fn keep(&self, file: &FsPath, digest: &Digest, len: u64) -> anyhow::Result<PathBuf> {
        let path = self.cached(digest);
        fs::rename(file, &path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        sync_dir(&self.cache)?;
        for old in self.lru.insert(*digest, len) {
            let _ = fs::remove_file(self.cached(&old));
        }
        Ok(path)
    }

    /// Downloads the blob to a temporary file, checking its digest; the file and its length.
    fn download(&self, digest: &Digest) -> anyhow::Result<(PathBuf, u64)> {
        let key = self.key(digest);
        let (temp, mut file) = self.dir.temp_file()?;
        let result = self.runtime.block_on(async {
            let mut stream = self
                .store
                .get(&key)
                .await
                .with_context(|| format!("cannot fetch blob {digest} from object storage"))?
                .into_stream();
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("cannot fetch blob {digest}"))?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
                file.write_all(&chunk)
                    .with_context(|| format!("cannot write {}", temp.display()))?;
            }
            anyhow::Ok((Digest::from_bytes(hasher.finalize().into()), len))
        });
        let checked = result.and_then(|(actual, len)| {
            if actual != *digest {
                bail!("blob {digest} in object storage is damaged: its content hashes to {actual}");
            }
            file.sync_all()
                .with_context(|| format!("cannot sync {}", temp.display()))?;
            Ok(len)
        });
        match checked {
            Ok(len) => Ok((temp, len)),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }
}

impl BlobStore for S3Blobs {
    fn writer(&self) -> anyhow::Result<BlobWriter> {
        Ok(BlobWriter::new(S3Writer {
            file: HashedFile::new(self.dir.temp_file()?),
            blobs: S3Target {
                store: Arc::clone(&self.store),
                prefix: self.prefix.clone(),
                cache: self.cache.clone(),
                lru: Arc::clone(&self.lru),
                marks: self.marks.get().cloned(),
                runtime: self
                    .runtime
                    .0
                    .as_ref()
                    .expect("until dropped")
                    .handle()
                    .clone(),
            },
        }))
    }

    fn read(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.local_path(digest)?;
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            // A damaged copy is dropped, so the next read fetches it again.
            let _ = fs::remove_file(&path);
            self.lru.remove(digest);
            bail!(
                "the cached copy {} is damaged: its content hashes to {actual}",
                path.display()
            );
        }
        Ok(bytes)
    }

    fn len(&self, digest: &Digest) -> Option<u64> {
        if let Ok(meta) = fs::metadata(self.cached(digest)) {
            return Some(meta.len());
        }
        let key = self.key(digest);
        self.runtime
            .block_on(self.store.head(&key))
            .ok()
            .map(|meta| meta.size)
    }

    fn local_path(&self, digest: &Digest) -> anyhow::Result<PathBuf> {
        let path = self.cached(digest);
        if path.is_file() {
            self.lru.touch(digest);
            return Ok(path);
        }
        let (temp, len) = self.download(digest)?;
        self.keep(&temp, digest, len)
    }

    fn remove(&self, digest: &Digest) -> anyhow::Result<bool> {
        let key = self.key(digest);
        let existed = self.runtime.block_on(self.store.head(&key)).is_ok();
        match self.runtime.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove blob {digest}")),
        }
        let _ = fs::remove_file(self.cached(digest));
        self.lru.remove(digest);
        Ok(existed)
    }

    fn list(&self) -> anyhow::Result<Vec<Listed>> {
        self.runtime.block_on(async {
            let mut all = Vec::new();
            let mut stream = self.store.list(Some(&self.prefix));
            while let Some(meta) = stream.next().await {
                let meta = meta.context("cannot list the bucket")?;
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                if let Ok(digest) = format!("sha256:{name}").parse::<Digest>() {
                    all.push(Listed {
                        digest,
                        len: meta.size,
                        modified: meta.last_modified.timestamp().max(0) as u64,
                    });
                }
            }
            Ok(all)
        })
    }

    fn shared(&self) -> bool {
        true
    }
}

/// What a writer needs of its store to commit.
struct S3Target {
    store: Arc<AmazonS3>,
    prefix: Path,
    cache: PathBuf,
    lru: Arc<Lru>,
    marks: Option<Arc<dyn UploadMarks>>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Target")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A blob being written to a temporary file, uploaded at commit.
#[derive(Debug)]
struct S3Writer {
    file: HashedFile,
    blobs: S3Target,
}

impl BlobWrite for S3Writer {
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file.write(bytes)
    }

    fn sync(&self) -> anyhow::Result<()> {
        self.file.sync()
    }

    fn commit(mut self: Box<Self>) -> anyhow::Result<(Digest, u64)> {
        let digest = self.file.finish()?;
        let len = self.file.len;
        let target = &self.blobs;
        // Marked before the bucket is asked whether it has the blob: a collection that might
        // remove it either has finished by then (and the blob is uploaded again) or sees the
        // mark and spares it.
        if let Some(marks) = &target.marks {
            marks
                .mark(&digest)
                .with_context(|| format!("cannot record the upload of blob {digest}"))?;
        }
        let key = target.prefix.clone().join(digest.hex());
        let temp = self.file.temp.clone();
        let small = len <= CHUNK as u64;
        target.runtime.block_on(async {
            if target.store.head(&key).await.is_ok() {
                return anyhow::Ok(()); // Same key, same bytes: already stored.
            }
            if small {
                let bytes =
                    fs::read(&temp).with_context(|| format!("cannot read {}", temp.display()))?;
                target
                    .store
                    .put(&key, bytes.into())
                    .await
                    .with_context(|| format!("cannot upload blob {digest}"))?;
                return Ok(());
            }
            let upload = target
                .store
                .put_multipart(&key)
                .await
                .with_context(|| format!("cannot upload blob {digest}"))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let mut file =
                File::open(&temp).with_context(|| format!("cannot read {}", temp.display()))?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file
                    .read(&mut buf)
                    .with_context(|| format!("cannot read {}", temp.display()))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .with_context(|| format!("cannot upload blob {digest}"))?;
                writer.write(&buf[..n]);
            }
            writer
                .finish()
                .await
                .with_context(|| format!("cannot upload blob {digest}"))?;
            Ok(())
        })?;
        // The uploaded file becomes this node's copy.
        let path = target.cache.join(digest.hex());
        if self.file.keep_as(&path).is_ok() {
            for old in target.lru.insert(digest, len) {
                let _ = fs::remove_file(target.cache.join(old.hex()));
            }
        }
        Ok((digest, len))
    }
}
