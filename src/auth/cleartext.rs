//! A password goes to a server in the clear only over TLS whose certificate pgsplit verified
//! (`tls.server_tls = "verify-full"`): anyone on the path of a plain or unverified connection
//! could otherwise ask for it. pgsplit's own logins answer the request themselves
//! (`upstream::Login`); tokio-postgres (the monitor's, auth_query's and the health checks'
//! connections) would answer it unasked, so `Watch` reads what the server sends until
//! AuthenticationOk and fails the connection at a cleartext request.

use std::io;

/// What the error says.
pub const REFUSED: &str = "the server asks for a cleartext password on a connection that is not TLS with a verified \
                           certificate: pgsplit does not send it (use md5 or scram-sha-256 on the server, or \
                           tls.server_tls = \"verify-full\")";

/// The authentication request code for a cleartext password.
pub const CLEARTEXT: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The server's one-byte answer to an SSLRequest comes first.
    SslAnswer,
    /// Backend messages, until AuthenticationOk.
    Messages,
    /// Nothing more to check (logged in, TLS below this layer, or verified).
    Off,
}

/// Follows the server's side of a login.
#[derive(Debug, Clone)]
pub struct Watch {
    state: State,
    /// The message header being read: tag, length, and for 'R' the request code.
    header: [u8; 9],
    have: usize,
    /// Bytes of the current message's body still to pass.
    skip: usize,
}

impl Watch {
    /// For a plain socket; `ssl_request` when the client sends an SSLRequest first (the
    /// answer 'S' means TLS follows, and the watch moves to the TLS stream).
    pub fn socket(ssl_request: bool) -> Watch {
        Watch::new(if ssl_request { State::SslAnswer } else { State::Messages })
    }

    /// For the inside of a TLS stream: watching unless the certificate was verified.
    pub fn tls(verified: bool) -> Watch {
        Watch::new(if verified { State::Off } else { State::Messages })
    }

    fn new(state: State) -> Watch {
        Watch { state, header: [0; 9], have: 0, skip: 0 }
    }

    /// Looks at the next bytes the server sent: an error if they ask for a cleartext password.
    pub fn see(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return Ok(()),
                State::SslAnswer => {
                    self.state = if bytes[0] == b'S' { State::Off } else { State::Messages };
                    bytes = &bytes[1..];
                }
                State::Messages if self.skip > 0 => {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                State::Messages => {
                    let want = if self.have > 0 && self.header[0] == b'R' { 9 } else { 5 };
                    let n = (want - self.have).min(bytes.len());
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have < want || (self.header[0] == b'R' && self.have < 9) {
                        continue;
                    }
                    let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                    let len = len as usize;
                    if self.header[0] == b'R' {
                        let code = i32::from_be_bytes([self.header[5], self.header[6], self.header[7], self.header[8]]);
                        if code == CLEARTEXT {
                            return Err(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED));
                        }
                        if code == 0 {
                            self.state = State::Off;
                            return Ok(());
                        }
                        self.skip = len.saturating_sub(8);
                    } else {
                        self.skip = len.saturating_sub(4);
                    }
                    self.have = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    /// Feeds `bytes` in pieces of `step`.
    fn feed(mut w: Watch, bytes: &[u8], step: usize) -> io::Result<Watch> {
        for chunk in bytes.chunks(step) {
            w.see(chunk)?;
        }
        Ok(w)
    }

    #[test]
    fn a_cleartext_request_fails_the_connection_wherever_the_reads_split() {
        let mut stream = b"N".to_vec();
        stream.extend_from_slice(&[b'N', 0, 0, 0, 6, b'x', 0]); // a NoticeResponse
        stream.extend_from_slice(&request(CLEARTEXT, &[]));
        for step in [1, 2, 3, 7, 100] {
            let e = feed(Watch::socket(true), &stream, step).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "step {step}");
        }
        assert!(feed(Watch::socket(false), &request(CLEARTEXT, &[]), 1).is_err());
        assert!(feed(Watch::tls(false), &request(CLEARTEXT, &[]), 4).is_err());
    }

    #[test]
    fn other_logins_and_verified_tls_pass() {
        // md5 (salt), SASL (mechanisms), SASLContinue, SASLFinal, Ok, then anything.
        let mut stream = request(5, &[1, 2, 3, 4]);
        stream.extend_from_slice(&request(10, b"SCRAM-SHA-256\0\0"));
        stream.extend_from_slice(&request(11, b"r=abc,s=def,i=4096"));
        stream.extend_from_slice(&request(12, b"v=xyz"));
        stream.extend_from_slice(&request(0, &[]));
        stream.extend_from_slice(&request(CLEARTEXT, &[]));
        for step in [1, 3, 5, 9, 1000] {
            assert!(feed(Watch::socket(false), &stream, step).is_ok(), "step {step}");
        }
        // 'S': TLS follows, which this layer cannot read.
        let mut tls = b"S".to_vec();
        tls.extend_from_slice(&request(CLEARTEXT, &[]));
        assert!(feed(Watch::socket(true), &tls, 1).is_ok());
        assert!(feed(Watch::tls(true), &request(CLEARTEXT, &[]), 1).is_ok());
    }
}
