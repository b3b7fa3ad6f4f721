//! The messages pgsplit builds or decodes itself in startup, authentication and errors, on
//! pgwire's message types (`pgwire::messages`, messages only: no server API, no TLS).
//!
//! Decoding stays in pgsplit's zero-copy accessors (`read_cstr`, `read_i32`, `error_field`)
//! wherever the bytes come from a peer pgsplit does not trust to be well formed, because
//! pgwire's `decode_body` functions read fields with `bytes::Buf`'s panicking getters:
//! a truncated SASLInitialResponse (`get_i32` past the end), an ErrorResponse without its final
//! NUL (`get_u8` on an empty buffer) or a short AuthenticationMD5Password (`copy_to_slice`)
//! would panic the session task instead of ending in 08P01. The StartupMessage is decoded by
//! pgwire (its decoder is bounds-checked once the length is, and `read_startup` bounds it).
//! Relayed traffic (rows, server messages, client queries) is never decoded or re-encoded.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::extendedquery::Sync;
use pgwire::messages::response::{CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, ParameterStatus, Password, SASLInitialResponse, SASLResponse, SecretKey,
};
use pgwire::messages::terminate::Terminate;

use super::ProtocolError;

/// Encodes a message pgsplit built. pgwire refuses only a message longer than libpq accepts
/// for its type (30,000 bytes for most backend messages); pgsplit sends an ErrorResponse
/// saying so instead, never a message the client would choke on.
fn encode<M: Message>(m: &M) -> Bytes {
    let mut b = BytesMut::with_capacity(m.message_length() + 1);
    match m.encode(&mut b) {
        Ok(()) => b.freeze(),
        Err(e) => {
            tracing::warn!("pgsplit built a message it cannot send: {e}");
            let mut b = BytesMut::new();
            let e = ErrorResponse::new(fields("ERROR", "54000", &format!("pgsplit: {e}")));
            match e.encode(&mut b) {
                Ok(()) => b.freeze(),
                Err(_) => Bytes::new(),
            }
        }
    }
}

fn fields(severity: &str, code: &str, msg: &str) -> Vec<(u8, String)> {
    vec![(b'S', severity.into()), (b'V', severity.into()), (b'C', code.into()), (b'M', msg.into())]
}

/// The parsed StartupMessage: its key/value parameters.
#[derive(Debug, Clone)]
pub struct Startup {
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Decodes a StartupMessage body (after the length word: version, then parameters).
pub fn parse_startup(body: &[u8]) -> Result<Startup, ProtocolError> {
    if body.len() < 5 || body.len() > 10_000 {
        return Err(ProtocolError::Invalid("invalid startup packet length".into()));
    }
    if body.last() != Some(&0) {
        // PostgreSQL's rule; pgwire would take a value cut short as empty.
        return Err(ProtocolError::Invalid("invalid startup packet layout: expected terminator as last byte".into()));
    }
    let mut buf = BytesMut::from(body);
    let ctx = pgwire::messages::DecodeContext::default();
    let s = pgwire::messages::startup::Startup::decode_body(&mut buf, body.len() + 4, &ctx)
        .map_err(|e| ProtocolError::Invalid(e.to_string()))?;
    Ok(Startup { params: s.parameters.into_iter().collect() })
}

/// A StartupMessage for protocol 3.0 with these parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut s = pgwire::messages::startup::Startup::new();
    s.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    encode(&s)
}

/// The untagged CancelRequest (length, code, pid, secret).
pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    encode(&pgwire::messages::cancel::CancelRequest::new(pid, SecretKey::I32(secret)))
}

pub fn ready_for_query(status: super::TxStatus) -> Bytes {
    let status = match status {
        super::TxStatus::InTransaction => TransactionStatus::Transaction,
        super::TxStatus::Failed => TransactionStatus::Error,
        super::TxStatus::Idle => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

pub fn command_complete(tag: &str) -> Bytes {
    encode(&CommandComplete::new(tag.into()))
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    encode(&ParameterStatus::new(name.into(), value.into()))
}

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)))
}

/// AuthenticationOk.
pub fn auth_ok() -> Bytes {
    encode(&Authentication::Ok)
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(salt: [u8; 4]) -> Bytes {
    encode(&Authentication::MD5Password(salt.to_vec()))
}

/// AuthenticationSASL offering these mechanisms.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    encode(&Authentication::SASL(mechanisms.iter().map(|m| m.to_string()).collect()))
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    encode(&Authentication::SASLContinue(Bytes::copy_from_slice(data)))
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    encode(&Authentication::SASLFinal(Bytes::copy_from_slice(data)))
}

/// PasswordMessage (a cleartext password or an md5 answer) to a server.
pub fn password(pw: &str) -> Bytes {
    encode(&Password::new(pw.into()))
}

/// SASLInitialResponse to a server.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    encode(&SASLInitialResponse::new(mechanism.into(), Some(Bytes::copy_from_slice(data))))
}

/// SASLResponse to a server.
pub fn sasl_response(data: &[u8]) -> Bytes {
    encode(&SASLResponse::new(Bytes::copy_from_slice(data)))
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, msg: &str) -> Bytes {
    encode(&ErrorResponse::new(fields(severity, code, msg)))
}

/// A NoticeResponse (severity NOTICE).
pub fn notice(code: &str, msg: &str) -> Bytes {
    encode(&NoticeResponse::new(fields("NOTICE", code, msg)))
}

pub fn error(code: &str, msg: &str) -> Bytes {
    error_response("ERROR", code, msg)
}

/// An ERROR with a DETAIL line.
pub fn error_detail(code: &str, msg: &str, detail: &str) -> Bytes {
    let mut f = fields("ERROR", code, msg);
    f.push((b'D', detail.into()));
    encode(&ErrorResponse::new(f))
}

pub fn fatal(code: &str, msg: &str) -> Bytes {
    error_response("FATAL", code, msg)
}

pub fn simple_query(sql: &str) -> Bytes {
    encode(&Query::new(sql.into()))
}

pub fn terminate() -> Bytes {
    encode(&Terminate::new())
}

pub fn sync() -> Bytes {
    encode(&Sync::new())
}

/// A Flush message ('H', no body).
pub fn flush() -> Bytes {
    Bytes::from_static(b"H\0\0\0\x04")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, error_field};

    /// The bytes are those of the protocol (checked against hand-written encodings).
    #[test]
    fn encodings() {
        assert_eq!(&command_complete("SET")[..], b"C\0\0\0\x08SET\0");
        assert_eq!(&parameter_status("a", "b")[..], b"S\0\0\0\x08a\0b\0");
        assert_eq!(&backend_key_data(1, 2)[..], b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");
        assert_eq!(&auth_ok()[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(&auth_md5([1, 2, 3, 4])[..], b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
        assert_eq!(&auth_sasl(&["SCRAM-SHA-256"])[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(&auth_sasl_final(b"v=x")[..], b"R\0\0\0\x0b\0\0\0\x0cv=x");
        assert_eq!(&password("md5ab")[..], b"p\0\0\0\x0amd5ab\0");
        assert_eq!(&sasl_initial_response("M", b"xy")[..], b"p\0\0\0\x0cM\0\0\0\0\x02xy");
        assert_eq!(&sasl_response(b"xy")[..], b"p\0\0\0\x06xy");
        assert_eq!(&terminate()[..], b"X\0\0\0\x04");
        assert_eq!(&sync()[..], b"S\0\0\0\x04");
        assert_eq!(&simple_query("select 1")[..], b"Q\0\0\0\x0dselect 1\0");
        assert_eq!(&cancel_request(7, 9)[..], b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x07\0\0\0\x09");
        let e = Frame { bytes: error("42P01", "no such table") };
        assert_eq!(e.tag(), b'E');
        assert_eq!(error_field(e.body(), b'S'), Some("ERROR"));
        assert_eq!(error_field(e.body(), b'C'), Some("42P01"));
        assert_eq!(error_field(e.body(), b'M'), Some("no such table"));
        assert_eq!(notice("01000", "x")[0], b'N');
    }

    #[test]
    fn startup_round_trip() {
        let m = startup_message(&[("user", "u"), ("database", "d")]);
        assert_eq!(u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        let s = parse_startup(&m[4..]).unwrap();
        assert_eq!((s.get("user"), s.get("database"), s.get("x")), (Some("u"), Some("d"), None));
        // Truncated and oversized bodies are errors, not panics.
        assert!(parse_startup(&[0, 3]).is_err());
        assert!(parse_startup(&[0, 3, 0, 0]).is_err());
        assert!(parse_startup(&[0, 9, 0, 0, 0]).is_err());
        assert!(parse_startup(&vec![1; 20_000]).is_err());
        assert!(parse_startup(b"\0\x03\0\0user\0u").is_err());
        let s = parse_startup(b"\0\x03\0\0user\0\0").unwrap();
        assert_eq!(s.get("user"), Some(""));
    }

    /// A message longer than libpq takes becomes an ErrorResponse, not a panic.
    #[test]
    fn too_long_becomes_an_error() {
        let big = "x".repeat(40_000);
        assert_eq!(parameter_status("a", &big)[0], b'E');
    }
}
