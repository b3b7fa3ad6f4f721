//! The admin console's side of the protocol: a session on the virtual database `pgsplit`
//! with no server behind it. Simple queries only (what psql sends); each is one command,
//! answered by `ops::admin` as an ordinary row set or a command tag.

use bytes::BufMut;

use super::{End, Session};
use crate::ops::admin::{self, Answer};
use crate::protocol::TxStatus;
use crate::protocol::{self, ProtocolError, message, put_cstr};

impl Session {
    pub(super) async fn console(&mut self) -> Result<(), End> {
        if !self.shared.config.load().is_admin(&self.client.user) {
            let msg = format!(
                "user \"{}\" may not use the pgsplit admin console (list it in [admin] users)",
                self.client.user
            );
            self.client.out.extend_from_slice(&protocol::fatal("42501", &msg));
            return Err(End::Fatal(msg));
        }
        tracing::info!(user = %self.client.user, "admin console session");
        for (k, v) in [("server_version", "15.0 (pgsplit admin console)"), ("client_encoding", "UTF8")] {
            self.client.out.extend_from_slice(&protocol::parameter_status(k, v));
        }
        self.client
            .out
            .extend_from_slice(&protocol::backend_key_data(self.client.cancel.pid, self.client.cancel.secret));
        self.client.out.extend_from_slice(&protocol::ready_for_query(TxStatus::Idle));
        loop {
            self.flush_client().await?;
            let f = match self.client.reader.next().await {
                Ok(f) => f,
                Err(ProtocolError::Closed) => return Err(End::Terminated),
                Err(e) => return Err(e.into()),
            };
            match f.tag() {
                b'Q' => {
                    let sql = protocol::frontend::read_query(&f)?.to_string();
                    for stmt in crate::sql::lex::split_statements(&sql) {
                        match admin::execute(&self.shared, stmt) {
                            Ok(answer) => self.answer(answer),
                            Err(r) => {
                                self.client.out.extend_from_slice(&protocol::error(r.code, &r.message));
                                break;
                            }
                        }
                    }
                    if crate::sql::lex::split_statements(&sql).is_empty() {
                        self.client.out.extend_from_slice(&[b'I', 0, 0, 0, 4]);
                    }
                    self.client.out.extend_from_slice(&protocol::ready_for_query(TxStatus::Idle));
                }
                b'X' => return Err(End::Terminated),
                b'S' => {
                    let msg = "the pgsplit admin console takes simple queries only";
                    self.client.out.extend_from_slice(&protocol::error("0A000", msg));
                    self.client.out.extend_from_slice(&protocol::ready_for_query(TxStatus::Idle));
                }
                // Extended-protocol messages before their Sync: answered at the Sync.
                _ => {}
            }
        }
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Rows { columns, rows } => {
                self.client.out.extend_from_slice(&message(b'T', |b| {
                    b.put_i16(columns.len() as i16);
                    for c in &columns {
                        put_cstr(b, c);
                        b.put_i32(0);
                        b.put_i16(0);
                        b.put_u32(25); // text
                        b.put_i16(-1);
                        b.put_i32(-1);
                        b.put_i16(0);
                    }
                }));
                for row in &rows {
                    self.client.out.extend_from_slice(&message(b'D', |b| {
                        b.put_i16(row.len() as i16);
                        for v in row {
                            match v {
                                Some(v) => {
                                    b.put_i32(v.len() as i32);
                                    b.put_slice(v.as_bytes());
                                }
                                None => b.put_i32(-1),
                            }
                        }
                    }));
                }
                self.client.out.extend_from_slice(&protocol::command_complete(&format!("SHOW {}", rows.len())));
            }
            Answer::Done { tag, notice } => {
                if let Some(n) = notice {
                    self.client.out.extend_from_slice(&protocol::notice("00000", &n));
                }
                self.client.out.extend_from_slice(&protocol::command_complete(&tag));
            }
        }
    }
}
