//! DSNs in the ledger: made once (with the recipients they settle, in one transaction),
//! then written to an outbox and/or sent through a relay, each step recorded.

use std::path::Path;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::{Change, Ledger, RcptState, RecipientRow, Tx, timestamp};

/// What a DSN reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// `Action: failed` to the original sender.
    Failure,
    /// `Action: delayed` to the original sender (`--warn-after`).
    Delay,
    /// A copy for the postmaster of a bounce that could not be replayed (never to `<>`).
    Postmaster,
}

impl DsnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnKind::Failure => "failure",
            DsnKind::Delay => "delay",
            DsnKind::Postmaster => "postmaster",
        }
    }

    fn parse(s: &str) -> DsnKind {
        match s {
            "delay" => DsnKind::Delay,
            "postmaster" => DsnKind::Postmaster,
            _ => DsnKind::Failure,
        }
    }
}

/// Where sending a DSN through a relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    /// Not sent yet (or deferred by the relay: tried again next time).
    Pending,
    /// Handed to the relay; the outcome is not recorded yet.
    Sending,
    Sent,
    /// The relay refused it for good; recorded, never bounced.
    Failed,
    /// The relay may or may not have it; not sent again without `--resend-uncertain`.
    Uncertain,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Pending => "pending",
            SendState::Sending => "sending",
            SendState::Sent => "sent",
            SendState::Failed => "failed",
            SendState::Uncertain => "uncertain",
        }
    }

    fn parse(s: &str) -> SendState {
        match s {
            "sending" => SendState::Sending,
            "sent" => SendState::Sent,
            "failed" => SendState::Failed,
            "uncertain" => SendState::Uncertain,
            _ => SendState::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DsnRow {
    pub id: i64,
    pub message_id: i64,
    pub queue_id: String,
    pub kind: DsnKind,
    pub envelope_to: String,
    pub rfc_message_id: String,
    pub created_at: String,
    /// Recipients of its message that it reports.
    pub recipients: i64,
    pub written_path: Option<String>,
    pub send_state: SendState,
    pub sent_at: Option<String>,
    pub send_reply: Option<String>,
}

/// Which DSNs to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnFilter {
    All,
    Unwritten,
    /// Not sent yet: pending, or also uncertain ones with `resend_uncertain`.
    Unsent {
        resend_uncertain: bool,
    },
    Sending,
}

impl Ledger {
    /// DSNs in id order.
    pub fn dsns(&self, filter: DsnFilter) -> Result<Vec<DsnRow>> {
        // The send-state names come from `SendState` (a plain lowercase word each).
        let name = |state: SendState| format!("'{}'", state.as_str());
        let filter = match filter {
            DsnFilter::All => String::new(),
            DsnFilter::Unwritten => "WHERE d.written_at IS NULL".to_string(),
            DsnFilter::Unsent {
                resend_uncertain: false,
            } => format!("WHERE d.send_state = {}", name(SendState::Pending)),
            DsnFilter::Unsent {
                resend_uncertain: true,
            } => format!(
                "WHERE d.send_state IN ({}, {})",
                name(SendState::Pending),
                name(SendState::Uncertain)
            ),
            DsnFilter::Sending => format!("WHERE d.send_state = {}", name(SendState::Sending)),
        };
        let sql = format!(
            "SELECT d.id, d.message_id, m.queue_id, d.kind, d.envelope_to, d.rfc_message_id, d.created_at, \
             (SELECT count(*) FROM recipients r WHERE r.message_id = d.message_id \
                AND (r.dsn_id = d.id OR r.delay_dsn_id = d.id)), \
             d.written_path, d.send_state, d.sent_at, d.send_reply \
             FROM dsns d JOIN messages m ON m.id = d.message_id {filter} ORDER BY d.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DsnRow {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    queue_id: r.get(2)?,
                    kind: DsnKind::parse(&r.get::<_, String>(3)?),
                    envelope_to: r.get(4)?,
                    rfc_message_id: r.get(5)?,
                    created_at: r.get(6)?,
                    recipients: r.get(7)?,
                    written_path: r.get(8)?,
                    send_state: SendState::parse(&r.get::<_, String>(9)?),
                    sent_at: r.get(10)?,
                    send_reply: r.get(11)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The bytes of DSN `id`, if it exists.
    pub fn dsn_content(&self, id: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT content FROM dsns WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

impl Tx<'_> {
    /// Records a DSN of `kind` made for `covered`, and what it means for them, atomically:
    /// a failure DSN moves them from failed to bounced (a recipient is either bounced with
    /// its DSN recorded, or still owed one); a postmaster copy for a failed bounce drops
    /// them (a bounce is never bounced, only shown to the postmaster); a delay warning
    /// leaves their state alone, and each recipient gets at most one.
    pub fn record_dsn(
        &self,
        kind: DsnKind,
        message_id: i64,
        envelope_to: &str,
        rfc_message_id: &str,
        content: &[u8],
        covered: &[RecipientRow],
    ) -> Result<i64> {
        self.tx.prepare_cached(
            "INSERT INTO dsns (message_id, kind, envelope_to, rfc_message_id, created_at, content) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?.execute(
            params![
                message_id,
                kind.as_str(),
                envelope_to,
                rfc_message_id,
                timestamp(),
                content
            ],
        )?;
        let dsn_id = self.tx.last_insert_rowid();
        for rcpt in covered {
            match kind {
                DsnKind::Failure => self.cover_by_dsn(rcpt, dsn_id, &format!("dsn {dsn_id}"))?,
                DsnKind::Postmaster => self.drop_for_postmaster_copy(rcpt, dsn_id)?,
                DsnKind::Delay => self.warn_of_delay(rcpt, dsn_id)?,
            }
        }
        Ok(dsn_id)
    }

    fn drop_for_postmaster_copy(&self, rcpt: &RecipientRow, dsn_id: i64) -> Result<()> {
        let detail = format!("null sender: no DSN (RFC 5321 6.1); postmaster copy {dsn_id}");
        let change = Change {
            detail: Some(&detail),
            audit_only: true,
            ..Change::default()
        };
        self.set_state(rcpt, RcptState::Dropped, change)?;
        self.tx
            .prepare_cached("UPDATE recipients SET dsn_id = ?1 WHERE id = ?2")?
            .execute(params![dsn_id, rcpt.id])?;
        Ok(())
    }

    fn warn_of_delay(&self, rcpt: &RecipientRow, dsn_id: i64) -> Result<()> {
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE recipients SET delay_dsn_id = ?1 WHERE id = ?2 AND delay_dsn_id IS NULL",
            )?
            .execute(params![dsn_id, rcpt.id])?;
        anyhow::ensure!(
            changed == 1,
            "recipient {} already had a delay warning",
            rcpt.id
        );
        self.event(
            rcpt.id,
            Some(rcpt.state),
            rcpt.state,
            Some(&format!("delay warning dsn {dsn_id}")),
            &timestamp(),
        )
    }

    /// Settles a failed recipient with an existing DSN (its own, or one made for an
    /// identical copy).
    pub fn cover_by_dsn(&self, rcpt: &RecipientRow, dsn_id: i64, detail: &str) -> Result<()> {
        self.set_state(
            rcpt,
            RcptState::Bounced,
            Change {
                detail: Some(detail),
                audit_only: true,
                ..Change::default()
            },
        )?;
        self.tx
            .prepare_cached("UPDATE recipients SET dsn_id = ?1 WHERE id = ?2")?
            .execute(params![dsn_id, rcpt.id])?;
        Ok(())
    }

    pub fn mark_dsn_written(&self, dsn_id: i64, path: &Path) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE dsns SET written_path = ?1, written_at = ?2 WHERE id = ?3")?
            .execute(params![path.to_string_lossy(), timestamp(), dsn_id])?;
        Ok(())
    }

    /// Moves a DSN's sending from `from` to `to`, recording the relay's reply; refuses if
    /// another process moved it first.
    pub fn set_send_state(
        &self,
        dsn_id: i64,
        from: SendState,
        to: SendState,
        reply: Option<&str>,
    ) -> Result<()> {
        let sent_at = (to == SendState::Sent).then(timestamp);
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE dsns SET send_state = ?1, send_reply = coalesce(?2, send_reply), \
             sent_at = coalesce(?3, sent_at) WHERE id = ?4 AND send_state = ?5",
            )?
            .execute(params![to.as_str(), reply, sent_at, dsn_id, from.as_str()])?;
        anyhow::ensure!(
            changed == 1,
            "DSN {dsn_id} is no longer {} in the ledger (changed by another process?)",
            from.as_str()
        );
        Ok(())
    }
}
