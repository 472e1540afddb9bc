//! Pacing deliveries: a token bucket over a clock the caller passes in.
//!
//! Pure: no IO, no sleeping. Times are `Duration`s since an arbitrary start chosen by the
//! caller (an `Instant` at startup, or zero in tests), so every schedule is reproducible.
//! Also here: the duration syntax of the command line (`36h`, `1h30m`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The period a [`RateSpec`] counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "m",
            Per::Hour => "h",
        }
    }

    fn length(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        }
    }
}

/// A delivery rate such as `500/s`, `30/m` or `1000/h`; never zero.
///
/// `Display` prints the form `FromStr` reads, so the value round-trips through the
/// command line, the config file and the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateSpec {
    count: u32,
    per: Per,
}

/// Why a rate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate `{input}`: {reason} (expected a form like `500/s`, `30/m` or `1000/h`)")]
pub struct RateSpecError {
    input: String,
    reason: &'static str,
}

impl RateSpec {
    /// A rate of `count` messages per `per`; `None` for zero, which would never send.
    pub fn new(count: u32, per: Per) -> Option<RateSpec> {
        (count > 0).then_some(RateSpec { count, per })
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn per(self) -> Per {
        self.per
    }

    /// Messages per second, for projections.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.length().as_secs_f64()
    }
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    fn from_str(s: &str) -> Result<RateSpec, RateSpecError> {
        let fail = |reason| RateSpecError {
            input: s.to_string(),
            reason,
        };
        let (count, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| fail("missing `/`"))?;
        let per = match unit {
            "s" => Per::Second,
            "m" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(fail("the unit must be `s`, `m` or `h`")),
        };
        if count.starts_with('-') {
            return Err(fail("the count cannot be negative"));
        }
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("the count must be a whole number"));
        }
        let count: u32 = count.parse().map_err(|_| fail("the count is too large"))?;
        RateSpec::new(count, per).ok_or_else(|| fail("the count must be at least 1"))
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

/// A token bucket: up to `burst` messages at once, then `rate` on average.
///
/// Implemented as GCRA (a "theoretical arrival time"), in units of 1/count nanoseconds
/// so that rates like `3/s` do not drift by rounding.
#[derive(Debug, Clone)]
pub struct Throttle {
    limit: Option<Bucket>,
}

#[derive(Debug, Clone)]
struct Bucket {
    rate: RateSpec,
    /// Nanoseconds times `rate.count`: the time the bucket would be full again.
    tat: u128,
    /// Nanoseconds times `rate.count` between two messages: the period's length.
    interval: u128,
    /// How far ahead of the steady rate a burst may run, same units.
    tolerance: u128,
}

impl Throttle {
    /// A bucket that starts full with `burst` tokens (`0` is taken as `1`: every message
    /// needs a token) and refills at `rate`.
    pub fn new(rate: RateSpec, burst: u32) -> Throttle {
        let interval = rate.per.length().as_nanos();
        let tolerance = interval * u128::from(burst.max(1) - 1);
        Throttle {
            limit: Some(Bucket {
                rate,
                tat: 0,
                interval,
                tolerance,
            }),
        }
    }

    /// No limit: `wait` always returns zero.
    pub fn unlimited() -> Throttle {
        Throttle { limit: None }
    }

    /// The configured rate, `None` when unlimited.
    pub fn rate(&self) -> Option<RateSpec> {
        self.limit.as_ref().map(|b| b.rate)
    }

    /// Takes a token for one message asked for at `now` and returns how long the caller
    /// must sleep before sending it. A clock that goes backwards is treated as standing
    /// still: it never earns extra tokens.
    pub fn wait(&mut self, now: Duration) -> Duration {
        let Some(bucket) = &mut self.limit else {
            return Duration::ZERO;
        };
        let count = u128::from(bucket.rate.count);
        let now_scaled = now.as_nanos() * count;
        let tat = bucket.tat.max(now_scaled);
        let allowed_at = tat.saturating_sub(bucket.tolerance);
        bucket.tat = tat + bucket.interval;
        let wait_scaled = allowed_at.saturating_sub(now_scaled);
        // Round up: sleeping a nanosecond too little would exceed the rate.
        nanos_to_duration(wait_scaled.div_ceil(count))
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9, so it fits.
    let sub = (nanos % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

/// Units of [`parse_duration`], largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Reads a duration such as `5d`, `36h`, `90m`, `30s`, `1500ms` or `1h30m`.
///
/// Units are `d`, `h`, `m`, `s` and `ms`; in combined forms each unit appears at most once
/// and from largest to smallest, so a typo like `30m1h` is reported rather than guessed at.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let fail = |reason: &str| format!("invalid duration `{s}`: {reason}");
    if s.is_empty() {
        return Err(fail("it is empty (expected a form like `36h` or `1h30m`)"));
    }
    let mut rest = s;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the next unit allowed, to enforce largest-first order.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail(&format!("expected a number at `{rest}`")));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => fail(&format!("`{number}` has no unit (use d, h, m, s or ms)")),
                Some(c) => fail(&format!("unexpected `{c}` after `{number}`")),
            });
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(fail(&format!(
                "unknown unit `{unit}` (use d, h, m, s or ms)"
            )));
        };
        if index < next_unit {
            return Err(fail(&format!(
                "unit `{unit}` repeated or out of order (write the largest unit first)"
            )));
        }
        next_unit = index + 1;
        let value: u64 = number
            .parse()
            .map_err(|_| fail("the number is too large"))?;
        total_ms = value
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| fail("it is too long"))?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Prints a duration in the form [`parse_duration`] reads (`1h30m`, `0s`), to the
/// millisecond; anything finer is dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, length) in UNITS {
        let length = u128::from(length);
        let amount = ms / length;
        if amount > 0 {
            out.push_str(&format!("{amount}{name}"));
            ms %= length;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> RateSpec {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rate_round_trips() {
        for s in ["500/s", "1/s", "30/m", "1000/h", "4294967295/s"] {
            assert_eq!(rate(s).to_string(), s);
        }
        assert_eq!(rate(" 7/m ").to_string(), "7/m");
        assert_eq!(rate("200/s"), RateSpec::new(200, Per::Second).unwrap());
    }

    #[test]
    fn bad_rates_say_why() {
        let cases = [
            ("0/s", "at least 1"),
            ("-5/s", "negative"),
            ("+5/s", "whole number"),
            ("5", "missing `/`"),
            ("/s", "whole number"),
            ("5/d", "unit"),
            ("5/S", "unit"),
            ("1.5/s", "whole number"),
            ("abc", "missing `/`"),
            ("", "missing `/`"),
            ("99999999999/s", "too large"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<RateSpec>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(err.contains(&format!("`{input}`")), "{input:?}: {err}");
        }
        assert!(RateSpec::new(0, Per::Hour).is_none());
    }

    #[test]
    fn unlimited_never_waits() {
        let mut t = Throttle::unlimited();
        for _ in 0..1000 {
            assert_eq!(t.wait(Duration::ZERO), Duration::ZERO);
        }
        assert_eq!(t.rate(), None);
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut t = Throttle::new(rate("10/s"), 3);
        // Three at once, then one every 100 ms.
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(100));
        // The caller slept 100 ms and asks again right away.
        assert_eq!(t.wait(ms(100)), ms(100));
        assert_eq!(t.wait(ms(200)), ms(100));
    }

    #[test]
    fn idle_time_refills_up_to_burst_only() {
        let mut t = Throttle::new(rate("1/s"), 2);
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(1000));
        // A long pause earns at most `burst` tokens, not an hour's worth.
        let later = Duration::from_secs(3600);
        assert_eq!(t.wait(later), ms(0));
        assert_eq!(t.wait(later), ms(0));
        assert_eq!(t.wait(later), ms(1000));
    }

    #[test]
    fn zero_burst_means_one() {
        let mut t = Throttle::new(rate("2/s"), 0);
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), ms(500));
    }

    #[test]
    fn thirds_do_not_drift() {
        let mut t = Throttle::new(rate("3/s"), 1);
        let mut now = Duration::ZERO;
        for _ in 0..3000 {
            now += t.wait(now);
        }
        // The 3000th message goes at 2999/3 s; rounding up per step never accumulates.
        let expected = Duration::from_nanos(2999 * 1_000_000_000 / 3 + 1);
        assert_eq!(now, expected);
    }

    #[test]
    fn per_hour_rate() {
        let mut t = Throttle::new(rate("60/h"), 1);
        assert_eq!(t.wait(ms(0)), ms(0));
        assert_eq!(t.wait(ms(0)), Duration::from_secs(60));
        assert_eq!(t.rate(), Some(rate("60/h")));
    }

    #[test]
    fn clock_going_back_earns_nothing() {
        let mut t = Throttle::new(rate("1/s"), 1);
        assert_eq!(t.wait(Duration::from_secs(10)), ms(0));
        assert_eq!(t.wait(Duration::from_secs(5)), Duration::from_secs(6));
    }

    #[test]
    fn durations_parse() {
        let cases = [
            ("5d", 5 * 86_400_000),
            ("36h", 36 * 3_600_000),
            ("90m", 90 * 60_000),
            ("30s", 30_000),
            ("1500ms", 1500),
            ("1h30m", 90 * 60_000),
            ("2d12h", 60 * 3_600_000),
            ("1m1s1ms", 61_001),
            ("0s", 0),
        ];
        for (input, millis) in cases {
            assert_eq!(parse_duration(input), Ok(ms(millis)), "{input}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        let cases = [
            ("", "empty"),
            ("5", "no unit"),
            ("5w", "unknown unit `w`"),
            ("5 h", "unexpected ` ` after `5`"),
            ("h", "expected a number"),
            ("-5s", "expected a number"),
            ("1.5h", "unexpected `.` after `1`"),
            ("30m1h", "out of order"),
            ("1h1h", "repeated"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too long"),
            ("1h 30m", "expected a number at ` 30m`"),
        ];
        for (input, reason) in cases {
            let err = parse_duration(input).unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(err.contains(&format!("`{input}`")), "{input:?}: {err}");
        }
    }

    #[test]
    fn durations_format_and_round_trip() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(ms(90 * 60_000)), "1h30m");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(5 * 86_400)), "5d");
        assert_eq!(format_duration(Duration::from_nanos(999_999)), "0s");
        for input in ["5d", "36h", "1h30m", "2d3h4m5s6ms", "1500ms", "59s"] {
            let d = parse_duration(input).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{input}");
        }
        assert_eq!(format_duration(parse_duration("36h").unwrap()), "1d12h");
    }
}
