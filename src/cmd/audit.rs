//! `spoolreplay audit`: the audit trail as JSON Lines, one object per recipient with every
//! state change, streamed a page of recipients at a time so any ledger size fits in memory.

use std::io::{BufWriter, Write};

use anyhow::Result;
use serde_json::{Value, json};

use crate::config::{AuditConfig, Output};
use crate::exit::Exit;
use crate::ledger::audit::{AuditRecipient, EventRow};
use crate::ledger::{Ledger, RcptState};
use crate::report::Printer;
use crate::sanitize::for_terminal;

/// Recipients read per ledger query.
const PAGE: usize = 500;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: AuditConfig) -> Result<Exit> {
    let ledger = Ledger::open_read(ledger_path)?;
    if let Some(window) = &cfg.filter.window {
        warn_unknown_window(&Printer::new(output), &ledger, window)?;
    }
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

/// A window name the ledger has never seen matches nothing: say so (a typo, or no `run`
/// has classified the mail yet) rather than print nothing in silence. Not an error: a
/// window of the incident may hold no mail at all.
fn warn_unknown_window(printer: &Printer, ledger: &Ledger, window: &str) -> Result<()> {
    let known = ledger.window_names()?;
    if known.iter().any(|w| w == window) {
        return Ok(());
    }
    let known = if known.is_empty() {
        "none yet: `run` names a message's window when it classifies it".to_string()
    } else {
        known
            .iter()
            .map(|w| for_terminal(w))
            .collect::<Vec<_>>()
            .join(", ")
    };
    printer.warn(&format!(
        "no message in ledger `{}` is in window `{}` (windows it knows: {known})",
        for_terminal(&ledger.path().display().to_string()),
        for_terminal(window),
    ));
    Ok(())
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
