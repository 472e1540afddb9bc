//! `spoolreplay control` (issue 18 item 5) on a running `run`: `pause` stops the
//! hand-over within a second (nothing more reaches the store), `resume` lets the run
//! finish, and the run says both in its output.

use std::time::{Duration, Instant};

use crate::support::minispool::{self, run_args};
use crate::support::{Cli, Output, check, ledger_recipients};

const MESSAGES: usize = 30;

fn delivered(cli: &Cli) -> usize {
    ledger_recipients(&cli.ledger)
        .iter()
        .filter(|r| r.state == "delivered")
        .count()
}

#[test]
fn control_pause_holds_a_running_run_and_resume_lets_it_finish() {
    let cli = Cli::new();
    let mails = minispool::plain_spool(MESSAGES, |i| vec![format!("u{}@example.net", i % 4)]);
    minispool::ingest(&cli, &mails);
    let store = format!("maildir:{}", cli.store().display());
    let run = cli.spawn(&run_args(&cli, &store, &["--rate", "5/s"]));

    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered(&cli) < 2 {
        assert!(Instant::now() < deadline, "the run delivered nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli.run(&["--json", "control", "pause"]);
    check(&out, 0);
    assert_eq!(out.event("control")["request"], "pause");
    // Picked up within a second; what was in flight finishes; then nothing moves.
    std::thread::sleep(Duration::from_millis(1500));
    let held = delivered(&cli);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(delivered(&cli), held, "deliveries went on while paused");
    assert!(held < MESSAGES, "the run finished before the pause");

    check(&cli.run(&["control", "rate", "50/s"]), 0);
    check(&cli.run(&["control", "resume"]), 0);
    let out = Output::from(run.wait_with_output().expect("wait for the run"));
    check(&out, 0);
    assert_eq!(delivered(&cli), MESSAGES);
    let said: Vec<String> = out
        .events("control")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with("paused by `spoolreplay control pause`"),
        "{said:?}"
    );
    assert!(said[1].starts_with("pace set to 50/s"), "{said:?}");
    assert!(said[2].starts_with("resumed"), "{said:?}");
    assert!(
        out.stderr.contains("paused by `spoolreplay control pause`"),
        "{}",
        out.stderr
    );
}

#[test]
fn control_rate_refuses_what_is_not_a_rate() {
    let cli = Cli::new();
    minispool::ingest(
        &cli,
        &minispool::plain_spool(1, |_| vec!["u@example.net".into()]),
    );
    let out = cli.run(&["control", "rate", "fast"]);
    check(&out, 64);
    assert!(out.stderr.contains("control rate"), "{}", out.stderr);
}
