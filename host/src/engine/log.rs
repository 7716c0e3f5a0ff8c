//! Guest stdout and stderr: turned into log lines tagged with the tenant, rate limited per
//! tenant.
//!
//! Each tenant has a byte budget per minute (a token bucket shared by all its instances).
//! Bytes beyond it are dropped and counted, never buffered: a guest writing 100 MB costs the
//! host the copy out of its memory and nothing more. A line is cut at `MAX_LINE` bytes, so
//! no buffer grows with what the guest writes. Writes always succeed from the guest's side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::metrics::TenantCounters;

/// Longest log line taken from a guest; longer lines are split.
const MAX_LINE: usize = 1024;

/// One tenant's guest-output budget.
#[derive(Debug)]
pub struct LogBudget {
    tenant: Arc<str>,
    bytes_per_minute: u64,
    bucket: Mutex<Bucket>,
    counters: Arc<TenantCounters>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl LogBudget {
    /// Bytes refused are counted in `counters.log_dropped`.
    pub fn new(tenant: Arc<str>, bytes_per_minute: u64, counters: Arc<TenantCounters>) -> Self {
        Self {
            tenant,
            bytes_per_minute,
            bucket: Mutex::new(Bucket {
                tokens: bytes_per_minute as f64,
                refilled: Instant::now(),
            }),
            counters,
        }
    }

    /// How many of `wanted` bytes may be logged now; the rest is counted as dropped.
    fn take(&self, wanted: usize) -> usize {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = self.bytes_per_minute as f64 / 60.0;
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(self.bytes_per_minute as f64);
        bucket.refilled = now;
        let granted = (bucket.tokens.floor() as usize).min(wanted);
        bucket.tokens -= granted as f64;
        drop(bucket);
        if granted < wanted {
            self.counters
                .log_dropped
                .fetch_add((wanted - granted) as u64, Ordering::Relaxed);
        }
        granted
    }
}

/// Where a guest's stdout or stderr goes.
#[derive(Clone, Debug)]
pub enum GuestOutput {
    /// The host's own stdout/stderr (development mode).
    Inherit,
    /// Log lines, within the tenant's budget.
    Log(Arc<LogBudget>),
    /// Nowhere.
    Discard,
}

/// A `wasi:cli` output stream writing log lines for one stream of one request.
pub struct GuestStream {
    pub budget: Arc<LogBudget>,
    pub stream: &'static str,
    /// The request whose instance writes (wasmtime writes from its own task, outside the
    /// request's span, so the id is carried here).
    pub request_id: Arc<str>,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            budget: Arc::clone(&self.budget),
            stream: self.stream,
            request_id: Arc::clone(&self.request_id),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    budget: Arc<LogBudget>,
    stream: &'static str,
    request_id: Arc<str>,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(
            target: "corral::guest",
            tenant = %self.budget.tenant,
            request = %self.request_id,
            stream = self.stream,
            "{}",
            text.trim_end()
        );
        self.line.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let mut rest = part;
            while !rest.is_empty() {
                let room = MAX_LINE - self.line.len();
                let (now, later) = rest.split_at(room.min(rest.len()));
                self.line.extend_from_slice(now);
                rest = later;
                if self.line.len() == MAX_LINE || self.line.last() == Some(&b'\n') {
                    self.emit();
                }
            }
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let granted = this.budget.take(buf.len());
        this.push(&buf[..granted]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_budget_is_dropped_and_counted() {
        let counters = Arc::new(TenantCounters::default());
        let budget = LogBudget::new(Arc::from("acme"), 100, Arc::clone(&counters));
        assert_eq!(budget.take(60), 60);
        assert_eq!(budget.take(60), 40);
        assert_eq!(budget.take(1_000_000), 0);
        assert_eq!(counters.log_dropped.load(Ordering::Relaxed), 20 + 1_000_000);
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let budget = Arc::new(LogBudget::new(Arc::from("t"), 1 << 20, Arc::default()));
        let mut writer = LineWriter {
            budget,
            stream: "stdout",
            request_id: Arc::from("r1"),
            line: Vec::new(),
        };
        writer.push(b"one\ntw");
        assert_eq!(writer.line, b"tw");
        writer.push(&[b'x'; 5000]);
        assert!(writer.line.len() < MAX_LINE);
    }
}
