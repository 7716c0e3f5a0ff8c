//! A real `corral serve` process on loopback, and a real HTTP client for its two listeners.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A data directory under the system temp dir, removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("corral-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `corral serve` running on ephemeral ports; SIGKILLed when dropped.
pub struct Corral {
    child: Child,
    /// The cleartext data-plane listener (0.0.0.0:0 when the configuration turns it off).
    pub data: SocketAddr,
    /// The HTTPS listener (none when the configuration turns it off).
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub token: String,
    pub log: PathBuf,
}

/// The `admin_token = "..."` line of a test's configuration, if it has one.
fn given_token(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let value = line.trim().strip_prefix("admin_token")?.trim_start();
        let value = value.strip_prefix('=')?.trim();
        Some(value.trim_matches('"').to_owned())
    })
}

impl Corral {
    /// Starts `corral serve` on `dir` with `config` (TOML) and waits until both listeners are
    /// bound. The server's log goes to `dir/serve-N.log`.
    pub fn start(dir: &DataDir, config: &str) -> Self {
        Self::start_with(dir, config, &[])
    }

    /// [`Corral::start`] with extra command-line arguments.
    pub fn start_with(dir: &DataDir, config: &str, args: &[&str]) -> Self {
        Self::launch(dir, config, args, None, &[])
    }

    /// [`Corral::start`] with extra environment variables.
    pub fn start_with_env(dir: &DataDir, config: &str, env: &[(&str, String)]) -> Self {
        Self::launch(dir, config, &[], None, env)
    }

    /// [`Corral::start`] with `dir` as the server's working directory, so that the data
    /// directory is `data` relative to it.
    pub fn start_in_dir(dir: &DataDir, config: &str) -> Self {
        Self::launch(dir, config, &[], Some(&dir.0), &[])
    }

    fn launch(
        dir: &DataDir,
        config: &str,
        args: &[&str],
        cwd: Option<&Path>,
        env: &[(&str, String)],
    ) -> Self {
        let config_path = dir.0.join("corral.toml");
        std::fs::write(&config_path, config).unwrap();
        let n = std::fs::read_dir(&dir.0).unwrap().count();
        let log = dir.0.join(format!("serve-{n}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--data")
            .arg(dir.data())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--tls-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("CORRAL_ADMIN_TOKEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("corral serve starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut data, mut tls, mut admin, mut token) = (None, None, None, None);
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("corral: serving tenants on http://") {
                data = Some(addr.trim().parse().unwrap());
            } else if let Some(addr) = line.strip_prefix("corral: serving tenants on https://") {
                tls = Some(addr.trim().parse().unwrap());
            } else if let Some(addr) = line.strip_prefix("corral: admin API on http://") {
                admin = Some(addr.trim().parse().unwrap());
            } else if let Some(path) = line.strip_prefix("corral: operator token in ") {
                let text = std::fs::read_to_string(path.trim()).unwrap();
                token = Some(text.trim().to_owned());
                break;
            } else if line.starts_with("corral: operator token from") {
                token = given_token(config);
                break;
            }
        }
        // Without a cleartext listener (`plain_http = false`), `data` is 0.0.0.0:0.
        let data = data.or_else(|| tls.map(|_| SocketAddr::from(([0, 0, 0, 0], 0))));
        let (Some(data), Some(admin), Some(token)) = (data, admin, token) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corral serve did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        wait_ready(admin, &log);
        Self {
            child,
            data,
            tls,
            admin,
            token,
            log,
        }
    }

    /// SIGTERM, as an orchestrator stops a server; returns the child so the caller can wait.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (after [`Corral::terminate`]), at most `limit`.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "corral did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin API call with `token`; returns the status and the JSON body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(String, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                headers.push(("content-type".to_owned(), content_type));
                bytes
            }
            None => Vec::new(),
        };
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (status, bytes) = send(self.admin, method, path, "admin", &headers, body).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    /// An operator call with a JSON body.
    pub async fn operator(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let body = Some(("application/json".to_owned(), body.to_string().into_bytes()));
        self.admin(method, path, Some(&self.token.clone()), body)
            .await
    }

    /// Creates a tenant with one host; returns its token.
    pub async fn create_tenant(&self, name: &str, host: &str) -> String {
        let (status, body) = self
            .operator(
                "PUT",
                &format!("/v1/tenants/{name}"),
                serde_json::json!({ "hosts": [host] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Creates a tenant reached at `host` and deploys the nn-probe guest with `add.onnx` as
    /// its model `add`; returns the tenant's token.
    pub async fn probe_tenant(&self, name: &str, host: &str) -> String {
        let token = self.create_tenant(name, host).await;
        let (status, body) = self
            .deploy(
                name,
                &token,
                &crate::common::guest("nn-probe"),
                &[("add", &crate::common::fixture("add.onnx"))],
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        token
    }

    /// Uploads a deployment with `token`: `component` and `(name, file)` models.
    pub async fn deploy(
        &self,
        tenant: &str,
        token: &str,
        component: &Path,
        models: &[(&str, &Path)],
    ) -> (StatusCode, Value) {
        let mut parts = vec![Part::file("component", component)];
        for (name, path) in models {
            parts.push(Part::file(&format!("model.{name}"), path));
        }
        self.upload(tenant, token, &parts).await
    }

    /// Uploads a deployment of `parts` (multipart) with `token`.
    pub async fn upload(&self, tenant: &str, token: &str, parts: &[Part]) -> (StatusCode, Value) {
        let path = format!("/v1/tenants/{tenant}/deployments");
        self.admin("POST", &path, Some(token), Some(multipart(parts)))
            .await
    }

    /// A data-plane request for `host`.
    pub async fn call(
        &self,
        host: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        send(self.data, method, path, host, &[], body).await
    }

    /// A data-plane GET for `host`, with the response headers.
    pub async fn call_full(&self, host: &str, path: &str) -> (StatusCode, hyper::HeaderMap, Bytes) {
        send_full(self.data, "GET", path, host, &[], Vec::new()).await
    }

    /// A data-plane GET whose body may be cut off: how many body bytes arrived.
    pub async fn call_cut(&self, host: &str, path: &str) -> usize {
        let stream = tokio::net::TcpStream::connect(self.data)
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.expect("response head");
        let mut body = response.into_body();
        let mut received = 0;
        while let Some(Ok(frame)) = body.frame().await {
            received += frame.data_ref().map_or(0, |d| d.len());
        }
        received
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// The server process's thread count, from /proc.
    pub fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
            .expect("Threads")
    }

    /// A data-plane GET over HTTP/2 (cleartext), naming the host in `:authority` only.
    pub async fn call_h2(&self, host: &str, path: &str) -> (StatusCode, Bytes) {
        let stream = tokio::net::TcpStream::connect(self.data)
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(connection);
        let request = Request::get(format!("http://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(request.headers().get("host").is_none());
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }

    /// The value of an unlabelled metric, e.g. `corral_model_sessions`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, body) = send(self.admin, "GET", "/metrics", "admin", &[], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    pub async fn metrics_text(&self) -> String {
        let (_, body) = send(self.admin, "GET", "/metrics", "admin", &[], Vec::new()).await;
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `/readyz` answers 200: every tenant's deployment has been restored (or has
/// failed to), as an orchestrator waits before sending traffic.
fn wait_ready(admin: SocketAddr, log: &Path) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut answer = String::new();
        if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
            let _ = stream.read_to_string(&mut answer);
        }
        if answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "corral serve never became ready; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `corral serve` with `config` (TOML) and no operator token in the environment,
/// expecting it to refuse to start; its stderr.
pub fn serve_refused(name: &str, config: &str) -> String {
    let dir = DataDir::new(name);
    let file = dir.0.join("corral.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--data")
        .arg(dir.data())
        .env_remove("CORRAL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "corral serve started with {config}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One part of a multipart/form-data body.
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub bytes: Vec<u8>,
}

impl Part {
    pub fn file(name: &str, path: &Path) -> Self {
        Self {
            name: name.to_owned(),
            file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn bytes(name: &str, file_name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            file_name: Some(file_name.to_owned()),
            bytes,
        }
    }
}

/// `(content type, body)` of a multipart/form-data upload.
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "corral-test-boundary-7d2f";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let file_name = part
            .file_name
            .as_ref()
            .map(|f| format!("; filename=\"{f}\""))
            .unwrap_or_default();
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"{file_name}\r\n\r\n",
                part.name
            )
            .as_bytes(),
        );
        body.extend_from_slice(&part.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// One HTTP/1.1 request on a fresh connection; panics if it cannot be sent or answered.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let (status, _, body) = send_full(addr, method, path, host, headers, body).await;
    (status, body)
}

pub async fn send_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    try_send(addr, method, path, host, headers, body)
        .await
        .unwrap_or_else(|| panic!("{method} {path} on {addr} got no answer"))
}

/// One HTTP/1.1 request on a fresh connection; `None` when the connection or the exchange
/// fails (e.g. the server is gone).
async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<(StatusCode, hyper::HeaderMap, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, body))
}

/// Sends `head` (a request head, no body) on a raw connection and reads one HTTP/1.1
/// response (head and a Content-Length body): for answers given before a body is read.
pub async fn raw_request(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0usize);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("the server answers")
            .unwrap();
        if n == 0 {
            return text;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// A GET on a fresh connection; `None` when the connection or request fails.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(StatusCode, Bytes)> {
    get_with(addr, host, path, &[])
        .await
        .map(|(status, _, body)| (status, body))
}

/// A GET with extra headers on a fresh connection; `None` when it fails.
pub async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(StatusCode, hyper::HeaderMap, Bytes)> {
    try_send(addr, "GET", path, host, headers, Vec::new()).await
}
