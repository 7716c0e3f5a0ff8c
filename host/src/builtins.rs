//! Corral's built-in components (`host/builtins/`, built from source by `cargo xtask
//! build-guests`, never committed as binaries): what a deployment that brings models but no
//! component runs. Each is an ordinary component, stored as a blob like an uploaded one and
//! sandboxed like any tenant's; only where its bytes come from differs.
//!
//! They ship beside the `corral` binary, as `corral-builtin-NAME.wasm` (the package
//! `host/builtins/NAME` builds). Looked up, in order: in `$CORRAL_BUILTINS_DIR`; in `builtins/`
//! next to the binary; in the build's own output (`target/guests/wasm32-wasip2/release/`, for
//! a `corral` run from `target/`).

use std::path::{Path, PathBuf};

/// The Open Inference Protocol over the deployment's models (`host/builtins/inference`): what
/// a deployment with models and no component runs.
pub const INFERENCE: &str = "inference";
/// JPEG or PNG in, the most likely classes out (`host/builtins/image-classification`).
pub const IMAGE_CLASSIFICATION: &str = "image-classification";
/// Sentences in, embeddings and similarities out (`host/builtins/text-embedding`).
pub const TEXT_EMBEDDING: &str = "text-embedding";
/// Every built-in component, by the name a deploy's `builtin` part gives.
pub const NAMES: &[&str] = &[INFERENCE, IMAGE_CLASSIFICATION, TEXT_EMBEDDING];

/// Where built-in component `name` may be, in the order they are tried.
fn candidates(name: &str) -> Vec<PathBuf> {
    let file = format!("corral-builtin-{name}.wasm");
    let mut paths = Vec::new();
    if let Some(dir) = std::env::var_os("CORRAL_BUILTINS_DIR") {
        paths.push(Path::new(&dir).join(&file));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        paths.push(dir.join("builtins").join(&file));
        // target/{debug,release}/corral, and target/{debug,release}/deps/ for tests.
        for up in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            paths.push(up.join("guests/wasm32-wasip2/release").join(&file));
        }
    }
    paths
}

/// The bytes of built-in component `name`, or why there are none (naming where it looked).
pub fn component(name: &str) -> Result<Vec<u8>, String> {
    let paths = candidates(name);
    for path in &paths {
        if let Ok(bytes) = std::fs::read(path) {
            return Ok(bytes);
        }
    }
    let looked: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "this server has no built-in '{name}' component (looked for {}); build it with \
         `cargo xtask build-guests` and put corral-builtin-{name}.wasm in a `builtins/` folder \
         beside the `corral` binary or in CORRAL_BUILTINS_DIR, or upload a component",
        looked.join(", ")
    ))
}
