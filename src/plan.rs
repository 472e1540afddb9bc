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

use chrono::{DateTime, FixedOffset, SecondsFormat, Timelike};

use crate::bounce_policy::Verdict;
use crate::classify::{self, Disposition};
use crate::incident::Incident;
use crate::ledger::{DeliveryOrder, MessageRow, RcptState, RecipientRow};
use crate::pace::PaceConfig;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
}

/// What the `[bounces]` policy does with the failure DSNs of some messages: how many would
/// go out, how many are suppressed (sender not authenticated by our MX; spam).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PolicyCounts {
    pub dsns: u64,
    pub unauthenticated: u64,
    pub spam: u64,
}

impl PolicyCounts {
    fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Bounce { .. } => self.dsns += 1,
            Verdict::Unauthenticated { .. } => self.unauthenticated += 1,
            Verdict::Spam { .. } => self.spam += 1,
        }
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
    /// DSNs `run` would make (one per message with bounced/expired recipients the
    /// `[bounces]` policy lets through).
    pub dsns: u64,
    /// The `[bounces]` policy's verdicts on the failure DSNs owed, per window index.
    pub policy_by_window: BTreeMap<usize, PolicyCounts>,
    /// The same per envelope sender domain (lowercased).
    pub policy_by_sender_domain: HashMap<String, PolicyCounts>,
    pub dsn_senders: HashSet<String>,
    /// Messages `run` would hand to the store.
    pub deliveries: u64,
    /// Per window index (or [`OUTSIDE_INDEX`]): the oldest and newest arrival of the
    /// messages `run` would deliver, which is where the window falls in `--order
    /// arrival|newest`.
    pub delivery_spans: BTreeMap<usize, Span>,
    /// `--order fair`: the messages of the first round (every mailbox's first message),
    /// as the ledger counts them (`Ledger::fair_first_round`); set by the caller.
    pub first_round: Option<u64>,
    /// All messages outside every window, settled or not.
    pub outside: Anomaly,
    /// Per window index with `expect_mail = false`: all messages that arrived in it.
    pub unexpected: BTreeMap<usize, Anomaly>,
}

pub const OUTSIDE_INDEX: usize = usize::MAX;

impl Plan {
    /// Adds one message with all its recipients, every DSN counted as sent (no look at
    /// the `[bounces]` policy: what the mass-bounce guard needs).
    pub fn add(
        &mut self,
        incident: &Incident,
        now: DateTime<FixedOffset>,
        m: &MessageRow,
        recipients: &[RecipientRow],
    ) {
        self.add_judged(incident, now, m, recipients, |_| Verdict::Bounce {
            rule: String::new(),
        });
    }

    /// Adds one message; `judge` gives the `[bounces]` policy's verdict on its failure DSN
    /// (called only when one is owed), as `run` will decide it.
    pub fn add_judged(
        &mut self,
        incident: &Incident,
        now: DateTime<FixedOffset>,
        m: &MessageRow,
        recipients: &[RecipientRow],
        judge: impl FnOnce(&MessageRow) -> Verdict,
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
        // Per recipient, as `run` will settle it: a recipient whose NOTIFY asks for no
        // failure DSN is dropped, not bounced (RFC 3461 5.2.6).
        let effective = |r: &RecipientRow| match c.disposition {
            Disposition::Expire | Disposition::Bounce
                if !crate::dsn::failure_dsn_owed(r.notify) =>
            {
                Disposition::Drop
            }
            d => d,
        };
        let mut split: Vec<(Disposition, u64)> = Vec::with_capacity(2);
        for r in &open {
            let d = effective(r);
            match split.iter_mut().find(|(x, _)| *x == d) {
                Some((_, n)) => *n += 1,
                None => split.push((d, 1)),
            }
        }
        // The message (and its bytes) is counted once, under its own disposition unless
        // none of its recipients keeps it, so every column adds up to the open totals.
        let home = if split.iter().any(|(d, _)| *d == c.disposition) {
            c.disposition
        } else {
            split[0].0
        };
        for (d, n) in &split {
            let row = self.by_window.entry((window, *d)).or_default();
            row.recipients += n;
            if *d == home {
                row.messages += 1;
                row.bytes += m.size;
            }
        }
        match home {
            Disposition::Deliver => {
                self.deliveries += 1;
                let span = self
                    .delivery_spans
                    .entry(window)
                    .or_insert((m.arrival, m.arrival));
                span.0 = span.0.min(m.arrival);
                span.1 = span.1.max(m.arrival);
            }
            Disposition::Expire | Disposition::Bounce => {
                let verdict = judge(m);
                let sender = m.sender.as_str().to_ascii_lowercase();
                let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
                self.policy_by_window
                    .entry(window)
                    .or_default()
                    .add(&verdict);
                self.policy_by_sender_domain
                    .entry(domain.to_string())
                    .or_default()
                    .add(&verdict);
                if verdict.bounces() {
                    self.dsns += 1;
                    self.dsn_senders.insert(sender);
                }
            }
            Disposition::Hold | Disposition::Drop => {}
        }
        let age = age_bucket(m.arrival, now);
        for r in open {
            let d = self.by_domain.entry(r.domain.clone()).or_default();
            d.recipients += 1;
            d.ages[age] += 1;
            match effective(r) {
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

    /// Sender domains by DSNs they would receive, most first (then by suppressed ones,
    /// then name), at most `n`.
    pub fn top_sender_domains(&self, n: usize) -> Vec<(&str, PolicyCounts)> {
        let mut v: Vec<(&str, PolicyCounts)> = self
            .policy_by_sender_domain
            .iter()
            .map(|(d, c)| (d.as_str(), *c))
            .collect();
        v.sort_by(|a, b| {
            (b.1.dsns, b.1.unauthenticated + b.1.spam)
                .cmp(&(a.1.dsns, a.1.unauthenticated + a.1.spam))
                .then(a.0.cmp(b.0))
        });
        v.truncate(n);
        v
    }

    /// The policy's totals over all windows.
    pub fn policy_totals(&self) -> PolicyCounts {
        let mut t = PolicyCounts::default();
        for c in self.policy_by_window.values() {
            t.dsns += c.dsns;
            t.unauthenticated += c.unauthenticated;
            t.spam += c.spam;
        }
        t
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

/// The default of `--max-bounce-share`: a run that would bounce or expire more than half of
/// the open messages stops before it makes a DSN (they cannot be taken back).
pub const DEFAULT_MAX_BOUNCE_SHARE: u8 = 50;

/// A run that would bounce or expire more than `--max-bounce-share` percent of the open
/// messages: almost always a wrong clock (`--now` left out on old mail, a recovery started
/// later than the incident file assumed), not a decision. Shared by `run` (which refuses)
/// and `report` (which warns), so both say the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassBounce {
    /// Messages with open recipients.
    pub open: u64,
    /// Of those, messages that would expire (queue lifetime over).
    pub expire: u64,
    /// Messages that would be bounced by a window's policy.
    pub bounce: u64,
    /// Expired or bounced mail of the null sender: settled without a DSN, but still not
    /// delivered.
    pub drop: u64,
    /// The limit, in percent.
    pub max_share: u8,
    /// The deadline rule from the incident file, in words.
    pub rule: String,
    /// The time classified against, and whether `--now` fixed it.
    pub now: DateTime<FixedOffset>,
    pub fixed_clock: bool,
}

impl MassBounce {
    pub fn failing(&self) -> u64 {
        self.expire + self.bounce + self.drop
    }

    pub fn percent(&self) -> u64 {
        (self.failing() * 100).checked_div(self.open).unwrap_or(0)
    }
}

impl std::fmt::Display for MassBounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} open messages ({}%) would be bounced or expired, more than --max-bounce-share {}%: \
             {} expire ({}), {} bounced by a window's policy, {} dropped (null sender); \
             classified as of {} ({})",
            self.failing(),
            self.open,
            self.percent(),
            self.max_share,
            self.expire,
            self.rule,
            self.bounce,
            self.drop,
            self.now.to_rfc3339_opts(SecondsFormat::Secs, false),
            if self.fixed_clock {
                "--now"
            } else {
                "the clock of this machine: --now was not given"
            },
        )
    }
}

/// What to do about a [`MassBounce`].
pub const MASS_BOUNCE_HINT: &str = "check --now (mail from the past expires against today's clock), \
     queue_lifetime and restored_at in the incident file; if these bounces are meant, pass \
     --max-bounce-share 100";

/// The incident's deadline rule in words: how long, from when, and the cut-off it gives at
/// `now` for `lifetime_from = "arrival"`.
pub fn deadline_rule(incident: &Incident, now: DateTime<FixedOffset>) -> String {
    let lifetime =
        crate::throttle::format_duration(incident.queue_lifetime.to_std().unwrap_or_default());
    match incident.lifetime_from {
        crate::incident::LifetimeFrom::Arrival => format!(
            "queue_lifetime {lifetime} from arrival: mail that arrived before {} has expired",
            (now - incident.queue_lifetime)
                .with_timezone(incident.restored_at.offset())
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        ),
        crate::incident::LifetimeFrom::Restored => format!(
            "queue_lifetime {lifetime} from restored_at {}: every message expired at {}",
            incident
                .restored_at
                .to_rfc3339_opts(SecondsFormat::Secs, false),
            (incident.restored_at + incident.queue_lifetime)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        ),
    }
}

/// The guard: `Some` when the plan would bounce or expire more than `max_share` percent of
/// the open messages. Pure: the plan was built at `now`.
pub fn mass_bounce(
    plan: &Plan,
    incident: &Incident,
    now: DateTime<FixedOffset>,
    fixed_clock: bool,
    max_share: u8,
) -> Option<MassBounce> {
    let messages = |d: Disposition| -> u64 {
        plan.by_window
            .iter()
            .filter(|((_, x), _)| *x == d)
            .map(|(_, c)| c.messages)
            .sum()
    };
    let open: u64 = plan.by_window.values().map(|c| c.messages).sum();
    let m = MassBounce {
        open,
        expire: messages(Disposition::Expire),
        bounce: messages(Disposition::Bounce),
        drop: messages(Disposition::Drop),
        max_share,
        rule: deadline_rule(incident, now),
        now,
        fixed_clock,
    };
    // Integer arithmetic: failing / open > max_share / 100.
    (m.failing() * 100 > open * u64::from(max_share)).then_some(m)
}

/// The oldest and newest arrival of some messages.
type Span = (DateTime<FixedOffset>, DateTime<FixedOffset>);

/// What one point of the delivery order means for the operator: when a window's mail
/// (or every mailbox's first message, for `fair`) will have been handed over.
#[derive(Debug, Clone, PartialEq)]
pub struct Milestone {
    pub kind: MilestoneKind,
    /// Messages handed over before it begins, and when it is complete.
    pub from_messages: u64,
    pub messages: u64,
    /// The same as durations at the pace (`None` when unthrottled).
    pub starts_after: Option<Duration>,
    pub done_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilestoneKind {
    /// All of a window's deliveries (`None`: mail outside every window).
    Window(Option<String>),
    /// `fair`: every mailbox with mail has had its first message (at most).
    FirstPerMailbox,
}

impl MilestoneKind {
    /// The kind as JSON and CSV name it.
    pub fn key(&self) -> &'static str {
        match self {
            MilestoneKind::Window(_) => "window",
            MilestoneKind::FirstPerMailbox => "first_per_mailbox",
        }
    }
}

/// What `--order` means for the plan's deliveries, in the order they are reached:
/// `arrival` and `newest` take the windows one after another (oldest or newest first, as
/// their mail arrived); `fair` interleaves them, so what it promises is every mailbox's
/// first message within the first round. Times at `pace`, pauses between batches counted.
pub fn order_milestones(
    plan: &Plan,
    incident: &Incident,
    order: DeliveryOrder,
    pace: &PaceConfig,
) -> Vec<Milestone> {
    let at = |n: u64| projected_duration(n, pace);
    let milestone = |kind, from: u64, messages: u64| Milestone {
        kind,
        from_messages: from,
        messages,
        starts_after: at(from),
        done_after: at(messages),
    };
    let mut windows: Vec<(usize, u64, Span)> = plan
        .delivery_spans
        .iter()
        .map(|(w, span)| {
            let n = plan
                .by_window
                .get(&(*w, Disposition::Deliver))
                .map_or(0, |c| c.messages);
            (*w, n, *span)
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    match order {
        DeliveryOrder::Arrival => windows.sort_by_key(|(w, _, (oldest, _))| (*oldest, *w)),
        DeliveryOrder::Newest => {
            windows.sort_by_key(|(w, _, (_, newest))| (std::cmp::Reverse(*newest), *w))
        }
        DeliveryOrder::Fair => {
            let first = plan.first_round.unwrap_or(plan.deliveries);
            return match plan.deliveries {
                0 => Vec::new(),
                n => vec![milestone(MilestoneKind::FirstPerMailbox, 0, first.min(n))],
            };
        }
    }
    let mut before = 0;
    windows
        .into_iter()
        .map(|(w, n, _)| {
            let name = incident.windows.get(w).map(|win| win.name.clone());
            let m = milestone(MilestoneKind::Window(name), before, before + n);
            before += n;
            m
        })
        .collect()
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

    fn plan_of(rows: &[(Disposition, u64)]) -> Plan {
        let mut plan = Plan::default();
        for (i, (d, messages)) in rows.iter().enumerate() {
            let counts = Counts {
                messages: *messages,
                recipients: *messages,
                bytes: 0,
            };
            plan.by_window.insert((i, *d), counts);
        }
        plan
    }

    #[test]
    fn mass_bounce_guard_counts_messages_against_the_open_ones() {
        let inc = crate::incident::parse(
            r#"
name = "t"
reporting_mta = "mx.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "5d"
"#,
        )
        .unwrap();
        let now = t("2023-02-10T00:00:00+01:00");
        let guard = |rows: &[(Disposition, u64)], max: u8| {
            mass_bounce(&plan_of(rows), &inc, now, false, max)
        };
        // Exactly the limit is allowed; one more is not.
        let half = [(Disposition::Deliver, 5), (Disposition::Expire, 5)];
        assert_eq!(guard(&half, 50), None);
        let more = [
            (Disposition::Deliver, 4),
            (Disposition::Expire, 3),
            (Disposition::Bounce, 2),
            (Disposition::Drop, 1),
            (Disposition::Hold, 0),
        ];
        let m = guard(&more, 50).expect("6 of 10 is more than 50%");
        assert_eq!((m.open, m.expire, m.bounce, m.drop), (10, 3, 2, 1));
        assert_eq!(m.percent(), 60);
        let line = m.to_string();
        assert!(line.contains("6 of 10 open messages (60%)"), "{line}");
        assert!(
            line.contains("queue_lifetime 5d from arrival")
                && line.contains("arrived before 2023-02-05T00:00:00+01:00"),
            "{line}"
        );
        assert!(line.contains("--now was not given"), "{line}");
        // Held mail is open too: it counts in the denominator.
        assert_eq!(
            guard(&[(Disposition::Hold, 9), (Disposition::Expire, 1)], 50),
            None
        );
        // 100 never refuses; 0 refuses any bounce, and nothing when nothing fails.
        assert_eq!(guard(&[(Disposition::Expire, 10)], 100), None);
        assert!(guard(&[(Disposition::Deliver, 99), (Disposition::Bounce, 1)], 0).is_some());
        assert_eq!(guard(&[(Disposition::Deliver, 3)], 0), None);
        assert_eq!(guard(&[], 0), None);
    }

    #[test]
    fn order_milestones_follow_the_windows_in_the_order_chosen() {
        let incident = crate::incident::parse(
            r#"name = "x"
reporting_mta = "mx.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "30d"
lifetime_from = "arrival"
outside = "deliver"
[[window]]
name = "early"
start = "2023-01-20T00:00:00+01:00"
end = "2023-01-22T00:00:00+01:00"
action = "deliver"
[[window]]
name = "late"
start = "2023-01-22T00:00:00+01:00"
end = "2023-01-26T13:00:00+01:00"
action = "deliver"
"#,
        )
        .expect("incident");
        // 30 early, 10 late, 5 outside (after the windows).
        let mut plan = plan_of(&[(Disposition::Deliver, 30), (Disposition::Deliver, 10)]);
        plan.by_window.insert(
            (OUTSIDE_INDEX, Disposition::Deliver),
            Counts {
                messages: 5,
                ..Counts::default()
            },
        );
        plan.deliveries = 45;
        let span = |a: &str, b: &str| (t(a), t(b));
        plan.delivery_spans
            .insert(0, span("2023-01-20T01:00:00Z", "2023-01-21T01:00:00Z"));
        plan.delivery_spans
            .insert(1, span("2023-01-23T01:00:00Z", "2023-01-24T01:00:00Z"));
        plan.delivery_spans.insert(
            OUTSIDE_INDEX,
            span("2023-01-27T01:00:00Z", "2023-01-27T02:00:00Z"),
        );
        let pace = PaceConfig {
            rate: Some("10/s".parse().expect("rate")),
            max_bytes_rate: None,
            batch_size: 1000,
            pause: Duration::ZERO,
        };
        let got = |plan: &Plan, order| -> Vec<(Option<String>, u64, u64, Option<Duration>)> {
            order_milestones(plan, &incident, order, &pace)
                .into_iter()
                .map(|m| match m.kind {
                    MilestoneKind::Window(w) => (w, m.from_messages, m.messages, m.done_after),
                    MilestoneKind::FirstPerMailbox => (None, 0, m.messages, m.done_after),
                })
                .collect()
        };
        let ms = |n: u64| Some(Duration::from_millis(n));
        let name = |n: &str| Some(n.to_string());
        assert_eq!(
            got(&plan, DeliveryOrder::Arrival),
            vec![
                (name("early"), 0, 30, ms(3000)),
                (name("late"), 30, 40, ms(4000)),
                (None, 40, 45, ms(4500)),
            ]
        );
        assert_eq!(
            got(&plan, DeliveryOrder::Newest),
            vec![
                (None, 0, 5, ms(500)),
                (name("late"), 5, 15, ms(1500)),
                (name("early"), 15, 45, ms(4500)),
            ]
        );
        // Fair: the first round as the ledger counted it, never more than the deliveries.
        plan.first_round = Some(7);
        assert_eq!(got(&plan, DeliveryOrder::Fair), vec![(None, 0, 7, ms(700))]);
        plan.first_round = Some(99);
        assert_eq!(got(&plan, DeliveryOrder::Fair)[0].2, 45);
        // Unthrottled: the order still, no times.
        let free = PaceConfig { rate: None, ..pace };
        let m = order_milestones(&plan, &incident, DeliveryOrder::Arrival, &free);
        assert_eq!(m.len(), 3);
        assert!(m.iter().all(|m| m.done_after.is_none()));
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
