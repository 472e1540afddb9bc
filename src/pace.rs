//! Adaptive pace: how fast `run` hands messages to the store. Pure: the clock is passed in.
//!
//! The operator sets a ceiling (`--rate`, `--max-bytes-rate`); the pace never exceeds it.
//! When the store pushes back (421/451/452, a failed or timed-out connection, or reply
//! latency climbing well above what it was), the pace is cut in half; while the store stays
//! healthy it climbs back a step at a time (AIMD, as TCP does, so a store that has just come
//! back from a week down is not knocked over by the backlog).

use std::time::Duration;

use crate::deliver::reply::Reply;
use crate::throttle::RateSpec;

/// Throttle settings shared by `run` and the projections of `report`.
#[derive(Debug, Clone, Copy)]
pub struct PaceConfig {
    pub rate: Option<RateSpec>,
    /// Bytes per second.
    pub max_bytes_rate: Option<f64>,
    pub batch_size: usize,
    pub pause: Duration,
}

/// What the store just did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// A message was handed over normally, after `latency`.
    Healthy { latency: Duration },
    /// The store asked us to slow down or failed; the reason is shown to the operator.
    PushBack(PushBack),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushBack {
    /// 421, 451 or 452 (or another transient reply that speaks of load).
    TransientReply(u16),
    ConnectionFailed,
    Timeout,
}

/// A change of pace, for the progress line and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceChange {
    /// Messages per second now (`None`: no limit).
    pub rate: Option<f64>,
    pub reason: String,
}

/// Healthy messages in a row before the pace climbs one step.
const HEALTHY_STEP: u32 = 20;
/// Never slower than this many messages per second: the run must still make progress.
const FLOOR: f64 = 0.2;
/// Latency above this many times the baseline counts as slow.
const LATENCY_FACTOR: f64 = 4.0;
/// Latencies under this are never "slow" (disk and loopback jitter).
const LATENCY_NOISE: Duration = Duration::from_millis(250);
/// Replies needed before the baseline is trusted.
const BASELINE_SAMPLES: u32 = 20;
/// Slow replies in a row that count as push-back: one big message is not a trend.
const SLOW_IN_A_ROW: u32 = 5;

#[derive(Debug, Clone)]
pub struct Pace {
    /// The operator's ceiling in messages per second (`None`: unlimited).
    ceiling: Option<f64>,
    /// The operator's ceiling in bytes per second.
    bytes_ceiling: Option<f64>,
    /// The current message rate (`None`: unlimited and never pushed back).
    current: Option<f64>,
    healthy_streak: u32,
    /// Slow-moving average of reply latency while healthy, in seconds.
    baseline: Option<f64>,
    baseline_samples: u32,
    slow_streak: u32,
    /// Earliest time the next message may go (token bucket of depth one).
    next_at: Duration,
    /// Earliest time the next byte may go.
    bytes_next_at: Duration,
    /// Messages handed over, and when the first was, to estimate the achieved rate.
    sent: u64,
    first_at: Option<Duration>,
}

impl Pace {
    pub fn new(ceiling: Option<f64>, bytes_ceiling: Option<f64>) -> Pace {
        Pace {
            ceiling,
            bytes_ceiling,
            current: ceiling,
            healthy_streak: 0,
            baseline: None,
            baseline_samples: 0,
            slow_streak: 0,
            next_at: Duration::ZERO,
            bytes_next_at: Duration::ZERO,
            sent: 0,
            first_at: None,
        }
    }

    /// Messages per second now (`None`: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.current
    }

    /// How long to wait at `now` before sending a message of `bytes`; books its slot.
    pub fn wait(&mut self, now: Duration, bytes: u64) -> Duration {
        let start = now.max(self.next_at).max(self.bytes_next_at);
        if let Some(rate) = self.current {
            self.next_at = start + Duration::from_secs_f64(1.0 / rate);
        }
        if let Some(bps) = self.bytes_ceiling {
            self.bytes_next_at = start + Duration::from_secs_f64(bytes as f64 / bps);
        }
        self.sent += 1;
        self.first_at.get_or_insert(start);
        start - now
    }

    /// Feeds one observation; returns the change of pace it caused, if any.
    pub fn observe(&mut self, now: Duration, signal: Signal) -> Option<PaceChange> {
        match signal {
            Signal::Healthy { latency } => self.healthy(latency),
            Signal::PushBack(why) => Some(self.slow_down(now, describe(why))),
        }
    }

    fn healthy(&mut self, latency: Duration) -> Option<PaceChange> {
        let secs = latency.as_secs_f64();
        if let Some(base) = self.baseline
            && self.baseline_samples >= BASELINE_SAMPLES
            && latency > LATENCY_NOISE
            && secs > base * LATENCY_FACTOR
        {
            // Slow replies are left out of the baseline, so it stays what healthy was.
            self.slow_streak += 1;
            if self.slow_streak < SLOW_IN_A_ROW {
                return None;
            }
            // The store answers, but ever more slowly: that is push-back too. Start the
            // baseline afresh so one slow phase does not keep halving the pace.
            self.slow_streak = 0;
            self.baseline = None;
            self.baseline_samples = 0;
            let now = self.next_at;
            return Some(self.slow_down(
                now,
                format!(
                    "replies slowed to {:.0} ms (from {:.0} ms)",
                    secs * 1e3,
                    base * 1e3
                ),
            ));
        }
        self.slow_streak = 0;
        self.baseline_samples += 1;
        self.baseline = Some(match self.baseline {
            None => secs,
            Some(base) => base * 0.9 + secs * 0.1,
        });
        self.healthy_streak += 1;
        if self.healthy_streak < HEALTHY_STEP {
            return None;
        }
        self.healthy_streak = 0;
        let current = self.current?;
        let next = match self.ceiling {
            Some(ceiling) if current >= ceiling => return None,
            Some(ceiling) => (current + (ceiling / 10.0).max(1.0)).min(ceiling),
            // No ceiling: grow by a quarter; past 10 000/s there is no point in pacing.
            None if current * 1.25 > 10_000.0 => {
                self.current = None;
                return Some(PaceChange {
                    rate: None,
                    reason: "store healthy: pace no longer limited".into(),
                });
            }
            None => current * 1.25,
        };
        self.current = Some(next);
        Some(PaceChange {
            rate: Some(next),
            reason: "store healthy: pace recovering".into(),
        })
    }

    /// Takes a pace set elsewhere (a cluster's shared back-off or recovery), never above
    /// the ceiling; AIMD carries on from there.
    pub fn follow(&mut self, rate: Option<f64>) {
        self.healthy_streak = 0;
        self.current = match (rate, self.ceiling) {
            (Some(r), Some(c)) => Some(r.clamp(FLOOR, c)),
            (Some(r), None) => Some(r.max(FLOOR)),
            (None, c) => c,
        };
    }

    fn slow_down(&mut self, now: Duration, reason: String) -> PaceChange {
        self.healthy_streak = 0;
        let base = self.current.unwrap_or_else(|| self.achieved(now));
        let next = (base / 2.0).max(FLOOR);
        self.current = Some(next);
        PaceChange {
            rate: Some(next),
            reason,
        }
    }

    /// The rate achieved so far, for a first cut when there was no limit.
    fn achieved(&self, now: Duration) -> f64 {
        match self.first_at {
            Some(first) if now > first && self.sent > 1 => {
                self.sent as f64 / (now - first).as_secs_f64()
            }
            _ => 10.0,
        }
    }
}

/// Whether a store's transient reply is it pushing back as a whole (421, 451, 452 for
/// system storage) rather than speaking of one mailbox: a full mailbox (x.2.x, RFC 3463)
/// must not slow the run for everyone else.
pub fn pushback_of(reply: &Reply) -> Option<PushBack> {
    let mailbox_condition = matches!(reply.enhanced, Some((_, 2, _)));
    match reply.code {
        421 | 451 => Some(PushBack::TransientReply(reply.code)),
        452 if !mailbox_condition => Some(PushBack::TransientReply(reply.code)),
        _ => None,
    }
}

/// What a [`TokenSource`] answers when asked for one message's turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Grant {
    /// The turn is booked: send after this wait.
    Go(Duration),
    /// Nothing was booked (the cluster is paused, or its coordinator is being waited
    /// for): ask again after this wait; `why` is shown to the operator.
    Hold { wait: Duration, why: String },
}

/// Where the pace gets its turns beyond its own spacing: a run alone needs nobody's
/// permission ([`Alone`]); a member of a cluster takes its turns from the cluster-wide
/// budget (`crate::cluster`). The local [`Pace`] still spaces messages and adapts to the
/// store; the source only adds waits, so a cluster can only make a run slower.
pub trait TokenSource {
    /// One message of `bytes` wants to go: how long to wait first.
    fn take(&mut self, bytes: u64) -> Grant;
    /// True when every `take` is granted at once, so the replay may gather several
    /// messages into one in-flight commit without holding one back for another's turn.
    fn grants_at_once(&self) -> bool {
        false
    }
    /// The local pace changed (a back-off or a step up): tell the others.
    fn publish(&mut self, _change: &PaceChange) {}
    /// A change of pace made elsewhere that this run must follow, if any.
    fn follow(&mut self) -> Option<PaceChange> {
        None
    }
    /// Things the operator should hear about (the coordinator lost or back).
    fn news(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// The run hands nothing more to the store: give back turns booked and not used.
    fn finish(&mut self) {}
    /// Progress for others to see: messages handed over, recipients per outcome
    /// (`delivered`, `deferred`, …), the pace text.
    fn progress(&mut self, _handled: u64, _counts: &[(&str, u64)], _pace: &str) {}
    /// Whether [`TokenSource::progress`] would be published now (a heartbeat is due), so
    /// the caller computes what costs a ledger query (the ETA) only then.
    fn progress_due(&self) -> bool {
        false
    }
    /// More for others to see with the next progress: the time left, the store's last
    /// refusal (a 4xx/5xx reply and when, RFC 3339), whether the run is paused and why.
    fn outlook(&mut self, _outlook: Outlook<'_>) {}
    /// Claims each of `recipients` (canonical) of the content `key` before it is handed
    /// to the store, so two ledgers of one cluster never both deliver one copy.
    fn claim(&mut self, _key: &str, recipients: &[String]) -> Vec<Claim> {
        vec![Claim::Mine; recipients.len()]
    }
    /// The store took the copy claimed for `recipient`: others will see it delivered.
    fn confirm(&mut self, _key: &str, _recipient: &str) {}
}

/// What a run expects and last met, for the others to see (`cluster status`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outlook<'a> {
    pub eta: Option<Duration>,
    /// The store's last refusal (reply text) and when.
    pub refusal: Option<(&'a str, &'a str)>,
    /// Paused, and by what (`control pause`, `cluster pause`).
    pub paused: Option<&'a str>,
}

/// Whether another ledger of the cluster already has a copy (same content, same
/// canonical recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This run may deliver it (claimed, or nobody to ask: a run alone).
    Mine,
    /// Another ledger delivered it (`delivered`) or is delivering it now.
    Theirs { ledger: String, delivered: bool },
    /// The coordinator cannot be asked: not checked across ledgers.
    Unchecked,
    /// The coordinator cannot be asked and checking is required: ask again later.
    Wait,
}

/// A run on its own: every turn is granted at once.
#[derive(Debug, Default)]
pub struct Alone;

impl TokenSource for Alone {
    fn take(&mut self, _bytes: u64) -> Grant {
        Grant::Go(Duration::ZERO)
    }

    fn grants_at_once(&self) -> bool {
        true
    }
}

fn describe(why: PushBack) -> String {
    match why {
        PushBack::TransientReply(code) => format!("store answered {code}"),
        PushBack::ConnectionFailed => "connection to the store failed".into(),
        PushBack::Timeout => "the store timed out".into(),
    }
}

/// A pace for display: `12.5/s` or `unlimited`.
pub fn format_rate(rate: Option<f64>) -> String {
    match rate {
        None => "unlimited".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[track_caller]
    fn check_pushback(reply: &str, expected: Option<u16>) {
        let (reply, _) = Reply::parse(reply.as_bytes())
            .expect("a well-formed reply")
            .expect("a complete reply");
        assert_eq!(
            pushback_of(&reply),
            expected.map(PushBack::TransientReply),
            "{reply}"
        );
    }

    #[test]
    fn a_full_mailbox_is_not_the_store_pushing_back() {
        check_pushback("421 4.4.2 closing\r\n", Some(421));
        check_pushback("451 4.3.0 try later\r\n", Some(451));
        check_pushback("452 4.3.1 insufficient system storage\r\n", Some(452));
        check_pushback("452 too many recipients\r\n", Some(452));
        check_pushback("452-4.2.2 <a@b>\r\n452 4.2.2 Quota exceeded\r\n", None);
        check_pushback("452 4.2.2 <a@b> Quota exceeded\r\n", None);
        check_pushback("450 4.2.1 mailbox busy\r\n", None);
        check_pushback("550 5.1.1 unknown\r\n", None);
    }

    fn healthy(pace: &mut Pace, n: u32) -> Vec<PaceChange> {
        (0..n)
            .filter_map(|_| pace.observe(Duration::ZERO, Signal::Healthy { latency: 5 * MS }))
            .collect()
    }

    #[test]
    fn spacing_follows_the_rate() {
        let mut pace = Pace::new(Some(100.0), None);
        assert_eq!(pace.wait(Duration::ZERO, 1), Duration::ZERO);
        assert_eq!(pace.wait(Duration::ZERO, 1), 10 * MS);
        // Time passing earns no burst beyond one message.
        assert_eq!(pace.wait(Duration::from_secs(5), 1), Duration::ZERO);
        assert_eq!(pace.wait(Duration::from_secs(5), 1), 10 * MS);
    }

    #[test]
    fn bytes_ceiling_spaces_large_messages() {
        let mut pace = Pace::new(None, Some(1_000_000.0));
        assert_eq!(pace.wait(Duration::ZERO, 500_000), Duration::ZERO);
        assert_eq!(pace.wait(Duration::ZERO, 10), 500 * MS);
    }

    #[test]
    fn push_back_halves_then_recovers_to_the_ceiling_never_above() {
        let mut pace = Pace::new(Some(100.0), None);
        let change = pace
            .observe(
                Duration::ZERO,
                Signal::PushBack(PushBack::TransientReply(452)),
            )
            .unwrap();
        assert_eq!(change.rate, Some(50.0));
        assert!(change.reason.contains("452"));
        pace.observe(Duration::ZERO, Signal::PushBack(PushBack::Timeout));
        assert_eq!(pace.rate(), Some(25.0));
        let changes = healthy(&mut pace, 20 * 20);
        let rates: Vec<f64> = changes.iter().filter_map(|c| c.rate).collect();
        assert_eq!(&rates[..3], &[35.0, 45.0, 55.0]);
        assert_eq!(pace.rate(), Some(100.0));
        assert!(rates.iter().all(|r| *r <= 100.0));
    }

    #[test]
    fn never_below_the_floor() {
        let mut pace = Pace::new(Some(1.0), None);
        for _ in 0..20 {
            pace.observe(Duration::ZERO, Signal::PushBack(PushBack::ConnectionFailed));
        }
        assert_eq!(pace.rate(), Some(FLOOR));
    }

    #[test]
    fn unlimited_pace_is_cut_from_the_achieved_rate() {
        let mut pace = Pace::new(None, None);
        for _ in 0..=100 {
            pace.wait(Duration::ZERO, 1);
        }
        let change = pace
            .observe(
                Duration::from_secs(1),
                Signal::PushBack(PushBack::TransientReply(421)),
            )
            .unwrap();
        assert_eq!(change.rate, Some(50.5));
    }

    fn slow(pace: &mut Pace, latency: Duration) -> Option<PaceChange> {
        pace.observe(Duration::ZERO, Signal::Healthy { latency })
    }

    #[test]
    fn climbing_latency_counts_as_push_back() {
        let mut pace = Pace::new(Some(100.0), None);
        healthy(&mut pace, 20);
        for _ in 0..SLOW_IN_A_ROW - 1 {
            assert_eq!(slow(&mut pace, 400 * MS), None);
        }
        let change = slow(&mut pace, 400 * MS).unwrap();
        assert_eq!(change.rate, Some(50.0));
        assert!(change.reason.contains("slowed"), "{}", change.reason);
    }

    #[test]
    fn one_slow_reply_or_a_short_history_is_no_trend() {
        // Before the baseline is trusted, nothing counts as slow.
        let mut pace = Pace::new(Some(100.0), None);
        healthy(&mut pace, 5);
        for _ in 0..10 {
            assert_eq!(slow(&mut pace, 2000 * MS), None);
        }
        // A lone slow reply (a big message) between healthy ones never slows the pace.
        let mut pace = Pace::new(Some(100.0), None);
        healthy(&mut pace, 40);
        for _ in 0..10 {
            assert_eq!(slow(&mut pace, 2000 * MS), None);
            healthy(&mut pace, 1);
        }
        assert_eq!(pace.rate(), Some(100.0));
        // Small absolute latencies are noise, however large the ratio.
        let mut pace = Pace::new(Some(100.0), None);
        healthy(&mut pace, 40);
        for _ in 0..10 {
            assert_eq!(slow(&mut pace, 200 * MS), None);
        }
    }

    #[test]
    fn a_followed_pace_stays_under_the_ceiling_and_recovers_from_there() {
        let mut pace = Pace::new(Some(150.0), None);
        pace.follow(Some(75.0));
        assert_eq!(pace.rate(), Some(75.0));
        // The additive increase carries on from the followed pace.
        let steps = healthy(&mut pace, HEALTHY_STEP);
        assert_eq!(steps.len(), 1);
        assert_eq!(pace.rate(), Some(90.0));
        // Never above the ceiling, never under the floor.
        pace.follow(Some(500.0));
        assert_eq!(pace.rate(), Some(150.0));
        pace.follow(Some(0.0));
        assert_eq!(pace.rate(), Some(FLOOR));
        pace.follow(None);
        assert_eq!(pace.rate(), Some(150.0));
    }

    #[test]
    fn alone_grants_every_turn_and_claims_every_copy() {
        let mut alone = Alone;
        assert_eq!(alone.take(1_000_000), Grant::Go(Duration::ZERO));
        let rcpts = vec!["a@example.net".to_string(), "b@example.net".to_string()];
        assert_eq!(alone.claim("hash", &rcpts), vec![Claim::Mine, Claim::Mine]);
        assert_eq!(alone.follow(), None);
    }
}
