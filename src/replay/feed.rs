//! What the delivery loop feeds its observers: the circuit breaker (each recipient's
//! reply), the pace (`signal_of` an attempt) and the `--metrics` gauges and counters.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::dispatch::Dispatch;
use super::record::Settled;
use super::worker::{Attempt, Done};
use super::{Event, Replay};
use crate::breaker;
use crate::deliver::{Outcome, StoreError};
use crate::ledger::RcptState;
use crate::pace::{self, PushBack, Signal};

/// How often the gauges of `--metrics` are refreshed (one `GROUP BY state` each time).
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// The window the measured pace and the ETA average over.
const METRICS_WINDOW: Duration = Duration::from_secs(30);

impl Replay<'_> {
    /// Tells the circuit breaker each recipient's reply, and the printer when it opens
    /// or closes.
    pub(super) fn feed_breaker(&mut self, done: &Done, d: &mut Dispatch) {
        let Attempt::Store {
            result: Ok(outcomes),
            at,
            ..
        } = &done.result
        else {
            return;
        };
        for (r, o) in done.work.recipients.iter().zip(outcomes) {
            let text;
            let reply = match o {
                Outcome::Deferred {
                    reply,
                    remote: Some(_),
                } if reply.reply().is_some_and(|r| (400..500).contains(&r.code)) => {
                    text = reply.to_string();
                    breaker::Reply::Transient(&text)
                }
                Outcome::Delivered { .. }
                | Outcome::AlreadyThere { .. }
                | Outcome::Failed { .. } => breaker::Reply::Answered,
                // A lost reply or a refusal that is not the store's says nothing either way.
                _ => continue,
            };
            match d.breaker.observe(&r.address, reply, at) {
                Some(breaker::Change::Opened(t)) => {
                    (self.on_event)(Event::Alert(&format!(
                        "the store refused the last {} recipients ({} mailboxes) since {} with a temporary error, the last `{}`: treating it as unhealthy, waiting and then trying one message at a time (exit 75 after --store-timeout)",
                        t.recipients, t.mailboxes, t.since, t.reply
                    )));
                }
                Some(breaker::Change::Closed) => {
                    (self.on_event)(Event::Alert(
                        "the store accepts recipients again: back to the normal pace",
                    ));
                }
                None => {}
            }
        }
    }

    /// Refreshes the gauges of `--metrics` (at most every `METRICS_EVERY`): recipients
    /// per state from the ledger, the measured pace and its ceiling, the ETA.
    pub(super) fn feed_gauges(&mut self, d: &mut Dispatch) -> Result<()> {
        let Some(m) = self.metrics.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        if d.samples
            .back()
            .is_some_and(|(t, ..)| now.duration_since(*t) < METRICS_EVERY)
        {
            return Ok(());
        }
        let finished = self.stats.delivered + self.stats.already_there + self.stats.failed;
        d.samples.push_back((now, d.handled, finished));
        while d.samples.len() > 2
            && d.samples
                .front()
                .is_some_and(|(t, ..)| now.duration_since(*t) > METRICS_WINDOW)
        {
            d.samples.pop_front();
        }
        let counts = self.ledger.state_counts()?;
        m.set_recipients(&counts);
        let Some(&(since, handled, settled)) = d.samples.front() else {
            return Ok(());
        };
        let secs = now.duration_since(since).as_secs_f64();
        let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        m.pace(per_second(d.handled - handled), d.pace.rate());
        let open: u64 = counts
            .iter()
            .filter(|(s, _)| {
                matches!(
                    s,
                    RcptState::Pending | RcptState::Deferred | RcptState::InFlight
                )
            })
            .map(|(_, n)| *n)
            .sum();
        let rate = per_second(finished - settled);
        m.eta(match open {
            0 => Some(Duration::ZERO),
            _ if rate > 0.0 => Some(Duration::from_secs_f64(open as f64 / rate)),
            _ => None,
        });
        Ok(())
    }
}

/// One recipient's outcome for `--metrics`: its count, its reply's class (when a server
/// replied), and for a delivery the time since the message arrived.
pub(super) fn feed_outcome(
    m: &crate::metrics::Metrics,
    message: &crate::ledger::MessageRow,
    s: &Settled,
    now: chrono::DateTime<chrono::FixedOffset>,
) {
    use crate::metrics::DeliveryOutcome;
    let outcome = match s.state {
        RcptState::Delivered => DeliveryOutcome::Delivered,
        RcptState::Deferred => DeliveryOutcome::Deferred,
        RcptState::Failed => DeliveryOutcome::Failed,
        RcptState::Uncertain => DeliveryOutcome::Uncertain,
        _ => return,
    };
    let code = s.remote.as_ref().and(s.reply.as_ref()).map(|r| r.code);
    m.outcome(outcome, code);
    if s.state == RcptState::Delivered && !s.already {
        m.delivered_after((now - message.arrival).to_std().unwrap_or_default());
    }
}

/// What an attempt tells the pace.
pub(super) fn signal_of(result: &Attempt) -> Option<Signal> {
    match result {
        Attempt::Unreadable(_) => None,
        Attempt::Store {
            result: Err(StoreError::Unavailable(_)),
            ..
        } => Some(Signal::PushBack(PushBack::ConnectionFailed)),
        Attempt::Store {
            result: Err(StoreError::Full(_)),
            ..
        } => None,
        Attempt::Store {
            result: Ok(outcomes),
            latency,
            ..
        } => {
            let pushback = outcomes.iter().find_map(|o| match o {
                Outcome::Deferred { reply, .. } => reply.reply().and_then(pace::pushback_of),
                _ => None,
            });
            let timeout = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Uncertain { .. }));
            Some(match (pushback, timeout) {
                (Some(why), _) => Signal::PushBack(why),
                (None, true) => Signal::PushBack(PushBack::Timeout),
                (None, false) => Signal::Healthy { latency: *latency },
            })
        }
    }
}
