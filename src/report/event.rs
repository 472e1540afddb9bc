//! Every JSON Lines event (`--json`) as one type: a variant per row of README's "JSON
//! events" table (`tests` checks that the two agree, field by field).
//!
//! An event is written as a `serde_json::Value`, whose keys are sorted (serde_json without
//! `preserve_order`): the output is what the `json!` literals this replaced printed, which
//! scripts and the golden files in `fixtures/report/` know, and the order of the fields
//! here is free. The sections of `report` are variants too: `cells` gives their table and
//! CSV form next to their JSON fields, so the three formats stay one definition.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::cluster::ClusterStatus;
use crate::ledger::audit::{AuditRecipient, EventRow};
use crate::ledger::queries::{MailboxRow, SenderDomainRow};
use crate::ledger::{DsnRow, QuarantineRow, RcptState};
use crate::report::sheet::Cell;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    /// An item quarantined by `ingest` (no `first_seen`) or as the ledger holds it.
    Quarantined {
        format: &'a str,
        path: Cow<'a, str>,
        offset: i64,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        first_seen: Option<&'a str>,
    },
    IngestSummary {
        spool: Cow<'a, str>,
        format: &'a str,
        ledger: Cow<'a, str>,
        messages: u64,
        new: u64,
        known: u64,
        recipients: u64,
        quarantined: u64,
        new_quarantined: u64,
        shard: Option<String>,
        other_shards: u64,
        stopped: Option<&'a str>,
        exit: u8,
    },
    Plan {
        window: String,
        action: &'a str,
        disposition: &'a str,
        messages: u64,
        recipients: u64,
        bytes: u64,
    },
    Domain {
        domain: &'a str,
        recipients: u64,
        deliver: u64,
        bounce: u64,
        hold: u64,
        drop: u64,
    },
    Arrivals {
        hour: String,
        window: String,
        messages: u64,
    },
    /// Open mail per domain by age, one field per bucket (`5m` … `1280m+`).
    Age {
        domain: &'a str,
        total: u64,
        #[serde(flatten)]
        ages: Ages<'a>,
    },
    Anomaly {
        kind: &'a str,
        window: Option<&'a str>,
        messages: u64,
        /// Queue ids, separated by spaces.
        examples: String,
    },
    BouncePolicy {
        window: String,
        dsns: u64,
        suppressed_unauthenticated: u64,
        suppressed_spam: u64,
    },
    DsnSenderDomain {
        sender_domain: &'a str,
        dsns: u64,
        suppressed_unauthenticated: u64,
        suppressed_spam: u64,
    },
    Projection {
        rate: Option<String>,
        selected: &'a str,
        messages: u64,
        #[serde(serialize_with = "millis")]
        seconds: Option<Duration>,
    },
    Order {
        order: &'a str,
        milestone: &'a str,
        window: Option<String>,
        from_messages: u64,
        messages: u64,
        #[serde(serialize_with = "millis")]
        starts_seconds: Option<Duration>,
        #[serde(serialize_with = "millis")]
        done_seconds: Option<Duration>,
    },
    Ledger {
        ledger: &'a str,
        shard: &'a str,
        messages: u64,
    },
    ReportSummary {
        incident: &'a str,
        now: String,
        messages: u64,
        dispositions: BTreeMap<&'a str, u64>,
        states: BTreeMap<&'a str, u64>,
        deliveries: u64,
        dsns: u64,
        dsn_senders: usize,
        dsns_suppressed_unauthenticated: u64,
        dsns_suppressed_spam: u64,
        projected_seconds: Option<f64>,
        /// The `--order` projected for.
        order: &'a str,
        oldest: Option<String>,
        newest: Option<String>,
        quarantined: u64,
        outside: u64,
        unexpected: u64,
        duplicates: u64,
        /// A `mass_bounce` event, tag and all.
        mass_bounce: Option<Box<Event<'a>>>,
        /// Only when several ledgers were combined.
        #[serde(skip_serializing_if = "Option::is_none")]
        ledgers: Option<Vec<&'a str>>,
    },
    Mailbox {
        mailbox: &'a str,
        messages: u64,
        delivered_late: u64,
        worst_delay_seconds: Option<i64>,
        bounced: u64,
        dropped: u64,
        held: u64,
        pending: u64,
        uncertain: u64,
        over_quota: u64,
    },
    SenderDomain {
        sender_domain: &'a str,
        dsns: u64,
        senders: u64,
        recipients: u64,
    },
    Audit {
        recipient_id: i64,
        message_id: i64,
        queue_id: &'a str,
        sender: &'a str,
        recipient: &'a str,
        arrival: &'a str,
        window: Option<&'a str>,
        disposition: Option<&'a str>,
        state: &'a str,
        status: Option<&'a str>,
        reply: Option<&'a str>,
        dsn_id: Option<i64>,
        events: Vec<StateChange<'a>>,
    },
    Outcome {
        queue_id: &'a str,
        recipient: &'a str,
        state: &'a str,
        detail: &'a str,
    },
    DsnMade {
        id: i64,
        queue_id: &'a str,
        to: &'a str,
        recipients: usize,
    },
    MassBounce {
        open_messages: u64,
        expire: u64,
        bounce: u64,
        drop: u64,
        percent: u64,
        max_bounce_share: u8,
        rule: &'a str,
        now: String,
        fixed_clock: bool,
    },
    Notice {
        text: &'a str,
    },
    Warning {
        text: &'a str,
    },
    /// `run` obeying a steering request.
    #[serde(rename = "control")]
    Steered {
        text: &'a str,
    },
    /// `control` asking for one.
    #[serde(rename = "control")]
    ControlRequest {
        id: i64,
        request: &'a str,
    },
    RunSummary {
        delivered: u64,
        already_there: u64,
        recovered_in_flight: u64,
        deferred: u64,
        failed: u64,
        held: u64,
        released: u64,
        dropped: u64,
        dsns_made: u64,
        delay_warnings: u64,
        dsns_written: u64,
        dsns_unwritten: usize,
        spool_changed: u64,
        spool_changed_examples: &'a [String],
        remaining: u64,
        uncertain: u64,
        verified_in_store: u64,
        verified_missing_redelivered: u64,
        verify_impossible: u64,
        messages: u64,
        seconds: f64,
        stopped: Option<String>,
        exit: u8,
    },
    Status {
        ledger: Cow<'a, str>,
        messages: u64,
        states: BTreeMap<&'a str, u64>,
        /// Per window (or "(not classified yet)"), recipients per state.
        windows: BTreeMap<&'a str, BTreeMap<&'a str, u64>>,
        quarantined: u64,
        dsns: usize,
        dsns_unwritten: usize,
        dsns_unsent: usize,
        spool_changed: u64,
        replies: Vec<ReplyLine<'a>>,
        remaining: u64,
        next: Option<&'a str>,
    },
    /// One message, by `status --message`.
    Message {
        queue_id: &'a str,
        queue_name: Option<&'a str>,
        source: String,
        format: &'a str,
        sender: &'a str,
        arrival: String,
        size: u64,
        mta_hold: bool,
        window: Option<&'a str>,
        disposition: Option<&'a str>,
        envelope_from: EnvelopeFrom<'a>,
        recipients: Vec<RecipientLine<'a>>,
    },
    Dsn {
        id: i64,
        kind: &'a str,
        queue_id: &'a str,
        to: &'a str,
        message_id: &'a str,
        recipients: i64,
        created_at: &'a str,
        written_path: Option<&'a str>,
        send_state: &'a str,
        sent_at: Option<&'a str>,
        send_reply: Option<&'a str>,
    },
    DsnOwed {
        queue_id: &'a str,
        to: &'a str,
        recipients: usize,
    },
    DsnSent {
        id: i64,
        to: &'a str,
        state: &'a str,
        reply: &'a str,
    },
    SendSummary {
        sent: u64,
        deferred: u64,
        failed: u64,
        uncertain: u64,
        recovered_uncertain: u64,
        unsent: usize,
        stopped: Option<&'a str>,
        exit: u8,
    },
    SendDomain {
        domain: &'a str,
        sent: u64,
        deferred: u64,
        refused: u64,
        uncertain: u64,
    },
    Pace {
        rate: Option<f64>,
        reason: &'a str,
    },
    DsnsWritten {
        written: u64,
        outbox: &'a Path,
    },
    ClusterStatus(&'a ClusterStatus),
}

/// The age buckets of an `age` row: `labels[i]` holds `counts[i]`.
#[derive(Debug, Clone)]
pub struct Ages<'a> {
    pub labels: &'a [String],
    pub counts: Vec<u64>,
}

impl Serialize for Ages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.labels.iter().zip(&self.counts))
    }
}

/// One change of state in an `audit` event.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange<'a> {
    at: &'a str,
    from: Option<&'a str>,
    to: &'a str,
    detail: Option<&'a str>,
    dsn_id: Option<i64>,
}

/// Recipients not delivered, per the store's last reply, in a `status` event.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyLine<'a> {
    pub code: u16,
    pub status: Option<&'a str>,
    pub state: &'a str,
    pub recipients: u64,
}

/// Where a `message` event's envelope came from.
#[derive(Debug, Clone, Serialize)]
pub struct EnvelopeFrom<'a> {
    pub sender: &'a str,
    pub recipients: &'a str,
    pub arrival: &'a str,
}

/// A recipient in a `message` event.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientLine<'a> {
    pub address: &'a str,
    pub state: &'a str,
    pub status: Option<&'a str>,
    pub reply: Option<&'a str>,
    pub remote: Option<&'a str>,
    pub attempts: i64,
    pub last_attempt: Option<&'a str>,
}

/// A duration as seconds to the millisecond (`4.06`), or null.
fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0),
        None => s.serialize_none(),
    }
}

impl<'a> Event<'a> {
    /// An item quarantined just now, by `ingest`.
    pub fn quarantined_item(q: &'a crate::spool::Quarantined) -> Event<'a> {
        Event::Quarantined {
            format: q.source.format.as_str(),
            path: q.source.path.to_string_lossy(),
            // The ledger keeps offsets as SQLite integers; no file is 2^63 bytes long.
            offset: i64::try_from(q.source.offset).unwrap_or(i64::MAX),
            reason: &q.reason,
            first_seen: None,
        }
    }

    /// A quarantined item as the ledger holds it, by `report`.
    pub fn quarantined(q: &'a QuarantineRow) -> Event<'a> {
        Event::Quarantined {
            format: &q.source_format,
            path: Cow::Borrowed(&q.source_path),
            offset: q.source_offset,
            reason: &q.reason,
            first_seen: Some(&q.first_seen),
        }
    }

    pub fn dsn(d: &'a DsnRow) -> Event<'a> {
        Event::Dsn {
            id: d.id,
            kind: d.kind.as_str(),
            queue_id: &d.queue_id,
            to: &d.envelope_to,
            message_id: &d.rfc_message_id,
            recipients: d.recipients,
            created_at: &d.created_at,
            written_path: d.written_path.as_deref(),
            send_state: d.send_state.as_str(),
            sent_at: d.sent_at.as_deref(),
            send_reply: d.send_reply.as_deref(),
        }
    }

    /// A plan that would bounce or expire more than `--max-bounce-share` (`run` refuses it,
    /// `report` warns).
    pub fn mass_bounce(m: &'a crate::plan::MassBounce) -> Event<'a> {
        Event::MassBounce {
            open_messages: m.open,
            expire: m.expire,
            bounce: m.bounce,
            drop: m.drop,
            percent: m.percent(),
            max_bounce_share: m.max_share,
            rule: &m.rule,
            now: m.now.to_rfc3339(),
            fixed_clock: m.fixed_clock,
        }
    }

    pub fn mailbox(m: &'a MailboxRow) -> Event<'a> {
        Event::Mailbox {
            mailbox: &m.mailbox,
            messages: m.messages,
            delivered_late: m.delivered_late,
            worst_delay_seconds: m.worst_delay_seconds,
            bounced: m.bounced,
            dropped: m.dropped,
            held: m.held,
            pending: m.pending,
            uncertain: m.uncertain,
            over_quota: m.over_quota,
        }
    }

    pub fn sender_domain(d: &'a SenderDomainRow) -> Event<'a> {
        Event::SenderDomain {
            sender_domain: &d.sender_domain,
            dsns: d.dsns,
            senders: d.senders,
            recipients: d.recipients,
        }
    }

    /// One recipient and its history. The DSN id is given on the change to `bounced` (the
    /// recipient row holds it; the event's detail says it in words).
    pub fn audit(r: &'a AuditRecipient, events: &'a [EventRow]) -> Event<'a> {
        Event::Audit {
            recipient_id: r.id,
            message_id: r.message_id,
            queue_id: &r.queue_id,
            sender: &r.sender,
            recipient: &r.address,
            arrival: &r.arrival,
            window: r.window.as_deref(),
            disposition: r.disposition.as_deref(),
            state: r.state.as_str(),
            status: r.status.as_deref(),
            reply: r.reply.as_deref(),
            dsn_id: r.dsn_id,
            events: events
                .iter()
                .map(|e| StateChange {
                    at: &e.at,
                    from: e.from.map(RcptState::as_str),
                    to: e.to.as_str(),
                    detail: e.detail.as_deref(),
                    dsn_id: if e.to == RcptState::Bounced {
                        r.dsn_id
                    } else {
                        None
                    },
                })
                .collect(),
        }
    }

    /// The event as one line of JSON, newline included.
    pub fn write_line(&self, out: &mut dyn Write) -> io::Result<()> {
        // Through a `Value`: its map sorts the keys (see the module comment).
        let value = serde_json::to_value(self).map_err(io::Error::other)?;
        serde_json::to_writer(&mut *out, &value)?;
        out.write_all(b"\n")
    }

    /// A section row's cells for a table and CSV, in its columns' order (the JSON fields'
    /// names, whatever their order here: `SheetWriter` checks that they agree). Empty for
    /// an event that is no section row.
    pub fn cells(&self) -> Vec<Cell> {
        let text = |s: &str| Cell::text(s);
        match self {
            Event::Quarantined {
                format,
                path,
                offset,
                reason,
                first_seen,
            } => vec![
                text(format),
                text(path),
                Cell::Count((*offset).max(0) as u64),
                text(reason),
                text(first_seen.unwrap_or("")),
            ],
            Event::Plan {
                window,
                action,
                disposition,
                messages,
                recipients,
                bytes,
            } => vec![
                text(window),
                text(action),
                text(disposition),
                Cell::Count(*messages),
                Cell::Count(*recipients),
                Cell::Bytes(*bytes),
            ],
            Event::Domain {
                domain,
                recipients,
                deliver,
                bounce,
                hold,
                drop,
            } => vec![
                text(domain),
                Cell::Count(*recipients),
                Cell::Count(*deliver),
                Cell::Count(*bounce),
                Cell::Count(*hold),
                Cell::Count(*drop),
            ],
            Event::Age {
                domain,
                total,
                ages,
            } => [text(domain), Cell::Count(*total)]
                .into_iter()
                .chain(ages.counts.iter().map(|n| Cell::Count(*n)))
                .collect(),
            Event::Arrivals {
                hour,
                window,
                messages,
            } => vec![text(hour), text(window), Cell::Count(*messages)],
            Event::Anomaly {
                kind,
                window,
                messages,
                examples,
            } => vec![
                text(kind),
                Cell::MaybeText(window.map(str::to_string)),
                Cell::Count(*messages),
                text(examples),
            ],
            Event::BouncePolicy {
                window,
                dsns,
                suppressed_unauthenticated,
                suppressed_spam,
            } => vec![
                text(window),
                Cell::Count(*dsns),
                Cell::Count(*suppressed_unauthenticated),
                Cell::Count(*suppressed_spam),
            ],
            Event::DsnSenderDomain {
                sender_domain,
                dsns,
                suppressed_unauthenticated,
                suppressed_spam,
            } => vec![
                text(sender_domain),
                Cell::Count(*dsns),
                Cell::Count(*suppressed_unauthenticated),
                Cell::Count(*suppressed_spam),
            ],
            Event::Projection {
                rate,
                selected,
                messages,
                seconds,
            } => vec![
                Cell::MaybeText(rate.clone()),
                text(selected),
                Cell::Count(*messages),
                Cell::Duration(*seconds),
            ],
            Event::Order {
                order,
                milestone,
                window,
                from_messages,
                messages,
                starts_seconds,
                done_seconds,
            } => vec![
                text(order),
                text(milestone),
                Cell::MaybeText(window.clone()),
                Cell::Count(*from_messages),
                Cell::Count(*messages),
                Cell::Duration(*starts_seconds),
                Cell::Duration(*done_seconds),
            ],
            Event::Ledger {
                ledger,
                shard,
                messages,
            } => vec![text(ledger), text(shard), Cell::Count(*messages)],
            Event::Mailbox {
                mailbox,
                messages,
                delivered_late,
                worst_delay_seconds,
                bounced,
                dropped,
                held,
                pending,
                uncertain,
                over_quota,
            } => vec![
                text(mailbox),
                Cell::Count(*messages),
                Cell::Count(*delivered_late),
                Cell::Seconds(*worst_delay_seconds),
                Cell::Count(*bounced),
                Cell::Count(*dropped),
                Cell::Count(*held),
                Cell::Count(*pending),
                Cell::Count(*uncertain),
                Cell::Count(*over_quota),
            ],
            Event::SenderDomain {
                sender_domain,
                dsns,
                senders,
                recipients,
            } => vec![
                text(sender_domain),
                Cell::Count(*dsns),
                Cell::Count(*senders),
                Cell::Count(*recipients),
            ],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
