//! The row types the ledger hands out, and their decoders: a row the tool cannot
//! understand is a rusqlite conversion error naming the row (`FromSql`), so callers see
//! one `Result`.

use std::path::PathBuf;

use chrono::{DateTime, FixedOffset};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};

use super::RcptState;
use crate::address::ReversePath;
use crate::rfc3461::{Notify, ReturnContent};
use crate::spool::{SourceRef, SpoolFormat};

/// A message as the ledger knows it.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: i64,
    pub content_hash: String,
    pub source: SourceRef,
    pub queue_id: String,
    pub size: u64,
    pub sender: ReversePath,
    pub arrival: DateTime<FixedOffset>,
    pub envid: Option<String>,
    pub ret: Option<ReturnContent>,
    pub window: Option<String>,
    pub disposition: Option<String>,
    pub queue_name: Option<String>,
    pub mta_hold: bool,
}

/// One recipient of one message.
#[derive(Debug, Clone)]
pub struct RecipientRow {
    pub id: i64,
    pub message_id: i64,
    pub address: String,
    pub domain: String,
    pub orcpt: Option<String>,
    /// `None`: the spool gave no NOTIFY (an empty set is read as none too).
    pub notify: Option<Notify>,
    pub state: RcptState,
    pub status: Option<String>,
    pub reply: Option<String>,
    pub attempts: i64,
    pub last_attempt: Option<String>,
    /// When a deferred recipient may be tried again (unix seconds).
    pub next_attempt: Option<i64>,
    /// The server that gave the last reply, when a remote server answered.
    pub remote: Option<String>,
    /// The delay warning this recipient got, if any.
    pub delay_dsn_id: Option<i64>,
    /// The code of the store's last reply, when `reply` is one (not our own words).
    pub reply_code: Option<u16>,
    /// The RFC 3463 enhanced status the store sent with that reply, if it sent one.
    pub reply_status: Option<String>,
}

/// The order `run` delivers in (`--order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryOrder {
    /// Oldest first: the order the spool was ingested in.
    #[default]
    Arrival,
    /// Newest arrival first: the mail people are waiting for now.
    Newest,
    /// Round-robin across mailboxes, so one mailbox with 50,000 messages does not hold
    /// back everyone else's first message.
    Fair,
}

impl std::str::FromStr for DeliveryOrder {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "arrival" => Ok(DeliveryOrder::Arrival),
            "newest" => Ok(DeliveryOrder::Newest),
            "fair" => Ok(DeliveryOrder::Fair),
            other => Err(format!("`{other}` is not `arrival`, `newest` or `fair`")),
        }
    }
}

/// A message with the recipients selected alongside it.
#[derive(Debug, Clone)]
pub struct MessageWork {
    pub message: MessageRow,
    pub recipients: Vec<RecipientRow>,
}

#[derive(Debug, Clone)]
pub struct QuarantineRow {
    pub source_format: String,
    pub source_path: String,
    pub source_offset: i64,
    pub reason: String,
    pub first_seen: String,
}

/// What `insert_message` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The same content from the same source is already in the ledger.
    Known,
}

pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.content_hash, m.source_format, m.source_path, m.source_offset, m.source_len, \
     m.queue_id, m.size, m.sender, m.arrival, m.envid, m.ret, m.window, m.disposition, m.queue_name, m.mta_hold, \
     m.arrival_unix";

pub(super) const RECIPIENT_COLUMNS: &str = "id, message_id, address, domain, orcpt, notify, state, status, reply, attempts, \
     last_attempt, next_attempt, remote, delay_dsn_id, reply_code, reply_status";

/// A value of a row the tool cannot understand, named so the error says which row.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadValue(String);

fn bad_value(column: usize, text: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        Box::new(BadValue(text)),
    )
}

impl FromSql for RcptState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: String| FromSqlError::Other(Box::new(BadValue(e))))
    }
}

impl FromSql for SpoolFormat {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: String| FromSqlError::Other(Box::new(BadValue(e))))
    }
}

/// Reads a message row.
pub(super) fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    let id: i64 = r.get(0)?;
    let format: SpoolFormat = r
        .get(2)
        .map_err(|e| bad_value(2, format!("message {id} in the ledger: {e}")))?;
    let arrival: String = r.get(9)?;
    let sender: String = r.get(8)?;
    // RFC 3339 has no year before 0 or after 9999: a row an earlier version ingested
    // with such a time (a Postfix `T` record of -99999999999) is read by its seconds,
    // so that one row does not stop a report of the whole ledger.
    let arrival: DateTime<FixedOffset> = match DateTime::parse_from_rfc3339(&arrival) {
        Ok(a) => a,
        Err(e) => r
            .get::<_, i64>(16)
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map(|a| a.fixed_offset())
            .ok_or_else(|| {
                bad_value(
                    9,
                    format!("message {id} in the ledger has a bad arrival `{arrival}`: {e}"),
                )
            })?,
    };
    Ok(MessageRow {
        id,
        content_hash: r.get(1)?,
        source: SourceRef {
            format,
            path: PathBuf::from(r.get::<_, String>(3)?),
            offset: r.get::<_, i64>(4)? as u64,
            len: r.get::<_, i64>(5)? as u64,
        },
        queue_id: r.get(6)?,
        size: r.get::<_, i64>(7)? as u64,
        sender: ReversePath::parse(&sender),
        arrival,
        envid: r.get(10)?,
        ret: r.get(11)?,
        window: r.get(12)?,
        disposition: r.get(13)?,
        queue_name: r.get(14)?,
        mta_hold: r.get(15)?,
    })
}

/// Reads a recipient row.
pub(super) fn recipient_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecipientRow> {
    Ok(RecipientRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        address: r.get(2)?,
        domain: r.get(3)?,
        orcpt: r.get(4)?,
        notify: r.get::<_, Option<Notify>>(5)?.filter(|n| !n.is_empty()),
        state: r.get(6)?,
        status: r.get(7)?,
        reply: r.get(8)?,
        attempts: r.get(9)?,
        last_attempt: r.get(10)?,
        next_attempt: r.get(11)?,
        remote: r.get(12)?,
        delay_dsn_id: r.get(13)?,
        reply_code: r.get(14)?,
        reply_status: r.get(15)?,
    })
}

/// A state name read outside a row decoder (counts, the audit trail).
pub(super) fn parse_state(s: &str) -> anyhow::Result<RcptState> {
    s.parse::<RcptState>().map_err(anyhow::Error::msg)
}
