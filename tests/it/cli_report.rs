//! `spoolreplay report`: the dry-run plan per window and disposition, that it writes
//! nothing, and its incident-file and option errors.

use std::collections::BTreeMap;

use crate::support::{Cli, NOW, check, incident, sha256_file};

fn report_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--json".to_string(),
        "report".into(),
        "--incident".into(),
        incident().display().to_string(),
        "--now".into(),
        NOW.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The ledger's database file and its WAL, with their hashes. (SQLite may create an
/// empty WAL and a shared-memory index for a reader of a WAL database: neither holds data.)
fn ledger_files(cli: &Cli) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("ledger.db".to_string(), sha256_file(&cli.ledger));
    let wal = cli.at("ledger.db-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    out.insert("wal bytes".to_string(), wal_len.to_string());
    out
}

#[test]
fn plan_per_window_and_disposition() {
    let cli = Cli::new();
    cli.ingest_sample();
    let before = ledger_files(&cli);
    assert!(before.contains_key("ledger.db"), "{before:?}");

    let out = cli.run(&report_args(&["--rate", "500/s"]));
    check(&out, 0);
    let mut plan: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for row in out.events("plan") {
        let key = (
            row["window"].as_str().unwrap_or_default().to_string(),
            row["disposition"].as_str().unwrap_or_default().to_string(),
        );
        let value = (
            row["messages"].as_u64().unwrap_or_default(),
            row["recipients"].as_u64().unwrap_or_default(),
        );
        assert!(
            plan.insert(key.clone(), value).is_none(),
            "row twice: {key:?}"
        );
    }
    let pairs: Vec<(&str, &str)> = plan.keys().map(|(w, d)| (w.as_str(), d.as_str())).collect();
    // With the clock two days after restored_at, the oldest queued mail has expired;
    // the null-sender mail of the bouncing windows is dropped, never bounced to <>.
    let mut expected = vec![
        ("outside", "hold"),
        ("queued", "deliver"),
        ("queued", "drop"),
        ("queued", "expire"),
        ("rejected-550", "bounce"),
        ("rejected-550", "drop"),
        ("smtp-stopped", "hold"),
        ("tempfail-452", "deliver"),
    ];
    expected.sort();
    assert_eq!(pairs, expected, "{plan:?}");

    let recipients: u64 = plan.values().map(|(_, r)| r).sum();
    let messages: u64 = plan.values().map(|(m, _)| m).sum();
    // The three exact duplicates (0069, 0071, 0173) are settled at ingest, so the plan
    // covers every other recipient once.
    assert_eq!(
        recipients,
        395 - 3,
        "every open ingested recipient is planned once: {plan:?}"
    );
    assert_eq!(messages, 294 - 3, "{plan:?}");
    // Table of fixtures/README.md: smtp-stopped 6 messages; before + after 5 + 6.
    assert_eq!(plan[&("smtp-stopped".into(), "hold".into())], (6, 6));
    assert_eq!(plan[&("outside".into(), "hold".into())], (11, 11));
    // tempfail-452: 106 messages, 142 entries minus one repeated entry; its two null
    // senders are delivered like any other mail.
    assert_eq!(plan[&("tempfail-452".into(), "deliver".into())], (106, 141));
    // rejected-550: 44 messages (the duplicate 0173 is settled at ingest); 3 from <>.
    assert_eq!(plan[&("rejected-550".into(), "drop".into())].0, 3);
    assert_eq!(plan[&("rejected-550".into(), "bounce".into())].0, 41);

    let summary = out.event("report_summary");
    assert_eq!(summary["messages"], 294);
    assert_eq!(summary["now"], "2023-01-28T06:00:00+01:00");
    assert_eq!(summary["states"]["pending"], 395 - 3, "{summary}");
    assert_eq!(summary["states"]["duplicate"], 3, "{summary}");
    assert_eq!(summary["quarantined"], 6);
    let deliver: u64 = plan
        .iter()
        .filter(|((_, d), _)| d == "deliver")
        .map(|(_, (m, _))| m)
        .sum();
    assert_eq!(summary["deliveries"], deliver, "{summary}");
    let projected = summary["projected_seconds"].as_f64();
    assert!(projected.is_some_and(|s| s > 0.0), "{summary}");
    assert_eq!(out.events("quarantined").len(), 6);

    let plain = cli.run(&report_args(&[]));
    check(&plain, 0);
    let summary = plain.event("report_summary");
    assert!(summary["projected_seconds"].is_null(), "{summary}");

    // A human report too, and still nothing written.
    let human = cli.run(&report_args(&[])[1..]);
    check(&human, 0);
    assert!(human.stdout.contains("rejected-550"), "{}", human.stdout);
    assert_eq!(before, ledger_files(&cli), "report changed the ledger");
    assert!(!cli.store().exists() && !cli.outbox().exists());
}

/// Writes a copy of the sample incident with one text replacement.
fn bad_incident(cli: &Cli, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(incident()).expect("read incident");
    assert!(text.contains(from), "`{from}` not in the sample incident");
    let path = cli.at(name);
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write incident");
    path
}

#[test]
fn incident_errors_exit_78_naming_key_and_line() {
    let cli = Cli::new();
    cli.ingest_sample();
    // (file, replace, with, phrases the error must contain)
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        (
            "unknown-key.toml",
            "queue_lifetime =",
            "queue_lifetme =",
            &["queue_lifetme", "line 30"],
        ),
        (
            "overlap.toml",
            "end = \"2023-01-23T16:00:00+01:00\"",
            "end = \"2023-01-23T18:00:00+01:00\"",
            &["overlaps", "smtp-stopped", "queued", "line 63"],
        ),
        (
            "bad-time.toml",
            "restored_at = \"2023-01-26T13:00:00+01:00\"",
            "restored_at = \"2023-01-26 13:00\"",
            &["restored_at", "line 26", "2023-01-26 13:00"],
        ),
        (
            "bad-duration.toml",
            "queue_lifetime = \"5d\"",
            "queue_lifetime = \"5 weeks\"",
            &["queue_lifetime", "line 30", "5 weeks"],
        ),
    ];
    for (name, from, to, phrases) in cases {
        let path = bad_incident(&cli, name, from, to);
        let out = cli.run(&[
            "report".as_ref(),
            "--incident".as_ref(),
            path.as_os_str(),
            "--now".as_ref(),
            NOW.as_ref(),
        ]);
        check(&out, 78);
        assert!(out.stderr.contains(name), "{name}: {}", out.stderr);
        for phrase in phrases {
            assert!(
                out.stderr.contains(phrase),
                "{name}: no `{phrase}` in {}",
                out.stderr
            );
        }
    }
}

#[test]
fn missing_incident_exits_66() {
    let cli = Cli::new();
    cli.ingest_sample();
    let out = cli.run(&[
        "report",
        "--incident",
        "no-such-incident.toml",
        "--now",
        NOW,
    ]);
    check(&out, 66);
    assert!(
        out.stderr.contains("no-such-incident.toml"),
        "{}",
        out.stderr
    );
}

#[test]
fn garbage_now_exits_64() {
    let cli = Cli::new();
    cli.ingest_sample();
    let mut args = report_args(&[]);
    let last = args.len() - 1;
    args[last] = "garbage".into();
    let out = cli.run(&args);
    check(&out, 64);
    assert!(out.stderr.contains("--now"), "{}", out.stderr);
    assert!(out.stderr.contains("garbage"), "{}", out.stderr);
}

#[test]
fn the_wall_clock_is_shown_to_the_second() {
    let cli = crate::support::ingested();
    let out = cli.run(&["report", "--incident", &incident().display().to_string()]);
    check(&out, 0);
    let first = out.stdout.lines().next().unwrap_or_default();
    // `Plan for "…" at 2026-12-01T10:11:12+00:00 (294 messages in the ledger)`
    let at = first
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    let parsed = chrono::DateTime::parse_from_rfc3339(at);
    assert!(parsed.is_ok(), "not RFC 3339: `{at}` in {first}");
    assert_eq!(at.len(), "2026-12-01T10:11:12+00:00".len(), "{first}");
    assert!(!at.contains('.'), "a fraction of a second: {first}");

    let json = cli.run(&[
        "--json",
        "report",
        "--incident",
        &incident().display().to_string(),
    ]);
    check(&json, 0);
    let now = json.event("report_summary")["now"].to_string();
    assert!(!now.contains('.'), "{now}");
}

#[test]
fn csv_starts_with_its_header_and_keeps_sections_apart() {
    let cli = crate::support::ingested();
    for extra in [
        &["--incident", &incident().display().to_string()][..],
        &["--affected"],
    ] {
        let mut args = vec!["report", "--now", NOW, "--format", "csv"];
        args.extend(extra.iter().map(|s| &**s));
        let out = cli.run(&args);
        check(&out, 0);
        assert!(
            out.stdout.starts_with("table,"),
            "{args:?}:\n{}",
            out.stdout
        );
        // Each later section is one empty line, then its header.
        let sections = out.stdout.split("\n\n").collect::<Vec<_>>();
        assert!(sections.len() >= 2, "{}", out.stdout);
        assert!(
            sections.iter().all(|s| s.starts_with("table,")),
            "{}",
            out.stdout
        );
    }
}
