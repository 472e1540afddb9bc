//! The recovery engine behind `spoolreplay run`: settle what an interrupted run left in
//! flight, classify open mail, deliver in paced batches (retrying deferred mail until its
//! deadline), make the DSNs that are owed. Every step is recorded in the ledger before and
//! after it happens, so a crash at any point loses nothing and repeats nothing.
//!
//! The delivery loop: `dispatch.rs` (the dispatcher), `worker.rs` (the workers),
//! `record.rs` (recording outcomes), `feed.rs` (the breaker, pace and metrics feeds),
//! `steer.rs` (`spoolreplay control`).

mod dispatch;
mod feed;
mod record;
mod steer;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, FixedOffset};

use crate::classify::{self, Classification, Disposition};
use crate::deliver::{Deliverer, Outcome, StoreError};
use crate::incident::Incident;
use crate::ledger::{Change, Ledger, MessageRow, MessageWork, RcptState, SPOOL_CHANGED, Tx};
use crate::metrics::Metrics;
use crate::pace::{Alone, PaceConfig, TokenSource};
use crate::spool::{self, ContentHash, SpoolFormat};

/// Messages per page when walking the ledger outside of delivery batches.
const PAGE: usize = 500;

/// RFC 3463 "delivery time expired".
pub const STATUS_EXPIRED: &str = "4.4.7";

/// What to do with a recipient whose delivery may or may not have reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UncertainPolicy {
    /// Deliver again: the recipient may get the message twice, but never zero times.
    Redeliver,
    /// Keep it as `uncertain` for the operator to check: nothing twice, but nothing until
    /// someone looks.
    Hold,
    /// Look in the store (a `verifiable` one: IMAP, Maildir): a copy found is delivered, a
    /// copy not found is delivered now; when the store cannot be asked it stays uncertain.
    Verify,
}

/// How deferred recipients are retried within a run.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait after the first deferral; doubled after each further one.
    pub first: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// How long the store may stay unreachable in the middle of a run before the run
    /// gives up (and exits 75).
    pub store_timeout: Duration,
}

impl RetryPolicy {
    /// The wait before attempt number `attempts + 1`.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let doublings = attempts.clamp(1, 20) as u32 - 1;
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Builds a connection to the store; called once per worker, so each has its own.
pub type StoreFactory<'a> = dyn Fn() -> Result<Box<dyn Deliverer>, StoreError> + Sync + 'a;

pub struct Settings<'a> {
    pub incident: &'a Incident,
    /// The time the run classifies against at its start; it advances with the real clock.
    pub now: DateTime<FixedOffset>,
    pub pace: PaceConfig,
    pub return_limit: usize,
    pub concurrency: usize,
    pub uncertain: UncertainPolicy,
    pub retry: RetryPolicy,
    /// Send a delay warning for mail held or deferred longer than this.
    pub warn_after: Option<Duration>,
    /// Send a copy of failed bounces (null sender) to this address.
    pub postmaster: Option<String>,
    /// When the store counts as refusing everything (`--breaker-*`).
    pub breaker: crate::breaker::BreakerConfig,
    /// The order deliverable mail is handed over in (`--order`).
    pub order: crate::ledger::DeliveryOrder,
}

/// Something that happened, for the printer.
pub enum Event<'a> {
    Outcome {
        message: &'a MessageRow,
        recipient: &'a str,
        state: RcptState,
        detail: &'a str,
    },
    Dsn {
        id: i64,
        message: &'a MessageRow,
        recipients: usize,
    },
    /// Messages handed over so far, and the pace (with why it last changed).
    Delivered { messages: u64, pace: &'a str },
    /// A change of pace or a wait, worth a line of its own.
    Notice(&'a str),
    /// Something the operator must hear at once, even without `-v` (the store refuses
    /// everything).
    Alert(&'a str),
    /// `spoolreplay control` changed the run (paused, resumed, a new rate): said on
    /// stderr without `-v`, and as a `control` JSON event.
    Steered(&'a str),
    /// What an earlier run left in flight is settled: from here on the run only delivers
    /// and bounces (a service manager hears `READY=1`).
    Ready,
}

/// Why the run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Interrupted,
    /// The store could not be used when the run started.
    StoreDown(String),
    /// The store went away mid-run and did not come back within `--store-timeout`.
    StoreLost(String),
    StoreFull(String),
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub recovered: u64,
    pub released: u64,
    pub delivered: u64,
    pub already_there: u64,
    pub deferred: u64,
    pub failed: u64,
    pub held: u64,
    pub dropped: u64,
    pub uncertain: u64,
    /// Recipients whose copy another ledger of the cluster has (`run --cluster`).
    pub cluster_duplicates: u64,
    /// `--uncertain verify`: uncertain recipients found in the store, not found (and so
    /// delivered again), and those the store could not be asked about (still uncertain).
    pub verified_found: u64,
    pub verified_missing: u64,
    pub verify_impossible: u64,
    /// Messages handed to the store.
    pub messages: u64,
    pub dsns: u64,
    pub delay_warnings: u64,
    /// Recipients held because their spool file changed or vanished since ingest (also
    /// counted in `held`), and the first few files with the reason.
    pub spool_changed: u64,
    pub spool_changed_examples: Vec<String>,
    pub stop: Option<Stop>,
}

/// How many spool files a run names when they changed since ingest.
pub const SPOOL_CHANGED_EXAMPLES: usize = 5;

pub struct Replay<'a> {
    pub ledger: &'a mut Ledger,
    pub store: &'a StoreFactory<'a>,
    pub settings: Settings<'a>,
    pub interrupted: &'a AtomicBool,
    pub on_event: &'a mut dyn FnMut(Event<'_>),
    pub stats: Stats,
    started: Instant,
    /// Fed as the run goes when `--metrics` serves them (see `metrics.rs`).
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// Turns beyond the local pace: none needed alone, the cluster's with `--cluster`.
    tokens: Box<dyn TokenSource + 'a>,
    /// The message about to go in flight was not checked across ledgers.
    unchecked: bool,
}

impl<'a> Replay<'a> {
    pub fn new(
        ledger: &'a mut Ledger,
        store: &'a StoreFactory<'a>,
        settings: Settings<'a>,
        interrupted: &'a AtomicBool,
        on_event: &'a mut dyn FnMut(Event<'_>),
    ) -> Replay<'a> {
        Replay {
            ledger,
            store,
            settings,
            interrupted,
            on_event,
            stats: Stats::default(),
            started: Instant::now(),
            metrics: None,
            tokens: Box::new(Alone),
            unchecked: false,
        }
    }

    /// Feeds `metrics` while the run goes.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Takes turns from `tokens` (a cluster) as well as from the local pace.
    pub fn with_tokens(mut self, tokens: Box<dyn TokenSource + 'a>) -> Replay<'a> {
        self.tokens = tokens;
        self
    }

    /// The whole recovery pass.
    pub fn run(&mut self) -> Result<()> {
        let mut probe = match (self.store)().and_then(|mut s| s.probe().map(|()| s)) {
            Ok(store) => store,
            Err(e) => {
                // A full store is not a down one: free space and run again (75).
                self.stats.stop = Some(match e {
                    StoreError::Full(_) => Stop::StoreFull(e.to_string()),
                    StoreError::Unavailable(_) => Stop::StoreDown(e.to_string()),
                });
                return self.make_dsns();
            }
        };
        self.settle_in_flight(probe.as_mut())?;
        if self.settings.uncertain == UncertainPolicy::Verify && self.stats.stop.is_none() {
            self.verify_uncertain(probe.as_mut())?;
        }
        drop(probe);
        self.apply_uncertain_policy()?;
        (self.on_event)(Event::Ready);
        self.classify_open()?;
        if self.stats.stop.is_none() {
            self.deliver_all()?;
        }
        self.warn_delayed()?;
        self.make_dsns()?;
        // The last scrape before exit shows where the ledger ended, not the last tick.
        if let Some(m) = &self.metrics {
            m.set_recipients(&self.ledger.state_counts()?);
            m.pace(0.0, None);
        }
        Ok(())
    }

    /// The clock: `--now` (or the wall clock at the start), advanced by the time elapsed.
    pub(crate) fn now(&self) -> DateTime<FixedOffset> {
        self.settings.now + chrono::TimeDelta::from_std(self.started.elapsed()).unwrap_or_default()
    }

    fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early on Ctrl-C.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.is_interrupted() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// Recipients left in flight by a crash. Their delivery had been decided; a backend
    /// that can look (Maildir) completes it without writing a second copy; for the others
    /// (SMTP, LMTP) nobody can know whether the store has it: they become uncertain.
    fn settle_in_flight(&mut self, store: &mut dyn Deliverer) -> Result<()> {
        loop {
            let page = self
                .ledger
                .messages_in_states(&[RcptState::InFlight], 0, PAGE)?;
            if page.is_empty() {
                return Ok(());
            }
            for work in &page {
                self.stats.recovered += work.recipients.len() as u64;
                if store.verifiable() {
                    let done = worker::attempt(store, work, true);
                    if self.record(done)? != record::Health::Fine {
                        if self.stats.stop.is_none() {
                            self.stats.stop = Some(Stop::StoreDown(
                                "the store failed while settling deliveries left in flight".into(),
                            ));
                        }
                        return Ok(());
                    }
                } else {
                    let detail = "the run stopped while this delivery was in flight: the store may or may not have it";
                    self.ledger.write(|tx| {
                        for r in &work.recipients {
                            tx.set_state(
                                r,
                                RcptState::Uncertain,
                                Change {
                                    detail: Some(detail),
                                    ..Change::default()
                                },
                            )?;
                        }
                        Ok(())
                    })?;
                    self.stats.uncertain += work.recipients.len() as u64;
                }
            }
        }
    }

    /// `--uncertain verify`: every uncertain recipient goes back in flight and is settled as
    /// a crash's in-flight work is: the store looks for the copy (`recovering`) and appends
    /// it only if it is not there. A recipient the store could not be asked about comes
    /// back `Uncertain` and stays so.
    fn verify_uncertain(&mut self, store: &mut dyn Deliverer) -> Result<()> {
        if !store.verifiable() {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let page = self
                .ledger
                .messages_in_states(&[RcptState::Uncertain], after, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.message.id;
            for work in &page {
                let detail = "looking in the store for the copy of an uncertain delivery (--uncertain verify)";
                let mut moved = work.clone();
                self.ledger.write(|tx| {
                    for r in &mut moved.recipients {
                        tx.set_state(
                            r,
                            RcptState::InFlight,
                            Change {
                                detail: Some(detail),
                                audit_only: true,
                                ..Change::default()
                            },
                        )?;
                        r.state = RcptState::InFlight;
                    }
                    Ok(())
                })?;
                let done = worker::attempt(store, &moved, true);
                match done.outcomes() {
                    Some(outcomes) => {
                        for o in outcomes {
                            match o {
                                Outcome::AlreadyThere { .. } => self.stats.verified_found += 1,
                                Outcome::Uncertain { .. } => self.stats.verify_impossible += 1,
                                _ => self.stats.verified_missing += 1,
                            }
                        }
                    }
                    None => self.stats.verify_impossible += moved.recipients.len() as u64,
                }
                if self.record(done)? != record::Health::Fine {
                    if self.stats.stop.is_none() {
                        self.stats.stop = Some(Stop::StoreDown(
                            "the store failed while verifying uncertain deliveries".into(),
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// `--uncertain redeliver` sends uncertain recipients again, once: one sent again
    /// already and uncertain a second time stays `uncertain` (a store that loses the reply
    /// every time would otherwise get a copy per run). `hold` leaves them all.
    fn apply_uncertain_policy(&mut self) -> Result<()> {
        // `verify` settled what the store could answer for; the rest stays for the next run.
        if matches!(
            self.settings.uncertain,
            UncertainPolicy::Hold | UncertainPolicy::Verify
        ) {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let page = self
                .ledger
                .messages_in_states(&[RcptState::Uncertain], after, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.message.id;
            self.ledger.write(|tx| {
                for work in &page {
                    for r in &work.recipients {
                        redeliver_once(tx, r)?;
                    }
                }
                Ok(())
            })?;
        }
    }

    /// Applies the incident policy to every undecided recipient.
    fn classify_open(&mut self) -> Result<()> {
        let undecided = [RcptState::Pending, RcptState::Deferred, RcptState::Held];
        let mut after = 0;
        loop {
            let page = self.ledger.messages_in_states(&undecided, after, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.message.id;
            let now = self.now();
            let incident = self.settings.incident;
            let stats = &mut self.stats;
            self.ledger.write(|tx| {
                for work in &page {
                    let c = classify_message(incident, &work.message, now);
                    apply_classification(tx, incident, work, &c, stats)?;
                }
                Ok(())
            })?;
        }
    }
}

/// `--uncertain redeliver` for one uncertain recipient: back to `pending` unless it was
/// sent again once already; true when it was.
fn redeliver_once(tx: &Tx<'_>, r: &crate::ledger::RecipientRow) -> Result<bool> {
    if tx.redeliveries(r.id)? > 0 {
        return Ok(false);
    }
    let detail = "delivering again after an uncertain attempt (--uncertain redeliver): a duplicate is possible";
    tx.set_state(
        r,
        RcptState::Pending,
        Change {
            detail: Some(detail),
            audit_only: true,
            ..Change::default()
        },
    )?;
    Ok(true)
}

fn classify_message(
    incident: &Incident,
    m: &MessageRow,
    now: DateTime<FixedOffset>,
) -> Classification {
    let facts = classify::Facts {
        arrival: m.arrival,
        sender: &m.sender,
        mta_hold: m.mta_hold,
    };
    classify::classify(incident, facts, now)
}

/// For a classification that fails the message (expire, bounce, drop): the status and the
/// reason its recipients get; `None` when it is delivered or held.
pub fn failure_for(incident: &Incident, c: &Classification) -> Option<(String, String)> {
    match c.disposition {
        Disposition::Expire => Some((STATUS_EXPIRED.to_string(), c.reason.clone())),
        Disposition::Bounce => {
            let window = c.window.map(|i| &incident.windows[i]);
            let status = window.map_or("5.0.0", |w| w.status.as_str()).to_string();
            let detail = window
                .and_then(|w| w.reason.clone())
                .map(|r| format!("{}: {r}", c.reason))
                .unwrap_or_else(|| c.reason.clone());
            Some((status, detail))
        }
        // A bounce that would fail: settled without a DSN (or with a postmaster copy); the
        // status says what it would have been.
        Disposition::Drop => {
            let window = c.window.map(|i| &incident.windows[i]);
            let status = match window {
                Some(w) if w.action == crate::incident::WindowAction::Bounce => w.status.clone(),
                _ => STATUS_EXPIRED.to_string(),
            };
            Some((status, c.reason.clone()))
        }
        Disposition::Deliver | Disposition::Hold => None,
    }
}

/// Records a classification and moves the message's undecided recipients accordingly.
/// Deferred mail that is still deliverable stays deferred; deferred mail that expires keeps
/// the store's last reply for its DSN.
fn apply_classification(
    tx: &Tx<'_>,
    incident: &Incident,
    work: &MessageWork,
    c: &Classification,
    stats: &mut Stats,
) -> Result<()> {
    tx.set_classification(
        work.message.id,
        c.window_name(incident),
        c.disposition.as_str(),
        &c.deadline.to_rfc3339(),
    )?;
    let failure = failure_for(incident, c);
    let to = match c.disposition {
        Disposition::Deliver => RcptState::Pending,
        Disposition::Hold => RcptState::Held,
        // Dropped mail goes through `failed` too, so the DSN step settles it (and makes a
        // postmaster copy when asked) in one place.
        Disposition::Expire | Disposition::Bounce | Disposition::Drop => RcptState::Failed,
    };
    let (status, detail) = match &failure {
        Some((status, detail)) => (Some(status.as_str()), detail.clone()),
        None => (None, c.reason.clone()),
    };
    for r in &work.recipients {
        if r.state == to || (r.state == RcptState::Deferred && to == RcptState::Pending) {
            continue;
        }
        // A store's last reply says more than "expired" about why: keep it for the DSN,
        // and keep a mailbox condition (4.2.x) as the status (RFC 3463 prefers the actual
        // problem to 4.4.7).
        let keep_reply = r.state == RcptState::Deferred && r.reply.is_some();
        let expiry_status;
        let status = if c.disposition == Disposition::Expire && keep_reply {
            let last = r.reply_code.map(|code| {
                crate::dsn::status_for_reply(
                    code,
                    r.reply_status.as_deref(),
                    r.reply.as_deref().unwrap_or(""),
                )
            });
            expiry_status = crate::dsn::status_at_expiry(last.as_deref());
            Some(expiry_status.as_str())
        } else {
            status
        };
        tx.set_state(
            r,
            to,
            Change {
                detail: Some(&detail),
                status,
                audit_only: keep_reply,
                ..Change::default()
            },
        )?;
        match to {
            RcptState::Pending => stats.released += 1,
            RcptState::Held => stats.held += 1,
            RcptState::Failed => stats.failed += 1,
            _ => {}
        }
    }
    Ok(())
}

/// The message bytes from the spool, checked against the hash taken at ingest.
///
/// A row of a ledger made before `From ` lines were framing (`HashRule::Bytes`) reads a
/// file with its leading `From ` line: that line is cut off here, so it is never delivered.
pub(crate) fn read_verified(m: &MessageRow) -> std::result::Result<Vec<u8>, String> {
    let mut content = spool::read_content(&m.source)
        .map_err(|e| format!("{SPOOL_CHANGED}: cannot read {}: {e}", m.source))?;
    if !ContentHash::matches(&m.content_hash, &content) {
        return Err(format!(
            "{SPOOL_CHANGED}: {} is not what was ingested (content hash differs)",
            m.source
        ));
    }
    if matches!(m.source.format, SpoolFormat::Maildir | SpoolFormat::Eml) {
        content.drain(..spool::leading_from_line_len(&content));
    }
    Ok(content)
}
