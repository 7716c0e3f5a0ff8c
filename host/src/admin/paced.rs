//! An upload's body, read at a minimum rate: a client trickling bytes cannot hold a connection
//! (and the blob it is writing) for ever.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::error::{ErrorCode, Refusal};

/// The period over which an upload's rate is measured.
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The request body, refused once a [`RATE_WINDOW`] passes carrying less than the minimum
/// rate: a client trickling bytes cannot hold a connection (and the blob it is writing)
/// for ever.
pub(super) struct Paced {
    body: Incoming,
    min_per_window: u64,
    window_end: Instant,
    in_window: u64,
}

impl Paced {
    pub(super) fn new(body: Incoming, min_bytes_per_sec: u64) -> Self {
        Self {
            body,
            min_per_window: min_bytes_per_sec.saturating_mul(RATE_WINDOW.as_secs()),
            window_end: Instant::now() + RATE_WINDOW,
            in_window: 0,
        }
    }

    /// The next bytes of the body; `None` at its end.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>, Refusal> {
        loop {
            match tokio::time::timeout_at(self.window_end, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.in_window += data.len() as u64;
                        self.check_window()?;
                        return Ok(Some(data));
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(Refusal::bad_request(format!(
                        "the upload could not be read: {e}"
                    )));
                }
                Ok(None) => return Ok(None),
                Err(_) => self.check_window()?,
            }
        }
    }

    /// At the end of a window: refuses the upload if it fell below the rate, else starts the
    /// next window.
    fn check_window(&mut self) -> Result<(), Refusal> {
        let now = Instant::now();
        if now < self.window_end {
            return Ok(());
        }
        if self.in_window < self.min_per_window {
            return Err(Refusal::new(
                ErrorCode::UploadTooSlow,
                format!(
                    "the upload sent {} bytes in {} s; this server needs at least {} bytes \
                     every {} s",
                    self.in_window,
                    RATE_WINDOW.as_secs(),
                    self.min_per_window,
                    RATE_WINDOW.as_secs()
                ),
            ));
        }
        self.window_end = now + RATE_WINDOW;
        self.in_window = 0;
        Ok(())
    }
}
