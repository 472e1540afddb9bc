//! `spoolreplay run`: the recovery itself (see `replay`), with progress, a summary and the
//! exit code that tells a script whether to run again.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::config::{Output, RunConfig, StoreTarget};
use crate::deliver::Deliverer;
use crate::deliver::lmtp::LmtpStore;
use crate::deliver::maildir::MaildirStore;
use crate::deliver::smtp::{SmtpOptions, SmtpStore};
use crate::deliver::wire::ClientOptions;
use crate::exit::Exit;
use crate::ledger::{DsnFilter, Ledger, RcptState};
use crate::replay::{Event, Replay, Settings, Stop, StoreFactory};
use crate::report::progress::Progress;
use crate::report::table::Table;
use crate::report::{Printer, json as events};
use crate::sanitize::for_terminal;
use crate::shutdown::{Shutdown, Signal};
use crate::throttle::format_duration;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: RunConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let mut ledger = Ledger::open_for_write(ledger_path, "run")?;
    let factory = store_factory(&cfg);
    let describe = cfg.store.to_string();
    let shutdown = Shutdown::install("finishing the deliveries in flight")?;
    let started = Instant::now();
    if cfg.fixed_clock {
        printer.note(&format!(
            "classifying as of {} (--now)",
            cfg.now.to_rfc3339()
        ));
    }
    let open = ledger
        .state_counts()?
        .iter()
        .filter(|(s, _)| {
            matches!(
                s,
                RcptState::Pending | RcptState::Deferred | RcptState::InFlight
            )
        })
        .map(|(_, n)| *n)
        .sum();
    printer.note(&format!(
        "delivering to {} ({open} recipients open, {} connection{})",
        for_terminal(&describe),
        cfg.concurrency,
        if cfg.concurrency == 1 { "" } else { "s" }
    ));

    let mut progress = Progress::new(&output, "messages", open);
    let mut last_seen = 0u64;
    let mut event_error: Option<std::io::Error> = None;
    let mut on_event = |e: Event<'_>| {
        let result = match e {
            Event::Outcome {
                message,
                recipient,
                state,
                detail,
            } => {
                if matches!(
                    state,
                    RcptState::Deferred | RcptState::Failed | RcptState::Held
                ) {
                    printer.verbose(&format!(
                        "{} <{}>: {state}: {}",
                        for_terminal(&message.queue_id),
                        for_terminal(recipient),
                        for_terminal(detail)
                    ));
                }
                printer.event(&events::outcome(
                    &message.queue_id,
                    recipient,
                    state.as_str(),
                    detail,
                ))
            }
            Event::Dsn {
                id,
                message,
                recipients,
            } => printer.event(&json!({
                "type": "dsn_made", "id": id, "queue_id": message.queue_id,
                "to": message.sender.as_str(), "recipients": recipients,
            })),
            Event::Delivered { messages, pace } => {
                progress.add(messages - last_seen, pace);
                last_seen = messages;
                Ok(())
            }
            Event::Notice(text) => {
                printer.verbose(&for_terminal(text));
                printer.event(&json!({"type": "notice", "text": text}))
            }
        };
        if let Err(e) = result {
            event_error.get_or_insert(e);
        }
    };
    let settings = Settings {
        incident: &cfg.incident,
        now: cfg.now,
        pace: cfg.pace,
        return_limit: cfg.return_limit,
        concurrency: cfg.concurrency,
        uncertain: cfg.uncertain,
        retry: cfg.retry,
        warn_after: cfg.warn_after,
        postmaster: cfg.postmaster.clone(),
    };
    let mut replay = Replay::new(
        &mut ledger,
        &*factory,
        settings,
        shutdown.flag(),
        &mut on_event,
    );
    let outcome = replay.run();
    let mut stats = std::mem::take(&mut replay.stats);
    drop(replay);
    progress.finish();
    outcome?;
    // After a signal, output may be gone (SIGHUP: the terminal closed): what matters then
    // is the ledger and the exit code, not whether the events could be printed.
    if let Some(e) = event_error
        && !shutdown.requested()
    {
        return Err(e.into());
    }

    let written = match &cfg.outbox {
        Some(dir) => crate::outbox::write_pending(&mut ledger, dir)?,
        None => 0,
    };
    let unwritten = ledger.dsns(DsnFilter::Unwritten)?.len();
    let counts = ledger.state_counts()?;
    let count = |s: RcptState| counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
    let remaining: u64 = counts
        .iter()
        .filter(|(s, _)| s.is_open_work())
        .map(|(_, n)| *n)
        .sum();

    // A signal that came after the last delivery still names the exit: the caller asked
    // for a stop and learns that it happened.
    let signal = shutdown.signal();
    if signal.is_some() && stats.stop.is_none() {
        stats.stop = Some(Stop::Interrupted);
    }
    let exit = match &stats.stop {
        Some(Stop::Interrupted) => signal.map_or(Exit::Interrupted, Signal::exit),
        Some(Stop::StoreDown(_)) => Exit::Unavailable,
        Some(Stop::StoreLost(_)) | Some(Stop::StoreFull(_)) => Exit::TempFail,
        None if remaining > 0 || unwritten > 0 => Exit::TempFail,
        None => Exit::Done,
    };
    let elapsed = started.elapsed();
    let summary_event = printer.event(&json!({
        "type": "run_summary",
        "delivered": stats.delivered,
        "already_there": stats.already_there,
        "recovered_in_flight": stats.recovered,
        "deferred": stats.deferred,
        "failed": stats.failed,
        "held": stats.held,
        "released": stats.released,
        "dropped": stats.dropped,
        "dsns_made": stats.dsns,
        "delay_warnings": stats.delay_warnings,
        "dsns_written": written,
        "dsns_unwritten": unwritten,
        "remaining": remaining,
        "uncertain": stats.uncertain,
        "messages": stats.messages,
        "seconds": elapsed.as_secs_f64(),
        "stopped": stats.stop.as_ref().map(|s| stop_text(s, signal)),
        "exit": exit.code(),
    }));
    if summary_event.is_err() && signal.is_none() {
        summary_event?;
    }
    let mut t = Table::new(&["this run", "recipients#"]);
    for (label, n) in [
        ("delivered", stats.delivered),
        ("already in the store", stats.already_there),
        ("deferred", stats.deferred),
        ("failed (DSN owed or dropped)", stats.failed),
        ("uncertain (see --uncertain)", stats.uncertain),
        ("held", stats.held),
        ("dropped (no DSN: null sender or NOTIFY)", stats.dropped),
    ] {
        t.row(vec![label.to_string(), n.to_string()]);
    }
    let mut summary = t.render();
    summary.push_str(&format!(
        "DSNs made {} (and {} delay warnings), written {}{}\nTime {}, average pace {} messages/s; ledger now: delivered {}, bounced {}, held {}, remaining {remaining}\n",
        stats.dsns,
        stats.delay_warnings,
        written,
        if unwritten > 0 { format!(", {unwritten} not written (pass --outbox DIR)") } else { String::new() },
        format_duration(elapsed),
        crate::report::table::per_second(stats.messages, elapsed),
        count(RcptState::Delivered),
        count(RcptState::Bounced),
        count(RcptState::Held),
    ));
    if let Some(stop) = &stats.stop {
        summary.push_str(&format!(
            "Stopped early: {}\n",
            for_terminal(&stop_text(stop, signal))
        ));
    }
    summary.push_str(&format!("Exit {}: {}\n", exit.code(), exit.meaning()));
    if !printer.json_mode() {
        let printed = printer.data(&summary);
        if signal.is_none() {
            printed?;
        }
    }
    Ok(exit)
}

fn stop_text(stop: &Stop, signal: Option<Signal>) -> String {
    match stop {
        Stop::Interrupted => format!(
            "{} received; the deliveries in flight were finished and recorded",
            signal.map_or("a stop request", Signal::name)
        ),
        Stop::StoreDown(why) => format!("{why}; nothing was delivered"),
        Stop::StoreLost(why) => format!("{why}; run again when it is back"),
        Stop::StoreFull(why) => format!("{why}; free space and run again"),
    }
}

/// A constructor of store connections, one per worker.
fn store_factory(cfg: &RunConfig) -> Box<StoreFactory<'static>> {
    let client = ClientOptions {
        timeouts: cfg.timeouts,
        ..ClientOptions::default()
    };
    match cfg.store.clone() {
        StoreTarget::Maildir(dir) => {
            Box::new(move || MaildirStore::new(&dir).map(|s| Box::new(s) as Box<dyn Deliverer>))
        }
        StoreTarget::Lmtp(target) => Box::new(move || {
            LmtpStore::connect(target.clone(), client.clone())
                .map(|s| Box::new(s) as Box<dyn Deliverer>)
        }),
        StoreTarget::Smtp(target) => {
            let options = SmtpOptions {
                client,
                credentials: cfg.credentials.clone(),
                insecure: cfg.insecure_tls,
            };
            Box::new(move || {
                SmtpStore::connect(target.clone(), options.clone())
                    .map(|s| Box::new(s) as Box<dyn Deliverer>)
            })
        }
    }
}
