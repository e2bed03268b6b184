//! Bounds what connections can hold: at most `max` at once (beyond that the
//! listener stops accepting, and new connections wait in the kernel's
//! backlog), and each must send the HTTP/2 preface within a deadline, so
//! idle sockets cannot hold the slots.
//!
//! Wraps any incoming stream of connections (plain TCP, or TLS after the
//! handshake); the permit is released when the connection is dropped.
//! The rest of the per-connection limits (streams, headers, timeouts,
//! keepalive) are tonic's, set in `server::limits`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::Connected;

/// The HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").
const PREFACE_BYTES: usize = 24;

/// Limits an incoming stream of connections.
pub fn limit<S, IO>(incoming: S, max: usize, preface_timeout: Duration) -> Limited<S>
where
    S: Stream<Item = Result<IO, io::Error>>,
{
    Limited {
        incoming,
        slots: PollSemaphore::new(Arc::new(Semaphore::new(max))),
        permit: None,
        max,
        preface_timeout,
        at_limit: false,
    }
}

/// The stream [`limit`] returns.
pub struct Limited<S> {
    incoming: S,
    slots: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    max: usize,
    preface_timeout: Duration,
    at_limit: bool,
}

impl<S, IO> Stream for Limited<S>
where
    S: Stream<Item = Result<IO, io::Error>> + Unpin,
{
    type Item = Result<Conn<IO>, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.permit.is_none() {
            match this.slots.poll_acquire(cx) {
                Poll::Ready(Some(p)) => {
                    if this.at_limit {
                        this.at_limit = false;
                        tracing::info!(max = this.max, "ConnectionLimitCleared");
                    }
                    this.permit = Some(p);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if !this.at_limit {
                        this.at_limit = true;
                        tracing::warn!(
                            max = this.max,
                            "ConnectionLimitReached: new connections wait until one closes (grpc_max_connections)"
                        );
                    }
                    return Poll::Pending;
                }
            }
        }
        match Pin::new(&mut this.incoming).poll_next(cx) {
            Poll::Ready(Some(Ok(io))) => Poll::Ready(Some(Ok(Conn {
                io,
                _permit: this.permit.take(),
                preface_left: PREFACE_BYTES,
                deadline: Some(Box::pin(tokio::time::sleep(this.preface_timeout))),
            }))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A connection holding one of the slots.
pub struct Conn<IO> {
    io: IO,
    _permit: Option<OwnedSemaphorePermit>,
    /// Preface bytes still expected before the deadline is lifted.
    preface_left: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = polled {
                let got = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(got);
                if this.preface_left == 0 {
                    this.deadline = None;
                }
                return polled;
            }
            if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )));
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
