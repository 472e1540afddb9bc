//! Progress of long commands: an indicatif bar when stderr is a terminal, otherwise a plain
//! line every few seconds so a cron log is never silent for hours. Nothing with `--quiet`;
//! with `--json` only the plain heartbeat lines on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use super::Output;
use crate::throttle::format_duration;

const HEARTBEAT: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    mode: Mode,
}

enum Mode {
    Silent,
    Bar(ProgressBar),
    Heartbeat { last: Instant },
}

impl Progress {
    /// Whether `new` would show anything: callers skip work done only for the total.
    pub fn shown(output: &Output) -> bool {
        !output.quiet()
    }

    /// `what` names the unit counted ("messages"), and `total` counts that same unit (0:
    /// not known).
    pub fn new(output: &Output, what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mode = if output.quiet() {
            Mode::Silent
        } else if tty && !output.json {
            // A total of 0 means "unknown" (ingest streams without counting first).
            let bar = if total == 0 {
                ProgressBar::new_spinner()
            } else {
                ProgressBar::new(total)
            };
            let style = bar_style(what, total).unwrap_or_else(|_| ProgressStyle::default_bar());
            // The template uses no colour, so NO_COLOR needs nothing more here.
            bar.set_style(style);
            Mode::Bar(bar)
        } else {
            Mode::Heartbeat { last: now }
        };
        Progress {
            what,
            total,
            done: 0,
            started: now,
            mode,
        }
    }

    pub fn add(&mut self, n: u64, message: &str) {
        self.done += n;
        match &mut self.mode {
            Mode::Silent => {}
            Mode::Bar(bar) => {
                bar.inc(n);
                bar.set_message(message.to_string());
            }
            Mode::Heartbeat { last } => {
                if last.elapsed() >= HEARTBEAT {
                    *last = Instant::now();
                    // stderr may be gone (SIGHUP): a progress line is not worth a panic.
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}",
                        heartbeat_line(self.what, self.done, self.total, self.started, message)
                    );
                }
            }
        }
    }

    pub fn finish(self) {
        if let Mode::Bar(bar) = self.mode {
            bar.finish_and_clear();
        }
    }
}

/// The bar: the count in `what`'s unit, and the rate rounded as people read it
/// (indicatif's own `{per_sec}` prints four decimals: `36.2265/s`).
fn bar_style(what: &str, total: u64) -> Result<ProgressStyle, indicatif::style::TemplateError> {
    let template = if total == 0 {
        format!("{{spinner}} [{{elapsed_precise}}] {{pos}} {what} {{rate}} {{msg}}")
    } else {
        format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {what} {{rate}} ETA {{eta}} {{msg}}"
        )
    };
    Ok(ProgressStyle::with_template(&template)?.with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rate_text(state.per_sec()));
        },
    ))
}

fn heartbeat_line(what: &str, done: u64, total: u64, started: Instant, message: &str) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!(
            ", ETA {}",
            format_duration(Duration::from_secs(
                ((total - done) as f64 / rate).round() as u64
            ))
        )
    } else {
        String::new()
    };
    let counted = if total == 0 {
        format!("{done}")
    } else {
        format!("{done}/{total}")
    };
    format!(
        "progress: {counted} {what} ({}{eta}) {message}",
        rate_text(rate)
    )
    .trim_end()
    .to_string()
}

/// A rate as people read it: whole numbers from 10/s up, one decimal below (as the pace
/// is shown).
fn rate_text(per_second: f64) -> String {
    if !per_second.is_finite() || per_second <= 0.0 {
        "0/s".into()
    } else if per_second >= 10.0 {
        format!("{per_second:.0}/s")
    } else {
        format!("{per_second:.1}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_templates_are_valid() {
        assert!(bar_style("messages", 10).is_ok());
        assert!(bar_style("items", 0).is_ok());
    }

    #[test]
    fn rates_are_rounded_for_people() {
        assert_eq!(rate_text(36.2265), "36/s");
        assert_eq!(rate_text(3.06), "3.1/s");
        assert_eq!(rate_text(0.0), "0/s");
        assert_eq!(rate_text(f64::NAN), "0/s");
    }

    #[test]
    fn the_heartbeat_counts_one_unit_and_rounds() {
        let started = Instant::now() - Duration::from_secs(10);
        let line = heartbeat_line("messages", 41, 201, started, "pace 500/s");
        assert!(
            line.starts_with("progress: 41/201 messages (4.1/s, ETA "),
            "{line}"
        );
        assert!(line.ends_with(") pace 500/s"), "{line}");
        assert!(!line.contains("4.1000"), "{line}");
        // An unknown total (ingest) is not shown as `/0`.
        let line = heartbeat_line("items", 500, 0, started, "");
        assert_eq!(line, "progress: 500 items (50/s)");
    }
}
