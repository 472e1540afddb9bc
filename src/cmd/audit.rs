//! `spoolreplay audit`: the audit trail as JSON Lines, one object per recipient with every
//! state change, streamed a page of recipients at a time so any ledger size fits in memory.

use std::io::{BufWriter, Write};

use anyhow::Result;
use serde_json::{Value, json};

use crate::config::AuditConfig;
use crate::exit::Exit;
use crate::ledger::queries::{AuditRecipient, EventRow};
use crate::ledger::{Ledger, RcptState};

/// Recipients read per ledger query.
const PAGE: usize = 500;

pub fn run(ledger_path: &std::path::Path, cfg: AuditConfig) -> Result<Exit> {
    let ledger = Ledger::open_read(ledger_path)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut after = 0;
    loop {
        let page = ledger.audit_page(&cfg.filter, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            let events = ledger.events_of(r.id)?;
            serde_json::to_writer(&mut out, &audit_line(r, &events))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(Exit::Done)
}

/// One recipient and its history. The DSN id is given on the change to `bounced` (the
/// recipient row holds it; the event's detail says it in words).
pub fn audit_line(r: &AuditRecipient, events: &[EventRow]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "at": e.at,
                "from": e.from.map(RcptState::as_str),
                "to": e.to.as_str(),
                "detail": e.detail,
                "dsn_id": if e.to == RcptState::Bounced { r.dsn_id } else { None },
            })
        })
        .collect();
    json!({
        "type": "audit",
        "recipient_id": r.id,
        "message_id": r.message_id,
        "queue_id": r.queue_id,
        "sender": r.sender,
        "recipient": r.address,
        "arrival": r.arrival,
        "window": r.window,
        "disposition": r.disposition,
        "state": r.state.as_str(),
        "status": r.status,
        "reply": r.reply,
        "dsn_id": r.dsn_id,
        "events": events,
    })
}
