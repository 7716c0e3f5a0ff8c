//! The admin API client behind `corral tenant`, `corral deploy`, `corral deployments` and
//! `corral rollback`: plain HTTP/1.1 to the admin listener, JSON answers, and the server's
//! `{"error":{"code","message"}}` turned into a readable CLI error.

use std::path::{Path, PathBuf};

use std::collections::VecDeque;
use std::io::{IsTerminal, Read};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The component of a deployment [`AdminClient::deploy`] uploads.
#[derive(Clone, Copy, Debug)]
pub enum Component<'a> {
    /// A component file (`.wasm`).
    File(&'a Path),
    /// One of the server's built-in components, by name (`inference`,
    /// `image-classification`).
    Builtin(&'a str),
}

/// Where the admin API is and who we are.
#[derive(Debug, Clone)]
pub struct AdminClient {
    server: Uri,
    token: String,
}

impl AdminClient {
    /// `server` is `http://HOST:PORT`.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let uri: Uri = server
            .parse()
            .with_context(|| format!("--server '{server}' is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            bail!("--server '{server}' must look like http://127.0.0.1:9080");
        }
        let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "no token: pass --token or set CORRAL_TOKEN (the operator token is in the \
                 server's data directory, e.g. corral-data/admin-token)"
            )
        })?;
        Ok(Self {
            server: uri,
            token: token.trim().to_owned(),
        })
    }

    /// `GET path`: the answer's JSON, or an error naming the server's code and message.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send::<Full<Bytes>>(Method::GET, path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = (
            "application/json".to_owned(),
            Full::new(Bytes::from(body.to_string())),
        );
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `POST path` without a body.
    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.send::<Full<Bytes>>(Method::POST, path, None).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send::<Full<Bytes>>(Method::DELETE, path, None).await
    }

    /// Uploads a deployment: the component (a file, a built-in one by name, or none: the
    /// server's built-in `inference` component serves the models), `(name, path)` models and
    /// the optional `config` file (JSON) as multipart parts, streamed from the files (never
    /// whole in memory), with progress on a terminal.
    pub async fn deploy(
        &self,
        tenant: &str,
        component: Option<Component<'_>>,
        models: &[(String, PathBuf)],
        config: Option<&Path>,
    ) -> anyhow::Result<Value> {
        // RFC 2046 boundaries are at most 70 characters.
        let mut boundary = format!("corral-{}", crate::tenancy::tokens::new_token("b")?);
        boundary.truncate(48);
        let mut segments = VecDeque::new();
        let mut total = 0u64;
        let mut part = |name: &str, path: &Path| -> anyhow::Result<()> {
            let len = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("upload")
                .replace(['"', '\r', '\n'], "_");
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            total += head.len() as u64 + len + 2;
            segments.push_back(Segment::Bytes(Bytes::from(head)));
            segments.push_back(Segment::File(path.to_path_buf()));
            segments.push_back(Segment::Bytes(Bytes::from_static(b"\r\n")));
            Ok(())
        };
        let mut builtin = None;
        match component {
            Some(Component::File(path)) => part("component", path)?,
            Some(Component::Builtin(name)) => builtin = Some(name),
            None => {}
        }
        for (name, path) in models {
            part(&format!("model.{name}"), path)?;
        }
        if let Some(config) = config {
            part("config", config)?;
        }
        if let Some(name) = builtin {
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"builtin\"\r\n\r\n{}\r\n",
                name.replace(['"', '\r', '\n'], "_")
            );
            total += head.len() as u64;
            segments.push_back(Segment::Bytes(Bytes::from(head)));
        }
        let end = format!("--{boundary}--\r\n");
        total += end.len() as u64;
        segments.push_back(Segment::Bytes(Bytes::from(end)));
        let show_progress = std::io::stderr().is_terminal() && total > 1 << 20;
        let body = UploadBody {
            segments,
            open: None,
            sent: 0,
            total,
            shown_percent: None,
            show_progress,
        };
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let path = format!("/v1/tenants/{tenant}/deployments");
        self.send(Method::POST, &path, Some((content_type, body)))
            .await
    }

    async fn send<B>(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, B)>,
    ) -> anyhow::Result<Value>
    where
        B: Body<Data = Bytes> + Send + Default + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let authority = self.server.authority().expect("checked in new").clone();
        let unreachable = || {
            format!(
                "cannot reach the Corral admin API at {} (is `corral serve` running?)",
                self.server
            )
        };
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .with_context(unreachable)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(unreachable)?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                body
            }
            None => B::default(),
        };
        let request = request.body(body)?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("{method} {path}: the server answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().unwrap_or("(no message)");
            // What the code means in general, for one the CLI knows (docs/errors.md).
            let meaning = crate::error::ErrorCode::parse(code)
                .map(|known| format!("\n({code}: {})", known.meaning()))
                .unwrap_or_default();
            bail!("the server refused {method} {path}: {status} {code}: {message}{meaning}");
        }
        Ok(value)
    }
}

/// One piece of a streamed upload.
enum Segment {
    Bytes(Bytes),
    File(PathBuf),
}

/// A multipart body read from its files as it is sent.
#[derive(Default)]
struct UploadBody {
    segments: VecDeque<Segment>,
    open: Option<(std::fs::File, PathBuf)>,
    sent: u64,
    total: u64,
    shown_percent: Option<u64>,
    show_progress: bool,
}

impl UploadBody {
    fn progress(&mut self) {
        if !self.show_progress {
            return;
        }
        let percent = self.sent * 100 / self.total.max(1);
        if self.shown_percent == Some(percent) {
            return;
        }
        self.shown_percent = Some(percent);
        let mb = |b: u64| b as f64 / 1e6;
        eprint!(
            "\rcorral: uploading {:.1} / {:.1} MB ({percent}%)",
            mb(self.sent),
            mb(self.total)
        );
        if self.sent >= self.total {
            eprintln!();
        }
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some((file, path)) = &mut this.open {
                // Blocking reads are fine here: this is the CLI, not the server.
                let mut chunk = vec![0u8; 256 << 10];
                let n = file.read(&mut chunk).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
                if n > 0 {
                    chunk.truncate(n);
                    this.sent += n as u64;
                    this.progress();
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))));
                }
                this.open = None;
            }
            match this.segments.pop_front() {
                Some(Segment::Bytes(bytes)) => {
                    this.sent += bytes.len() as u64;
                    this.progress();
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Some(Segment::File(path)) => {
                    let file = std::fs::File::open(&path).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    this.open = Some((file, path));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total.saturating_sub(self.sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_must_be_an_http_url_and_a_token_is_required() {
        assert!(AdminClient::new("127.0.0.1:9080", Some("t".into())).is_err());
        let err = AdminClient::new("http://127.0.0.1:9080", None).unwrap_err();
        assert!(err.to_string().contains("CORRAL_TOKEN"), "{err}");
        assert!(AdminClient::new("http://127.0.0.1:9080", Some("tok".into())).is_ok());
    }
}
