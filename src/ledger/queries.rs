//! Read-only queries behind `report` (affected mailboxes, delays, duplicates, the HTML
//! report) and `status`; `audit`'s are in `audit.rs`. Each either aggregates in SQL or
//! streams rows through a callback, so memory never grows with the size of the ledger.

use anyhow::{Context, Result};
use rusqlite::params;

use super::{Ledger, RcptState, parse_state};

/// One recipient mailbox (lowercased address) and what happened to its mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxRow {
    pub mailbox: String,
    /// Messages addressed to it (one per recipient row).
    pub messages: u64,
    /// Delivered by spoolreplay, so after the outage (not by the MTA before the copy).
    pub delivered_late: u64,
    /// Longest time from arrival to delivery among those, in seconds.
    pub worst_delay_seconds: Option<i64>,
    /// Bounced, or failed with a DSN still to make.
    pub bounced: u64,
    /// Not delivered and no DSN (null sender, NOTIFY=NEVER, cancelled in the MTA).
    pub dropped: u64,
    pub held: u64,
    /// Pending, in flight or deferred.
    pub pending: u64,
    pub uncertain: u64,
    /// Not delivered, the store having said the mailbox is full (x.2.2): deferred and
    /// retried, or bounced at expiry. The mailboxes whose quota the operator should raise.
    pub over_quota: u64,
}

impl MailboxRow {
    /// Whether any of its mail was affected (mail the MTA delivered before is not).
    pub fn is_affected(&self) -> bool {
        self.delivered_late
            + self.bounced
            + self.dropped
            + self.held
            + self.pending
            + self.uncertain
            > 0
    }

    /// Adds the same mailbox's row from another ledger.
    pub fn absorb(&mut self, other: &MailboxRow) {
        self.messages += other.messages;
        self.delivered_late += other.delivered_late;
        self.worst_delay_seconds = match (self.worst_delay_seconds, other.worst_delay_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.bounced += other.bounced;
        self.dropped += other.dropped;
        self.held += other.held;
        self.pending += other.pending;
        self.uncertain += other.uncertain;
        self.over_quota += other.over_quota;
    }
}

/// Every mailbox with its counts, in mailbox order (`mailbox_row` reads a row).
pub(super) fn mailbox_sql() -> String {
    use RcptState::*;
    let delivered_at = delivered_at();
    let [
        delivered,
        bounced,
        failed,
        dropped,
        held,
        pending,
        in_flight,
        deferred,
        uncertain,
    ] = [
        Delivered, Bounced, Failed, Dropped, Held, Pending, InFlight, Deferred, Uncertain,
    ]
    .map(RcptState::sql);
    format!(
        "SELECT lower(r.address) AS mailbox, count(*), \
           sum(CASE WHEN r.state = {delivered} THEN {delivered_at} IS NOT NULL ELSE 0 END), \
           max(CASE WHEN r.state = {delivered} THEN {delivered_at} - m.arrival_unix END), \
           sum(r.state IN ({bounced}, {failed})), sum(r.state = {dropped}), \
           sum(r.state = {held}), sum(r.state IN ({pending}, {in_flight}, {deferred})), \
           sum(r.state = {uncertain}), \
           sum(r.state <> {delivered} AND coalesce(r.status, '') IN ('4.2.2', '5.2.2')) \
         FROM recipients r JOIN messages m ON m.id = r.message_id \
         GROUP BY lower(r.address) ORDER BY lower(r.address)"
    )
}

pub(super) fn mailbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MailboxRow> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(MailboxRow {
        mailbox: r.get(0)?,
        messages: n(1)?,
        delivered_late: n(2)?,
        worst_delay_seconds: r.get(3)?,
        bounced: n(4)?,
        dropped: n(5)?,
        held: n(6)?,
        pending: n(7)?,
        uncertain: n(8)?,
        over_quota: n(9)?,
    })
}

/// Per sender domain and envelope sender (lowercased): DSNs and the recipients they
/// report, in (domain, sender) order; the building block of sender domains across ledgers,
/// where distinct senders do not add up.
pub(super) fn sender_sql() -> String {
    format!(
        "SELECT {DOMAIN_OF_ENVELOPE_TO} AS domain, lower(d.envelope_to) AS sender, count(*), \
           sum((SELECT count(*) FROM recipients r WHERE r.dsn_id = d.id AND r.message_id = d.message_id)) \
         FROM dsns d GROUP BY domain, sender ORDER BY domain, sender"
    )
}

/// One sender domain that was sent DSNs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderDomainRow {
    pub sender_domain: String,
    pub dsns: u64,
    /// Distinct envelope senders in that domain.
    pub senders: u64,
    /// Recipients reported in those DSNs.
    pub recipients: u64,
}

/// Messages whose content hash occurs more than once.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DuplicateGroup {
    pub content_hash: String,
    /// Queue ids, in ledger order (the first is the original).
    pub queue_ids: Vec<String>,
}

/// The last part of an address after its last `@`, lowercased, in SQL (rtrim strips every
/// character that is not `@` from the end, leaving the part up to the last `@`).
const DOMAIN_OF_ENVELOPE_TO: &str = "lower(substr(d.envelope_to, \
     length(rtrim(d.envelope_to, replace(d.envelope_to, '@', ''))) + 1))";

/// The unix time a recipient was delivered by a run (the ingest-time `delivered` of mail the
/// MTA had already delivered has no `from_state`, and is not a late delivery).
fn delivered_at() -> String {
    format!(
        "(SELECT CAST(strftime('%s', min(e.at)) AS INTEGER) FROM events e \
         WHERE e.recipient_id = r.id AND e.to_state = {} AND e.from_state IS NOT NULL)",
        RcptState::Delivered.sql()
    )
}

/// Which part of the spool each envelope field of a message was taken from, as ingest
/// recorded it (`spool::FieldSource` names: `sidecar`, `x-original-to`, `queue-file`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSources {
    pub sender: String,
    pub recipients: String,
    pub arrival: String,
}

impl Ledger {
    /// Recipients held because their spool file changed or vanished since ingest.
    pub fn spool_changed_count(&self) -> Result<u64> {
        let pattern = format!("{}%", super::SPOOL_CHANGED);
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM recipients WHERE state = ?2 AND reply LIKE ?1")?
            .query_row([pattern.as_str(), RcptState::Held.as_str()], |r| r.get(0))
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))?;
        Ok(n as u64)
    }

    /// The window names the ledger knows (as `run` classified its messages), sorted.
    pub fn window_names(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT window FROM messages WHERE window IS NOT NULL ORDER BY window",
        )?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))?;
        Ok(names)
    }

    /// Where message `message_id`'s envelope came from (`status --message`).
    pub fn envelope_sources(&self, message_id: i64) -> Result<EnvelopeSources> {
        self.conn
            .prepare_cached(
                "SELECT sender_from, recipients_from, arrival_from FROM messages WHERE id = ?1",
            )?
            .query_row(params![message_id], |r| {
                Ok(EnvelopeSources {
                    sender: r.get(0)?,
                    recipients: r.get(1)?,
                    arrival: r.get(2)?,
                })
            })
            .with_context(|| format!("message {message_id} is missing from the ledger"))
    }

    /// Calls `f` for every mailbox with mail that was affected (delivered late, bounced,
    /// dropped, held, pending or uncertain), in mailbox order. SQLite groups on the
    /// `lower(address)` index, so rows stream.
    pub fn for_each_affected_mailbox(
        &self,
        mut f: impl FnMut(&MailboxRow) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&mailbox_sql())?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = mailbox_row(r)?;
            if row.is_affected() {
                f(&row)?;
            }
        }
        Ok(())
    }

    /// Sender domains that were sent DSNs, most DSNs first (ties by name).
    pub fn for_each_bounced_sender_domain(
        &self,
        mut f: impl FnMut(&SenderDomainRow) -> Result<()>,
    ) -> Result<()> {
        let sql = format!(
            "SELECT {DOMAIN_OF_ENVELOPE_TO} AS domain, count(*), count(DISTINCT lower(d.envelope_to)), \
               sum((SELECT count(*) FROM recipients r WHERE r.dsn_id = d.id AND r.message_id = d.message_id)) \
             FROM dsns d GROUP BY domain ORDER BY count(*) DESC, domain"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = SenderDomainRow {
                sender_domain: r.get(0)?,
                dsns: r.get::<_, i64>(1)? as u64,
                senders: r.get::<_, i64>(2)? as u64,
                recipients: r.get::<_, i64>(3)? as u64,
            };
            f(&row)?;
        }
        Ok(())
    }

    /// Calls `f` with the delay (seconds from arrival to delivery) of every recipient a run
    /// delivered.
    pub fn for_each_delivery_delay(&self, mut f: impl FnMut(i64)) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT CAST(strftime('%s', e.at) AS INTEGER) - m.arrival_unix \
             FROM events e JOIN recipients r ON r.id = e.recipient_id \
             JOIN messages m ON m.id = r.message_id \
             WHERE e.to_state = ?1 AND e.from_state IS NOT NULL",
        )?;
        let mut rows = stmt.query([RcptState::Delivered.as_str()])?;
        while let Some(r) = rows.next()? {
            if let Some(delay) = r.get::<_, Option<i64>>(0)? {
                f(delay);
            }
        }
        Ok(())
    }

    /// Groups of messages with the same content: how many groups, how many extra copies,
    /// and the first `limit` groups.
    pub fn duplicates(&self, limit: usize) -> Result<(u64, u64, Vec<DuplicateGroup>)> {
        let mut stmt = self.conn.prepare(
            "SELECT content_hash, count(*), group_concat(queue_id, char(10)) FROM \
             (SELECT content_hash, queue_id, id FROM messages ORDER BY content_hash, id) \
             GROUP BY content_hash HAVING count(*) > 1 ORDER BY min(id)",
        )?;
        let mut rows = stmt.query([])?;
        let (mut groups, mut extra, mut shown) = (0u64, 0u64, Vec::new());
        while let Some(r) = rows.next()? {
            groups += 1;
            extra += (r.get::<_, i64>(1)? - 1).max(0) as u64;
            if shown.len() < limit {
                let ids: String = r.get(2)?;
                shown.push(DuplicateGroup {
                    content_hash: r.get(0)?,
                    queue_ids: ids.split('\n').map(str::to_string).collect(),
                });
            }
        }
        Ok((groups, extra, shown))
    }

    /// Recipients per (domain, state), for the HTML report's domain table.
    pub fn domain_state_counts(&self) -> Result<Vec<(String, RcptState, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT domain, state, count(*) FROM recipients GROUP BY domain, state ORDER BY domain, state",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(d, s, n)| Ok((d, parse_state(&s)?, n as u64)))
            .collect()
    }

    /// Recipients not delivered whose last reply came from the store, counted per reply
    /// code, enhanced status and state (`status`: what the store is saying), most first.
    pub fn reply_counts(&self) -> Result<Vec<ReplyCount>> {
        let mut stmt = self.conn.prepare(
            "SELECT reply_code, reply_status, state, count(*) FROM recipients \
             WHERE reply_code IS NOT NULL AND state NOT IN (?1, ?2, ?3) \
             GROUP BY reply_code, reply_status, state \
             ORDER BY count(*) DESC, reply_code, reply_status, state",
        )?;
        let rows = stmt
            .query_map(
                params![
                    RcptState::Delivered.as_str(),
                    RcptState::DeliveredBefore.as_str(),
                    RcptState::Duplicate.as_str()
                ],
                |r| {
                    Ok((
                        r.get::<_, u16>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))?;
        rows.into_iter()
            .map(|(code, status, state, n)| {
                Ok(ReplyCount {
                    code,
                    status,
                    state: parse_state(&state)?,
                    recipients: n as u64,
                })
            })
            .collect()
    }
}

/// Recipients in one state whose store's last reply had this code and enhanced status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCount {
    pub code: u16,
    pub status: Option<String>,
    pub state: RcptState,
    pub recipients: u64,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A ledger with three messages written by plain SQL, as a run would leave them (the
    /// audit queries' tests use it too).
    pub(in crate::ledger) fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let w = Ledger::open_for_write(&path, "test").unwrap();
        w.conn
            .execute_batch(
                "INSERT INTO messages (id, content_hash, source_format, source_path, source_offset, source_len, \
                   queue_id, size, sender, sender_from, recipients_from, arrival, arrival_unix, arrival_from, ingested_at) VALUES \
                 (1, 'h1', 'eml', '/s/1', 0, 1, 'q1', 10, 'a@Sender.example', 'sidecar', 'sidecar', '2023-01-01T00:00:00Z', 1672531200, 'sidecar', 'x'), \
                 (2, 'h1', 'eml', '/s/2', 0, 1, 'q2', 10, 'b@sender.example', 'sidecar', 'sidecar', '2023-01-01T01:00:00Z', 1672534800, 'sidecar', 'x'), \
                 (3, 'h3', 'eml', '/s/3', 0, 1, 'q3', 10, '', 'sidecar', 'sidecar', '2023-01-01T02:00:00Z', 1672538400, 'sidecar', 'x');
                 INSERT INTO dsns (id, message_id, envelope_to, rfc_message_id, created_at, content) VALUES \
                 (7, 2, 'b@x@Sender.Example', '<d>', 'x', x'00');
                 INSERT INTO recipients (id, message_id, address, domain, state, dsn_id, updated_at) VALUES \
                 (1, 1, 'Bob@Rcpt.example', 'rcpt.example', 'delivered', NULL, 'x'), \
                 (2, 2, 'bob@rcpt.example', 'rcpt.example', 'bounced', 7, 'x'), \
                 (3, 3, 'carol@rcpt.example', 'rcpt.example', 'delivered', NULL, 'x'), \
                 (4, 3, 'dave@rcpt.example', 'rcpt.example', 'held', NULL, 'x');
                 INSERT INTO events (recipient_id, at, from_state, to_state, detail) VALUES \
                 (1, '2026-01-01T00:00:00.000Z', NULL, 'pending', 'ingested'), \
                 (1, '2023-01-02T00:00:00.000Z', 'in_flight', 'delivered', 'ok'), \
                 (2, '2023-01-02T00:00:00.000Z', 'failed', 'bounced', 'dsn 7'), \
                 (3, '2023-01-01T00:00:00.000Z', NULL, 'delivered', 'delivered by the MTA before the spool was copied'), \
                 (4, '2023-01-01T00:00:00.000Z', NULL, 'pending', 'ingested');",
            )
            .unwrap();
        drop(w);
        (dir, Ledger::open_read(&path).unwrap())
    }

    #[test]
    fn mailboxes_are_grouped_case_insensitively_with_the_worst_delay() {
        let (_dir, l) = ledger();
        let mut rows = Vec::new();
        l.for_each_affected_mailbox(|r| {
            rows.push(r.clone());
            Ok(())
        })
        .unwrap();
        // carol's only mail was delivered by the MTA before the outage copy: not affected.
        let names: Vec<&str> = rows.iter().map(|r| r.mailbox.as_str()).collect();
        assert_eq!(names, ["bob@rcpt.example", "dave@rcpt.example"]);
        assert_eq!(rows[0].messages, 2);
        assert_eq!(rows[0].delivered_late, 1);
        assert_eq!(rows[0].worst_delay_seconds, Some(86_400));
        assert_eq!(rows[0].bounced, 1);
        assert_eq!(rows[1].held, 1);
        assert_eq!(rows[1].worst_delay_seconds, None);
        // Nobody's status says the mailbox was full (and a NULL status counts as 0).
        assert!(rows.iter().all(|r| r.over_quota == 0), "{rows:?}");
    }

    #[test]
    fn sender_domain_is_after_the_last_at() {
        let (_dir, l) = ledger();
        let mut rows = Vec::new();
        l.for_each_bounced_sender_domain(|r| {
            rows.push(r.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            rows,
            [SenderDomainRow {
                sender_domain: "sender.example".into(),
                dsns: 1,
                senders: 1,
                recipients: 1
            }]
        );
    }

    #[test]
    fn duplicates_and_delays() {
        let (_dir, l) = ledger();
        let (groups, extra, shown) = l.duplicates(10).unwrap();
        assert_eq!((groups, extra), (1, 1));
        assert_eq!(shown[0].queue_ids, ["q1", "q2"]);
        let mut delays = Vec::new();
        l.for_each_delivery_delay(|d| delays.push(d)).unwrap();
        assert_eq!(delays, [86_400]);
    }
}
