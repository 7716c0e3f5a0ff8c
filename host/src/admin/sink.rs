//! Upload parts on their way into the store, in pieces, on a bounded number of blocking
//! threads across the process.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::Refusal;
use crate::store::{BlobWriter, Digest, Store};

/// Upload bytes gathered before one write to the store.
const WRITE_BYTES: usize = 64 * 1024;

/// Store writes for uploads running at once, across the process: uploads never take more
/// blocking threads than this, whatever their number.
static STORE_WRITES: Semaphore = Semaphore::const_new(4);

/// A part on its way into the store: bytes gather on the async side and go to the file in
/// pieces, each on a [`STORE_WRITES`] slot; dropped before [`BlobSink::commit`], it leaves
/// nothing behind.
pub(super) struct BlobSink {
    writer: Option<BlobWriter>,
    pending: Vec<u8>,
}

impl BlobSink {
    pub(super) async fn open(store: &Arc<Store>) -> Result<Self, Refusal> {
        let store = Arc::clone(store);
        let writer = on_store(move || store.blobs.writer()).await?;
        Ok(Self {
            writer: Some(writer),
            pending: Vec::with_capacity(WRITE_BYTES),
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<(), Refusal> {
        let mut data = data;
        while !data.is_empty() {
            let take = data.len().min(WRITE_BYTES - self.pending.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == WRITE_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Refusal> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.take().ok_or_else(closed)?;
        let mut pending = std::mem::take(&mut self.pending);
        let (writer, pending) = on_store(move || {
            writer.write(&pending)?;
            pending.clear();
            Ok((writer, pending))
        })
        .await?;
        self.writer = Some(writer);
        self.pending = pending;
        Ok(())
    }

    /// Commits the blob, pinned (see `upload::Pins`).
    pub(super) async fn commit(mut self, store: &Arc<Store>) -> Result<Digest, Refusal> {
        self.flush().await?;
        let writer = self.writer.take().ok_or_else(closed)?;
        let store = Arc::clone(store);
        let (digest, _) = on_store(move || store.blobs.commit_pinned(writer)).await?;
        Ok(digest)
    }
}

fn closed() -> Refusal {
    Refusal::Internal(anyhow::anyhow!("an upload's blob was used after it failed"))
}

/// Runs a store call on the blocking pool, holding one of [`STORE_WRITES`].
pub(super) async fn on_store<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Refusal> {
    let _slot = STORE_WRITES
        .acquire()
        .await
        .map_err(|e| Refusal::Internal(e.into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Refusal::Internal(anyhow::anyhow!("upload task failed: {e}")))?
        .map_err(Refusal::Internal)
}
