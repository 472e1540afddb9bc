//! `spoolreplay ingest` end to end: counts, quarantine reasons, idempotence, exit codes,
//! and proof that the spool is never modified.

use crate::support::{Cli, check, fixtures, sample_spool, snapshot};

/// The six malformed items of the sample spool and a phrase of each one's reason.
const QUARANTINED: [(&str, &str); 6] = [
    ("0065-unknownkey.eml", "unknown key `client_address`"),
    ("0067-norcpt.eml", "no envelope recipients"),
    ("0106-garbage.eml", "no header block"),
    ("0133-baddate.eml", "2023-01-32T12:30:00+01:00"),
    ("0209-empty.eml", "file is empty"),
    ("0256-badjson.eml", "not valid JSON"),
];

#[test]
fn sample_spool_counts_quarantine_and_idempotence() {
    let cli = Cli::new();
    let before = snapshot(&sample_spool());

    let out = cli.ingest_sample();
    let summary = out.event("ingest_summary");
    assert_eq!(summary["format"], "eml");
    // 291 messages + 3 exact duplicates (see fixtures/README.md); 6 malformed items.
    assert_eq!(summary["messages"], 294, "{summary}");
    assert_eq!(summary["new"], 294, "{summary}");
    assert_eq!(summary["known"], 0, "{summary}");
    assert_eq!(summary["recipients"], 395, "{summary}");
    assert_eq!(summary["quarantined"], 6, "{summary}");
    assert_eq!(summary["new_quarantined"], 6, "{summary}");

    let quarantined = out.events("quarantined");
    assert_eq!(quarantined.len(), QUARANTINED.len(), "{quarantined:?}");
    for (file, phrase) in QUARANTINED {
        let item = quarantined
            .iter()
            .find(|q| q["path"].as_str().is_some_and(|p| p.ends_with(file)))
            .unwrap_or_else(|| panic!("{file} not quarantined: {quarantined:?}"));
        let reason = item["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(phrase), "{file}: reason `{reason}`");
    }
    // The human warning names each file too.
    for (file, _) in QUARANTINED {
        assert!(
            out.stderr.contains(file),
            "no warning for {file}:\n{}",
            out.stderr
        );
    }

    let again = cli.ingest_sample();
    let summary = again.event("ingest_summary");
    assert_eq!(summary["new"], 0, "{summary}");
    assert_eq!(summary["known"], 294, "{summary}");
    assert_eq!(summary["new_quarantined"], 0, "{summary}");
    assert_eq!(summary["quarantined"], 6, "{summary}");
    assert!(again.events("quarantined").is_empty());
    assert_eq!(cli.status()["messages"], 294);

    assert_eq!(
        before,
        snapshot(&sample_spool()),
        "ingest changed the spool"
    );
}

#[test]
fn missing_spool_exits_66() {
    let cli = Cli::new();
    let out = cli.run(&["ingest", "no-such-spool"]);
    check(&out, 66);
    assert!(out.stderr.contains("no-such-spool"), "{}", out.stderr);
}

#[test]
fn a_file_that_is_no_spool_exits_65() {
    let cli = Cli::new();
    let path = cli.at("notes.txt");
    std::fs::write(&path, "just some notes\n").expect("write");
    let out = cli.run(&["ingest".as_ref(), path.as_os_str()]);
    check(&out, 65);
    assert!(out.stderr.contains("notes.txt"), "{}", out.stderr);
    assert!(out.stderr.contains("is not a spool"), "{}", out.stderr);
    assert!(
        out.stderr.contains("--format"),
        "hint missing: {}",
        out.stderr
    );
}

#[test]
fn forced_mbox_on_a_folder_is_an_error_not_a_panic() {
    let cli = Cli::new();
    let dir = fixtures().join("spools/maildir");
    let out = cli.run(&[
        "ingest".as_ref(),
        "--format".as_ref(),
        "mbox".as_ref(),
        dir.as_os_str(),
    ]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.code.is_some(), "killed by a signal: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.contains("mbox"), "{}", out.stderr);
    assert!(out.stderr.contains("regular file"), "{}", out.stderr);
}

#[test]
fn small_fixture_spools_of_every_format() {
    // (spool, format, messages, recipients, quarantined)
    let cases = [
        // Only the final delivery's Delivered-To names a recipient (one per Maildir file), and
        // `Carol@Example.NET` and `carol@example.net` would be one mailbox anyway.
        ("spools/maildir", "maildir", 2, 2, 3),
        ("spools/inbox.mbox", "mbox", 3, 4, 2),
        ("spools/eml", "eml", 3, 5, 7),
    ];
    for (rel, format, messages, recipients, quarantined) in cases {
        let cli = Cli::new();
        let path = fixtures().join(rel);
        let out = cli.run(&["--json".as_ref(), "ingest".as_ref(), path.as_os_str()]);
        check(&out, 0);
        let s = out.event("ingest_summary");
        assert_eq!(s["format"], format, "{rel}: {s}");
        assert_eq!(s["messages"], messages, "{rel}: {s}");
        assert_eq!(s["new"], messages, "{rel}: {s}");
        assert_eq!(s["recipients"], recipients, "{rel}: {s}");
        assert_eq!(s["quarantined"], quarantined, "{rel}: {s}");
        assert_eq!(
            out.events("quarantined").len(),
            quarantined as usize,
            "{rel}"
        );
        assert_eq!(cli.status()["messages"], messages, "{rel}");
    }
}
