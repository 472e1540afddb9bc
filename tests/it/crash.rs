//! Crash and resume: a run killed at any point (injected abort or SIGKILL) and run again
//! ends exactly where an uninterrupted run ends: same Maildir files, same outbox, same
//! DSNs, nothing left open.

use std::time::Duration;

use crate::support::{
    Cli, Outcome, Rng, check, clean_outcome, drill_trials, ingested, kill_9_after, run_trials,
};

/// SIGABRT: what `SPOOLREPLAY_CRASH_AT` does (`std::process::abort`).
const SIGABRT: i32 = 6;

/// Runs again (without crash injection) until exit 0; at most a few times.
#[track_caller]
fn resume(cli: &Cli) {
    for attempt in 1..=3 {
        let out = cli.run(&cli.run_args(&[]));
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        match out.code {
            Some(0) => return,
            Some(75) => continue,
            _ => panic!("resume attempt {attempt}: {out:?}"),
        }
    }
    panic!("the run did not finish after 3 resumes");
}

#[track_caller]
fn crash_and_resume(point: &str, n: u32) {
    let cli = ingested();
    let spec = format!("{point}:{n}");
    // Small batches so that every point is reached often enough.
    let out = cli.run_env(
        &cli.run_args(&["--batch-size", "5"]),
        &[("SPOOLREPLAY_CRASH_AT", &spec)],
    );
    assert_eq!(out.signal, Some(SIGABRT), "{spec} did not crash: {out:?}");
    resume(&cli);
    let resumed = Outcome::of(&cli);
    let clean = clean_outcome();
    assert_eq!(resumed.store, clean.store, "{spec}: Maildir files");
    assert_eq!(resumed.outbox, clean.outbox, "{spec}: outbox files");
    assert_eq!(resumed.dsns, clean.dsns, "{spec}: DSNs");
    assert_eq!(resumed.states, clean.states, "{spec}: states");
}

#[test]
fn crash_after_in_flight() {
    for n in [1, 3, 17] {
        crash_and_resume("after-in-flight", n);
    }
}

#[test]
fn crash_after_store() {
    for n in [1, 3, 17] {
        crash_and_resume("after-store", n);
    }
}

#[test]
fn crash_after_dsn_record() {
    for n in [1, 3, 17] {
        crash_and_resume("after-dsn-record", n);
    }
}

#[test]
fn crash_after_outbox_write() {
    for n in [1, 3, 17] {
        crash_and_resume("after-outbox-write", n);
    }
}

/// `kill -9` at seeded random moments of a paced Maildir run (20 trials in CI, more with
/// `SPOOLREPLAY_DRILL_TRIALS`): resuming gives exactly what an uninterrupted run gives —
/// every message accounted for, no Maildir copy written twice (names are deterministic, so
/// a second copy would be a second file), no DSN made twice.
#[test]
fn sigkill_at_random_moments_then_resume() {
    let clean = clean_outcome();
    run_trials(drill_trials(20), 4, |trial| {
        let mut rng = Rng::new(20230122 + trial as u64);
        let delay = 100 + rng.below(1400);
        let cli = ingested();
        let child = cli.spawn(&cli.run_args(&["--rate", "50/s", "--batch-size", "5"]));
        kill_9_after(
            child,
            Duration::from_millis(delay),
            &format!("trial {trial}"),
        );
        resume(&cli);
        let resumed = Outcome::of(&cli);
        assert_eq!(&resumed, clean, "trial {trial}: killed after {delay} ms");
    });
    // The reference itself is what a plain run gives.
    let cli = ingested();
    check(&cli.run(&cli.run_args(&[])), 0);
    assert_eq!(&Outcome::of(&cli), clean);
}
