//! The SQLite ledger: every message, every recipient's state, every state change, the
//! quarantine and the DSNs. The only module that uses rusqlite.
//!
//! One writer at a time: `Ledger::open_for_write` takes an exclusive lock on
//! `<ledger>.lock` (holding the owner's pid and command, so a second process can name it).
//! Readers (`report`, `status`, `bounces`) open without the lock; WAL lets them read while
//! a run writes.

pub mod audit;
pub mod combined;
mod dsns;
mod lock;
mod meta;
mod open;
pub mod queries;
mod rows;
mod schema;
pub mod state;
mod steering;
mod tx;
mod values;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use rusqlite::{Connection, params};

pub use dsns::{DsnFilter, DsnKind, DsnRow, SendState};
pub use meta::describe as describe_shard;
pub use open::explain_corruption;
pub use rows::{DeliveryOrder, Inserted, MessageRow, MessageWork, QuarantineRow, RecipientRow};
use rows::{MESSAGE_COLUMNS, RECIPIENT_COLUMNS, message_from_row, parse_state, recipient_from_row};
pub use state::RcptState;
pub use steering::Steer;
pub use tx::{Change, Tx};

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    _lock: Option<lock::LedgerLock>,
}

/// The ledger's clock for the audit trail: real time, never the `--now` of a what-if.
pub fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How the reply of a recipient held because its spool file changed or vanished since
/// ingest begins: `run` writes it, `status` counts by it.
pub const SPOOL_CHANGED: &str = "the spool changed since ingest";

impl Ledger {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages with at least one recipient in `states`, with those recipients, in id order
    /// after `after_id`; at most `limit` messages. Callers page through with the last id,
    /// so memory stays bounded however large the ledger.
    pub fn messages_in_states(
        &self,
        states: &[RcptState],
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<MessageWork>> {
        // One index range scan per state on recipients(state, message_id), merged here:
        // cheap however large the ledger, unlike a scan of messages with EXISTS.
        let mut ids: Vec<i64> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT message_id FROM recipients WHERE state = ?1 AND message_id > ?2 \
             ORDER BY message_id LIMIT ?3",
        )?;
        for state in states {
            let found = stmt
                .query_map(params![state.as_str(), after_id, limit as i64], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.extend(found);
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);

        let placeholders = states.iter().map(|s| s.sql()).collect::<Vec<_>>().join(",");
        let rsql = format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 AND state IN ({placeholders}) ORDER BY id"
        );
        let mut rstmt = self.conn.prepare_cached(&rsql)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let message = self.message(id)?;
            let recipients = rstmt
                .query_map(params![id], recipient_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(MessageWork {
                message,
                recipients,
            });
        }
        Ok(out)
    }

    /// Like [`Ledger::deliverable`], in `order`. `Arrival` pages by id after `after_id`;
    /// the others take the first `limit` of what is deliverable now (what was handed over
    /// is in flight or settled by the next call, so no cursor is needed), at the cost of
    /// one pass over the open recipients per batch.
    pub fn deliverable_in(
        &self,
        order: DeliveryOrder,
        after_id: i64,
        limit: usize,
        now_unix: i64,
    ) -> Result<Vec<MessageWork>> {
        let (pending, deferred) = (RcptState::Pending.sql(), RcptState::Deferred.sql());
        let due = format!(
            "(r.state = {pending} OR (r.state = {deferred} AND coalesce(r.next_attempt, 0) <= ?1))"
        );
        let sql = match order {
            DeliveryOrder::Arrival => return self.deliverable(after_id, limit, now_unix),
            DeliveryOrder::Newest => format!(
                "SELECT m.id FROM messages m WHERE EXISTS (SELECT 1 FROM recipients r \
                 WHERE r.message_id = m.id AND {due}) ORDER BY m.arrival_unix DESC, m.id DESC LIMIT ?2"
            ),
            // Round-robin across mailboxes: every mailbox's first message, then every
            // mailbox's second, … (a message to several counts at its best turn).
            DeliveryOrder::Fair => format!(
                "SELECT message_id FROM (SELECT r.message_id, row_number() OVER \
                 (PARTITION BY lower(r.address) ORDER BY r.message_id) AS turn \
                 FROM recipients r WHERE {due}) GROUP BY message_id \
                 ORDER BY min(turn), message_id LIMIT ?2"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let ids = stmt
            .query_map(params![now_unix, limit as i64], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.work_of(ids, now_unix)
    }

    /// `--order fair`'s first round: how many messages carry some mailbox's first turn
    /// (the same round-robin as [`Ledger::deliverable_in`]), over the recipients due at
    /// `now_unix`. What `report` projects "every mailbox has had its first message" from.
    pub fn fair_first_round(&self, now_unix: i64) -> Result<u64> {
        let (pending, deferred) = (RcptState::Pending.sql(), RcptState::Deferred.sql());
        let sql = format!(
            "SELECT count(*) FROM (SELECT message_id FROM (SELECT r.message_id, row_number() OVER \
             (PARTITION BY lower(r.address) ORDER BY r.message_id) AS turn FROM recipients r \
             WHERE r.state = {pending} OR (r.state = {deferred} AND coalesce(r.next_attempt, 0) <= ?1)) \
             GROUP BY message_id HAVING min(turn) = 1)"
        );
        let n: i64 = self.conn.query_row(&sql, params![now_unix], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Messages with recipients to deliver now: pending, or deferred and due at `now_unix`;
    /// in id order after `after_id`, at most `limit`.
    pub fn deliverable(
        &self,
        after_id: i64,
        limit: usize,
        now_unix: i64,
    ) -> Result<Vec<MessageWork>> {
        let (pending, deferred) = (RcptState::Pending.sql(), RcptState::Deferred.sql());
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT DISTINCT message_id FROM recipients WHERE state = {pending} AND message_id > ?1 \
             ORDER BY message_id LIMIT ?2",
        ))?;
        let mut ids = stmt
            .query_map(params![after_id, limit as i64], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT DISTINCT message_id FROM recipients WHERE state = {deferred} AND message_id > ?1 \
             AND coalesce(next_attempt, 0) <= ?3 ORDER BY message_id LIMIT ?2",
        ))?;
        ids.extend(
            stmt.query_map(params![after_id, limit as i64, now_unix], |r| {
                r.get::<_, i64>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        self.work_of(ids, now_unix)
    }

    /// The messages `ids`, in that order, with their recipients due at `now_unix`.
    fn work_of(&self, ids: Vec<i64>, now_unix: i64) -> Result<Vec<MessageWork>> {
        let (pending, deferred) = (RcptState::Pending.sql(), RcptState::Deferred.sql());
        let mut rstmt = self.conn.prepare_cached(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 AND \
             (state = {pending} OR (state = {deferred} AND coalesce(next_attempt, 0) <= ?2)) ORDER BY id"
        ))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let message = self.message(id)?;
            let recipients = rstmt
                .query_map(params![id, now_unix], recipient_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(MessageWork {
                message,
                recipients,
            });
        }
        Ok(out)
    }

    /// The earliest time a deferred recipient is due again (unix seconds).
    pub fn next_retry_at(&self) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT min(coalesce(next_attempt, 0)) FROM recipients WHERE state = ?1",
            [RcptState::Deferred.as_str()],
            |r| r.get(0),
        )?)
    }

    /// The messages with this queue id (one per spool it was ingested from).
    pub fn messages_by_queue_id(&self, queue_id: &str) -> Result<Vec<MessageRow>> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.queue_id = ?1 ORDER BY m.id");
        let rows = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![queue_id], message_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// One message by id.
    pub fn message(&self, id: i64) -> Result<MessageRow> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row(params![id], message_from_row)
            .with_context(|| format!("message {id} is missing from the ledger"))
    }

    /// All recipients of one message (any state).
    pub fn recipients_of(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        let sql =
            format!("SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 ORDER BY id");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(params![message_id], recipient_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Calls `f` for every message (with all its recipients) in id order, streaming.
    pub fn for_each_message(
        &self,
        mut f: impl FnMut(&MessageRow, &[RecipientRow]) -> Result<()>,
    ) -> Result<()> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id > ?1 ORDER BY m.id LIMIT 500"
        );
        // One read transaction for the whole walk: one view of the ledger, and SQLite
        // takes its WAL read lock once, not for every statement (two fcntl and an fstat a
        // message: 30,000 system calls for 10,000 messages, most of a `run` with nothing
        // to do). Nothing is written, so the end is a rollback.
        let _snapshot = self.conn.unchecked_transaction()?;
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut after = 0;
        loop {
            let page = stmt
                .query_map(params![after], message_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if page.is_empty() {
                return Ok(());
            }
            for message in page {
                after = message.id;
                let recipients = self.recipients_of(message.id)?;
                f(&message, &recipients)?;
            }
        }
    }

    /// Recipients per state.
    pub fn state_counts(&self) -> Result<Vec<(RcptState, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM recipients GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            out.push((parse_state(&state)?, n as u64));
        }
        out.sort();
        Ok(out)
    }

    /// Recipients per (window of the last classification, state).
    pub fn state_counts_by_window(&self) -> Result<Vec<(Option<String>, RcptState, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            // A message `run` never classifies (all its recipients settled at ingest, such
            // as exact duplicates) is counted in the window of the first classified copy
            // of the same content: the window it really arrived in.
            "SELECT coalesce(m.window, (SELECT o.window FROM messages o \
                 WHERE o.content_key IS m.content_key AND o.content_hash = m.content_hash \
                 AND o.window IS NOT NULL ORDER BY o.id LIMIT 1)) AS w, \
             r.state, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id \
             GROUP BY w, r.state ORDER BY w, r.state",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (window, state, n) = row?;
            out.push((window, parse_state(&state)?, n as u64));
        }
        Ok(out)
    }

    pub fn message_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Quarantined items not since ingested fine, oldest first, at most `limit`.
    pub fn quarantined(&self, limit: usize) -> Result<(u64, Vec<QuarantineRow>)> {
        let total: i64 = self.conn.query_row(
            "SELECT count(*) FROM quarantine WHERE resolved_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT source_format, source_path, source_offset, reason, first_seen FROM quarantine \
             WHERE resolved_at IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(QuarantineRow {
                    source_format: r.get(0)?,
                    source_path: r.get(1)?,
                    source_offset: r.get(2)?,
                    reason: r.get(3)?,
                    first_seen: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((total as u64, rows))
    }
}
