//! Readers of the server messages pgsplit must look into (ReadyForQuery, ErrorResponse,
//! ParameterStatus, CommandComplete, a one-column DataRow). They take a whole message (tag,
//! length, body), are bounds-checked, and never allocate.

use super::{Frame, read_cstr};

/// The transaction status a ReadyForQuery reports: the truth about where a session stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxStatus {
    /// 'I': not in a transaction block.
    #[default]
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block (queries are refused until it ends).
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    pub fn is_idle(self) -> bool {
        self == TxStatus::Idle
    }

    /// How the admin console shows it.
    pub fn label(self) -> &'static str {
        match self {
            TxStatus::Idle => "idle",
            TxStatus::InTransaction => "in transaction",
            TxStatus::Failed => "in failed transaction",
        }
    }
}

/// The status of a ReadyForQuery. A status byte PostgreSQL never sends is taken for "in a
/// transaction": the connection is then never handed to another client.
pub fn ready_status(f: &Frame) -> TxStatus {
    f.body().first().and_then(|&b| TxStatus::from_byte(b)).unwrap_or(TxStatus::InTransaction)
}

/// The fields of an ErrorResponse or NoticeResponse (the whole message).
#[derive(Clone, Copy)]
pub struct ErrorFields<'a>(&'a [u8]);

/// Reads an ErrorResponse or NoticeResponse given as a whole message.
pub fn error_fields(msg: &[u8]) -> ErrorFields<'_> {
    ErrorFields(msg.get(5..).unwrap_or(&[]))
}

impl<'a> ErrorFields<'a> {
    /// A field by its code ('C' SQLSTATE, 'M' message, 'V' severity, ...).
    pub fn field(&self, code: u8) -> Option<&'a str> {
        let mut rest = self.0;
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            rest = tail;
            let value = read_cstr(&mut rest).ok()?;
            if c == code {
                return Some(value);
            }
        }
        None
    }

    pub fn code(&self) -> Option<&'a str> {
        self.field(b'C')
    }

    pub fn message(&self) -> Option<&'a str> {
        self.field(b'M')
    }

    /// FATAL or PANIC: the server ends the connection after it.
    pub fn is_fatal(&self) -> bool {
        matches!(self.field(b'V'), Some("FATAL" | "PANIC"))
    }
}

/// The parameter a ParameterStatus reports.
pub fn parameter_name(f: &Frame) -> &str {
    let mut body = f.body();
    read_cstr(&mut body).unwrap_or("")
}

/// The command tag of a CommandComplete ("INSERT 0 1", "ROLLBACK", ...).
pub fn command_tag(f: &Frame) -> &str {
    let mut body = f.body();
    read_cstr(&mut body).unwrap_or("")
}

/// The value of a DataRow of one non-NULL text column.
pub fn single_text(f: &Frame) -> Option<&str> {
    let body = f.body();
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if n != 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(body.get(6..6 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::protocol::{command_complete, error, error_response, message, parameter_status, ready_for_query};

    fn frame(bytes: bytes::Bytes) -> Frame {
        Frame { bytes }
    }

    #[test]
    fn ready_for_query_status() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(ready_status(&frame(ready_for_query(s))), s);
            assert_eq!(TxStatus::from_byte(s.byte()), Some(s));
        }
        assert_eq!(&ready_for_query(TxStatus::InTransaction)[..], b"Z\0\0\0\x05T");
        // Unknown or missing: never idle.
        assert_eq!(ready_status(&frame(message(b'Z', |b| b.put_u8(b'X')))), TxStatus::InTransaction);
        assert_eq!(ready_status(&frame(message(b'Z', |_| {}))), TxStatus::InTransaction);
    }

    #[test]
    fn error_response_fields() {
        let e = error("42P01", "no such table");
        let f = error_fields(&e);
        assert_eq!((f.code(), f.message(), f.field(b'D')), (Some("42P01"), Some("no such table"), None));
        assert!(!f.is_fatal());
        assert!(error_fields(&error_response("FATAL", "57P01", "bye")).is_fatal());
        // Truncated or empty: no fields, no panic.
        assert_eq!(error_fields(&e[..8]).code(), None);
        assert_eq!(error_fields(b"E").code(), None);
        assert_eq!(error_fields(&e[..e.len() - 3]).message(), None);
    }

    #[test]
    fn names_tags_and_rows() {
        assert_eq!(parameter_name(&frame(parameter_status("TimeZone", "UTC"))), "TimeZone");
        assert_eq!(command_tag(&frame(command_complete("ROLLBACK"))), "ROLLBACK");
        let row = message(b'D', |b| {
            b.put_i16(1);
            b.put_i32(3);
            b.put_slice(b"0/1");
        });
        assert_eq!(single_text(&frame(row)), Some("0/1"));
        let null = message(b'D', |b| {
            b.put_i16(1);
            b.put_i32(-1);
        });
        assert_eq!(single_text(&frame(null)), None);
        assert_eq!(single_text(&frame(message(b'D', |b| b.put_u8(0)))), None);
    }
}
