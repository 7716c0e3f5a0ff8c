//! The admin API client behind `corral tenant`, `corral deploy`, `corral deployments` and
//! `corral rollback`: plain HTTP/1.1 to the admin listener, JSON answers, and the server's
//! `{"error":{"code","message"}}` turned into a readable CLI error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

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

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = ("application/json".to_owned(), Bytes::from(body.to_string()));
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::POST, path, None).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None).await
    }

    /// Uploads a deployment: the component and `(name, path)` models as multipart parts.
    pub async fn deploy(
        &self,
        tenant: &str,
        component: &Path,
        models: &[(String, PathBuf)],
    ) -> anyhow::Result<Value> {
        let boundary = format!("corral-{}", crate::tenancy::records::new_token("b")?);
        let mut body = Vec::new();
        let mut part = |name: &str, path: &Path| -> anyhow::Result<()> {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("upload")
                .replace(['"', '\r', '\n'], "_");
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                     filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&bytes);
            body.extend_from_slice(b"\r\n");
            Ok(())
        };
        part("component", component)?;
        for (name, path) in models {
            part(&format!("model.{name}"), path)?;
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let path = format!("/v1/tenants/{tenant}/deployments");
        self.send(Method::POST, &path, Some((content_type, Bytes::from(body))))
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, Bytes)>,
    ) -> anyhow::Result<Value> {
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
            Some((content_type, bytes)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
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
            bail!("the server refused {method} {path}: {status} {code}: {message}");
        }
        Ok(value)
    }
}

/// `seconds` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_953_600), "2026-11-29 12:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn the_server_must_be_an_http_url_and_a_token_is_required() {
        assert!(AdminClient::new("127.0.0.1:9080", Some("t".into())).is_err());
        let err = AdminClient::new("http://127.0.0.1:9080", None).unwrap_err();
        assert!(err.to_string().contains("CORRAL_TOKEN"), "{err}");
        assert!(AdminClient::new("http://127.0.0.1:9080", Some("tok".into())).is_ok());
    }
}
