//! Models by content: their format, their identity ([`ModelKey`]) and where their bytes can be
//! read again ([`ModelSource`]). The model cache (`inference::cache`) loads each distinct file
//! once and shares it with every deployment that refers to it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The sha256 of a model file's bytes: a model's identity everywhere in Corral.
pub type ModelDigest = corral_parsers::digest::Digest;

/// Model file formats Corral can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    /// TorchScript (`torch.jit.save`), the `wasi:nn` encoding `pytorch`.
    Pytorch,
}

impl ModelFormat {
    /// The format a file name implies: `*.onnx`, or `*.pt` / `*.torchscript`.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match Self::from_extension(extension) {
            Some(format) => Ok(format),
            None => bail!(
                "{}: unknown model format; Corral serves ONNX (*.onnx) and TorchScript \
                 (*.pt, *.torchscript) models",
                path.display()
            ),
        }
    }

    /// The format a file extension implies.
    pub fn from_extension(extension: &str) -> Option<Self> {
        let extension = extension.to_ascii_lowercase();
        match extension.as_str() {
            "onnx" => Some(Self::Onnx),
            "pt" | "torchscript" => Some(Self::Pytorch),
            _ => None,
        }
    }

    /// The format named by a `format` field (`onnx`, `pytorch` or `torchscript`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "onnx" => Some(Self::Onnx),
            "pytorch" | "torchscript" => Some(Self::Pytorch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Pytorch => "pytorch",
        }
    }
}

/// A model's identity: its bytes and the format they are loaded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub digest: ModelDigest,
    pub format: ModelFormat,
}

/// Where a model's bytes can be read again (the model cache reloads an evicted model from it).
pub trait ModelSource: Send + Sync + std::fmt::Debug {
    /// The model's bytes, checked against its digest. Blocking.
    fn read(&self) -> anyhow::Result<Vec<u8>>;
}

/// A model file on disk (`corral run`'s models, the store's blobs), checked by digest on read.
#[derive(Debug)]
pub struct ModelFile {
    pub path: PathBuf,
    pub digest: ModelDigest,
}

impl ModelSource for ModelFile {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("cannot read the model file {}", self.path.display()))?;
        let actual = ModelDigest::of(&bytes);
        if actual != self.digest {
            bail!(
                "the model file {} changed: its sha256 is {actual}, {} was deployed",
                self.path.display(),
                self.digest
            );
        }
        Ok(bytes)
    }
}
