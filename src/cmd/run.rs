//! `spoolreplay run`: the recovery itself (see `replay`), with progress, a summary and the
//! exit code that tells a script whether to run again.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::cluster::Member;
use crate::config::{Output, RunConfig, StoreTarget};
use crate::deliver::Deliverer;
use crate::deliver::imap::{ImapOptions, ImapStore, Proven};
use crate::deliver::lmtp::LmtpStore;
use crate::deliver::maildir::MaildirStore;
use crate::deliver::smtp::{SmtpOptions, SmtpStore};
use crate::deliver::verify::VerifiedStore;
use crate::deliver::wire::ClientOptions;
use crate::exit::{Exit, Failure};
use crate::ledger::{DsnFilter, Ledger, RcptState};
use crate::metrics::{Endpoint, Exposition, Metrics};
use crate::plan::{MASS_BOUNCE_HINT, Plan, mass_bounce};
use crate::replay::{Event, Replay, Settings, Stop, StoreFactory};
use crate::report::Printer;
use crate::report::event::Event as Json;
use crate::report::progress::Progress;
use crate::report::table::Table;
use crate::sanitize::for_terminal;
use crate::shutdown::{Shutdown, Signal};
use crate::systemd::Notifier;
use crate::throttle::format_duration;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: RunConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let mut ledger = Ledger::open_existing_for_write(ledger_path, "run")?;
    if let Some(dir) = &cfg.outbox {
        crate::bounce::outbox::check_writable(dir)?;
    }
    let deliveries = refuse_mass_bounce(&printer, &ledger, &cfg)?;
    // Join the cluster before anything is delivered: a coordinator that cannot be reached
    // stops the run here (69), rather than letting it go on at a pace nobody shares.
    let member = match &cfg.cluster {
        None => None,
        Some(url) => {
            let m = Member::join(
                url,
                ledger_path,
                cfg.pace.rate.map(|r| r.per_second()),
                cfg.pace.max_bytes_rate,
                cfg.cluster_strict,
            )
            .map_err(crate::cmd::cluster::unavailable)?;
            printer.note(&format!(
                "member {} of cluster {url}: --rate, --max-bytes-rate and --concurrency are cluster-wide totals",
                for_terminal(m.id())
            ));
            Some(m)
        }
    };
    let factory = store_factory(&cfg);
    // In a cluster, `--concurrency` counts the store connections of every member: each
    // connection holds one of the cluster's slots for as long as it is open.
    let factory = match &member {
        Some(m) => m.slots(cfg.concurrency).around(factory),
        None => factory,
    };
    let describe = cfg.store.to_string();
    let shutdown = Shutdown::install("finishing the deliveries in flight")?;
    let metrics = Arc::new(Metrics::new());
    let endpoint = cfg
        .metrics
        .map(|addr| Endpoint::start(addr, Arc::clone(&metrics) as Arc<dyn Exposition>))
        .transpose()?;
    if let Some(e) = &endpoint {
        printer.note(&format!("metrics at http://{}/metrics", e.addr()));
    }
    let started = Instant::now();
    if cfg.fixed_clock {
        printer.note(&format!(
            "classifying as of {} (--now)",
            cfg.now.to_rfc3339()
        ));
    }
    let before = ledger.state_counts()?;
    let open: u64 = before
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

    // The progress counts messages handed to the store, so its total is the messages this
    // run would deliver (what `report` calls "Messages that would be delivered"), not the
    // open recipients: the plan the mass-bounce check made.
    let mut progress = Progress::new(&output, "messages", deliveries);
    let notifier = Notifier::start(shutdown.shared_flag());
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
                printer.event(&Json::Outcome {
                    queue_id: &message.queue_id,
                    recipient,
                    state: state.as_str(),
                    detail,
                })
            }
            Event::Dsn {
                id,
                message,
                recipients,
            } => printer.event(&Json::DsnMade {
                id,
                queue_id: &message.queue_id,
                to: message.sender.as_str(),
                recipients,
            }),
            Event::Delivered { messages, pace } => {
                progress.add(messages - last_seen, pace);
                last_seen = messages;
                if let Some(n) = &notifier {
                    n.status(&format!(
                        "{messages}/{deliveries} messages handed to the store, {pace}"
                    ));
                }
                Ok(())
            }
            Event::Ready => {
                if let Some(n) = &notifier {
                    n.ready();
                }
                Ok(())
            }
            Event::Steered(text) => {
                if let Some(n) = &notifier {
                    n.status(text);
                }
                printer.note(text);
                printer.event(&Json::Steered { text })
            }
            Event::Alert(text) => {
                if let Some(n) = &notifier {
                    n.status(&for_terminal(text));
                }
                printer.warn(&for_terminal(text));
                printer.event(&Json::Warning { text })
            }
            Event::Notice(text) => {
                if let Some(n) = &notifier {
                    n.status(&for_terminal(text));
                }
                printer.verbose(&for_terminal(text));
                printer.event(&Json::Notice { text })
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
        breaker: cfg.breaker,
        order: cfg.order,
    };
    let mut replay = Replay::new(
        &mut ledger,
        &*factory,
        settings,
        shutdown.flag(),
        &mut on_event,
    );
    if endpoint.is_some() {
        replay = replay.with_metrics(Arc::clone(&metrics));
    }
    if let Some(member) = member {
        replay = replay.with_tokens(Box::new(member));
    }
    let outcome = replay.run();
    let mut stats = std::mem::take(&mut replay.stats);
    drop(replay);
    progress.finish();
    // STOPPING=1 now: what follows is the summary, not delivery.
    drop(notifier);
    outcome?;
    // After a signal, output may be gone (SIGHUP: the terminal closed): what matters then
    // is the ledger and the exit code, not whether the events could be printed.
    if let Some(e) = event_error
        && !shutdown.requested()
    {
        return Err(e.into());
    }

    let written = match &cfg.outbox {
        Some(dir) => crate::bounce::outbox::write_pending(&mut ledger, dir)?,
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
        None if remaining > 0 => Exit::TempFail,
        // Running again cannot fix a spool that no longer matches the ledger.
        None if stats.spool_changed > 0 => Exit::DataErr,
        None if unwritten > 0 => Exit::TempFail,
        None => Exit::Done,
    };
    let elapsed = started.elapsed();
    let summary_event = printer.event(&Json::RunSummary {
        delivered: stats.delivered,
        already_there: stats.already_there,
        recovered_in_flight: stats.recovered,
        deferred: stats.deferred,
        failed: stats.failed,
        held: stats.held,
        released: stats.released,
        dropped: stats.dropped,
        dsns_made: stats.dsns,
        delay_warnings: stats.delay_warnings,
        dsns_written: written,
        dsns_unwritten: unwritten,
        spool_changed: stats.spool_changed,
        spool_changed_examples: &stats.spool_changed_examples,
        remaining,
        uncertain: stats.uncertain,
        verified_in_store: stats.verified_found,
        verified_missing_redelivered: stats.verified_missing,
        verify_impossible: stats.verify_impossible,
        messages: stats.messages,
        seconds: elapsed.as_secs_f64(),
        stopped: stats.stop.as_ref().map(|s| stop_text(s, signal)),
        exit: exit.code(),
    });
    if summary_event.is_err() && signal.is_none() {
        summary_event?;
    }
    let mut summary = states_table(&before, &counts);
    summary.push_str(&format!(
        "This run: delivered {}, already in the store {}, deferred {} times, failed {} (then bounced with a DSN, or dropped: null sender or NOTIFY), uncertain {}, held {}, released from hold {}\n",
        stats.delivered,
        stats.already_there,
        stats.deferred,
        stats.failed,
        stats.uncertain,
        stats.held,
        stats.released,
    ));
    summary.push_str(&format!(
        "DSNs made {} (and {} delay warnings), written {}{}\nTime {}, average pace {} messages/s; ledger now: delivered {}, bounced {}, held {}, remaining {remaining}\n",
        stats.dsns,
        stats.delay_warnings,
        written,
        dsn_whereabouts(ledger_path, cfg.outbox.as_deref(), written, unwritten),
        format_duration(elapsed),
        crate::report::table::per_second(stats.messages, elapsed),
        count(RcptState::Delivered),
        count(RcptState::Bounced),
        count(RcptState::Held),
    ));
    if cfg.uncertain == crate::replay::UncertainPolicy::Verify {
        summary.push_str(&format!(
            "Uncertain deliveries checked in the store: {} found there, {} not found and delivered, {} could not be checked (still uncertain)\n",
            stats.verified_found, stats.verified_missing, stats.verify_impossible,
        ));
    }
    if stats.spool_changed > 0 {
        summary.push_str(&spool_changed_text(&stats));
    }
    if let Some(stop) = &stats.stop {
        summary.push_str(&format!(
            "Stopped early: {}\n",
            for_terminal(&stop_text(stop, signal))
        ));
    }
    // Running again cannot write or send DSNs: say what does.
    let meaning = match (&stats.stop, remaining) {
        (None, 0) if exit == Exit::TempFail => {
            "work remains: the DSNs above are not written or sent (running again will not do it)"
        }
        _ => exit.meaning(),
    };
    summary.push_str(&format!("Exit {}: {meaning}\n", exit.code()));
    if !printer.json_mode() {
        let printed = printer.summary(&summary);
        if signal.is_none() {
            printed?;
        }
    }
    // A stop request wants a prompt exit more than a last scrape.
    if let Some(e) = endpoint
        && signal.is_none()
    {
        e.finish(crate::metrics::LINGER);
    }
    Ok(exit)
}

/// Before anything is expired or bounced: a plan that would bounce or expire more than
/// `--max-bounce-share` of the open messages is refused (exit 78) with the plan line that
/// explains it. A DSN cannot be taken back; a wrong clock is the usual cause. Returns the
/// messages the plan would deliver (the progress line's total).
fn refuse_mass_bounce(printer: &Printer, ledger: &Ledger, cfg: &RunConfig) -> Result<u64> {
    let mut plan = Plan::default();
    ledger.for_each_message(|m, r| {
        plan.add(&cfg.incident, cfg.now, m, r);
        Ok(())
    })?;
    let Some(m) = mass_bounce(
        &plan,
        &cfg.incident,
        cfg.now,
        cfg.fixed_clock,
        cfg.max_bounce_share,
    ) else {
        return Ok(plan.deliveries);
    };
    printer.event(&Json::mass_bounce(&m))?;
    Err(anyhow::Error::new(
        Failure::new(
            Exit::Config,
            format!("refusing to run, nothing was changed: {m}"),
        )
        .with_hint(MASS_BOUNCE_HINT),
    ))
}

/// The ledger's recipients per state before and after the run, with the total: the same
/// states and numbers as `status`, and each column adds up to the total (the run's own
/// counts are events, said in a line of their own: a recipient deferred and then delivered
/// is in both).
fn states_table(before: &[(RcptState, u64)], after: &[(RcptState, u64)]) -> String {
    let of = |counts: &[(RcptState, u64)], s: RcptState| {
        counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n)
    };
    let mut t = Table::new(&["recipients by state", "before run#", "after run#"]);
    let (mut total_before, mut total_after) = (0, 0);
    for s in crate::ledger::state::ALL_STATES {
        let (b, a) = (of(before, s), of(after, s));
        total_before += b;
        total_after += a;
        if b > 0 || a > 0 {
            t.row(vec![s.as_str().to_string(), b.to_string(), a.to_string()]);
        }
    }
    t.row(vec![
        "total".to_string(),
        total_before.to_string(),
        total_after.to_string(),
    ]);
    t.render()
}

/// Recipients held because the spool no longer matches the ledger: how many, the first
/// files and why, and what to do (running again holds them again).
fn spool_changed_text(stats: &crate::replay::Stats) -> String {
    let mut text = format!(
        "Held because the spool changed since ingest: {} recipients (of the {} held); the first:\n",
        stats.spool_changed, stats.held
    );
    for why in &stats.spool_changed_examples {
        text.push_str(&format!("  {}\n", for_terminal(why)));
    }
    text.push_str(
        "  put the spool back where and as it was ingested, then run again; or ingest the spool again \
         (a changed file becomes a new message)\n",
    );
    text
}

/// Where the DSNs of this run are and what sends them: without `--outbox` they are only in
/// the ledger, and the next `run` will not write or send them.
fn dsn_whereabouts(
    ledger: &std::path::Path,
    outbox: Option<&std::path::Path>,
    written: u64,
    unwritten: usize,
) -> String {
    let send = "`spoolreplay bounces send --relay smtp://HOST:25` sends them";
    match outbox {
        None if unwritten > 0 => format!(
            "; {unwritten} are kept in the ledger `{}`: `spoolreplay bounces write --outbox DIR` writes them as files, {send}",
            for_terminal(&ledger.display().to_string())
        ),
        Some(dir) if written > 0 || unwritten > 0 => format!(
            " to `{}`{}; nothing sent them yet: {send} (or let your MTA send the files)",
            for_terminal(&dir.display().to_string()),
            if unwritten > 0 {
                format!(", {unwritten} not written")
            } else {
                String::new()
            },
        ),
        _ => String::new(),
    }
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

/// A constructor of store connections, one per worker; with `--verify-store`, each LMTP or
/// SMTP connection is paired with an IMAP one to look in the mailboxes.
fn store_factory(cfg: &RunConfig) -> Box<StoreFactory<'static>> {
    let plain = plain_store_factory(cfg);
    let (Some(target), Some(credentials)) =
        (cfg.verify_store.clone(), cfg.imap_credentials.clone())
    else {
        return plain;
    };
    let client = ClientOptions {
        timeouts: cfg.timeouts,
        ..ClientOptions::default()
    };
    let with = match cfg.store {
        StoreTarget::Smtp(_) => "ESMTP",
        _ => "LMTP",
    };
    let options = ImapOptions {
        client: client.clone(),
        credentials,
        insecure: cfg.insecure_tls,
        proven: Proven::default(),
    };
    Box::new(move || {
        let inner = plain()?;
        let imap = ImapStore::connect(target.clone(), options.clone())?;
        Ok(Box::new(VerifiedStore::new(
            inner,
            imap,
            client.hello_name.clone(),
            with,
        )) as Box<dyn Deliverer>)
    })
}

fn plain_store_factory(cfg: &RunConfig) -> Box<StoreFactory<'static>> {
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
        StoreTarget::Imap(target) => {
            let Some(credentials) = cfg.imap_credentials.clone() else {
                // `Config` refuses an IMAP store without credentials; keep the factory total.
                return Box::new(|| {
                    Err(crate::deliver::StoreError::Unavailable(
                        "no IMAP credentials".into(),
                    ))
                });
            };
            let options = ImapOptions {
                client,
                credentials,
                insecure: cfg.insecure_tls,
                proven: Proven::default(),
            };
            Box::new(move || {
                ImapStore::connect(target.clone(), options.clone())
                    .map(|s| Box::new(s) as Box<dyn Deliverer>)
            })
        }
    }
}
