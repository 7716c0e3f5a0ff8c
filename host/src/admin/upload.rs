//! Deployment uploads: `multipart/form-data` with a part `component` (the `.wasm`) and a part
//! `model.NAME` per model, optionally `format.NAME` to name a model's format when its file
//! name does not.
//!
//! Parts stream straight into the store's content-addressed blobs (never whole in memory),
//! the request is bounded by the configured upload size, and a part cut short is never
//! stored. Blobs of a refused upload stay unreferenced; nothing refers to them.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyDataStream;
use hyper::Request;
use hyper::body::Incoming;

use super::ApiError;
use crate::backends::models::ModelFormat;
use crate::store::Digest;
use crate::tenancy::Platform;
use crate::tenancy::records::{ModelRef, check_model_name};

/// The blobs of an upload, all stored.
#[derive(Debug)]
pub struct Upload {
    pub component: Digest,
    pub models: BTreeMap<String, ModelRef>,
}

/// Reads a deployment upload into the store.
pub async fn receive(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    limit: u64,
) -> Result<Upload, ApiError> {
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::bad_request(
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
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let stream = BodyDataStream::new(request.into_body());
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);

    let mut component = None;
    let mut models: BTreeMap<String, (Digest, Option<ModelFormat>)> = BTreeMap::new();
    let mut formats: BTreeMap<String, String> = BTreeMap::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "component" {
            if component.is_some() {
                return Err(ApiError::bad_request("the part 'component' is given twice"));
            }
            component = Some(store_part(platform, &mut field).await?);
        } else if let Some(model) = name.strip_prefix("model.") {
            check_model_name(model).map_err(|m| ApiError::invalid("invalid_model_name", m))?;
            if models.contains_key(model) {
                return Err(ApiError::bad_request(format!(
                    "the part 'model.{model}' is given twice"
                )));
            }
            let format = field
                .file_name()
                .and_then(|f| ModelFormat::from_path(f.as_ref()).ok());
            let digest = store_part(platform, &mut field).await?;
            models.insert(model.to_owned(), (digest, format));
        } else if let Some(model) = name.strip_prefix("format.") {
            let value = small_text(&mut field, &name).await?;
            formats.insert(model.to_owned(), value);
        } else {
            return Err(ApiError::bad_request(format!(
                "unexpected part '{}': expected 'component', 'model.NAME' or 'format.NAME'",
                name.escape_debug()
            )));
        }
    }
    let component = component.ok_or_else(|| {
        ApiError::invalid(
            "missing_component",
            "the upload has no 'component' part (the .wasm file)",
        )
    })?;
    if let Some(orphan) = formats.keys().find(|m| !models.contains_key(*m)) {
        return Err(ApiError::bad_request(format!(
            "'format.{orphan}' names no model part 'model.{orphan}'"
        )));
    }
    let mut resolved = BTreeMap::new();
    for (name, (digest, from_file)) in models {
        let format = match formats.get(&name) {
            Some(value) => ModelFormat::from_name(value).ok_or_else(|| {
                ApiError::invalid(
                    "unknown_format",
                    format!(
                        "model '{name}': unknown format '{value}'; Corral serves 'onnx' and \
                         'pytorch' (TorchScript)"
                    ),
                )
            })?,
            None => from_file.ok_or_else(|| {
                ApiError::invalid(
                    "unknown_format",
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
    Ok(Upload {
        component,
        models: resolved,
    })
}

/// A short text part, read without buffering more than a few bytes of it.
async fn small_text(field: &mut multer::Field<'_>, name: &str) -> Result<String, ApiError> {
    const MAX: usize = 64;
    let mut value = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if value.len() + chunk.len() > MAX {
            return Err(ApiError::bad_request(format!(
                "the part '{}' is longer than {MAX} bytes",
                name.escape_debug()
            )));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value)
        .map(|v| v.trim().to_owned())
        .map_err(|_| {
            ApiError::bad_request(format!("the part '{}' is not UTF-8", name.escape_debug()))
        })
}

/// Streams one part into the store on the blocking pool.
async fn store_part(
    platform: &Arc<Platform>,
    field: &mut multer::Field<'_>,
) -> Result<Digest, ApiError> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, ()>>(8);
    let writer_platform = Arc::clone(platform);
    let writer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            receiver,
            current: Bytes::new(),
        };
        writer_platform.store.put_blob_from(reader, u64::MAX)
    });
    let mut failure = None;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if sender.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = sender.send(Err(())).await;
                failure = Some(multipart_error(e));
                break;
            }
        }
    }
    drop(sender);
    let stored = writer
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("upload task failed: {e}")))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let (digest, _) = stored.map_err(ApiError::internal)?;
    Ok(digest)
}

/// A blocking reader over chunks sent from the async side; an `Err` chunk fails the read, so
/// a part cut short is never committed.
struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, ()>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(())) => return Err(io::Error::other("the upload was cut short")),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        hyper::StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than this server's limit of {limit} bytes"),
    )
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit } => too_large(limit),
        multer::Error::FieldSizeExceeded { limit, .. } => too_large(limit),
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}
