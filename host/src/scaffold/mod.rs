//! `corral new NAME`: a guest project that builds with one command (`cargo build --release`)
//! and deploys with `corral deploy`. The templates sit next to this file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("Cargo.toml.tmpl")),
    (".cargo/config.toml", include_str!("config.toml.tmpl")),
    ("src/main.rs", include_str!("main.rs.tmpl")),
    ("README.md", include_str!("README.md.tmpl")),
    (".gitignore", include_str!("gitignore.tmpl")),
];

/// Writes a new guest project `name` into `dir` (which must not exist or be empty), depending
/// on the `corral-guest` crate at `sdk`. Returns the files written.
pub fn create(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        bail!(
            "'{}' is not a valid project name: start with a-z, then a-z, 0-9, '-' or '_'",
            name.escape_debug()
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("--sdk {}: no such directory", sdk.display()))?;
    let sdk_path = toml::Value::String(sdk.display().to_string()).to_string();
    let mut written = Vec::new();
    for (relative, template) in FILES {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = template
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk_path);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Finds the `corral-guest` crate: `CORRAL_GUEST_SDK`, else a `guest-sdk/` folder in or above
/// the current directory or the `corral` binary's directory (a Corral checkout).
pub fn find_sdk() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CORRAL_GUEST_SDK") {
        return Ok(PathBuf::from(path));
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let manifest = dir.join("guest-sdk/Cargo.toml");
            if std::fs::read_to_string(&manifest)
                .is_ok_and(|text| text.contains("name = \"corral-guest\""))
            {
                return Ok(dir.join("guest-sdk"));
            }
        }
    }
    bail!(
        "cannot find the corral-guest crate: pass --sdk PATH (the guest-sdk folder of a Corral \
         checkout) or set CORRAL_GUEST_SDK"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_existing_folders_are_kept() {
        let dir = std::env::temp_dir().join(format!("corral-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        assert!(create("Bad Name", &dir.join("x"), &sdk).is_err());
        let files = create("my-app", &dir.join("my-app"), &sdk).unwrap();
        assert_eq!(files.len(), FILES.len());
        let manifest = std::fs::read_to_string(dir.join("my-app/Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-app\"") && manifest.contains("guest-sdk\""));
        let err = create("my-app", &dir.join("my-app"), &sdk).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
