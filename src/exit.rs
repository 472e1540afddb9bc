//! Exit codes (sysexits values, documented in README) and errors that carry one.

use std::fmt;

/// What the process tells its caller. Values follow sysexits.h so scripts can branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// All done; held and quarantined items are reported but are not pending work.
    Done = 0,
    /// Command-line usage error.
    Usage = 64,
    /// Input data was bad (e.g. a spool item that makes the whole command impossible, or
    /// spool files that changed since ingest, so `run` held their mail).
    DataErr = 65,
    /// An input file or spool does not exist.
    NoInput = 66,
    /// The restored store is unavailable.
    Unavailable = 69,
    /// An output (store, outbox, ledger) cannot be created.
    CantCreate = 73,
    /// An I/O error.
    IoErr = 74,
    /// Deliverable work remains (deferred, interrupted, ledger busy): run again to resume.
    TempFail = 75,
    /// The configuration (incident file, options) is invalid.
    Config = 78,
    /// Stopped by SIGHUP (the terminal or ssh session went away) after a clean checkpoint.
    HangUp = 129,
    /// Stopped by Ctrl-C (SIGINT) after a clean checkpoint.
    Interrupted = 130,
    /// Stopped by SIGTERM (a service manager, `kill`) after a clean checkpoint.
    Terminated = 143,
}

impl Exit {
    /// Every exit code, in the order `--help` lists them (the common ones first).
    pub const ALL: [Exit; 12] = [
        Exit::Done,
        Exit::TempFail,
        Exit::Interrupted,
        Exit::Terminated,
        Exit::HangUp,
        Exit::Usage,
        Exit::DataErr,
        Exit::NoInput,
        Exit::Unavailable,
        Exit::CantCreate,
        Exit::IoErr,
        Exit::Config,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The line `--help` shows for this code: `meaning` with when else it happens.
    pub fn help(self) -> &'static str {
        match self {
            Exit::Done => "done (held and quarantined items are reported, not pending)",
            Exit::TempFail => {
                "deliverable work remains, or the ledger is busy: run again to resume"
            }
            Exit::Interrupted => "interrupted by Ctrl-C after a clean checkpoint",
            Exit::Terminated => {
                "stopped by SIGTERM, 129 by SIGHUP, likewise (a second signal stops at once)"
            }
            Exit::HangUp => "stopped by SIGHUP after a clean checkpoint",
            Exit::Usage => "usage error",
            Exit::DataErr => "bad input data (also: spool changed since ingest)",
            Exit::NoInput => "input not found",
            Exit::Unavailable => "store unavailable",
            Exit::CantCreate => "cannot create output",
            Exit::IoErr => "i/o error",
            Exit::Config => {
                "bad configuration (also: a run that would bounce more than --max-bounce-share)"
            }
        }
    }

    /// The `Exit codes:` table of `--help`, one line per code, made from `ALL`; SIGHUP's
    /// 129 is told on SIGTERM's line, as the two mean the same.
    pub fn help_table() -> String {
        let mut out = String::from("Exit codes:");
        for exit in Exit::ALL.into_iter().filter(|e| *e != Exit::HangUp) {
            out.push_str(&format!("\n  {:<4} {}", exit.code(), exit.help()));
        }
        out
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Done => "done",
            Exit::Usage => "usage error",
            Exit::DataErr => "bad input data",
            Exit::NoInput => "input not found",
            Exit::Unavailable => "store unavailable",
            Exit::CantCreate => "cannot create output",
            Exit::IoErr => "i/o error",
            Exit::TempFail => "work remains: run again to resume",
            Exit::Config => "bad configuration",
            Exit::HangUp => "stopped by SIGHUP: run again to resume",
            Exit::Interrupted => "interrupted: run again to resume",
            Exit::Terminated => "stopped by SIGTERM: run again to resume",
        }
    }
}

/// An error that knows which exit code it deserves. Wrap it in `anyhow::Error`; the
/// renderer in `lib.rs` finds it anywhere in the chain.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand: `return Err(failure(Exit::Config, "…"))`.
pub fn failure(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure::new(exit, message))
}

/// The `Failure` an error carries: anyhow finds a `Failure` used as `.context(…)` at any
/// depth with `downcast_ref`; one wrapped as a plain source is found by walking the chain.
fn failure_of(err: &anyhow::Error) -> Option<&Failure> {
    err.downcast_ref::<Failure>()
        .or_else(|| err.chain().find_map(|c| c.downcast_ref::<Failure>()))
}

/// The exit code an error deserves: that of its `Failure`, else `IoErr` (what is left after
/// usage, config and data errors are typed is I/O trouble).
pub fn exit_for(err: &anyhow::Error) -> Exit {
    failure_of(err).map_or(Exit::IoErr, |f| f.exit)
}

pub fn hint_for(err: &anyhow::Error) -> Option<&str> {
    failure_of(err).and_then(|f| f.hint.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_sysexits_and_signals() {
        let codes: Vec<(Exit, u8)> = Exit::ALL.iter().map(|e| (*e, e.code())).collect();
        assert_eq!(
            codes,
            [
                (Exit::Done, 0),
                (Exit::TempFail, 75),
                (Exit::Interrupted, 130),
                (Exit::Terminated, 143),
                (Exit::HangUp, 129),
                (Exit::Usage, 64),
                (Exit::DataErr, 65),
                (Exit::NoInput, 66),
                (Exit::Unavailable, 69),
                (Exit::CantCreate, 73),
                (Exit::IoErr, 74),
                (Exit::Config, 78),
            ]
        );
    }

    #[test]
    fn the_help_table_lists_every_code() {
        let table = Exit::help_table();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(lines.len(), Exit::ALL.len() - 1, "{table}");
        let listed = Exit::ALL.into_iter().filter(|e| *e != Exit::HangUp);
        for (line, exit) in lines.iter().zip(listed) {
            assert_eq!(*line, format!("  {:<4} {}", exit.code(), exit.help()));
        }
        assert!(table.contains("129 by SIGHUP"), "{table}");
    }

    #[test]
    fn readme_documents_every_code() {
        let readme = include_str!("../README.md");
        for exit in Exit::ALL {
            let row = format!("\n| {} | ", exit.code());
            assert!(
                readme.contains(&row),
                "README has no row for exit {}",
                exit.code()
            );
        }
    }
}
