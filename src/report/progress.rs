//! Progress of long commands: an indicatif bar when stderr is a terminal, otherwise a plain
//! line every few seconds so a cron log is never silent for hours. Nothing with `--quiet`;
//! with `--json` only the plain heartbeat lines on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Output;

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
    /// `what` names the unit counted ("messages").
    pub fn new(output: &Output, what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mode = if output.quiet() {
            Mode::Silent
        } else if tty && !output.json {
            // A total of 0 means "unknown" (ingest streams without counting first).
            let (bar, template) = if total == 0 {
                (
                    ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {pos} {per_sec} {msg}",
                )
            } else {
                (
                    ProgressBar::new(total),
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
                )
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
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

fn heartbeat_line(what: &str, done: u64, total: u64, started: Instant, message: &str) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!(", ETA {}s", ((total - done) as f64 / rate).round())
    } else {
        String::new()
    };
    format!("progress: {done}/{total} {what} ({rate:.1}/s{eta}) {message}")
}
