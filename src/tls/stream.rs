//! A connection's two halves, plain TCP or TLS, behind one type each, so that the relay reads
//! and writes either the same way (static dispatch, no allocation).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub enum Read<T> {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<T>),
}

pub enum Write<T> {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<T>),
}

impl<T: AsyncRead + AsyncWrite> Read<T> {
    /// Whether an idle connection has something to read or has ended, without waiting:
    /// an idle server connection that does is dead (a FATAL on shutdown, EOF). Bytes read
    /// here are lost, which is fine for a connection about to be discarded.
    pub fn has_news(&mut self) -> bool {
        match self {
            Read::Plain(r) => {
                let mut probe = [0u8; 1];
                match r.try_read(&mut probe) {
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            Read::Tls(r) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                // TLS records without data (session tickets) leave it pending.
                !matches!(Pin::new(r).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }
}

impl<T> Read<T> {
    /// Plain TCP (where waiting for readiness needs no buffer).
    pub fn is_plain(&self) -> bool {
        matches!(self, Read::Plain(_))
    }

    /// Waits until the socket is readable, holding no buffer (the runtime's readiness, no
    /// syscall); TLS answers at once. Readiness can be stale: follow with `try_read_buf`.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Read::Plain(r) => r.readable().await,
            Read::Tls(_) => Ok(()),
        }
    }

    /// `readable` as a poll: the socket's readiness keeps the waker (the last one given), so
    /// the waiting future holds nothing.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Read::Plain(r) => r.as_ref().poll_read_ready(cx),
            Read::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    /// A non-blocking read (plain TCP); WouldBlock clears stale readiness, and so does a short
    /// read (the socket was drained: what comes later raises a new readiness event), as
    /// tokio's own `poll_read` does. Without that, every wait after a request found the old
    /// readiness and paid a WouldBlock `recv`. TLS: WouldBlock.
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Read::Plain(r) => {
                let r = &*r;
                let spare = buf.capacity() - buf.len();
                let mut short = 0;
                // The outer try_io holds the readiness observed before the read; answering
                // WouldBlock after a short read clears exactly that one, never a newer event.
                let read = r.as_ref().try_io(tokio::io::Interest::READABLE, || {
                    let n = r.try_read_buf(buf)?;
                    if 0 < n && n < spare {
                        short = n;
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                });
                match read {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
                    other => other,
                }
            }
            Read::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for Read<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Read::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Read::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for Write<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Write::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Write::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Write::Plain(w) => Pin::new(w).poll_flush(cx),
            Write::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Write::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Write::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
