//! `spoolreplay bounces`: the DSNs made, or one of them in full.

use std::io::Write;

use anyhow::Result;

use crate::config::{BouncesConfig, Output};
use crate::exit::{Exit, failure};
use crate::ledger::Ledger;
use crate::report::table::Table;
use crate::report::{Printer, json as events};
use crate::sanitize::for_terminal;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: BouncesConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledger = Ledger::open_read(ledger_path)?;
    if let Some(id) = cfg.show {
        let Some(bytes) = ledger.dsn_content(id)? else {
            return Err(failure(
                Exit::NoInput,
                format!("there is no DSN {id} in the ledger"),
            ));
        };
        // The DSN is our own output, built 7-bit clean with untrusted text escaped, so it
        // goes out byte for byte.
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        return Ok(Exit::Done);
    }
    let rows = ledger.dsns(false)?;
    if printer.json_mode() {
        for d in &rows {
            printer.event(&events::dsn(d))?;
        }
        return Ok(Exit::Done);
    }
    if rows.is_empty() {
        printer.data("no DSNs made yet")?;
        return Ok(Exit::Done);
    }
    let mut t = Table::new(&[
        "id#",
        "queue id",
        "to",
        "recipients#",
        "created",
        "written to",
    ]);
    for d in &rows {
        t.row(vec![
            d.id.to_string(),
            for_terminal(&d.queue_id),
            for_terminal(&d.envelope_to),
            d.recipients.to_string(),
            d.created_at.clone(),
            d.written_path
                .as_deref()
                .map(for_terminal)
                .unwrap_or_else(|| "(not written)".into()),
        ]);
    }
    printer.data(&t.render())?;
    Ok(Exit::Done)
}
