//! `report --affected`'s sections: the affected mailboxes and the sender domains sent
//! bounces, one row per ledger row (`cmd::report` streams them from the ledgers).

use std::io;

use crate::ledger::queries::{MailboxRow, SenderDomainRow};
use crate::report::event::Event;
use crate::report::sheet::{Format, SheetWriter, Sink};
use crate::sanitize::for_terminal;

/// The heading of a text table (nothing in JSON and CSV): where the mailboxes came from.
pub fn heading(out: &mut dyn Sink, f: Format, source: &str) -> io::Result<()> {
    if f == Format::Table {
        writeln!(out, "Affected mailboxes in {}", for_terminal(source))?;
    }
    Ok(())
}

/// The affected mailboxes: one row per mailbox (README "Affected mailboxes").
pub fn mailbox_sheet(out: &mut dyn Sink, f: Format) -> io::Result<SheetWriter<'_>> {
    SheetWriter::begin(
        out,
        f,
        "mailbox",
        "Mailboxes (worst delay: arrival to delivery; bounced includes DSNs still owed; pending includes deferred)",
        &[
            "mailbox",
            "messages",
            "delivered_late",
            "worst_delay_seconds",
            "bounced",
            "dropped",
            "held",
            "pending",
            "uncertain",
            "over_quota",
        ],
    )
}

pub fn mailbox_line(w: &mut SheetWriter<'_>, m: &MailboxRow) -> io::Result<()> {
    w.row(&Event::mailbox(m))
}

/// The sender domains sent bounces.
pub fn sender_domain_sheet(out: &mut dyn Sink, f: Format) -> io::Result<SheetWriter<'_>> {
    SheetWriter::begin(
        out,
        f,
        "sender_domain",
        "Sender domains sent bounces",
        &["sender_domain", "dsns", "senders", "recipients"],
    )
}

pub fn sender_domain_line(w: &mut SheetWriter<'_>, d: &SenderDomainRow) -> io::Result<()> {
    w.row(&Event::sender_domain(d))
}
