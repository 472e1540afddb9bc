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

/// Two windows: the night's mail (all to the big mailbox) before the day's (one each to
/// the others).
const TWO_WINDOWS: &str = r#"name = "two phases"
reporting_mta = "mx1.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "30d"
lifetime_from = "arrival"
outside = "hold"

[[window]]
name = "night"
start = "2023-01-22T00:00:00+01:00"
end = "2023-01-23T00:00:00+01:00"
action = "deliver"

[[window]]
name = "day"
start = "2023-01-23T00:00:00+01:00"
end = "2023-01-26T13:00:00+01:00"
action = "deliver"
"#;

/// The `order` rows of `report --order ORDER --rate 10/s` (one batch: no pauses).
fn projected(cli: &Cli, order: &str) -> Vec<serde_json::Value> {
    let incident = cli.path().join("two-windows.toml");
    std::fs::write(&incident, TWO_WINDOWS).expect("write the incident");
    let incident = incident.display().to_string();
    let out = cli.run(&[
        "--json",
        "report",
        "--incident",
        &incident,
        "--now",
        crate::support::NOW,
        "--rate",
        "10/s",
        "--batch-size",
        "1000",
        "--order",
        order,
    ]);
    check(&out, 0);
    assert_eq!(
        out.event("report_summary")["order"],
        order,
        "{}",
        out.stdout
    );
    out.events("order")
}

#[track_caller]
fn check_milestone(row: &serde_json::Value, expected: (&str, Option<&str>, u64, u64, f64)) {
    let (kind, window, from, messages, done) = expected;
    assert_eq!(row["milestone"], kind, "{row}");
    assert_eq!(row["window"].as_str(), window, "{row}");
    assert_eq!(row["from_messages"], from, "{row}");
    assert_eq!(row["messages"], messages, "{row}");
    assert_eq!(row["done_seconds"].as_f64(), Some(done), "{row}");
}

#[test]
fn report_projects_what_each_order_means() {
    let mut mails = spool();
    for (i, m) in mails.iter_mut().enumerate() {
        let day = if i < BIG { 22 } else { 23 };
        m.sidecar["arrival"] = format!("2023-01-{day}T10:{:02}:00+01:00", i % 60).into();
    }
    let cli = Cli::new();
    minispool::ingest(&cli, &mails);
    // Oldest first: the night's 40 messages, then the day's 4.
    let rows = projected(&cli, "arrival");
    assert_eq!(rows.len(), 2, "{rows:?}");
    check_milestone(&rows[0], ("window", Some("night"), 0, 40, 4.0));
    check_milestone(&rows[1], ("window", Some("day"), 40, 44, 4.4));
    // Newest first: the day's mail is all there after 0.4 s.
    let rows = projected(&cli, "newest");
    check_milestone(&rows[0], ("window", Some("day"), 0, 4, 0.4));
    check_milestone(&rows[1], ("window", Some("night"), 4, 44, 4.4));
    // Fair: five mailboxes, so the first round is five messages.
    let rows = projected(&cli, "fair");
    assert_eq!(rows.len(), 1, "{rows:?}");
    check_milestone(&rows[0], ("first_per_mailbox", None, 0, 5, 0.5));
    // The table says it in words.
    let incident = cli.path().join("two-windows.toml").display().to_string();
    let out = cli.run(&[
        "report",
        "--incident",
        &incident,
        "--now",
        crate::support::NOW,
        "--rate",
        "10/s",
        "--order",
        "fair",
    ]);
    check(&out, 0);
    assert!(
        out.stdout
            .contains("every mailbox's first message within the first 5 messages"),
        "{}",
        out.stdout
    );
    // And the run keeps the promise: every mailbox is among its first five outcomes.
    let store = format!("maildir:{}", cli.store().display());
    let out = cli.run(&run_args(&cli, &store, &["--order", "fair"]));
    check(&out, 0);
    let got = outcome_order(&out);
    for mailbox in OTHERS.iter().chain(&["big@example.net"]) {
        assert!(
            got[..5].contains(&mailbox.to_string()),
            "{mailbox}: {got:?}"
        );
    }
}
