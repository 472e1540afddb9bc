//! `run --order` (issue 18 item 4): `fair` is round-robin across mailboxes, so one
//! mailbox holding most of the spool does not hold back everyone else's first message;
//! `newest` hands over the newest arrival first.

use crate::support::minispool::{self, Mail, run_args};
use crate::support::{Cli, Output, check};

/// Messages to the one big mailbox, ingested before everyone else's.
const BIG: usize = 40;
const OTHERS: [&str; 4] = [
    "a@example.net",
    "b@example.net",
    "c@example.net",
    "d@example.net",
];

fn spool() -> Vec<Mail> {
    minispool::plain_spool(BIG + OTHERS.len(), |i| {
        vec![match i.checked_sub(BIG + 1) {
            Some(k) => OTHERS[k].to_string(),
            None => "big@example.net".to_string(),
        }]
    })
}

/// The recipients of the run's outcome events, in the order they came.
fn outcome_order(out: &Output) -> Vec<String> {
    out.events("outcome")
        .iter()
        .map(|e| e["recipient"].as_str().expect("recipient").to_string())
        .collect()
}

fn run(order: &str) -> Vec<String> {
    let cli = Cli::new();
    minispool::ingest(&cli, &spool());
    let store = format!("maildir:{}", cli.store().display());
    // One batch holds 10 messages: the first batch is the first 10 outcomes.
    let out = cli.run(&run_args(
        &cli,
        &store,
        &["--order", order, "--batch-size", "10"],
    ));
    check(&out, 0);
    let got = outcome_order(&out);
    assert_eq!(got.len(), BIG + OTHERS.len(), "{}", out.stdout);
    got
}

#[test]
fn fair_order_gives_every_mailbox_its_first_message_in_the_first_batch() {
    let got = run("fair");
    for other in OTHERS {
        let first = got.iter().position(|r| r == other).expect("delivered");
        assert!(first < 10, "{other} first at {first}: {got:?}");
    }
    // And the arrival order (the default) would not have: the check can fail.
    let arrival = run("arrival");
    assert!(
        arrival[..10].iter().all(|r| r == "big@example.net"),
        "{arrival:?}"
    );
}

#[test]
fn newest_order_hands_over_the_last_arrival_first() {
    let mut mails = spool();
    // Arrivals one minute apart, so "newest" is told by time, not by ingest order.
    for (i, m) in mails.iter_mut().enumerate() {
        m.sidecar["arrival"] = format!("2023-01-23T10:{:02}:00+01:00", i % 60).into();
    }
    let cli = Cli::new();
    minispool::ingest(&cli, &mails);
    let store = format!("maildir:{}", cli.store().display());
    let out = cli.run(&run_args(&cli, &store, &["--order", "newest"]));
    check(&out, 0);
    let got = outcome_order(&out);
    assert_eq!(got[0], OTHERS[3], "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("big@example.net"));
}

#[test]
fn an_unknown_order_is_a_usage_error() {
    let cli = Cli::new();
    minispool::ingest(&cli, &spool());
    let out = cli.run(&run_args(&cli, "maildir:store", &["--order", "random"]));
    check(&out, 64);
    assert!(out.stderr.contains("--order"), "{}", out.stderr);
}
