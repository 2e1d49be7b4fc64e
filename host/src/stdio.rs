//! Guest stdout/stderr: written to the host's stderr a whole line at a time,
//! so lines from concurrent instances do not interleave mid-line.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A guest output stream. Clones share one line buffer.
#[derive(Clone, Default)]
pub struct GuestOutput {
    pending: Arc<Mutex<Vec<u8>>>,
}

/// Longest partial line kept before it is written out anyway.
const MAX_PENDING: usize = 64 * 1024;

impl GuestOutput {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(bytes);
        let complete = match pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if pending.len() >= MAX_PENDING => pending.len(),
            None => return,
        };
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&pending[..complete]);
        let _ = err.flush();
        pending.drain(..complete);
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last clone flushes an unterminated last line.
        if Arc::strong_count(&self.pending) == 1 {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.is_empty() {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&pending);
                let _ = err.write_all(b"\n");
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
