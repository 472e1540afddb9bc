//! `spoolreplay status`: where every recipient stands, per state and per window, and what
//! remains to do.

use anyhow::Result;

use crate::config::Output;
use crate::exit::Exit;
use crate::ledger::state::ALL_STATES;
use crate::ledger::{DsnFilter, Ledger, RcptState, SendState};
use crate::report::Printer;
use crate::report::event::{EnvelopeFrom, Event, RecipientLine, ReplyLine};
use crate::report::table::Table;
use crate::sanitize::for_terminal;
use crate::spool::FieldSource;

pub fn run(ledger_path: &std::path::Path, output: Output) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledger = Ledger::open_read(ledger_path)?;
    let counts = ledger.state_counts()?;
    let count = |s: RcptState| counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
    let by_window = ledger.state_counts_by_window()?;
    let (quarantined, _) = ledger.quarantined(0)?;
    let dsns = ledger.dsns(DsnFilter::All)?;
    let unwritten = dsns.iter().filter(|d| d.written_path.is_none()).count();
    // A DSN made but not sent is work that remains: the sender has not been told yet.
    let unsent = dsns
        .iter()
        .filter(|d| d.send_state != SendState::Sent)
        .count();
    let remaining: u64 = ALL_STATES
        .iter()
        .filter(|s| s.is_open_work())
        .map(|s| count(*s))
        .sum();
    let messages = ledger.message_count()?;
    let spool_changed = ledger.spool_changed_count()?;
    let replies = ledger.reply_counts()?;

    if printer.json_mode() {
        let states = ALL_STATES.iter().map(|s| (s.as_str(), count(*s))).collect();
        let mut windows = std::collections::BTreeMap::new();
        for (w, s, n) in &by_window {
            let key = w.as_deref().unwrap_or(NOT_CLASSIFIED);
            let entry: &mut std::collections::BTreeMap<_, _> = windows.entry(key).or_default();
            entry.insert(s.as_str(), *n);
        }
        printer.event(&Event::Status {
            ledger: ledger.path().to_string_lossy(),
            messages,
            states,
            windows,
            quarantined,
            dsns: dsns.len(),
            dsns_unwritten: unwritten,
            dsns_unsent: unsent,
            spool_changed,
            replies: replies
                .iter()
                .map(|r| ReplyLine {
                    code: r.code,
                    status: r.status.as_deref(),
                    state: r.state.as_str(),
                    recipients: r.recipients,
                })
                .collect(),
            remaining,
            next: next_command(remaining, unsent),
        })?;
        return Ok(Exit::Done);
    }

    let mut out = format!(
        "Ledger `{}`: {messages} messages\n\n",
        for_terminal(&ledger.path().display().to_string())
    );
    let mut t = Table::new(&["state", "recipients#"]);
    for s in ALL_STATES {
        t.row(vec![s.as_str().to_string(), count(s).to_string()]);
    }
    let total: u64 = ALL_STATES.iter().map(|s| count(*s)).sum();
    t.row(vec!["total".into(), total.to_string()]);
    // Items, not recipients: below the total, not part of it.
    t.row(vec!["quarantined (items)".into(), quarantined.to_string()]);
    out.push_str(&t.render());

    out.push_str("\nPer window (recipients)\n");
    let mut headers = vec!["window"];
    let cols: Vec<String> = ALL_STATES
        .iter()
        .map(|s| format!("{}#", s.as_str()))
        .collect();
    headers.extend(cols.iter().map(String::as_str));
    let mut t = Table::new(&headers);
    let mut windows: Vec<Option<String>> = by_window.iter().map(|(w, _, _)| w.clone()).collect();
    windows.dedup();
    for w in windows {
        let mut row = vec![for_terminal(w.as_deref().unwrap_or(NOT_CLASSIFIED)).into_owned()];
        for s in ALL_STATES {
            let n = by_window
                .iter()
                .find(|(x, y, _)| *x == w && *y == s)
                .map_or(0, |(_, _, n)| *n);
            row.push(n.to_string());
        }
        t.row(row);
    }
    let mut row = vec!["total".to_string()];
    row.extend(ALL_STATES.iter().map(|s| count(*s).to_string()));
    t.row(row);
    out.push_str(&t.render());
    if !replies.is_empty() {
        out.push_str("\nWhat the store answered (recipients not delivered, by its last reply)\n");
        let mut t = Table::new(&["reply", "status", "state", "recipients#"]);
        for r in &replies {
            t.row(vec![
                r.code.to_string(),
                r.status.clone().unwrap_or_else(|| "-".into()),
                r.state.as_str().to_string(),
                r.recipients.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push_str(&format!(
        "\nDSNs made: {} ({} not yet written to an outbox, {unsent} not sent)\n",
        dsns.len(),
        unwritten
    ));
    if spool_changed > 0 {
        out.push_str(&format!(
            "Held because the spool changed since ingest: {spool_changed} recipients (`status --message QUEUE_ID` shows which file and why): put the spool back as it was ingested and run again, or ingest it again\n"
        ));
    }
    if remaining == 0 && unsent == 0 && spool_changed == 0 {
        out.push_str("Nothing remains to do (held and quarantined items wait for the operator).\n");
    }
    if unsent > 0 {
        out.push_str(&format!(
            "Remaining: {unsent} DSNs not sent: `{SEND_COMMAND}` sends them (or `spoolreplay bounces write --outbox DIR` and let your MTA send the files)\n"
        ));
    }
    if remaining > 0 {
        out.push_str(&format!(
            "Remaining: {remaining} recipients (pending {}, in flight {}, deferred {}, DSN owed {}): run again to continue\n",
            count(RcptState::Pending),
            count(RcptState::InFlight),
            count(RcptState::Deferred),
            count(RcptState::Failed)
        ));
    }
    printer.data(&out)?;
    Ok(Exit::Done)
}

/// The window of mail no `run` has classified yet (the ledger learns windows from `run`).
const NOT_CLASSIFIED: &str = "(not classified yet)";

/// How to send the DSNs not sent yet (the relay is the operator's to name).
const SEND_COMMAND: &str = "spoolreplay bounces send --relay smtp://HOST:25";

/// The command that does what remains: `run` for recipients, then sending the DSNs.
fn next_command(remaining: u64, unsent: usize) -> Option<&'static str> {
    if remaining > 0 {
        Some("spoolreplay run")
    } else if unsent > 0 {
        Some(SEND_COMMAND)
    } else {
        None
    }
}

/// `status --message QUEUE_ID`: one message, as an operator searching a queue id needs it.
pub fn message(ledger_path: &std::path::Path, output: Output, queue_id: &str) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledger = Ledger::open_read(ledger_path)?;
    let messages = ledger.messages_by_queue_id(queue_id)?;
    if messages.is_empty() {
        return Err(crate::exit::failure(
            Exit::NoInput,
            format!(
                "there is no message with queue id `{}` in the ledger",
                for_terminal(queue_id)
            ),
        ));
    }
    let mut out = String::new();
    for m in &messages {
        let recipients = ledger.recipients_of(m.id)?;
        let sources = ledger.envelope_sources(m.id)?;
        printer.event(&Event::Message {
            queue_id: &m.queue_id,
            queue_name: m.queue_name.as_deref(),
            source: m.source.to_string(),
            format: m.source.format.as_str(),
            sender: m.sender.as_str(),
            arrival: m.arrival.to_rfc3339(),
            size: m.size,
            mta_hold: m.mta_hold,
            window: m.window.as_deref(),
            disposition: m.disposition.as_deref(),
            envelope_from: EnvelopeFrom {
                sender: &sources.sender,
                recipients: &sources.recipients,
                arrival: &sources.arrival,
            },
            recipients: recipients
                .iter()
                .map(|r| RecipientLine {
                    address: &r.address,
                    state: r.state.as_str(),
                    status: r.status.as_deref(),
                    reply: r.reply.as_deref(),
                    remote: r.remote.as_deref(),
                    attempts: r.attempts,
                    last_attempt: r.last_attempt.as_deref(),
                })
                .collect(),
        })?;
        out.push_str(&format!(
            "{} ({}{})\n  from {}, arrived {}, {} bytes, window {}, {}{}\n",
            for_terminal(&m.queue_id),
            m.queue_name
                .as_deref()
                .map(|q| format!("{q}, "))
                .unwrap_or_default(),
            for_terminal(&m.source.to_string()),
            for_terminal(&m.sender.to_string()),
            m.arrival.to_rfc3339(),
            m.size,
            for_terminal(m.window.as_deref().unwrap_or("(not classified yet)")),
            m.disposition.as_deref().unwrap_or("-"),
            if m.mta_hold { ", held by the MTA" } else { "" },
        ));
        out.push_str(&format!(
            "  envelope: sender from {}, recipients from {}, arrival from {}\n",
            source_words(&sources.sender),
            source_words(&sources.recipients),
            source_words(&sources.arrival),
        ));
        let mut t = Table::new(&["recipient", "state", "status", "attempts#", "last reply"]);
        for r in &recipients {
            t.row(vec![
                for_terminal(&r.address).into_owned(),
                r.state.as_str().to_string(),
                r.status.clone().unwrap_or_default(),
                r.attempts.to_string(),
                for_terminal(r.reply.as_deref().unwrap_or("")).into_owned(),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    printer.data(&out)?;
    Ok(Exit::Done)
}

/// A recorded envelope source as an operator reads it: which header, file or record.
fn source_words(name: &str) -> String {
    FieldSource::from_name(name).map_or_else(
        || for_terminal(name).into_owned(),
        |f| f.describe().to_string(),
    )
}
