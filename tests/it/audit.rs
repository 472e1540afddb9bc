//! `spoolreplay audit`: one JSON line per recipient with its whole history, and the filters.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{Cli, check, ingested, ledger_recipients};

fn audit(cli: &Cli, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit"];
    all.extend(args);
    let out = cli.run(&all);
    check(&out, 0);
    let lines = out.json();
    assert!(lines.iter().all(|l| l["type"] == "audit"), "{}", out.stdout);
    lines
}

fn ran_sample() -> Cli {
    let cli = ingested();
    let out = cli.run(&cli.run_args(&[]));
    check(&out, 0);
    cli
}

#[test]
fn every_recipient_once_with_every_state_change() {
    let cli = ran_sample();
    let lines = audit(&cli, &[]);
    let ledger = ledger_recipients(&cli.ledger);
    assert_eq!(lines.len(), ledger.len());
    let ids: BTreeSet<i64> = lines
        .iter()
        .map(|l| l["recipient_id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids.len(), lines.len(), "a recipient listed twice");
    let bounces = cli.run(&["--json", "bounces"]);
    check(&bounces, 0);
    let dsn_ids: BTreeSet<i64> = bounces
        .events("dsn")
        .iter()
        .map(|d| d["id"].as_i64().unwrap_or(-1))
        .collect();
    let mut bounced = 0;
    for (line, row) in lines.iter().zip(&ledger) {
        assert_eq!(line["state"], row.state.as_str(), "{line}");
        assert_eq!(line["recipient"], row.address.as_str());
        let events = line["events"].as_array().expect("events");
        assert_eq!(events[0]["from"], Value::Null, "{line}");
        // Ingest records a recipient as pending, or settles it at once: an exact duplicate
        // of mail already ingested, or one the MTA had delivered.
        if events[0]["to"] != "pending" {
            assert!(
                ["duplicate", "delivered_before"].contains(&events[0]["to"].as_str().unwrap_or("")),
                "{line}"
            );
            assert_eq!(
                events.len(),
                1,
                "a recipient settled at ingest never moves: {line}"
            );
        }
        // The chain is unbroken: each change starts where the last one ended.
        for pair in events.windows(2) {
            assert_eq!(pair[1]["from"], pair[0]["to"], "{line}");
        }
        assert_eq!(events[events.len() - 1]["to"], line["state"], "{line}");
        if line["state"] == "bounced" {
            bounced += 1;
            let last = &events[events.len() - 1];
            assert_eq!(last["dsn_id"], line["dsn_id"], "{line}");
            let id = line["dsn_id"].as_i64().expect("dsn id");
            assert!(dsn_ids.contains(&id), "dsn {id} not listed by bounces");
        }
    }
    assert!(bounced > 50, "{bounced}");
}

#[test]
fn filters_narrow_the_export() {
    let cli = ran_sample();
    let ledger = ledger_recipients(&cli.ledger);

    let anna = audit(&cli, &["--recipient", "ANNA.SCHMIDT@example.net"]);
    let expected = ledger
        .iter()
        .filter(|r| r.address.eq_ignore_ascii_case("anna.schmidt@example.net"))
        .count();
    assert!(expected > 1);
    assert_eq!(anna.len(), expected, "case-insensitive recipient match");

    let null = audit(&cli, &["--sender", "<>"]);
    let expected = ledger.iter().filter(|r| r.sender.is_empty()).count();
    assert!(expected >= 10);
    assert_eq!(null.len(), expected);
    assert!(null.iter().all(|l| l["sender"] == ""));

    let one = audit(&cli, &["--queue-id", "0009-personal"]);
    let expected = ledger
        .iter()
        .filter(|r| r.queue_id == "0009-personal")
        .count();
    assert!(expected >= 2, "0009 has several recipients");
    assert_eq!(one.len(), expected);

    let held = audit(&cli, &["--state", "held", "--window", "smtp-stopped"]);
    assert_eq!(held.len(), 6);
    assert!(
        held.iter()
            .all(|l| l["state"] == "held" && l["window"] == "smtp-stopped")
    );

    let nothing = audit(&cli, &["--queue-id", "no-such-id"]);
    assert!(nothing.is_empty());

    let bad = cli.run(&["audit", "--state", "lost"]);
    check(&bad, 64);
    assert!(
        bad.stderr.contains("--state") && bad.stderr.contains("lost"),
        "{}",
        bad.stderr
    );
}
