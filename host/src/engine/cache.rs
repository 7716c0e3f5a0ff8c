//! Compiled components, cached on disk so that restarts and cold tenants do not recompile.
//!
//! A compiled component is stored next to the data directory's blobs under
//! `cache/components/<component sha256>-<engine key>.cwasm`, where the engine key hashes
//! everything that makes compiled code valid for this engine (wasmtime version, compiler
//! settings, tunables). A different engine simply misses the cache. Files are written
//! atomically through the store's node-local [`CacheDir`], and an unreadable entry is
//! recompiled, never fatal.
//!
//! In memory, a component is loaded once however many deployments use it: tenants deploying
//! the same component bytes share its code, metadata and type registrations.

use std::hash::Hasher;
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::store::{CacheDir, Digest};

/// Why a component cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The bytes are not a WebAssembly component (wasmtime's or our own message).
    #[error("{0}")]
    Invalid(String),
    /// The store failed (I/O), not the component.
    #[error("{0:#}")]
    Store(anyhow::Error),
}

/// The compiled components of one engine: on disk, and the ones in use in memory.
#[derive(Debug)]
pub struct ComponentCache {
    key: String,
    /// Components some deployment holds, by digest.
    live: DashMap<Digest, Weak<Component>>,
}

impl ComponentCache {
    pub fn new(engine: &Engine) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let key = hasher.0.finalize();
        Self {
            key: key[..8].iter().map(|b| format!("{b:02x}")).collect(),
            live: DashMap::new(),
        }
    }

    /// The component whose bytes have `digest` (read by `bytes` only when they must be
    /// compiled): the one already in memory if a deployment holds it, else loaded by
    /// `load_uncached` and kept for later deployments while any holds it. Blocking and
    /// possibly slow.
    pub fn load(
        &self,
        engine: &Engine,
        cache: Option<&CacheDir>,
        digest: &Digest,
        bytes: &dyn Fn() -> anyhow::Result<Vec<u8>>,
    ) -> Result<Arc<Component>, CompileError> {
        if let Some(component) = self.live.get(digest).and_then(|weak| weak.upgrade()) {
            return Ok(component);
        }
        let component = Arc::new(self.load_uncached(engine, cache, digest, bytes)?);
        self.live.retain(|_, weak| weak.strong_count() > 0);
        self.live.insert(*digest, Arc::downgrade(&component));
        Ok(component)
    }

    /// The component whose bytes have `digest`, compiled for `engine`: from the cache when
    /// it is there, else compiled from its bytes and cached. Blocking and possibly slow.
    fn load_uncached(
        &self,
        engine: &Engine,
        cache: Option<&CacheDir>,
        digest: &Digest,
        bytes: &dyn Fn() -> anyhow::Result<Vec<u8>>,
    ) -> Result<Component, CompileError> {
        let name = format!("components/{}-{}.cwasm", digest.hex(), self.key);
        let path = match cache {
            Some(cache) => Some(cache.path(&name).map_err(CompileError::Store)?),
            None => None,
        };
        if let Some(path) = path.as_ref().filter(|path| path.is_file()) {
            match deserialize(engine, path) {
                Ok(component) => {
                    tracing::info!(component = %digest, "compiled component loaded from cache");
                    return Ok(component);
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cached compiled component unusable; recompiling"
                ),
            }
        }
        let bytes = bytes().map_err(CompileError::Store)?;
        let started = std::time::Instant::now();
        let compiled = compile_bytes(engine, &bytes);
        release_compiler_memory();
        let component = compiled.map_err(|e| CompileError::Invalid(e.to_string()))?;
        tracing::info!(component = %digest, compile_ms = started.elapsed().as_millis() as u64, "component compiled");
        let (Some(cache), Some(path)) = (cache, path) else {
            return Ok(component);
        };
        match component.serialize() {
            Ok(compiled) => match cache.write(&name, &compiled) {
                // Serve from the file, as after a restart: its code is mapped from the page
                // cache (only the pages in use resident) instead of held in this process's
                // heap, with the compiler's scratch memory freed.
                Ok(()) => match deserialize(engine, &path) {
                    Ok(mapped) => return Ok(mapped),
                    Err(e) => tracing::warn!(error = %e, "cannot map the cached component"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot cache the compiled component"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled component"),
        }
        Ok(component)
    }
}

/// Hands the memory cranelift freed back to the kernel. It compiles on several threads, each
/// with its own glibc malloc arena, and glibc keeps freed arena pages: without this, every
/// distinct component compiled leaves several MiB resident for good (see the "distinct" rows
/// of docs/benchmarks.md's density table for what remains).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_compiler_memory() {
    // SAFETY: malloc_trim only returns free pages of the heap and arenas to the kernel; it has
    // no preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_compiler_memory() {}

/// Loads a compiled component written by [`ComponentCache::load`].
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &std::path::Path) -> wasmtime::Result<Component> {
    // SAFETY: only files this module wrote are read here: `Component::serialize` output for
    // an engine with the same compatibility key, written into the operator's data directory
    // atomically (temp file + fsync + rename), so the file is whole and ours. Wasmtime still
    // checks its header against the engine and fails (we then recompile) on a mismatch.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Checks the 8-byte header: a component, not a core module or something else entirely.
pub fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0, 0, 0]) => Err(
            "this is a core WebAssembly module, not a component: build for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ),
        Some([0, b'a', b's', b'm', ..]) => {
            Err("this WebAssembly binary has an unknown version or layer".into())
        }
        _ => Err("this is not a WebAssembly file (no \\0asm header)".into()),
    }
}

/// Compiles component bytes. Slow (cranelift): call it off the async workers.
pub fn compile_bytes(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    check_component_header(bytes).map_err(anyhow::Error::msg)?;
    Component::new(engine, bytes)
        .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e:#}"))
}

/// Feeds `Hash` output into sha256, so the key is the same across Rust versions.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_of_the_same_bytes_share_one_component_while_any_holds_it() {
        let dir = std::env::temp_dir().join(format!("corral-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = crate::store::Store::open(&dir, &Default::default()).unwrap();
        let read = |digest: Digest| {
            let blobs = &store.blobs;
            move || blobs.read(&digest)
        };
        let engine = Engine::default();
        let cache = ComponentCache::new(&engine);
        let first = store
            .blobs
            .put(&wat::parse_str("(component)").unwrap())
            .unwrap();
        let other = store
            .blobs
            .put(&wat::parse_str("(component (core module))").unwrap())
            .unwrap();

        let a = cache
            .load(&engine, Some(&store.cache), &first, &read(first))
            .unwrap();
        let b = cache
            .load(&engine, Some(&store.cache), &first, &read(first))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same bytes load one component");
        let c = cache
            .load(&engine, Some(&store.cache), &other, &read(other))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "other bytes are another component");
        assert!(
            dir.join(format!(
                "cache/components/{}-{}.cwasm",
                first.hex(),
                cache.key
            ))
            .is_file(),
            "the compiled component is on disk for restarts"
        );

        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "the cache does not keep it alive");
        let again = cache
            .load(&engine, Some(&store.cache), &first, &read(first))
            .unwrap();
        assert_eq!(Arc::strong_count(&again), 1);
        assert_eq!(cache.live.len(), 2, "only live components are listed");
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
