//! PostgreSQL v3 wire-protocol framing.
//!
//! The hot path never decodes rows: a [`Frame`] is the raw bytes of one message (tag, length,
//! body) and is forwarded as-is. Only the handful of messages the router and the pools must
//! understand are looked into, through the small zero-copy accessors below; the messages pgsplit
//! builds itself (startup, authentication, errors, notices, status) are pgwire's types
//! (`messages`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Messages larger than this are refused (PostgreSQL's own limit for most messages is 1 GB).
pub const MAX_MESSAGE_LEN: usize = crate::config::MAX_MESSAGE_SIZE;
pub const PROTOCOL_V3: i32 = pgwire::messages::startup::Startup::PROTOCOL_VERSION_3_0;
pub const SSL_REQUEST: i32 = pgwire::messages::startup::SslRequest::BODY_MAGIC_NUMBER;
pub const GSSENC_REQUEST: i32 = pgwire::messages::startup::GssEncRequest::BODY_MAGIC_NUMBER;
pub const SSL_ACCEPT: u8 = pgwire::messages::response::SslResponse::BYTE_ACCEPT;
pub const SSL_REFUSE: u8 = pgwire::messages::response::SslResponse::BYTE_REFUSE;
pub const GSSENC_REFUSE: u8 = pgwire::messages::response::GssEncResponse::BYTE_REFUSE;
/// (pgwire keeps its CancelRequest code private.)
pub const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// One complete protocol message, tag byte included.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Bytes,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.bytes.first().copied().unwrap_or(0)
    }
    /// The message body after the tag and the length word.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or(&[])
    }
}

/// A cancel-safe frame reader: the only await point is `read_buf`, and all partial input stays
/// in `buf`, so it can sit in a `tokio::select!` next to other sources.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// Messages declared longer than this are refused before their body is read.
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(16 * 1024), max: MAX_MESSAGE_LEN }
    }

    /// No buffer until the first bytes arrive, then one sized by what comes (clients: thousands
    /// of them may sit idle).
    pub fn lazy(inner: R) -> Self {
        FrameReader { inner, buf: BytesMut::new(), max: MAX_MESSAGE_LEN }
    }

    /// A lower bound on message size (limits.max_message_size for clients).
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max.clamp(1024, MAX_MESSAGE_LEN);
        self
    }

    /// Changes the bound (authentication messages are read under a smaller one).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.clamp(1024, MAX_MESSAGE_LEN);
    }

    /// Returns the next message, or `Closed` on a clean EOF between messages.
    pub async fn next(&mut self) -> Result<Frame, ProtocolError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 256 {
                // Room for a typical batch of messages in one read (reclaimed in place once the
                // frames before are dropped).
                self.buf.reserve(1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Err(ProtocolError::Closed)
                } else {
                    Err(ProtocolError::Invalid("connection closed in the middle of a message".into()))
                };
            }
        }
    }

    /// Bytes already buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if !(4..=self.max).contains(&len) {
            return Err(ProtocolError::Invalid(format!("invalid message length {len} (the limit is {})", self.max)));
        }
        if self.buf.len() < len + 1 {
            // Grow as the bytes come, not by what the length claims.
            self.buf.reserve((len + 1 - self.buf.len()).min(1 << 20));
            return Ok(None);
        }
        Ok(Some(Frame { bytes: self.buf.split_to(len + 1).freeze() }))
    }

    /// Drops the buffer when nothing is in it, so that a connection waiting for its peer holds
    /// none (the next read allocates one as `lazy` does). False when bytes are buffered.
    pub fn release_if_empty(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        true
    }

    /// Reads what `read` gives (a non-blocking read) into the buffer, allocating it as `lazy`
    /// does; for a caller that waited for readiness without a buffer.
    pub fn fill_with(
        &mut self,
        read: impl FnOnce(&mut R, &mut BytesMut) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 256 {
            self.buf.reserve(1024);
        }
        read(&mut self.inner, &mut self.buf)
    }

    /// Gives back a buffer grown by a huge message, so an idle connection does not keep it.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 1024 * 1024 {
            self.buf = BytesMut::with_capacity(16 * 1024);
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame if one is already complete in the buffer; never waits.
    pub fn try_next(&mut self) -> Result<Option<Frame>, ProtocolError> {
        self.try_frame()
    }

    /// Starts from bytes already read off the connection (what came after the startup packet).
    pub fn with_buffered(mut self, buf: BytesMut) -> Self {
        if !buf.is_empty() {
            self.buf = buf;
        }
        self
    }
}

/// The untagged first messages of a connection taken from a buffer filled by whole reads
/// (plaintext connections: one read per packet, not one per length word and body): the body
/// of the complete packet at the front, None while it is incomplete (room reserved for it).
/// The same bounds as `read_startup` (`STARTUP_LEN`).
pub fn take_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_startup_len(len)?;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(len).freeze().slice(4..)))
}

/// PostgreSQL's bounds on an untagged first message (its length word included).
const STARTUP_LEN: std::ops::RangeInclusive<usize> = 8..=10_000;

fn check_startup_len(len: usize) -> Result<(), ProtocolError> {
    if !STARTUP_LEN.contains(&len) {
        return Err(ProtocolError::Invalid(format!("invalid startup packet length {len}")));
    }
    Ok(())
}

/// Reads the untagged first message of a connection (startup, SSL/GSS/cancel request).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Bytes, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    check_startup_len(len)?;
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

/// Reads a NUL-terminated UTF-8 string and advances the slice past it.
pub fn read_cstr<'a>(buf: &mut &'a [u8]) -> Result<&'a str, ProtocolError> {
    let end =
        buf.iter().position(|&b| b == 0).ok_or_else(|| ProtocolError::Invalid("missing string terminator".into()))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| ProtocolError::Invalid("invalid UTF-8 in string".into()))?;
    *buf = &buf[end + 1..];
    Ok(s)
}

pub fn read_i32(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::Invalid("message too short".into()));
    }
    Ok(buf.get_i32())
}

/// Fields of an ErrorResponse or NoticeResponse body, looked up by field code.
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut rest = body;
    while let Some(&code) = rest.first() {
        if code == 0 {
            return None;
        }
        rest = &rest[1..];
        let value = read_cstr(&mut rest).ok()?;
        if code == field {
            return Some(value);
        }
    }
    None
}

/// Builds a tagged message: the closure writes the body, the length is filled in after. For
/// the messages pgsplit rewrites in the relay (Bind, Parse, console rows), where a typed
/// encoder would copy what is forwarded as bytes.
pub fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag);
    b.put_u32(0);
    body(&mut b);
    let len = (b.len() - 1) as u32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

pub fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

pub mod backend;
pub mod frontend;
pub mod messages;
pub use backend::TxStatus;
pub use messages::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_reads() {
        let mut all = Vec::new();
        all.extend_from_slice(&simple_query("select 1"));
        all.extend_from_slice(&sync());
        let (a, b) = all.split_at(7);
        let stream = tokio_test_stream(vec![a.to_vec(), b.to_vec()]);
        let mut r = FrameReader::new(stream);
        let f = r.next().await.unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"select 1\0");
        assert_eq!(r.next().await.unwrap().tag(), b'S');
        assert!(matches!(r.next().await, Err(ProtocolError::Closed)));
    }

    #[tokio::test]
    async fn bad_length_is_an_error() {
        let stream = tokio_test_stream(vec![vec![b'Q', 0, 0, 0, 1]]);
        let mut r = FrameReader::new(stream);
        assert!(matches!(r.next().await, Err(ProtocolError::Invalid(_))));
    }

    #[test]
    fn error_fields() {
        let e = error("42P01", "no such table");
        let f = Frame { bytes: e };
        assert_eq!(error_field(f.body(), b'C'), Some("42P01"));
        assert_eq!(error_field(f.body(), b'M'), Some("no such table"));
        assert_eq!(error_field(f.body(), b'D'), None);
    }

    fn tokio_test_stream(chunks: Vec<Vec<u8>>) -> impl AsyncRead + Unpin {
        let mut b = tokio::io::BufReader::new(std::io::Cursor::new(chunks.concat()));
        let _ = &mut b;
        b
    }
}
