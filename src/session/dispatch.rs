//! The one dispatch every unit of work goes through, a simple Query, an extended batch at its
//! Flush or Sync, and the re-run of a read whose connection died, in named phases:
//!
//! 1. `aim`: resolve the look-ups the classifier left (user functions, views), move a fresh
//!    read-only transaction a standby would refuse to the primary, and close the part of a
//!    batch a replica already ran when the rest needs the primary;
//! 2. `dispatch`: decide (the pure router, waiting briefly for a replica that has replayed
//!    this client's writes) and place (attach the server connection, count the decision).
//!
//! What each protocol does before (answers it gives itself) and after (writing the work for
//! the connection, the commit probe) stays with it: `requests.rs` and `batch.rs`.

use super::work::{Aim, Route};
use super::{End, Session};
use crate::router::Decision;
use crate::sql::Target;
use crate::sql::session_cmd::STANDBY_REFUSES;

impl Session {
    /// Phase 1. `fresh_begin`: the BEGIN READ ONLY of a transaction that has run nothing else
    /// on its replica. None: the client has its error (the part of its batch already sent
    /// failed) and the work must not run.
    pub(super) async fn aim(&mut self, route: &Route, fresh_begin: Option<String>) -> Result<Option<Aim>, End> {
        let (target, reason) = self.resolve(route.target, route.reason, &route.lookups).await;
        if let Some(begin) = fresh_begin
            && target == Target::Primary
            && reason == STANDBY_REFUSES
        {
            // Boxed: rare, and its state (a checkout) is large.
            Box::pin(self.move_fresh_transaction(&begin)).await?;
        }
        if self.hold.batch_open && self.hold.tx_status.is_idle() && target == Target::Primary && self.on_replica() {
            // The start of this batch went to a replica (it looked like a read when the client
            // flushed); the rest needs the primary. Close the replica's part with a Sync of our
            // own and carry on on the primary: prepared statements follow the client.
            if !self.close_open_batch().await? {
                return Ok(None);
            }
        }
        Ok(Some(Aim { target, reason, hint: route.hint, min_lsn: route.min_lsn }))
    }

    /// Phase 2: the decision, and a server connection attached for it. None: the client has
    /// its error (no server, writes held past failover_wait, ...).
    pub(super) async fn dispatch(&mut self, aim: Aim) -> Result<Option<Decision>, End> {
        let decision = self.decide_waiting(aim.target, aim.reason, aim.hint, aim.min_lsn).await;
        Ok(self.place(decision).await?.then_some(decision))
    }
}
