//! Safe at 3 a.m. (issue 12): mistakes a tired operator makes are refused or said out loud,
//! never a silent success or an irreversible action. A missing ledger, an unknown audit
//! window, a mass bounce by a wrong clock, an unwritable outbox, DSNs left unsent, a spool
//! that changed since ingest, and numbers that must agree between tables.

use crate::support::{Cli, check, ingested, list_files};

#[test]
fn run_without_a_ledger_exits_66_and_creates_nothing() {
    let cli = Cli::new();
    let out = cli.run(&cli.run_args(&[]));
    check(&out, 66);
    assert!(out.stderr.contains("no ledger"), "{}", out.stderr);
    assert!(out.stderr.contains("ingest"), "{}", out.stderr);
    // Not the ledger, not its lock file, not the store nor the outbox.
    assert_eq!(list_files(cli.path()), Default::default());
    for args in [
        vec!["bounces", "write", "--outbox", "out"],
        vec!["bounces", "send", "--relay", "smtp://127.0.0.1:1"],
    ] {
        let out = cli.run(&args);
        check(&out, 66);
        assert_eq!(list_files(cli.path()), Default::default(), "{args:?}");
    }
}

#[test]
fn audit_names_a_window_the_ledger_does_not_know() {
    let cli = ingested();
    let out = cli.run(&["audit", "--window", "queued"]);
    check(&out, 0);
    assert!(
        out.stderr.contains("window `queued`") && out.stderr.contains("none yet"),
        "{}",
        out.stderr
    );
    check(&cli.run(&cli.run_args(&[])), 0);
    let out = cli.run(&["audit", "--window", "queud"]);
    check(&out, 0);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("window `queud`") && out.stderr.contains("queued, rejected-550"),
        "{}",
        out.stderr
    );
    let out = cli.run(&["audit", "--window", "queued"]);
    check(&out, 0);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert!(!out.stdout.is_empty());
}
