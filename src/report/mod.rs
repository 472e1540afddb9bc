//! Everything the tool prints: human tables and notes (stderr for people, stdout for data),
//! JSON Lines events (`--json`), and progress.
//!
//! The JSON Lines format: one object per line on stdout, each with a `"type"` field; times
//! are RFC 3339. The types are listed in README ("JSON events") and built only in `json.rs`.

pub mod html;
pub mod json;
pub mod progress;
pub mod sheet;
pub mod svg;
pub mod table;

use std::io::{self, Write};

use crate::config::Output;

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
    pub fn event(&self, value: &serde_json::Value) -> io::Result<()> {
        if !self.output.json {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, value)?;
        out.write_all(b"\n")
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

    /// A note for people on stderr (not with `--quiet`).
    pub fn note(&self, text: &str) {
        if !self.output.quiet() {
            eprintln!("{text}");
        }
    }

    /// A warning for people on stderr (even with `--json`, never with `--quiet`).
    pub fn warn(&self, text: &str) {
        if !self.output.quiet() {
            eprintln!("warning: {text}");
        }
    }

    /// Detail shown with `-v`.
    pub fn verbose(&self, text: &str) {
        if matches!(self.output.verbosity, crate::config::Verbosity::Verbose(_)) {
            eprintln!("{text}");
        }
    }
}
