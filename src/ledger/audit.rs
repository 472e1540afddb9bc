//! Read-only queries behind `audit`: the recipients a filter selects, in keyset pages (so
//! memory never grows with the size of the ledger), and each one's state changes.

use anyhow::{Context, Result};
use rusqlite::{ToSql, params};

use super::{Ledger, RcptState, parse_state};

/// Which recipients `audit` exports; every field narrows the selection.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// The window of the message's last classification by `run`.
    pub window: Option<String>,
    pub state: Option<RcptState>,
    /// Compared case-insensitively.
    pub recipient: Option<String>,
    /// Compared case-insensitively; `""` is the null sender.
    pub sender: Option<String>,
    pub queue_id: Option<String>,
}

/// One recipient as `audit` shows it.
#[derive(Debug, Clone)]
pub struct AuditRecipient {
    pub id: i64,
    pub message_id: i64,
    pub queue_id: String,
    pub sender: String,
    pub address: String,
    pub arrival: String,
    pub window: Option<String>,
    pub disposition: Option<String>,
    pub state: RcptState,
    pub status: Option<String>,
    pub reply: Option<String>,
    pub dsn_id: Option<i64>,
}

/// One state change from the audit trail.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub at: String,
    pub from: Option<RcptState>,
    pub to: RcptState,
    pub detail: Option<String>,
}

impl Ledger {
    /// Recipients matching `filter`, in id order after `after_id`, at most `limit`.
    pub fn audit_page(
        &self,
        filter: &AuditFilter,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecipient>> {
        let mut sql = String::from(
            "SELECT r.id, r.message_id, m.queue_id, m.sender, r.address, m.arrival, m.window, \
             m.disposition, r.state, r.status, r.reply, r.dsn_id \
             FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id > ?",
        );
        let mut args: Vec<&dyn ToSql> = vec![&after_id];
        if let Some(a) = &filter.recipient {
            sql.push_str(" AND lower(r.address) = lower(?)");
            args.push(a);
        }
        if let Some(s) = &filter.sender {
            sql.push_str(" AND lower(m.sender) = lower(?)");
            args.push(s);
        }
        if let Some(q) = &filter.queue_id {
            sql.push_str(" AND m.queue_id = ?");
            args.push(q);
        }
        if let Some(w) = &filter.window {
            sql.push_str(" AND m.window = ?");
            args.push(w);
        }
        let state = filter.state.map(RcptState::as_str);
        if let Some(s) = &state {
            // `+` keeps SQLite on the id order instead of the state index, which would
            // sort every matching row again for each page.
            sql.push_str(" AND +r.state = ?");
            args.push(s);
        }
        let limit = limit as i64;
        sql.push_str(" ORDER BY r.id LIMIT ?");
        args.push(&limit);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(args.as_slice(), |r| {
                let state: String = r.get(8)?;
                Ok((
                    state,
                    AuditRecipient {
                        id: r.get(0)?,
                        message_id: r.get(1)?,
                        queue_id: r.get(2)?,
                        sender: r.get(3)?,
                        address: r.get(4)?,
                        arrival: r.get(5)?,
                        window: r.get(6)?,
                        disposition: r.get(7)?,
                        state: RcptState::Pending,
                        status: r.get(9)?,
                        reply: r.get(10)?,
                        dsn_id: r.get(11)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))?;
        rows.into_iter()
            .map(|(state, mut row)| {
                row.state = parse_state(&state)
                    .with_context(|| format!("recipient {} in the ledger", row.id))?;
                Ok(row)
            })
            .collect()
    }

    /// Every state change of one recipient, oldest first.
    pub fn events_of(&self, recipient_id: i64) -> Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, from_state, to_state, detail FROM events WHERE recipient_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![recipient_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(at, from, to, detail)| {
                let context = || format!("an event of recipient {recipient_id} in the ledger");
                Ok(EventRow {
                    at,
                    from: from
                        .as_deref()
                        .map(parse_state)
                        .transpose()
                        .with_context(context)?,
                    to: parse_state(&to).with_context(context)?,
                    detail,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::queries::tests::ledger;

    #[test]
    fn audit_filters_and_pages() {
        let (_dir, l) = ledger();
        let all = l.audit_page(&AuditFilter::default(), 0, 2).unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        let rest = l.audit_page(&AuditFilter::default(), 2, 10).unwrap();
        assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4]);
        let bob = AuditFilter {
            recipient: Some("BOB@rcpt.example".into()),
            state: Some(RcptState::Bounced),
            ..AuditFilter::default()
        };
        let rows = l.audit_page(&bob, 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dsn_id, Some(7));
        let null_sender = AuditFilter {
            sender: Some(String::new()),
            ..AuditFilter::default()
        };
        assert_eq!(l.audit_page(&null_sender, 0, 10).unwrap().len(), 2);
        let events = l.events_of(1).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].from, Some(RcptState::InFlight));
        assert_eq!(events[1].to, RcptState::Delivered);
    }
}
