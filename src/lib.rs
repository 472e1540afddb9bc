//! spoolreplay: replay a mail spool accepted during a mail-store outage into the restored
//! store, bounce what expired, and keep every decision in a resumable ledger.
//!
//! `run` is the whole program behind `main`: parse, validate, dispatch, render errors.

pub mod address;
pub mod bounce;
pub mod bounce_policy;
pub mod breaker;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod crash_hook;
pub mod deliver;
pub mod dsn;
pub mod durable;
pub mod exit;
pub mod incident;
pub mod ingest;
pub mod ledger;
pub mod line_ends;
pub mod metrics;
pub mod pace;
pub mod plan;
pub mod replay;
pub mod report;
pub mod rfc3461;
pub mod sanitize;
pub mod shard;
pub mod shutdown;
pub mod spool;
pub mod systemd;
pub mod throttle;

use clap::Parser;

use config::{CommandConfig, Config};
use exit::Exit;

/// Runs the program on `args` (including the program name); returns the exit code.
pub fn run<I, T>(args: I) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Done
                }
                _ => Exit::Usage,
            };
        }
    };
    match Config::from_cli(cli).and_then(dispatch) {
        Ok(code) => code,
        Err(err) => render_error(&ledger::explain_corruption(err)),
    }
}

fn dispatch(cfg: Config) -> anyhow::Result<Exit> {
    let ledger = cfg.ledger.as_path();
    match cfg.command {
        CommandConfig::Ingest(c) => cmd::ingest::run(ledger, cfg.output, c),
        CommandConfig::Report(c) => cmd::report::run(cfg.output, c),
        CommandConfig::Run(c) => cmd::run::run(ledger, cfg.output, *c),
        CommandConfig::Status { message: None } => cmd::status::run(ledger, cfg.output),
        CommandConfig::Status { message: Some(q) } => cmd::status::message(ledger, cfg.output, &q),
        CommandConfig::Bounces(c) => cmd::bounces::run(ledger, cfg.output, c),
        CommandConfig::Audit(c) => cmd::audit::run(ledger, cfg.output, c),
        CommandConfig::Cluster { url, action } => cmd::cluster::run(cfg.output, &url, action),
        CommandConfig::Control(steer) => cmd::control::run(ledger, cfg.output, &steer),
    }
}

/// Renders an error in one place: `error: …`, `Caused by:` lines, an optional `hint:`.
/// A broken pipe (output piped into `head`) is not an error.
fn render_error(err: &anyhow::Error) -> Exit {
    let broken_pipe = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return Exit::Done;
    }
    let mut text = format!("error: {}", sanitize::for_terminal(&err.to_string()));
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str(&format!("\n    {}", sanitize::for_terminal(&cause)));
        }
    }
    if let Some(hint) = exit::hint_for(err) {
        text.push_str(&format!("\nhint: {hint}"));
    }
    report::to_stderr(&text);
    exit::exit_for(err)
}
