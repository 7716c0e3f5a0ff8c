//! The accept loop every listener shares: HTTP/1.1 and HTTP/2 on one port (cleartext, or TLS
//! with ALPN), each connection on its own task under the front door's limits, and a graceful
//! stop.
//!
//! Front door: at most `max_connections` connections are open at once (more are closed as
//! soon as they are accepted); a TLS handshake and an HTTP/1.1 request head must arrive within
//! `header_read_timeout_ms`; request heads are bounded in count and bytes (`431`); HTTP/2
//! connections have a stream limit and hyper's rapid-reset protection; a connection with no
//! request in flight and no traffic for `idle_timeout_ms` is closed.
//!
//! On shutdown the loop stops accepting (the listening socket is closed) and every open
//! connection is told to finish: requests in flight complete and their responses are sent,
//! idle keep-alive connections close. The loop returns when all connections have ended or the
//! drain timeout has passed, whichever comes first.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::config::HttpSettings;
use crate::http::error::HostError;
use crate::metrics::ConnectionStats;

/// What a request knows about the connection it came on.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The name the client asked for in the TLS handshake (SNI), if any.
    pub sni: Option<String>,
}

/// One listener: its socket, TLS (if any), limits and counters.
pub struct Listener {
    pub name: &'static str,
    pub socket: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub settings: HttpSettings,
    pub stats: Arc<ConnectionStats>,
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve<H, F>(
    listener: Listener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<HyperOutgoingBody>> + Send + 'static,
{
    let Listener {
        name,
        socket,
        tls,
        settings,
        stats,
    } = listener;
    let builder = Arc::new(builder(&settings));
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a clone; when all are dropped the drain is over.
    let (alive, mut ended) = mpsc::channel::<()>(1);
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = name, %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = ConnectionTask {
            name,
            peer,
            tls: tls.clone(),
            settings: settings.clone(),
            builder: Arc::clone(&builder),
            stats: Arc::clone(&stats),
            stopping: stopping.clone(),
        };
        let handler = Arc::clone(&handler);
        let alive = alive.clone();
        tokio::spawn(async move {
            task.stats.open.fetch_add(1, Ordering::Relaxed);
            task.run(stream, handler).await;
            task.stats.open.fetch_sub(1, Ordering::Relaxed);
            drop((slot, alive));
        });
    }
    drop(socket);
    drop(alive);
    let open = stats.open.load(Ordering::Relaxed);
    tracing::info!(listener = name, open_connections = open, "draining");
    let _ = stop.send(true);
    if tokio::time::timeout(drain, ended.recv()).await.is_err() {
        tracing::warn!(
            listener = name,
            ?drain,
            "drain timeout passed with connections still open"
        );
    }
}

/// hyper's connection settings from the front door's.
fn builder(settings: &HttpSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
        .max_headers(settings.max_headers)
        // Reads of up to this size: a 602 KB body reaches the guest in three pieces rather than
        // 38, each a hand-off between tasks. hyper also refuses a head that fills it; a smaller
        // head over `max_header_bytes` is refused by `head_too_large` once parsed.
        .max_buf_size(settings.read_buffer_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.h2_max_pending_reset_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

struct ConnectionTask {
    name: &'static str,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    settings: HttpSettings,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stats: Arc<ConnectionStats>,
    stopping: watch::Receiver<bool>,
}

impl ConnectionTask {
    async fn run<H, F>(&self, stream: TcpStream, handler: Arc<H>)
    where
        H: Fn(Request<Incoming>, Arc<Connection>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<HyperOutgoingBody>> + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let handshake_timeout = Duration::from_millis(self.settings.header_read_timeout_ms);
        let (io, connection): (Box<dyn Io>, Connection) = match &self.tls {
            None => (
                Box::new(Tracked::new(stream, Arc::clone(&activity))),
                Connection {
                    tls: false,
                    sni: None,
                },
            ),
            Some(acceptor) => {
                let tracked = Tracked::new(stream, Arc::clone(&activity));
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tracked)).await {
                    Ok(Ok(stream)) => {
                        let sni = stream.get_ref().1.server_name().map(str::to_owned);
                        let connection = Connection { tls: true, sni };
                        (Box::new(stream), connection)
                    }
                    Ok(Err(e)) => {
                        self.stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, peer = %self.peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let connection = Arc::new(connection);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let service = {
            let in_flight = Arc::clone(&in_flight);
            let activity = Arc::clone(&activity);
            let max_header_bytes = self.settings.max_header_bytes;
            hyper::service::service_fn(move |request| {
                let started = InFlight::enter(&in_flight, &activity);
                let handled = match head_too_large(&request, max_header_bytes) {
                    Some(refusal) => Err(refusal),
                    None => Ok(handler(request, Arc::clone(&connection))),
                };
                async move {
                    let response = match handled {
                        Ok(response) => response.await,
                        Err(refusal) => {
                            // As hyper's own 431 does: a client sending heads that large
                            // does not keep the connection.
                            let mut response = refusal.into_response();
                            response.headers_mut().insert(
                                hyper::header::CONNECTION,
                                hyper::header::HeaderValue::from_static("close"),
                            );
                            response
                        }
                    };
                    drop(started);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle_timeout = Duration::from_millis(self.settings.idle_timeout_ms);
        let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
        let mut stopping = self.stopping.clone();
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(listener = self.name, peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stopping.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = check.tick(), if !closing => {
                    if in_flight.load(Ordering::Acquire) == 0 && activity.idle_for() >= idle_timeout {
                        tracing::debug!(listener = self.name, peer = %self.peer, "closing an idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The refusal of a request whose head (request line and header fields, as HTTP/1.1 writes
/// them once parsed: padding the parser drops is not counted) is over `max` bytes. The raw
/// head a connection may buffer is bounded by `read_buffer_bytes`, as its body reads are.
/// HTTP/2 heads are bounded by h2 itself (`max_header_list_size`, which counts 32 bytes more
/// per field, so this never refuses one first).
fn head_too_large<B>(request: &Request<B>, max: usize) -> Option<HostError> {
    // "METHOD URI HTTP/1.1\r\n", "name: value\r\n" per field, "\r\n".
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + request.uri().authority().map_or(0, |a| a.as_str().len())
        + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let bytes = line + fields + 2;
    (bytes > max).then(|| {
        HostError::HeadersTooLarge(format!(
            "the request head is {bytes} bytes; the limit is {max}"
        ))
    })
}

/// A request being handled on a connection: the idle check never closes a connection with
/// one in flight, and its start and end count as traffic.
struct InFlight {
    count: Arc<AtomicUsize>,
    activity: Arc<Activity>,
}

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>, activity: &Arc<Activity>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self {
            count: Arc::clone(count),
            activity: Arc::clone(activity),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a connection last moved bytes.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A connection's byte stream (plain or TLS).
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A socket that records when it last moved bytes.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
