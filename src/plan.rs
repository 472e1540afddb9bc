//! The dry-run plan behind `spoolreplay report`: what `run` would do with every open
//! recipient, aggregated per window and disposition, per domain and per hour. Built from a
//! stream of ledger rows; memory grows with the number of windows, domains and hours, never
//! with the number of messages.
//!
//! Besides the plan proper it keeps a qshape-style age histogram per recipient domain and
//! the anomalies an operator must look at: mail outside every window, and mail in a window
//! where nothing should have been accepted (`expect_mail = false`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Timelike};

use crate::classify::{self, Disposition};
use crate::config::PaceConfig;
use crate::incident::Incident;
use crate::ledger::{MessageRow, RcptState, RecipientRow};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, recipients: u64, bytes: u64) {
        self.messages += 1;
        self.recipients += recipients;
        self.bytes += bytes;
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DomainCounts {
    pub recipients: u64,
    pub deliver: u64,
    pub bounce: u64,
    pub hold: u64,
    pub drop: u64,
    /// Open recipients per age bucket (see `AGE_BUCKETS`).
    pub ages: [u64; AGE_BUCKETS.len() + 1],
}

/// Upper bounds (minutes, exclusive) of the age buckets, doubling as in Postfix's `qshape`;
/// one more bucket holds everything older than the last bound.
pub const AGE_BUCKETS: [i64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// The column labels of the age buckets: `5m` holds ages under 5 minutes, `10m` ages from
/// 5 to under 10 minutes, …, `1280m+` everything older.
pub fn age_labels() -> Vec<String> {
    AGE_BUCKETS
        .iter()
        .map(|m| format!("{m}m"))
        .chain(std::iter::once(format!(
            "{}m+",
            AGE_BUCKETS[AGE_BUCKETS.len() - 1]
        )))
        .collect()
}

/// The bucket of a message that arrived at `arrival`, seen at `now` (mail from the future
/// counts as new).
pub fn age_bucket(arrival: DateTime<FixedOffset>, now: DateTime<FixedOffset>) -> usize {
    let minutes = (now - arrival).num_minutes();
    AGE_BUCKETS
        .iter()
        .position(|bound| minutes < *bound)
        .unwrap_or(AGE_BUCKETS.len())
}

/// Messages of one anomaly kind, with the first few queue ids as examples.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub messages: u64,
    pub examples: Vec<String>,
}

/// How many example queue ids an anomaly keeps.
pub const EXAMPLES: usize = 5;

impl Anomaly {
    fn add(&mut self, queue_id: &str) {
        self.messages += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(queue_id.to_string());
        }
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Key: (window index, or `usize::MAX` for outside; disposition).
    pub by_window: BTreeMap<(usize, Disposition), Counts>,
    pub by_domain: HashMap<String, DomainCounts>,
    /// Key: (hour start, window index or `usize::MAX`): all messages, settled or not.
    pub arrivals: BTreeMap<(DateTime<FixedOffset>, usize), u64>,
    pub oldest: Option<DateTime<FixedOffset>>,
    pub newest: Option<DateTime<FixedOffset>>,
    pub messages: u64,
    /// Recipients per state right now, whatever the plan.
    pub states: BTreeMap<RcptState, u64>,
    /// DSNs `run` would make (one per message with bounced/expired recipients).
    pub dsns: u64,
    pub dsn_senders: HashSet<String>,
    /// Messages `run` would hand to the store.
    pub deliveries: u64,
    /// All messages outside every window, settled or not.
    pub outside: Anomaly,
    /// Per window index with `expect_mail = false`: all messages that arrived in it.
    pub unexpected: BTreeMap<usize, Anomaly>,
}

pub const OUTSIDE_INDEX: usize = usize::MAX;

impl Plan {
    /// Adds one message with all its recipients.
    pub fn add(
        &mut self,
        incident: &Incident,
        now: DateTime<FixedOffset>,
        m: &MessageRow,
        recipients: &[RecipientRow],
    ) {
        let window = classify::window_of(incident, m.arrival).unwrap_or(OUTSIDE_INDEX);
        self.messages += 1;
        let hour = hour_start(m.arrival.with_timezone(incident.restored_at.offset()));
        *self.arrivals.entry((hour, window)).or_default() += 1;
        if window == OUTSIDE_INDEX {
            self.outside.add(&m.queue_id);
        } else if !incident.windows[window].expect_mail {
            self.unexpected.entry(window).or_default().add(&m.queue_id);
        }
        self.oldest = Some(self.oldest.map_or(m.arrival, |o| o.min(m.arrival)));
        self.newest = Some(self.newest.map_or(m.arrival, |n| n.max(m.arrival)));
        for r in recipients {
            *self.states.entry(r.state).or_default() += 1;
        }
        let open: Vec<&RecipientRow> = recipients
            .iter()
            .filter(|r| r.state.is_undecided() || r.state == RcptState::InFlight)
            .collect();
        if open.is_empty() {
            return;
        }
        let facts = classify::Facts {
            arrival: m.arrival,
            sender: &m.sender,
            mta_hold: m.mta_hold,
        };
        let c = classify::classify(incident, facts, now);
        self.by_window
            .entry((window, c.disposition))
            .or_default()
            .add(open.len() as u64, m.size);
        match c.disposition {
            Disposition::Deliver => self.deliveries += 1,
            Disposition::Expire | Disposition::Bounce => {
                self.dsns += 1;
                self.dsn_senders
                    .insert(m.sender.as_str().to_ascii_lowercase());
            }
            Disposition::Hold | Disposition::Drop => {}
        }
        let age = age_bucket(m.arrival, now);
        for r in open {
            let d = self.by_domain.entry(r.domain.clone()).or_default();
            d.recipients += 1;
            d.ages[age] += 1;
            match c.disposition {
                Disposition::Deliver => d.deliver += 1,
                Disposition::Expire | Disposition::Bounce => d.bounce += 1,
                Disposition::Hold => d.hold += 1,
                Disposition::Drop => d.drop += 1,
            }
        }
    }

    /// Domains by open recipients, most first (ties by name), at most `n`.
    pub fn top_domains(&self, n: usize) -> Vec<(&str, DomainCounts)> {
        let mut v: Vec<(&str, DomainCounts)> = self
            .by_domain
            .iter()
            .map(|(d, c)| (d.as_str(), *c))
            .collect();
        v.sort_by(|a, b| b.1.recipients.cmp(&a.1.recipients).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// The age histogram of all open recipients (qshape's TOTAL row).
    pub fn total_ages(&self) -> [u64; AGE_BUCKETS.len() + 1] {
        let mut total = [0; AGE_BUCKETS.len() + 1];
        for d in self.by_domain.values() {
            for (t, n) in total.iter_mut().zip(d.ages) {
                *t += n;
            }
        }
        total
    }

    /// How long `run` would take to hand over the deliveries at `pace` (the store's own
    /// speed not counted: the throttle is the ceiling). `None` when unthrottled.
    pub fn projected(&self, pace: &PaceConfig) -> Option<Duration> {
        projected_duration(self.deliveries, pace)
    }
}

/// Time to send `messages` at `pace`: the rate's spacing plus the pauses between batches.
pub fn projected_duration(messages: u64, pace: &PaceConfig) -> Option<Duration> {
    let rate = pace.rate?;
    let sending = Duration::from_secs_f64(messages as f64 / rate.per_second());
    let batches = messages.div_ceil(pace.batch_size as u64);
    let pauses = pace.pause * batches.saturating_sub(1).min(u32::MAX as u64) as u32;
    Some(sending + pauses)
}

fn hour_start(t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    t.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn age_buckets_double_like_qshape() {
        let now = t("2023-01-28T06:00:00+01:00");
        let ago = |minutes: i64| now - chrono::TimeDelta::minutes(minutes);
        assert_eq!(age_bucket(ago(0), now), 0);
        assert_eq!(age_bucket(ago(4), now), 0);
        assert_eq!(age_bucket(ago(5), now), 1);
        assert_eq!(age_bucket(ago(639), now), 7);
        assert_eq!(age_bucket(ago(640), now), 8);
        assert_eq!(age_bucket(ago(1279), now), 8);
        assert_eq!(age_bucket(ago(1280), now), 9);
        assert_eq!(age_bucket(ago(100_000), now), 9);
        // Mail stamped in the future (a skewed clock) is new, not an error.
        assert_eq!(age_bucket(ago(-30), now), 0);
        assert_eq!(age_labels().len(), AGE_BUCKETS.len() + 1);
        assert_eq!(age_labels()[9], "1280m+");
    }
}
