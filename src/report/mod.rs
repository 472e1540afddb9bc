//! Everything the tool prints: human tables and notes (stderr for people, stdout for data),
//! JSON Lines events (`--json`), and progress.
//!
//! The JSON Lines format: one object per line on stdout, each with a `"type"` field; times
//! are RFC 3339. The types are listed in README ("JSON events") and are the variants of
//! `event::Event`.

pub mod affected;
pub mod event;
pub mod html;
pub mod order;
pub mod page;
pub mod progress;
pub mod sections;
pub mod sheet;
pub mod svg;
pub mod table;

use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose(u8),
}

/// How output is rendered.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub verbosity: Verbosity,
}

impl Output {
    pub fn quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }
}

/// The one place output goes through.
pub struct Printer {
    pub output: Output,
}

impl Printer {
    pub fn new(output: Output) -> Printer {
        Printer { output }
    }

    pub fn json_mode(&self) -> bool {
        self.output.json
    }

    /// A JSON Lines event on stdout (only with `--json`).
    pub fn event(&self, event: &event::Event<'_>) -> io::Result<()> {
        if !self.output.json {
            return Ok(());
        }
        event.write_line(&mut io::stdout().lock())
    }

    /// Human-readable data on stdout (not with `--json`).
    pub fn data(&self, text: &str) -> io::Result<()> {
        if self.output.json {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The closing summary of a command that acts (ingest, run, bounces write/send), on
    /// stdout: for people, so not with `--json` (which has its summary event) nor with
    /// `--quiet` (the exit code says how it ended).
    pub fn summary(&self, text: &str) -> io::Result<()> {
        if self.output.quiet() {
            return Ok(());
        }
        self.data(text)
    }

    /// A whole message (a DSN) on stdout: byte for byte into a pipe or file, for tools; on
    /// a terminal line by line through the sanitizer, since the returned original carries
    /// a stranger's headers, which may hold terminal escapes.
    pub fn message(&self, bytes: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if !io::IsTerminal::is_terminal(&out) {
            return out.write_all(bytes);
        }
        out.write_all(message_for_terminal(bytes).as_bytes())
    }

    /// A note for people on stderr (not with `--quiet`).
    pub fn note(&self, text: &str) {
        if !self.output.quiet() {
            to_stderr(text);
        }
    }

    /// A warning for people on stderr (even with `--json`, never with `--quiet`).
    pub fn warn(&self, text: &str) {
        if !self.output.quiet() {
            to_stderr(&format!("warning: {text}"));
        }
    }

    /// Detail shown with `-v`.
    pub fn verbose(&self, text: &str) {
        if matches!(self.output.verbosity, Verbosity::Verbose(_)) {
            to_stderr(text);
        }
    }
}

/// A line for people on stderr. `eprintln!` panics when stderr is gone (a closed pipe, a
/// terminal that hung up: EPIPE, EIO); a note is not worth a crash, so errors are ignored.
pub fn to_stderr(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// A message made safe to show: each line through the sanitizer, line ends kept.
pub fn message_for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push_str(&crate::sanitize::bytes_for_terminal(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_on_a_terminal_keeps_its_lines_but_loses_its_escapes() {
        let shown = super::message_for_terminal(b"Subject: \x1b[2Jhi\r\nX: \x9b1m\r\n\r\nbody");
        assert_eq!(shown, "Subject: \\x1b[2Jhi\nX: \\x9b1m\n\nbody\n");
        assert!(!shown.contains('\x1b'));
    }
}
