//! Write transactions: inserting ingested mail and quarantine entries, and every
//! recipient state change (checked, guarded in SQL, appended to the audit trail).

use std::collections::HashMap;

use anyhow::{Context, Result};
use rusqlite::params;

use super::{Inserted, Ledger, RcptState, RecipientRow, timestamp};
use crate::deliver::reply::Reply;
use crate::spool::{ContentHash, Prior, Quarantined, QueuedMessage};

impl Ledger {
    /// Runs `f` in one transaction; committed only if `f` succeeds.
    pub fn write<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .with_context(|| format!("cannot start a transaction on `{}`", self.path.display()))?;
        let value = f(&Tx { tx: &tx })?;
        tx.commit()
            .with_context(|| format!("cannot commit to ledger `{}`", self.path.display()))?;
        Ok(value)
    }
}

/// A write transaction. Every state change goes through `set_state`, which checks the
/// transition and appends to the audit trail.
pub struct Tx<'a> {
    pub(super) tx: &'a rusqlite::Transaction<'a>,
}

/// What a state change also records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Change<'a> {
    /// Free text for the audit trail, and the recipient's `reply` (the store's answer or
    /// our reason) unless `audit_only`.
    pub detail: Option<&'a str>,
    /// The detail is bookkeeping ("delivering to …", "dsn 3"): keep the recipient's last
    /// reply, which a DSN or an operator still needs.
    pub audit_only: bool,
    /// An RFC 3463 status (for failures).
    pub status: Option<&'a str>,
    /// The time of a real delivery attempt.
    pub attempted_at: Option<&'a str>,
    /// When to try a deferred recipient again (unix seconds).
    pub next_attempt: Option<i64>,
    /// The server that gave the reply in `detail`.
    pub remote: Option<&'a str>,
    /// The server reply `detail` is, when one decided the change: its code and enhanced
    /// status are stored beside the text.
    pub reply: Option<&'a Reply>,
}

/// Where a mailbox was already met while inserting a message.
enum SeenAt {
    /// In an earlier message with the same content (its queue id).
    Earlier(String),
    /// Earlier in this message's own envelope (that recipient's address as given).
    Sibling(String),
}

impl Tx<'_> {
    /// Adds a message and its recipients (state pending), unless the same content from the
    /// same source is already there. Clears a quarantine entry for that source.
    /// `hash` is `msg.identify(rule)`, taken by the caller (ingest hashes on its reader
    /// thread, while this thread writes).
    pub fn insert_message(
        &self,
        msg: &QueuedMessage,
        hash: &ContentHash,
        now: &str,
    ) -> Result<Inserted> {
        let hash = hash.to_hex();
        let env = &msg.envelope;
        let changed = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (content_hash, source_format, source_path, source_offset, \
             source_len, queue_id, size, sender, sender_from, recipients_from, arrival, arrival_unix, \
             arrival_from, envid, ret, ingested_at, queue_name, mta_hold) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?.execute(
            params![
                hash,
                msg.source.format.as_str(),
                msg.source.path.to_string_lossy(),
                msg.source.offset as i64,
                msg.source.len as i64,
                msg.queue_id,
                msg.content.len() as i64,
                env.sender.as_str(),
                env.sender_from.as_str(),
                env.recipients_from.as_str(),
                env.arrival.to_rfc3339(),
                env.arrival.timestamp(),
                env.arrival_from.as_str(),
                env.envid,
                env.ret,
                now,
                msg.queue_name,
                msg.mta_hold,
            ],
        )?;
        if changed == 0 {
            return Ok(Inserted::Known);
        }
        let message_id = self.tx.last_insert_rowid();
        let mut insert = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO recipients (message_id, address, domain, orcpt, notify, state, reply, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        // Mailboxes compare by `Mailbox::canonical` (`Bob@Example.NET` is `bob@example.net`),
        // against earlier copies of this content and against this envelope's own earlier
        // recipients. Both are maps built once per message: linear in recipients.
        let mut earlier = self.earlier_copies(&hash, message_id)?;
        for rcpt in &env.recipients {
            let domain = rcpt
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            let notify = rcpt.notify.filter(|n| !n.is_empty());
            // What the MTA already did is recorded as settled and never replayed; an exact
            // copy of mail already in the ledger for this mailbox is settled by that copy.
            let mailbox = crate::address::Mailbox::canonical_key(&rcpt.address);
            let duplicate_note = match earlier.get(&mailbox) {
                Some(SeenAt::Earlier(q)) => Some(format!(
                    "exact copy of {q} (same content): that copy's delivery covers it"
                )),
                Some(SeenAt::Sibling(first)) => Some(format!(
                    "same mailbox as `{first}` in this envelope: that recipient's delivery \
                     covers it"
                )),
                None => None,
            };
            if duplicate_note.is_none() {
                earlier.insert(mailbox, SeenAt::Sibling(rcpt.address.clone()));
            }
            let (state, note) = match (rcpt.prior, &duplicate_note) {
                (None, Some(note)) => (RcptState::Duplicate, Some(note.as_str())),
                (None, None) => (RcptState::Pending, None),
                (Some(Prior::Delivered), _) => (
                    RcptState::DeliveredBefore,
                    Some("delivered by the MTA before the spool was copied"),
                ),
                (Some(Prior::Cancelled), _) => {
                    (RcptState::Dropped, Some("cancelled in the MTA queue"))
                }
            };
            if insert.execute(params![
                message_id,
                rcpt.address,
                domain,
                rcpt.orcpt,
                notify,
                state.as_str(),
                note,
                now
            ])? == 1
            {
                let rid = self.tx.last_insert_rowid();
                self.event(rid, None, state, Some(note.unwrap_or("ingested")), now)?;
            }
        }
        self.tx.prepare_cached(
            "UPDATE quarantine SET resolved_at = ?1 WHERE source_path = ?2 AND source_offset = ?3 AND resolved_at IS NULL",
        )?.execute(
            params![now, msg.source.path.to_string_lossy(), msg.source.offset as i64],
        )?;
        Ok(Inserted::New)
    }

    /// The mailboxes (canonical) of earlier messages with the same content, each with the
    /// queue id of the first such message. One query per message; none of this content
    /// before (the usual case) costs one look-up in the compact `messages_content` index
    /// (`content_key`, derived from the hash by the same expression as the column).
    fn earlier_copies(&self, hash: &str, message_id: i64) -> Result<HashMap<String, SeenAt>> {
        let mut statement = self.tx.prepare_cached(
            "SELECT m.queue_id, r.address FROM messages m JOIN recipients r ON r.message_id = m.id \
             WHERE m.content_key = unhex(substr(?1, 1, 16)) AND m.content_hash = ?1 AND m.id < ?2 \
             ORDER BY m.id, r.id",
        )?;
        let mut rows = statement.query(params![hash, message_id])?;
        let mut copies = HashMap::new();
        while let Some(row) = rows.next()? {
            let (queue_id, address): (String, String) = (row.get(0)?, row.get(1)?);
            copies
                .entry(crate::address::Mailbox::canonical_key(&address))
                .or_insert(SeenAt::Earlier(queue_id));
        }
        Ok(copies)
    }

    /// Records a quarantined item; returns false when it was already recorded.
    pub fn insert_quarantine(&self, item: &Quarantined, now: &str) -> Result<bool> {
        let changed = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO quarantine (source_format, source_path, source_offset, reason, first_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?.execute(
            params![
                item.source.format.as_str(),
                item.source.path.to_string_lossy(),
                item.source.offset as i64,
                item.reason,
                now
            ],
        )?;
        Ok(changed == 1)
    }

    /// Moves one recipient from `from` to `to`, checking the transition and that the row
    /// really is in `from` (so two paths can never both act on it).
    pub fn set_state(&self, rcpt: &RecipientRow, to: RcptState, change: Change<'_>) -> Result<()> {
        rcpt.state.check_transition(to)?;
        let now = timestamp();
        let attempted = change.attempted_at.is_some() as i64;
        let reply = if change.audit_only {
            None
        } else {
            change.detail
        };
        let updated = self
            .tx
            .prepare_cached(
                "UPDATE recipients SET state = ?1, updated_at = ?2, \
             reply = coalesce(?3, reply), status = coalesce(?4, status), \
             attempts = attempts + ?5, last_attempt = coalesce(?6, last_attempt), \
             next_attempt = ?9, remote = CASE WHEN ?3 IS NULL THEN remote ELSE ?10 END, \
             reply_code = CASE WHEN ?3 IS NULL THEN reply_code ELSE ?11 END, \
             reply_status = CASE WHEN ?3 IS NULL THEN reply_status ELSE ?12 END \
             WHERE id = ?7 AND state = ?8",
            )?
            .execute(params![
                to.as_str(),
                now,
                reply,
                change.status,
                attempted,
                change.attempted_at,
                rcpt.id,
                rcpt.state.as_str(),
                change.next_attempt,
                change.remote,
                change.reply.map(|r| r.code),
                change.reply.and_then(Reply::enhanced_status),
            ])?;
        if updated != 1 {
            anyhow::bail!(
                "recipient {} of message {} is no longer {} in the ledger (changed by another process?)",
                rcpt.id,
                rcpt.message_id,
                rcpt.state
            );
        }
        self.event(rcpt.id, Some(rcpt.state), to, change.detail, &now)
    }

    pub(super) fn event(
        &self,
        rid: i64,
        from: Option<RcptState>,
        to: RcptState,
        detail: Option<&str>,
        at: &str,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO events (recipient_id, at, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![rid, at, from.map(RcptState::as_str), to.as_str(), detail])?;
        Ok(())
    }

    /// How many times this recipient was sent again after an uncertain attempt
    /// (`--uncertain redeliver`): the policy resends an uncertain copy at most once.
    pub fn redeliveries(&self, rcpt_id: i64) -> Result<i64> {
        let n = self
            .tx
            .prepare_cached(
                "SELECT count(*) FROM events WHERE recipient_id = ?1 \
                 AND from_state = ?2 AND to_state = ?3",
            )?
            .query_row(
                params![
                    rcpt_id,
                    RcptState::Uncertain.as_str(),
                    RcptState::Pending.as_str()
                ],
                |row| row.get(0),
            )?;
        Ok(n)
    }

    /// Stores the latest classification of a message (for `status` per window).
    pub fn set_classification(
        &self,
        message_id: i64,
        window: &str,
        disposition: &str,
        deadline: &str,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE messages SET window = ?1, disposition = ?2, deadline = ?3 WHERE id = ?4",
            )?
            .execute(params![window, disposition, deadline, message_id])?;
        Ok(())
    }
}
