//! Pacing deliveries: a token bucket over a clock the caller passes in.
//! (Placeholder until the real module lands.)

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec(f64);
impl RateSpec {
    pub fn per_second(&self) -> f64 {
        self.0
    }
}

impl FromStr for RateSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.strip_suffix("/s").ok_or("bad rate")?;
        n.parse::<f64>().map(RateSpec).map_err(|e| e.to_string())
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

pub struct Throttle;

impl Throttle {
    pub fn new(_rate: RateSpec, _burst: u32) -> Throttle {
        Throttle
    }
    pub fn unlimited() -> Throttle {
        Throttle
    }
    pub fn wait(&mut self, _now: Duration) -> Duration {
        Duration::ZERO
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "d" => n * 86400,
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        _ => return Err(format!("bad duration `{s}`")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn format_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}
