//! `spoolreplay audit`: the audit trail as JSON Lines, one object per recipient with every
//! state change, streamed a page of recipients at a time so any ledger size fits in memory.

use std::io::{BufWriter, Write};

use anyhow::Result;

use crate::config::{AuditConfig, Output};
use crate::exit::Exit;
use crate::ledger::Ledger;
use crate::report::Printer;
use crate::report::event::Event;
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
            Event::audit(r, &events).write_line(&mut out)?;
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
