//! `spoolreplay bounces`: the DSNs made and owed; show, preview, send or write them.

use anyhow::Result;
use chrono::Local;

use crate::bounce::relay::{Sender, Sent};
use crate::bounce::{self, Decision, make_dsn};
use crate::config::{BouncesConfig, Output};
use crate::deliver::Deliverer;
use crate::deliver::smtp::{SmtpOptions, SmtpStore};
use crate::deliver::wire::ClientOptions;
use crate::exit::{Exit, Failure, failure};
use crate::incident::Incident;
use crate::ledger::{DsnFilter, DsnKind, Ledger, MessageWork, RcptState, RecipientRow, SendState};
use crate::metrics::{Endpoint, Exposition, SendMetrics};
use crate::pace::Pace;
use crate::replay::failure_for;
use crate::report::Printer;
use crate::report::event::Event;
use crate::report::table::Table;
use crate::sanitize::for_terminal;
use crate::shutdown::Shutdown;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: BouncesConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    match cfg {
        BouncesConfig::List => list(&printer, &Ledger::open_read(ledger_path)?),
        BouncesConfig::Show(id) => show(&printer, &Ledger::open_read(ledger_path)?, id),
        BouncesConfig::Preview {
            queue_id,
            incident,
            now,
            return_limit,
        } => preview(
            &printer,
            &Ledger::open_read(ledger_path)?,
            &queue_id,
            &incident,
            now,
            return_limit,
        ),
        BouncesConfig::Write { outbox } => {
            let mut ledger = Ledger::open_existing_for_write(ledger_path, "bounces write")?;
            let written = bounce::outbox::write_pending(&mut ledger, &outbox)?;
            printer.event(&Event::DsnsWritten {
                written,
                outbox: &outbox,
            })?;
            printer.summary(&format!(
                "wrote {written} DSNs to `{}`",
                for_terminal(&outbox.display().to_string())
            ))?;
            Ok(Exit::Done)
        }
        BouncesConfig::Send {
            relay,
            rate,
            per_domain_rate,
            credentials,
            insecure_tls,
            timeouts,
            resend_uncertain,
            metrics,
        } => {
            let counters = std::sync::Arc::new(SendMetrics::new());
            let endpoint = metrics
                .map(|addr| {
                    Endpoint::start(
                        addr,
                        std::sync::Arc::clone(&counters) as std::sync::Arc<dyn Exposition>,
                    )
                })
                .transpose()?;
            if let Some(e) = &endpoint {
                printer.note(&format!("metrics at http://{}/metrics", e.addr()));
            }
            let mut ledger = Ledger::open_existing_for_write(ledger_path, "bounces send")?;
            let options = SmtpOptions {
                client: ClientOptions {
                    timeouts,
                    ..ClientOptions::default()
                },
                credentials,
                insecure: insecure_tls,
            };
            let mut store = SmtpStore::connect(relay.clone(), options).map_err(|e| {
                anyhow::Error::new(e).context(Failure::new(
                    Exit::Unavailable,
                    format!("cannot reach the relay {relay}"),
                ))
            })?;
            let shutdown = Shutdown::install("finishing the DSN being sent")?;
            let started = std::time::Instant::now();
            let mut on_sent = |s: Sent<'_>| {
                printer.verbose(&format!(
                    "dsn {} to <{}>: {}: {}",
                    s.dsn.id,
                    for_terminal(&s.dsn.envelope_to),
                    s.state.as_str(),
                    for_terminal(s.reply)
                ));
                counters.sent(
                    match s.state {
                        SendState::Sent => "sent",
                        SendState::Failed => "failed",
                        SendState::Uncertain => "uncertain",
                        SendState::Pending | SendState::Sending => "deferred",
                    },
                    s.reply,
                );
                let _ = printer.event(&Event::DsnSent {
                    id: s.dsn.id,
                    to: &s.dsn.envelope_to,
                    state: s.state.as_str(),
                    reply: s.reply,
                });
                if let Some(change) = &s.pace {
                    let rate = crate::pace::format_rate(change.rate);
                    printer.note(&format!(
                        "pace now {rate}: {}",
                        for_terminal(&change.reason)
                    ));
                    let _ = printer.event(&Event::Pace {
                        rate: change.rate,
                        reason: &change.reason,
                    });
                }
            };
            let mut sender = Sender {
                ledger: &mut ledger,
                relay: &mut store as &mut dyn Deliverer,
                pace: Pace::new(
                    Some(rate.map_or(crate::bounce::relay::DEFAULT_RATE, |r| r.per_second())),
                    None,
                ),
                per_domain_rate: per_domain_rate.map(|r| r.per_second()),
                resend_uncertain,
                interrupted: shutdown.flag(),
                on_sent: &mut on_sent,
            };
            let stats = sender.run()?;
            let unsent = ledger
                .dsns(DsnFilter::Unsent {
                    resend_uncertain: false,
                })?
                .len();
            let signal = shutdown.signal();
            let exit = if let Some(signal) = signal {
                signal.exit()
            } else if stats.stopped.is_some() || unsent > 0 {
                Exit::TempFail
            } else {
                Exit::Done
            };
            let stopped = stats.stopped.clone().or_else(|| {
                signal.map(|s| {
                    format!(
                        "{} received; the DSN being sent was finished and recorded",
                        s.name()
                    )
                })
            });
            // After a signal, output may be gone (SIGHUP): the ledger and the exit code
            // matter then, not whether the summary could be printed.
            let summary_event = printer.event(&Event::SendSummary {
                sent: stats.sent,
                deferred: stats.deferred,
                failed: stats.failed,
                uncertain: stats.uncertain,
                recovered_uncertain: stats.recovered_uncertain,
                unsent,
                stopped: stopped.as_deref(),
                exit: exit.code(),
            });
            if signal.is_none() {
                summary_event?;
            }
            for (domain, c) in &stats.by_domain {
                let _ = printer.event(&Event::SendDomain {
                    domain,
                    sent: c.sent,
                    deferred: c.deferred,
                    refused: c.refused,
                    uncertain: c.uncertain,
                });
            }
            let mut t = Table::new(&["DSNs", "count#"]);
            for (label, n) in [
                ("sent", stats.sent),
                (
                    "deferred by the relay (sent again next time)",
                    stats.deferred,
                ),
                (
                    "refused by the relay (recorded, never bounced)",
                    stats.failed,
                ),
                (
                    "uncertain (sent again only with --resend-uncertain)",
                    stats.uncertain,
                ),
                (
                    "left uncertain by an interrupted send",
                    stats.recovered_uncertain,
                ),
                ("still to send", unsent as u64),
            ] {
                t.row(vec![label.to_string(), n.to_string()]);
            }
            let mut summary = t.render();
            if !stats.by_domain.is_empty() {
                let mut d = Table::new(&["destination domain", "sent#", "deferred#", "refused#"]);
                for (domain, c) in &stats.by_domain {
                    d.row(vec![
                        for_terminal(domain).into_owned(),
                        c.sent.to_string(),
                        c.deferred.to_string(),
                        c.refused.to_string(),
                    ]);
                }
                summary.push_str(&d.render());
            }
            if let Some(why) = &stopped {
                summary.push_str(&format!("Stopped early: {}\n", for_terminal(why)));
            }
            summary.push_str(&format!(
                "Time {}, average pace {}/s\nExit {}: {}\n",
                crate::throttle::format_duration(started.elapsed()),
                crate::report::table::per_second(stats.sent, started.elapsed()),
                exit.code(),
                exit.meaning()
            ));
            let printed = printer.summary(&summary);
            if signal.is_none() {
                printed?;
            }
            if let Some(e) = endpoint
                && signal.is_none()
            {
                e.finish(crate::metrics::LINGER);
            }
            Ok(exit)
        }
    }
}

fn show(printer: &Printer, ledger: &Ledger, id: i64) -> Result<Exit> {
    let Some(bytes) = ledger.dsn_content(id)? else {
        return Err(failure(
            Exit::NoInput,
            format!("there is no DSN {id} in the ledger"),
        ));
    };
    printer.message(&bytes)?;
    Ok(Exit::Done)
}

fn list(printer: &Printer, ledger: &Ledger) -> Result<Exit> {
    let rows = ledger.dsns(DsnFilter::All)?;
    let owed = owed(ledger)?;
    if printer.json_mode() {
        for d in &rows {
            printer.event(&Event::dsn(d))?;
        }
        for (work, n) in &owed {
            printer.event(&Event::DsnOwed {
                queue_id: &work.message.queue_id,
                to: work.message.sender.as_str(),
                recipients: *n,
            })?;
        }
        return Ok(Exit::Done);
    }
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no DSNs made yet\n");
    } else {
        let mut t = Table::new(&[
            "id#",
            "kind",
            "queue id",
            "to",
            "recipients#",
            "created",
            "written to",
            "sent",
        ]);
        for d in &rows {
            t.row(vec![
                d.id.to_string(),
                d.kind.as_str().to_string(),
                for_terminal(&d.queue_id).into_owned(),
                for_terminal(&d.envelope_to).into_owned(),
                d.recipients.to_string(),
                d.created_at.clone(),
                d.written_path
                    .as_deref()
                    .map(|p| for_terminal(p).into_owned())
                    .unwrap_or_else(|| "(not written)".into()),
                d.send_state.as_str().to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    if !owed.is_empty() {
        let recipients: usize = owed.iter().map(|(_, n)| n).sum();
        out.push_str(&format!(
            "\nOwed: {} DSNs for {recipients} failed recipients, made by the next `spoolreplay run`\n",
            owed.len()
        ));
    }
    printer.data(&out)?;
    Ok(Exit::Done)
}

/// Messages with failed recipients whose DSN is not made yet.
fn owed(ledger: &Ledger) -> Result<Vec<(MessageWork, usize)>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = ledger.messages_in_states(&[RcptState::Failed], after, 500)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.message.id;
        out.extend(page.into_iter().map(|w| {
            let n = w.recipients.len();
            (w, n)
        }));
    }
}

/// The DSN that `run` would make for a message now, built but not recorded.
fn preview(
    printer: &Printer,
    ledger: &Ledger,
    queue_id: &str,
    incident: &Incident,
    now: chrono::DateTime<chrono::FixedOffset>,
    return_limit: usize,
) -> Result<Exit> {
    let messages = ledger.messages_by_queue_id(queue_id)?;
    if messages.is_empty() {
        return Err(failure(
            Exit::NoInput,
            format!(
                "there is no message with queue id `{}` in the ledger",
                for_terminal(queue_id)
            ),
        ));
    }
    for message in messages {
        let all = ledger.recipients_of(message.id)?;
        let facts = crate::classify::Facts {
            arrival: message.arrival,
            sender: &message.sender,
            mta_hold: message.mta_hold,
        };
        let c = crate::classify::classify(incident, facts, now);
        let failing: Vec<RecipientRow> = all
            .iter()
            .filter_map(|r| would_fail(r, incident, &c))
            .collect();
        let label = format!("{} ({})", for_terminal(queue_id), message.source);
        // The decision `run`'s DSN step takes (the preview names no postmaster).
        let decision =
            (!failing.is_empty()).then(|| bounce::decide(&message.sender, failing, None));
        let failing = match decision {
            Some(Decision::Failure { owed, .. }) => owed,
            Some(Decision::NullSender | Decision::Postmaster(_)) => {
                printer.note(&format!(
                    "{label}: no DSN would be made: the sender is <> (RFC 5321 6.1)"
                ));
                continue;
            }
            None => Vec::new(),
        };
        if failing.is_empty() {
            printer.note(&format!(
                "{label}: no DSN would be made ({}: {})",
                c.disposition.as_str(),
                for_terminal(&c.reason)
            ));
            continue;
        }
        // `[bounces]`: which rule decides, as `run` will apply it
        // beside `bounce::decide`.
        if incident.bounces.is_active() {
            let verdict = bounce::policy_verdict(incident, &message);
            if !verdict.bounces() {
                printer.note(&format!(
                    "{label}: no DSN would be made, its recipients would be {}",
                    for_terminal(&verdict.reason())
                ));
                continue;
            }
            printer.note(&format!(
                "{label}: bounce policy: {}",
                for_terminal(&verdict.reason())
            ));
        }
        let work = MessageWork {
            message,
            recipients: failing,
        };
        let built = make_dsn(
            incident,
            return_limit,
            &work,
            DsnKind::Failure,
            &work.message.sender,
            Local::now().fixed_offset(),
        );
        let bytes = match built {
            Ok((_, bytes)) => bytes,
            // What `run` does with it: no DSN, the recipients dropped with the reason.
            Err(e) => match e.downcast_ref::<bounce::Unbuildable>() {
                Some(u) => {
                    printer.note(&format!(
                        "{label}: no DSN would be made, its recipients would be dropped: {}",
                        for_terminal(&u.why)
                    ));
                    continue;
                }
                None => return Err(e),
            },
        };
        printer.message(&bytes)?;
    }
    Ok(Exit::Done)
}

/// A recipient as it would stand when the DSN step meets it, if it would have failed by
/// then (whether it gets a DSN is `bounce::decide`'s to say).
fn would_fail(
    r: &RecipientRow,
    incident: &Incident,
    c: &crate::classify::Classification,
) -> Option<RecipientRow> {
    match r.state {
        RcptState::Failed => Some(r.clone()),
        RcptState::Pending | RcptState::Deferred | RcptState::Held => {
            let (status, detail) = failure_for(incident, c)?;
            let mut r = r.clone();
            r.status = Some(status);
            if r.reply.is_none() || r.remote.is_none() {
                r.reply = Some(detail);
                r.remote = None;
            }
            Some(r)
        }
        _ => None,
    }
}
