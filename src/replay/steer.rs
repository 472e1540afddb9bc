//! Steering a running delivery loop: `spoolreplay control` requests (pause, resume, a
//! new rate) read from the ledger and obeyed between hand-overs.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::dispatch::Dispatch;
use super::record::{Health, worst};
use super::worker::Done;
use super::{Event, Replay};
use crate::ledger::Steer;
use crate::pace::{Pace, format_rate};
use crate::throttle::RateSpec;

/// How often the run looks for `spoolreplay control` requests.
const STEER_EVERY: Duration = Duration::from_millis(500);

impl Replay<'_> {
    /// Obeys new `spoolreplay control` requests (at most every `STEER_EVERY`), then,
    /// while paused, records what comes back and waits for `resume` (or a signal).
    pub(super) fn hold_while_paused(
        &mut self,
        done: &Receiver<Done>,
        d: &mut Dispatch,
    ) -> Result<Health> {
        let mut health = Health::Fine;
        loop {
            self.steer(d)?;
            if !d.paused || self.is_interrupted() {
                return Ok(health);
            }
            health = worst(health, self.collect(done, d, Instant::now() + STEER_EVERY)?);
            self.feed_gauges(d)?;
        }
    }

    fn steer(&mut self, d: &mut Dispatch) -> Result<()> {
        if d.steer_checked.is_some_and(|t| t.elapsed() < STEER_EVERY) {
            return Ok(());
        }
        d.steer_checked = Some(Instant::now());
        for (id, request) in self.ledger.steering_after(d.steered)? {
            d.steered = id;
            let text = match request {
                Steer::Pause => {
                    d.paused = true;
                    "paused by `spoolreplay control pause`: nothing more is handed to the store until `spoolreplay control resume`".to_string()
                }
                Steer::Resume => {
                    d.paused = false;
                    "resumed by `spoolreplay control resume`".to_string()
                }
                Steer::Rate(r) => match r.parse::<RateSpec>() {
                    Ok(spec) => {
                        d.pace =
                            Pace::new(Some(spec.per_second()), self.settings.pace.max_bytes_rate);
                        d.pace_text = format!(
                            "pace {} (set by spoolreplay control)",
                            format_rate(d.pace.rate())
                        );
                        format!("pace set to {spec} by `spoolreplay control rate`")
                    }
                    Err(e) => format!("ignored `spoolreplay control rate {r}`: {e}"),
                },
            };
            if let Some(m) = &self.metrics {
                m.paused(d.paused);
            }
            (self.on_event)(Event::Steered(&text));
        }
        Ok(())
    }
}
