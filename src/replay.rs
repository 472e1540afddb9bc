//! The recovery engine behind `spoolreplay run`: finish what an interrupted run left in
//! flight, classify open mail, deliver in throttled batches, make the DSNs that are owed
//! and write them to the outbox. Every step is recorded in the ledger before and after it
//! happens, so a crash at any point loses nothing and repeats nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, Local};

use crate::classify::{self, Disposition};
use crate::config::PaceConfig;
use crate::deliver::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::dsn::{self, Action, Diagnostic, DsnRecipient, DsnRequest};
use crate::incident::Incident;
use crate::ledger::{Change, Ledger, MessageRow, MessageWork, RcptState, RecipientRow};
use crate::spool::{self, ContentHash};
use crate::throttle::Throttle;

/// Messages per page when walking the ledger outside of delivery batches.
const PAGE: usize = 500;

/// RFC 3463 "delivery time expired".
pub const STATUS_EXPIRED: &str = "4.4.7";

pub struct Settings<'a> {
    pub incident: &'a Incident,
    pub now: DateTime<FixedOffset>,
    pub pace: PaceConfig,
    pub return_limit: usize,
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
    /// Messages handled by the delivery loop so far.
    Delivered { messages: u64, pace: &'a str },
}

/// Why the run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Interrupted,
    Store(String),
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
    pub dsns: u64,
    pub stop: Option<Stop>,
}

pub struct Replay<'a> {
    pub ledger: &'a mut Ledger,
    pub store: &'a mut dyn Deliverer,
    pub settings: Settings<'a>,
    pub interrupted: &'a AtomicBool,
    pub on_event: &'a mut dyn FnMut(Event<'_>),
    pub stats: Stats,
}

impl Replay<'_> {
    /// The whole recovery pass.
    pub fn run(&mut self) -> Result<()> {
        self.finish_in_flight()?;
        if self.stats.stop.is_none() {
            self.classify_open()?;
            self.deliver_pending()?;
        }
        self.make_dsns()?;
        Ok(())
    }

    /// Recipients left in flight by a crash: their delivery had been decided, so complete
    /// it; the backend looks for a copy already made and never writes a second one.
    fn finish_in_flight(&mut self) -> Result<()> {
        loop {
            let page = self
                .ledger
                .messages_in_states(&[RcptState::InFlight], 0, PAGE)?;
            if page.is_empty() {
                return Ok(());
            }
            for work in &page {
                self.stats.recovered += work.recipients.len() as u64;
                if !self.deliver_message(work, true)? {
                    return Ok(());
                }
            }
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
            let settings = &self.settings;
            let stats = &mut self.stats;
            self.ledger.write(|tx| {
                for work in &page {
                    let m = &work.message;
                    let c = {
                        let facts = classify::Facts {
                            arrival: m.arrival,
                            sender: &m.sender,
                            mta_hold: m.mta_hold,
                        };
                        classify::classify(settings.incident, facts, settings.now)
                    };
                    tx.set_classification(
                        m.id,
                        c.window_name(settings.incident),
                        c.disposition.as_str(),
                        &c.deadline.to_rfc3339(),
                    )?;
                    let (to, status) = match c.disposition {
                        Disposition::Deliver => (RcptState::Pending, None),
                        Disposition::Hold => (RcptState::Held, None),
                        Disposition::Expire => (RcptState::Failed, Some(STATUS_EXPIRED)),
                        Disposition::Bounce => (
                            RcptState::Failed,
                            c.window
                                .map(|i| settings.incident.windows[i].status.as_str()),
                        ),
                        Disposition::Drop => (RcptState::Dropped, None),
                    };
                    let detail = match c.disposition {
                        Disposition::Bounce => c
                            .window
                            .and_then(|i| settings.incident.windows[i].reason.clone())
                            .map(|r| format!("{}: {r}", c.reason))
                            .unwrap_or_else(|| c.reason.clone()),
                        _ => c.reason.clone(),
                    };
                    for r in &work.recipients {
                        // Deferred mail that is still deliverable stays deferred.
                        if r.state == to
                            || (r.state == RcptState::Deferred && to == RcptState::Pending)
                        {
                            continue;
                        }
                        tx.set_state(
                            r,
                            to,
                            Change {
                                detail: Some(&detail),
                                status,
                                ..Change::default()
                            },
                        )?;
                        match to {
                            RcptState::Pending => stats.released += 1,
                            RcptState::Held => stats.held += 1,
                            RcptState::Failed => stats.failed += 1,
                            RcptState::Dropped => stats.dropped += 1,
                            _ => {}
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    /// Delivers pending and deferred recipients, `batch_size` messages per checkpoint.
    fn deliver_pending(&mut self) -> Result<()> {
        let open = [RcptState::Pending, RcptState::Deferred];
        let mut throttle = match self.settings.pace.rate {
            Some(rate) => Throttle::new(rate, 1),
            None => Throttle::unlimited(),
        };
        let started = Instant::now();
        let pace = self
            .settings
            .pace
            .rate
            .map(|r| format!("pace {r}"))
            .unwrap_or_else(|| "pace unlimited".into());
        let mut handled = 0u64;
        let mut after = 0;
        loop {
            let batch =
                self.ledger
                    .messages_in_states(&open, after, self.settings.pace.batch_size)?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            after = last.message.id;
            let in_flight = self.mark_in_flight(&batch)?;
            test_hook("after-in-flight");
            for work in &in_flight {
                let wait = throttle.wait(started.elapsed());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if !self.deliver_message(work, false)? {
                    return Ok(());
                }
                handled += 1;
                (self.on_event)(Event::Delivered {
                    messages: handled,
                    pace: &pace,
                });
            }
            if self.interrupted.load(Ordering::SeqCst) {
                self.stats.stop = Some(Stop::Interrupted);
                return Ok(());
            }
            self.pause()?;
        }
    }

    /// Sleeps `--pause` between batches, waking early on Ctrl-C.
    fn pause(&self) -> Result<()> {
        let until = Instant::now() + self.settings.pace.pause;
        while Instant::now() < until && !self.interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        Ok(())
    }

    /// Records intent: every recipient of the batch goes in flight in one transaction.
    fn mark_in_flight(&mut self, batch: &[MessageWork]) -> Result<Vec<MessageWork>> {
        let target = self.store.describe();
        let detail = format!("delivering to {target}");
        self.ledger.write(|tx| {
            let mut out = Vec::with_capacity(batch.len());
            for work in batch {
                let mut moved = work.clone();
                for r in &mut moved.recipients {
                    tx.set_state(
                        r,
                        RcptState::InFlight,
                        Change {
                            detail: Some(&detail),
                            audit_only: true,
                            ..Change::default()
                        },
                    )?;
                    r.state = RcptState::InFlight;
                }
                out.push(moved);
            }
            Ok(out)
        })
    }

    /// Hands one message to the store for its in-flight recipients and records the
    /// outcomes. Returns false when the run must stop (store trouble).
    fn deliver_message(&mut self, work: &MessageWork, recovering: bool) -> Result<bool> {
        let m = &work.message;
        let content = match read_verified(m) {
            Ok(c) => c,
            Err(why) => {
                // The spool changed or vanished since ingest: hold, never guess.
                let outcomes = vec![(RcptState::Held, why, None); work.recipients.len()];
                self.record(work, outcomes, None)?;
                return Ok(true);
            }
        };
        let recipients: Vec<RecipientSpec<'_>> = work
            .recipients
            .iter()
            .map(|r| RecipientSpec {
                address: &r.address,
                orcpt: r.orcpt.as_deref(),
                notify: r
                    .notify
                    .as_deref()
                    .and_then(|n| crate::spool::eml::parse_notify(n).ok()),
            })
            .collect();
        let delivery = Delivery {
            message_key: &m.content_hash,
            sender: &m.sender,
            content: &content,
            arrival: m.arrival,
            recovering,
            envid: m.envid.as_deref(),
            ret: match m.ret.as_deref() {
                Some("FULL") => Some(crate::address::ReturnContent::Full),
                Some("HDRS") => Some(crate::address::ReturnContent::Headers),
                _ => None,
            },
        };
        let attempted = Local::now().fixed_offset().to_rfc3339();
        match self.store.deliver(&delivery, &recipients) {
            Ok(results) => {
                test_hook("after-store");
                let outcomes = results
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Delivered { detail, .. } => (RcptState::Delivered, detail, None),
                        Outcome::AlreadyThere { detail } => (
                            RcptState::Delivered,
                            format!("already in the store from an interrupted run: {detail}"),
                            None,
                        ),
                        Outcome::Deferred { reply, .. } => (RcptState::Deferred, reply, None),
                        // Compile shim for the LMTP/SMTP branch: the lead decides the policy.
                        Outcome::Uncertain { reply, .. } => (RcptState::Deferred, reply, None),
                        Outcome::Failed { reply, status, .. } => {
                            (RcptState::Failed, reply, Some(status))
                        }
                    })
                    .collect();
                self.record(work, outcomes, Some(&attempted))?;
                Ok(true)
            }
            Err(err) => {
                let why = err.to_string();
                let outcomes =
                    vec![(RcptState::Deferred, why.clone(), None); work.recipients.len()];
                self.record(work, outcomes, None)?;
                self.stats.stop = Some(match err {
                    StoreError::Full(_) => Stop::StoreFull(why),
                    StoreError::Unavailable(_) => Stop::Store(why),
                });
                Ok(false)
            }
        }
    }

    fn record(
        &mut self,
        work: &MessageWork,
        outcomes: Vec<(RcptState, String, Option<String>)>,
        attempted: Option<&str>,
    ) -> Result<()> {
        anyhow::ensure!(
            outcomes.len() == work.recipients.len(),
            "the store answered {} outcomes for {} recipients of {}",
            outcomes.len(),
            work.recipients.len(),
            work.message.queue_id
        );
        self.ledger.write(|tx| {
            for (r, (to, detail, status)) in work.recipients.iter().zip(&outcomes) {
                let change = Change {
                    detail: Some(detail),
                    status: status.as_deref(),
                    attempted_at: attempted,
                    ..Change::default()
                };
                tx.set_state(r, *to, change)?;
            }
            Ok(())
        })?;
        for (r, (to, detail, _)) in work.recipients.iter().zip(&outcomes) {
            match to {
                RcptState::Delivered if detail.starts_with("already") => {
                    self.stats.already_there += 1
                }
                RcptState::Delivered => self.stats.delivered += 1,
                RcptState::Deferred => self.stats.deferred += 1,
                RcptState::Failed => self.stats.failed += 1,
                RcptState::Held => self.stats.held += 1,
                _ => {}
            }
            (self.on_event)(Event::Outcome {
                message: &work.message,
                recipient: &r.address,
                state: *to,
                detail,
            });
        }
        Ok(())
    }

    /// One DSN per message for its failed recipients; the null sender gets none.
    fn make_dsns(&mut self) -> Result<()> {
        loop {
            // Each page is settled (bounced or dropped) before the next query, so always
            // start from the beginning.
            let page = self
                .ledger
                .messages_in_states(&[RcptState::Failed], 0, PAGE)?;
            if page.is_empty() {
                return Ok(());
            }
            for work in &page {
                self.settle_failed(work)?;
                test_hook("after-dsn-record");
            }
        }
    }

    fn settle_failed(&mut self, work: &MessageWork) -> Result<()> {
        let m = &work.message;
        if m.sender.is_null() {
            self.ledger.write(|tx| {
                for r in &work.recipients {
                    let detail = "null sender: no DSN (RFC 5321 6.1)";
                    tx.set_state(
                        r,
                        RcptState::Dropped,
                        Change {
                            detail: Some(detail),
                            ..Change::default()
                        },
                    )?;
                }
                Ok(())
            })?;
            self.stats.dropped += work.recipients.len() as u64;
            return Ok(());
        }
        // RFC 3461 5.2.6: a failure DSN only for recipients whose NOTIFY asks for it (or
        // says nothing); the others are settled without one.
        let (owed, unwanted): (Vec<RecipientRow>, Vec<RecipientRow>) = work
            .recipients
            .iter()
            .cloned()
            .partition(|r| wants_failure_dsn(r.notify.as_deref()));
        if !unwanted.is_empty() {
            self.ledger.write(|tx| {
                for r in &unwanted {
                    let detail = format!(
                        "NOTIFY={}: the sender asked for no failure DSN",
                        r.notify.as_deref().unwrap_or_default()
                    );
                    tx.set_state(
                        r,
                        RcptState::Dropped,
                        Change {
                            detail: Some(&detail),
                            ..Change::default()
                        },
                    )?;
                }
                Ok(())
            })?;
            self.stats.dropped += unwanted.len() as u64;
        }
        // An exact copy of this message (same content, ingested twice or from two MX hosts)
        // may already have bounced the same recipient: its DSN covers this one too.
        let mut owed_fresh = Vec::with_capacity(owed.len());
        for r in owed {
            match self
                .ledger
                .earlier_copy_dsn(&m.content_hash, m.id, &r.address)?
            {
                Some((dsn_id, queue_id)) => {
                    let detail = format!("dsn {dsn_id}, made for the identical copy {queue_id}");
                    self.ledger
                        .write(|tx| tx.cover_by_dsn(&r, dsn_id, &detail))?;
                }
                None => owed_fresh.push(r),
            }
        }
        let owed = owed_fresh;
        if owed.is_empty() {
            return Ok(());
        }
        let work = &MessageWork {
            message: m.clone(),
            recipients: owed,
        };
        let original = read_verified(m).unwrap_or_default();
        let recipients: Vec<DsnRecipient> = work.recipients.iter().map(dsn_recipient).collect();
        let date = Local::now().fixed_offset();
        let message_id = format!(
            "spoolreplay.{}.{}.{}@{}",
            m.id,
            &m.content_hash[..m.content_hash.len().min(12)],
            date.timestamp_micros(),
            self.settings.incident.reporting_mta
        );
        let explanation = explanation(work, self.settings.incident);
        let ret = m.ret.as_deref().and_then(|r| match r {
            "HDRS" => Some(crate::address::ReturnContent::Headers),
            "FULL" => Some(crate::address::ReturnContent::Full),
            _ => None,
        });
        let request = DsnRequest {
            reporting_mta: &self.settings.incident.reporting_mta,
            incident: &self.settings.incident.name,
            explanation: &explanation,
            to: m.sender.as_str(),
            original: &original,
            envid: m.envid.as_deref(),
            ret,
            return_limit: self.settings.return_limit,
            arrival: m.arrival,
            queue_id: &m.queue_id,
            recipients: &recipients,
            date,
            message_id: &message_id,
        };
        let bytes = dsn::build(&request)
            .with_context(|| format!("cannot build the DSN for message {}", m.queue_id))?;
        let id = self.ledger.write(|tx| {
            tx.record_dsn(
                m.id,
                m.sender.as_str(),
                &message_id,
                &bytes,
                &work.recipients,
            )
        })?;
        self.stats.dsns += 1;
        (self.on_event)(Event::Dsn {
            id,
            message: m,
            recipients: work.recipients.len(),
        });
        Ok(())
    }
}

/// Whether a recipient's NOTIFY (as stored: `NEVER` or a comma list) asks for a failure
/// DSN. Absent NOTIFY means FAILURE (RFC 3461 5.2.6 c).
fn wants_failure_dsn(notify: Option<&str>) -> bool {
    match notify {
        None | Some("") => true,
        Some(list) => list
            .split(',')
            .any(|k| k.trim().eq_ignore_ascii_case("FAILURE")),
    }
}

/// The message bytes from the spool, checked against the hash taken at ingest.
fn read_verified(m: &MessageRow) -> std::result::Result<Vec<u8>, String> {
    let content = spool::read_content(&m.source)
        .map_err(|e| format!("cannot read {} from the spool: {e}", m.source))?;
    if ContentHash::of(&content).to_hex() != m.content_hash {
        return Err(format!(
            "{} changed since it was ingested (content hash differs): ingest it again",
            m.source
        ));
    }
    Ok(content)
}

fn dsn_recipient(r: &RecipientRow) -> DsnRecipient {
    let attempted = r.attempts > 0;
    DsnRecipient {
        final_recipient: r.address.clone(),
        original_recipient: r.orcpt.clone(),
        action: Action::Failed,
        status: r.status.clone().unwrap_or_else(|| "5.0.0".into()),
        diagnostic: r.reply.clone().map(Diagnostic::Local),
        remote_mta: None,
        last_attempt: if attempted {
            r.last_attempt
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        } else {
            None
        },
        will_retry_until: None,
    }
}

/// The plain-words story for the DSN's human-readable part.
fn explanation(work: &MessageWork, incident: &Incident) -> String {
    let expired = work
        .recipients
        .iter()
        .any(|r| r.status.as_deref() == Some(STATUS_EXPIRED));
    let arrival = work.message.arrival.to_rfc2822();
    if expired {
        format!(
            "Your message arrived here on {arrival}, while the mailbox storage of the recipients \
             below was out of service. It was kept in the queue, but the storage did not come \
             back before the message's queue lifetime ran out, so it was not delivered."
        )
    } else {
        let window = work
            .message
            .window
            .as_deref()
            .and_then(|w| incident.windows.iter().find(|x| x.name == w))
            .and_then(|w| w.note.clone())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        format!(
            "Your message arrived here on {arrival}, during an outage of the mailbox storage of \
             the recipients below{window}. It could not be delivered to them."
        )
    }
}

/// Test-only crash injection: with `SPOOLREPLAY_CRASH_AT=POINT:N` the process aborts (like
/// `kill -9`: no cleanup, no checkpoint) the Nth time it reaches POINT. Points:
/// `after-in-flight`, `after-store`, `after-dsn-record`, `after-outbox-write`.
pub fn test_hook(point: &str) {
    use std::sync::atomic::AtomicU64;
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Some(spec) = std::env::var_os("SPOOLREPLAY_CRASH_AT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some((at, n)) = spec.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    let n: u64 = n.parse().unwrap_or(1);
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::wants_failure_dsn;

    #[test]
    fn notify_decides_failure_dsns() {
        assert!(wants_failure_dsn(None));
        assert!(wants_failure_dsn(Some("FAILURE")));
        assert!(wants_failure_dsn(Some("SUCCESS,FAILURE,DELAY")));
        assert!(!wants_failure_dsn(Some("NEVER")));
        assert!(!wants_failure_dsn(Some("SUCCESS,DELAY")));
    }
}
