//! Compiled components, cached on disk so that restarts and cold tenants do not recompile.
//!
//! A compiled component is stored next to the data directory's blobs under
//! `cache/components/<component sha256>-<engine key>.cwasm`, where the engine key hashes
//! everything that makes compiled code valid for this engine (wasmtime version, compiler
//! settings, tunables). A different engine simply misses the cache. Files are written
//! atomically through the store, and an unreadable entry is recompiled, never fatal.

use std::hash::Hasher;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::store::{Digest, Store};

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

/// The on-disk cache of compiled components for one engine.
#[derive(Debug)]
pub struct ComponentCache {
    key: String,
}

impl ComponentCache {
    pub fn new(engine: &Engine) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let key = hasher.0.finalize();
        Self {
            key: key[..8].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The component stored as blob `digest`, compiled for `engine`: from the cache when it
    /// is there, else compiled from the blob and cached. Blocking and possibly slow.
    pub fn load(
        &self,
        engine: &Engine,
        store: &Store,
        digest: &Digest,
    ) -> Result<Component, CompileError> {
        let relative = PathBuf::from(format!(
            "cache/components/{}-{}.cwasm",
            digest.hex(),
            self.key
        ));
        let path = store.path(&relative).map_err(CompileError::Store)?;
        if path.is_file() {
            match deserialize(engine, &path) {
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
        let bytes = store.read_blob(digest).map_err(CompileError::Store)?;
        let started = std::time::Instant::now();
        let component =
            compile_bytes(engine, &bytes).map_err(|e| CompileError::Invalid(e.to_string()))?;
        tracing::info!(component = %digest, compile_ms = started.elapsed().as_millis() as u64, "component compiled");
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = store.write_file(&relative, &compiled) {
                    tracing::warn!(error = %e, "cannot cache the compiled component");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled component"),
        }
        Ok(component)
    }
}

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
