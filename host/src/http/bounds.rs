//! Per-tenant bounds the data plane applies around a guest: how many of a tenant's requests
//! run and wait at once, and how many body bytes go in and out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::HostError;
use crate::limits::Outcome;
use crate::limits::{LimitHit, Limits};
use crate::metrics::TenantCounters;

/// A tenant's admission gate: `concurrent_requests` run, `queued_requests` wait, the rest are
/// turned away at once.
#[derive(Debug)]
pub struct Gate {
    running: Arc<Semaphore>,
    waiting: AtomicU32,
    max_waiting: u32,
    counters: Arc<TenantCounters>,
}

/// Counts one waiting request for as long as it waits.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// Rejections are counted in `counters.rejected`.
    pub fn new(limits: &Limits, counters: Arc<TenantCounters>) -> Self {
        Self {
            running: Arc::new(Semaphore::new(limits.concurrent_requests as usize)),
            waiting: AtomicU32::new(0),
            max_waiting: limits.queued_requests,
            counters,
        }
    }

    fn reject(&self) -> HostError {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        HostError::Overloaded
    }

    /// A slot to run in, waiting at most `wait` for one; `503` when the queue is full or the
    /// wait runs out.
    pub async fn enter(&self, wait: Duration) -> Result<OwnedSemaphorePermit, HostError> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.reject());
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(wait, Arc::clone(&self.running).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.reject()),
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A body that fails once more than `limit` bytes went through it.
pub struct Bounded<B> {
    inner: B,
    limit: u64,
    seen: u64,
    /// Told when the limit is hit (request bodies only).
    outcome: Option<Arc<Outcome>>,
    error: fn(u64) -> wasmtime_wasi_http::Error,
}

impl<B> Bounded<B> {
    /// A request body: over the limit, the guest reads `HTTP-request-body-size` and the
    /// request is answered `413`.
    pub fn request(inner: B, limit: u64, outcome: Arc<Outcome>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            outcome: Some(outcome),
            error: |limit| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit)),
        }
    }

    /// A response body: over the limit, the response is cut off.
    pub fn response(inner: B, limit: u64) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            outcome: None,
            error: |limit| wasmtime_wasi_http::Error::HttpResponseBodySize(Some(limit)),
        }
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.seen > this.limit {
            return Poll::Ready(Some(Err((this.error)(this.limit))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        if let Some(outcome) = &this.outcome {
                            outcome.record(LimitHit::RequestBody);
                        }
                        tracing::debug!(limit = this.limit, "body over its size limit");
                        return Poll::Ready(Some(Err((this.error)(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn body(len: usize) -> impl Body<Data = Bytes, Error = hyper::Error> + Unpin {
        Full::new(Bytes::from(vec![0u8; len])).map_err(|never| -> hyper::Error { match never {} })
    }

    #[tokio::test]
    async fn a_body_over_its_limit_fails_and_records_it() {
        let outcome = Arc::new(Outcome::default());
        let result = Bounded::request(body(11), 10, Arc::clone(&outcome))
            .collect()
            .await;
        assert!(matches!(
            result,
            Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(10)))
        ));
        assert_eq!(outcome.hit(), Some(LimitHit::RequestBody));
        let small = Bounded::request(body(10), 10, Arc::new(Outcome::default()));
        assert_eq!(small.collect().await.unwrap().to_bytes().len(), 10);
    }

    #[tokio::test]
    async fn the_gate_queues_then_turns_away() {
        let limits = Limits {
            concurrent_requests: 1,
            queued_requests: 1,
            ..Limits::default()
        };
        let counters = Arc::new(TenantCounters::default());
        let gate = Arc::new(Gate::new(&limits, Arc::clone(&counters)));
        let first = gate.enter(Duration::from_secs(5)).await.unwrap();
        let queued = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter(Duration::from_secs(5)).await.map(drop) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            gate.enter(Duration::from_secs(5)).await,
            Err(HostError::Overloaded)
        ));
        drop(first);
        assert!(queued.await.unwrap().is_ok(), "the queued request runs");
        assert_eq!(counters.rejected.load(Ordering::Relaxed), 1);
    }
}
