//! Deployment uploads: `multipart/form-data` with a part `component` (the `.wasm`) and a part
//! `model.NAME` per model, optionally `format.NAME` to name a model's format when its file
//! name does not, and optionally `config` (the deployment's settings, JSON).
//!
//! Parts stream straight into the store's content-addressed blobs (never whole in memory),
//! and nothing waits on the client while holding a thread: the body is read on the async
//! side, parsed by [`super::multipart`] (its headers and part count bounded), and written in
//! pieces of at most [`WRITE_BYTES`] through [`STORE_WRITES`], a few blocking slots of their
//! own. An upload is bounded by the configured size, must keep a minimum rate
//! ([`UploadSettings::min_bytes_per_sec`] over each [`RATE_WINDOW`](super::paced::RATE_WINDOW)), and a part cut short is
//! never stored. Blobs of a refused upload are removed at once unless something else holds
//! them ([`Pins`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;

use super::UploadSettings;
use super::multipart::{self, Event, Parser};
use super::paced::Paced;
use super::sink::{BlobSink, on_store};
use crate::backends::models::ModelFormat;
use crate::builtins;
use crate::error::{ErrorCode, Refusal};
use crate::store::records::{DeploymentConfig, MAX_CONFIG_BYTES, ModelRef, check_model_name};
use crate::store::{Digest, Store};

/// The blobs of an upload, all stored, and pinned while this lives.
#[derive(Debug)]
pub struct Upload {
    pub component: Digest,
    pub models: BTreeMap<String, ModelRef>,
    pub config: DeploymentConfig,
    pub pins: Pins,
}

/// Blobs an upload committed, pinned so that no collection removes them before its deployment
/// is recorded. Dropped, they are unpinned, and removed at once unless a stored deployment
/// (or another upload) holds them: a refused upload leaves nothing behind.
#[derive(Debug)]
pub struct Pins {
    store: Arc<Store>,
    digests: Vec<Digest>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let digests = std::mem::take(&mut self.digests);
        if digests.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let unpin = move || {
            for digest in &digests {
                store.blobs.unpin(digest);
            }
        };
        // Removing a large file can block: off the async threads when there are some.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(unpin)),
            Err(_) => unpin(),
        }
    }
}

/// The tenant's storage quota (`limits.storage_bytes`) and what its deployments use of it.
#[derive(Clone, Copy, Debug)]
pub struct Quota {
    pub limit: u64,
    pub used: u64,
}

impl Quota {
    fn left(self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    fn exceeded(self) -> Refusal {
        Refusal::new(
            ErrorCode::StorageQuotaExceeded,
            format!(
                "the tenant's deployments use {} of its {} bytes of storage and this upload \
                 does not fit; delete old deployments (DELETE \
                 /v1/tenants/{{tenant}}/deployments/{{version}}) or ask the operator for more",
                self.used, self.limit
            ),
        )
    }
}

/// Reads a deployment upload into the store. Its blobs stay pinned (never collected) while
/// the returned [`Upload`] lives.
pub async fn receive(
    store: &Arc<Store>,
    request: Request<Incoming>,
    settings: UploadSettings,
    quota: Quota,
) -> Result<Upload, Refusal> {
    let limit = settings.max_bytes;
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multipart::boundary(content_type).ok_or_else(|| {
        Refusal::bad_request(
            "expected a multipart/form-data body with parts 'component' and 'model.NAME'",
        )
    })?;
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    if declared.is_some_and(|len| len > quota.left()) {
        return Err(quota.exceeded());
    }
    let mut body = Paced::new(request.into_body(), settings.min_bytes_per_sec);
    let mut parser = Parser::new(&boundary, multipart::Bounds::default());
    let mut parts = Parts::new(store);
    let mut received = 0u64;
    loop {
        match body.next_chunk().await? {
            Some(chunk) => {
                received += chunk.len() as u64;
                if received > limit {
                    return Err(too_large(limit));
                }
                if received > quota.left() {
                    return Err(quota.exceeded());
                }
                parser.push(&chunk);
            }
            None => parser.finish(),
        }
        while let Some(event) = parser.next_event().map_err(malformed)? {
            match event {
                Event::Part(head) => parts.begin(head).await?,
                Event::Data(data) => parts.data(&data).await?,
                Event::End => {
                    parts.end().await?;
                    parts.choose_builtin().await?;
                    return parts.into_upload();
                }
            }
        }
    }
}

/// The parts read so far and the one being read.
struct Parts {
    store: Arc<Store>,
    pins: Pins,
    names: BTreeSet<String>,
    component: Option<Digest>,
    models: BTreeMap<String, (Digest, Option<ModelFormat>)>,
    formats: BTreeMap<String, String>,
    config: Option<Vec<u8>>,
    /// The `builtin` part: the built-in component asked for instead of a `component`.
    builtin: Option<String>,
    current: Option<Current>,
}

/// Where the current part's bytes go.
enum Current {
    Component(BlobSink),
    Model {
        name: String,
        format: Option<ModelFormat>,
        sink: BlobSink,
    },
    /// A `format.NAME` part: a few bytes of text.
    Format {
        name: String,
        value: Vec<u8>,
    },
    /// The `config` part: at most [`MAX_CONFIG_BYTES`] of JSON.
    Config(Vec<u8>),
    /// The `builtin` part: a built-in component's name.
    Builtin(Vec<u8>),
}

/// Longest `format.NAME` value.
const MAX_FORMAT_BYTES: usize = 64;

impl Parts {
    fn new(store: &Arc<Store>) -> Self {
        Self {
            store: Arc::clone(store),
            pins: Pins {
                store: Arc::clone(store),
                digests: Vec::new(),
            },
            names: BTreeSet::new(),
            component: None,
            models: BTreeMap::new(),
            formats: BTreeMap::new(),
            config: None,
            builtin: None,
            current: None,
        }
    }

    /// The built-in component a deployment without a `component` part runs: the one its
    /// `builtin` part names, or `inference` when it has models.
    async fn choose_builtin(&mut self) -> Result<(), Refusal> {
        let name = match (self.component, self.builtin.take()) {
            (Some(_), Some(_)) => {
                return Err(Refusal::bad_request(
                    "the upload has both a 'component' and a 'builtin' part: give one",
                ));
            }
            (None, Some(asked)) => builtins::NAMES
                .iter()
                .copied()
                .find(|known| *known == asked)
                .ok_or_else(|| {
                    Refusal::bad_request(format!(
                        "unknown built-in component '{}'; Corral has: {}",
                        asked.escape_debug(),
                        builtins::NAMES.join(", ")
                    ))
                })?,
            (None, None) if !self.models.is_empty() => builtins::INFERENCE,
            _ => return Ok(()),
        };
        self.builtin(name).await
    }

    /// Corral's built-in component `name` serves this deployment. Its bytes go into the store
    /// as an upload's would (content-addressed: stored once), pinned alike.
    async fn builtin(&mut self, name: &'static str) -> Result<(), Refusal> {
        let bytes = builtins::component(name)
            .map_err(|message| Refusal::new(ErrorCode::MissingComponent, message))?;
        let store = Arc::clone(&self.store);
        let (digest, _) = on_store(move || {
            let mut writer = store.blobs.writer()?;
            writer.write(&bytes)?;
            store.blobs.commit_pinned(writer)
        })
        .await?;
        self.pins.digests.push(digest);
        self.component = Some(digest);
        Ok(())
    }

    async fn begin(&mut self, head: multipart::PartHead) -> Result<(), Refusal> {
        self.end().await?;
        let store = &self.store;
        let name = head.name;
        if !self.names.insert(name.clone()) {
            return Err(Refusal::bad_request(format!(
                "the part '{}' is given twice",
                name.escape_debug()
            )));
        }
        self.current = Some(if name == "component" {
            Current::Component(BlobSink::open(store).await?)
        } else if let Some(model) = name.strip_prefix("model.") {
            check_model_name(model).map_err(|m| Refusal::new(ErrorCode::InvalidModelName, m))?;
            let format = head
                .file_name
                .and_then(|f| ModelFormat::from_path(f.as_ref()).ok());
            Current::Model {
                name: model.to_owned(),
                format,
                sink: BlobSink::open(store).await?,
            }
        } else if let Some(model) = name.strip_prefix("format.") {
            Current::Format {
                name: model.to_owned(),
                value: Vec::new(),
            }
        } else if name == "config" {
            Current::Config(Vec::new())
        } else if name == "builtin" {
            Current::Builtin(Vec::new())
        } else {
            return Err(Refusal::bad_request(format!(
                "unexpected part '{}': expected 'component' (or 'builtin'), 'model.NAME', \
                 'format.NAME' or 'config'",
                name.escape_debug()
            )));
        });
        Ok(())
    }

    async fn data(&mut self, data: &[u8]) -> Result<(), Refusal> {
        match &mut self.current {
            Some(Current::Component(sink) | Current::Model { sink, .. }) => sink.write(data).await,
            Some(Current::Builtin(value)) => {
                if value.len() + data.len() > MAX_FORMAT_BYTES {
                    return Err(Refusal::bad_request(format!(
                        "the part 'builtin' is longer than {MAX_FORMAT_BYTES} bytes"
                    )));
                }
                value.extend_from_slice(data);
                Ok(())
            }
            Some(Current::Format { name, value }) => {
                if value.len() + data.len() > MAX_FORMAT_BYTES {
                    return Err(Refusal::bad_request(format!(
                        "the part 'format.{}' is longer than {MAX_FORMAT_BYTES} bytes",
                        name.escape_debug()
                    )));
                }
                value.extend_from_slice(data);
                Ok(())
            }
            Some(Current::Config(value)) => {
                if value.len() + data.len() > MAX_CONFIG_BYTES {
                    return Err(Refusal::new(
                        ErrorCode::InvalidConfig,
                        format!("the 'config' part is longer than {MAX_CONFIG_BYTES} bytes"),
                    ));
                }
                value.extend_from_slice(data);
                Ok(())
            }
            None => Err(Refusal::Internal(anyhow::anyhow!(
                "multipart data outside a part"
            ))),
        }
    }

    /// Completes the current part, if any: its blob is committed.
    async fn end(&mut self) -> Result<(), Refusal> {
        match self.current.take() {
            None => {}
            Some(Current::Component(sink)) => {
                let digest = sink.commit(&self.store).await?;
                self.pins.digests.push(digest);
                self.component = Some(digest);
            }
            Some(Current::Model { name, format, sink }) => {
                let digest = sink.commit(&self.store).await?;
                self.pins.digests.push(digest);
                self.models.insert(name, (digest, format));
            }
            Some(Current::Format { name, value }) => {
                let value = String::from_utf8(value).map_err(|_| {
                    Refusal::bad_request(format!(
                        "the part 'format.{}' is not UTF-8",
                        name.escape_debug()
                    ))
                })?;
                self.formats.insert(name, value.trim().to_owned());
            }
            Some(Current::Config(value)) => self.config = Some(value),
            Some(Current::Builtin(value)) => {
                let value = String::from_utf8(value)
                    .map_err(|_| Refusal::bad_request("the part 'builtin' is not UTF-8"))?;
                self.builtin = Some(value.trim().to_owned());
            }
        }
        Ok(())
    }

    fn into_upload(self) -> Result<Upload, Refusal> {
        let component = self.component.ok_or_else(|| {
            Refusal::new(
                ErrorCode::MissingComponent,
                "the upload has no 'component' part (the .wasm file) and no model for the \
                 built-in inference component to serve",
            )
        })?;
        if let Some(orphan) = self.formats.keys().find(|m| !self.models.contains_key(*m)) {
            return Err(Refusal::bad_request(format!(
                "'format.{}' names no model part 'model.{}'",
                orphan.escape_debug(),
                orphan.escape_debug()
            )));
        }
        let mut resolved = BTreeMap::new();
        for (name, (digest, from_file)) in self.models {
            let format = match self.formats.get(&name) {
                Some(value) => ModelFormat::from_name(value).ok_or_else(|| {
                    Refusal::new(
                        ErrorCode::UnknownFormat,
                        format!(
                            "model '{name}': unknown format '{}'; Corral serves 'onnx' and \
                             'pytorch' (TorchScript)",
                            value.escape_debug()
                        ),
                    )
                })?,
                None => from_file.ok_or_else(|| {
                    Refusal::new(
                        ErrorCode::UnknownFormat,
                        format!(
                            "model '{name}': cannot tell its format from the file name; name the \
                             file *.onnx (or *.pt, *.torchscript) or add a part 'format.{name}' \
                             with value 'onnx' (or 'pytorch')"
                        ),
                    )
                })?,
            };
            resolved.insert(name, ModelRef { digest, format });
        }
        let config = match &self.config {
            Some(bytes) => DeploymentConfig::parse(bytes, &resolved)
                .map_err(|m| Refusal::new(ErrorCode::InvalidConfig, m))?,
            None => DeploymentConfig::default(),
        };
        Ok(Upload {
            component,
            models: resolved,
            config,
            pins: self.pins,
        })
    }
}

fn malformed(e: multipart::Error) -> Refusal {
    Refusal::bad_request(format!("malformed multipart body: {e}"))
}

fn too_large(limit: u64) -> Refusal {
    Refusal::new(
        ErrorCode::UploadTooLarge,
        format!("the upload is larger than this server's limit of {limit} bytes"),
    )
}
