//! The front door on a real `corral serve`: each connection-level limit triggers with its
//! status (or closes the offending connection) while a well-behaved client on another
//! connection keeps getting 200s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::serve::{Corral, DataDir, send};
use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[http]
header_read_timeout_ms = 500
max_headers = 20
max_header_bytes = 8192
read_buffer_bytes = 65536
max_connections = 8
idle_timeout_ms = 1500
h2_max_concurrent_streams = 4
h2_max_pending_reset_streams = 10
"#;

const HOST: &str = "acme.localhost";

/// A client that sends one request every 20 ms on one keep-alive connection and counts
/// the answers.
struct WellBehaved {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WellBehaved {
    async fn start(addr: SocketAddr) -> Self {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let task = tokio::spawn({
            let (ok, failed, stop) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get("/case/add")
                        .header("host", HOST)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let answer = match sender.send_request(request).await {
                        Ok(response) => {
                            response.status() == StatusCode::OK
                                && response.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    let counter = if answer { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            ok,
            failed,
            stop,
            task,
        }
    }

    /// Stops and returns (answered 200, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Whether the server closes `stream` within `limit` (reading whatever it sends first).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A raw HTTP/1.1 request head and its status line's code.
async fn raw_status(addr: SocketAddr, head: &str) -> u16 {
    raw_answer(addr, head).await.0
}

/// The status and the whole answer to `head` sent on a new connection.
async fn raw_answer(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    (client, tokio::spawn(connection))
}

#[tokio::test]
async fn each_front_door_limit_triggers_while_a_good_client_is_served() {
    let dir = DataDir::new("front-door");
    let corral = Corral::start(&dir, CONFIG);
    let token = corral.create_tenant("acme", HOST).await;
    let (status, body) = corral
        .deploy(
            "acme",
            &token,
            &guest("nn-probe"),
            &[("add", &fixture("add.onnx"))],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = corral
        .operator(
            "PUT",
            "/v1/tenants/acme",
            json!({ "limits": { "request_body_bytes": 1000 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let addr = corral.data;
    let good = WellBehaved::start(addr).await;

    // Slowloris: a head trickled a line at a time is cut off at the header read timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(format!("GET /case/add HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
        .await
        .unwrap();
    let trickle = tokio::spawn({
        let mut writer = TcpStream::connect(addr).await.unwrap();
        async move {
            writer
                .write_all(format!("GET /case/add HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
                .await
                .unwrap();
            for n in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writer
                    .write_all(format!("x-{n}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            false
        }
    });
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a stalled request head is closed"
    );
    assert!(trickle.await.unwrap(), "a trickled request head is closed");

    // A TLS client that never finishes its handshake is closed too.
    let mut stalled = TcpStream::connect(corral.tls.unwrap()).await.unwrap();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)).await,
        "a stalled TLS handshake is closed"
    );

    // Request heads: too many fields, or too many bytes → 431, on HTTP/1.1 and HTTP/2.
    let many: String = (0..30).map(|n| format!("x-h{n}: v\r\n")).collect();
    let head = format!("GET /case/add HTTP/1.1\r\nhost: {HOST}\r\n{many}connection: close\r\n\r\n");
    assert_eq!(raw_status(addr, &head).await, 431);
    // Over max_header_bytes, though well inside the connection's read buffer (which holds
    // body reads of up to 64 KiB here).
    let big = "v".repeat(10_000);
    let head = format!(
        "GET /case/add HTTP/1.1\r\nhost: {HOST}\r\nx-big: {big}\r\nconnection: close\r\n\r\n"
    );
    let (status, answer) = raw_answer(addr, &head).await;
    assert_eq!(status, 431, "{answer}");
    assert!(
        answer.contains("headers_too_large")
            && answer.contains("the limit is 8192")
            && answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    for (label, headers) in [
        (
            "many fields",
            (0..30)
                .map(|n| (format!("x-h{n}"), "v".to_owned()))
                .collect::<Vec<_>>(),
        ),
        ("a big field", vec![("x-big".to_owned(), big.clone())]),
    ] {
        let (mut client, _connection) = h2_client(addr).await;
        let mut request = Request::get(format!("http://{HOST}/case/add"));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let (response, _) = client
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap_or_else(|e| panic!("h2 {label}: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "h2 {label}"
        );
    }

    // The request body limit, declared or streamed, on both protocols → 413.
    let (status, _) = send(addr, "POST", "/body-length", HOST, &[], vec![b'x'; 5000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "declared length");
    let (status, body) = send(addr, "POST", "/body-length", HOST, &[], vec![b'x'; 500]).await;
    assert_eq!(
        (status, json(&body)["length"].clone()),
        (StatusCode::OK, json!(500))
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let chunks = (0..10)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; 500]))));
    let request = Request::post("/body-length")
        .header("host", HOST)
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "streamed (chunked)"
    );
    {
        let (mut client, _connection) = h2_client(addr).await;
        let request = Request::post(format!("http://{HOST}/body-length"))
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        for _ in 0..10 {
            body.send_data(Bytes::from(vec![b'x'; 500]), false).unwrap();
        }
        body.send_data(Bytes::new(), true).unwrap();
        let status = response.await.unwrap().status();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "streamed (h2)");
    }
    drop(sender);

    // HTTP/2 stream limit: the server advertises it and a client's extra requests queue.
    {
        let (client, _connection) = h2_client(addr).await;
        let mut client = client.ready().await.unwrap();
        // One exchange first, so the server's SETTINGS have arrived.
        let request = Request::get(format!("http://{HOST}/case/add"))
            .body(())
            .unwrap();
        let response = client.send_request(request, true).unwrap().0.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(client.current_max_send_streams(), 4);
        let mut answers = Vec::new();
        for _ in 0..8 {
            client = client.ready().await.unwrap();
            let request = Request::get(format!("http://{HOST}/fault/sleep?ms=200"))
                .body(())
                .unwrap();
            answers.push(client.send_request(request, true).unwrap().0);
        }
        for answer in answers {
            assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
        }
    }

    // Rapid reset (CVE-2023-44487): a client that opens streams and cancels them at once, as
    // fast as it can write, gets the connection closed with GOAWAY ENHANCE_YOUR_CALM.
    let error_code = rapid_reset(addr, 1000).await;
    assert_eq!(error_code, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");

    // Idle keep-alive: a connection that answered once and then goes quiet is closed.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /case/add HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(6)).await,
        "an idle keep-alive connection is closed"
    );

    // Connection limit: with 8 open (the good client's among them), the next is closed on
    // arrival; once they go, connections are served again.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(format!("GET /case/add HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty(),
        "the connection over the limit got no answer"
    );
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if let Some((StatusCode::OK, _)) = crate::common::serve::get(addr, HOST, "/case/add").await
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "connections are served again below the limit");
    let metrics = corral.metrics_text().await;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_connections_refused_total{listener=\"http\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refused-connections count in:\n{metrics}"));
    assert!(refused >= 1.0, "{metrics}");

    let (ok, failed) = good.finish().await;
    assert_eq!(failed, 0, "the well-behaved client was never refused");
    assert!(
        ok >= 20,
        "the well-behaved client was served throughout ({ok})"
    );
}

/// Opens `streams` HTTP/2 streams, each cancelled right after its HEADERS, in raw frames (what
/// the attack sends; a well-behaved client library would not); returns the error code of the
/// server's GOAWAY, if it sent one before closing.
async fn rapid_reset(addr: SocketAddr, streams: u32) -> Option<u32> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    // HPACK: :method GET, :scheme http, :path /, then :authority as a literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, u8::try_from(HOST.len()).unwrap()];
    block.extend_from_slice(HOST.as_bytes());
    for n in 0..streams {
        let id = 2 * n + 1;
        frame(&mut out, 0x1, 0x4 | 0x1, id, &block); // HEADERS, END_HEADERS | END_STREAM
        frame(&mut out, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may close the connection before reading it all.
    let _ = stream.write_all(&out).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, payload) = (rest[3], rest.get(9..9 + len)?);
        if kind == 0x7 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        rest = &rest[9 + len..];
    }
    None
}

/// A request that names two hosts is refused, never routed by one of them: two Host headers,
/// an HTTP/1.1 absolute-form target whose Host differs, an HTTP/2 `:authority` whose Host
/// differs. The same names spelled alike are served.
#[tokio::test]
async fn a_request_naming_two_hosts_is_refused() {
    let dir = DataDir::new("two-hosts");
    let corral = Corral::start(&dir, "");
    for (tenant, host) in [("acme", HOST), ("other", "other.localhost")] {
        corral.probe_tenant(tenant, host).await;
    }
    let addr = corral.data;
    let h1 = |target: &str, hosts: &[&str]| {
        let mut head = format!("GET {target} HTTP/1.1\r\nconnection: close\r\n");
        for host in hosts {
            head.push_str(&format!("host: {host}\r\n"));
        }
        head + "\r\n"
    };
    let cases = [
        (h1("/case/add", &[HOST]), 200),
        (h1("/case/add", &[HOST, "other.localhost"]), 400),
        (h1("/case/add", &[HOST, HOST]), 400),
        (h1(&format!("http://{HOST}/case/add"), &[HOST]), 200),
        (
            h1(&format!("http://{HOST}:80/case/add"), &["ACME.localhost"]),
            200,
        ),
        (
            h1(&format!("http://{HOST}/case/add"), &["other.localhost"]),
            400,
        ),
    ];
    for (head, status) in cases {
        assert_eq!(raw_status(addr, &head).await, status, "{head}");
    }
    for (host_header, status) in [
        (None, 200),
        (Some(HOST), 200),
        (Some("other.localhost"), 400),
    ] {
        let (mut client, _connection) = h2_client(addr).await;
        let mut request = Request::get(format!("http://{HOST}/case/add"));
        if let Some(host) = host_header {
            request = request.header("host", host);
        }
        let (response, _) = client
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "h2 with Host {host_header:?}"
        );
    }
}

/// The admin listener has the front door's limits too: a request head trickled past
/// `header_read_timeout_ms` is cut off, a JSON body that does not arrive within it gets
/// `408 body_timeout`, and more connections than `max_connections` are closed at once.
#[tokio::test]
async fn the_admin_listener_has_the_front_doors_limits() {
    let dir = DataDir::new("admin-front-door");
    let corral = Corral::start(&dir, CONFIG);
    let admin = corral.admin;

    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a head that never ends keeps its admin connection"
    );

    let mut stalled = TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "PUT /v1/tenants/slow HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"hosts\":",
        corral.token
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");

    // `max_connections = 8`: the ninth open connection is closed as soon as it is accepted.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = TcpStream::connect(admin).await.unwrap();
    assert!(closed_within(&mut ninth, Duration::from_secs(2)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = corral.admin("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}
