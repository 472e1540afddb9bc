//! The store circuit breaker (issue 18 item 3) against a real Dovecot whose user
//! database cannot be read: every recipient gets `451 4.3.0`. The run says so within its
//! first recipients (not after the lifetimes), probes one message at a time, and exits
//! 75 after `--store-timeout`, with nothing marked failed.

use std::os::unix::fs::PermissionsExt;

use crate::support::mailhost::{MailHost, User};
use crate::support::minispool::{self, run_args};
use crate::support::{Cli, check, ledger_recipients};

const MESSAGES: usize = 30;

#[test]
fn a_store_refusing_everyone_alike_trips_the_breaker_and_exits_75() {
    let users: Vec<User> = (0..5)
        .map(|i| User::new(&format!("u{i}@example.net")))
        .collect();
    let host = MailHost::start(&users);
    // The user database becomes unreadable (Dovecot's auth runs as its own user) and
    // Dovecot starts again without the users it had read: its auth fails for everyone.
    host.stop();
    let db = host.root().join("users");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    host.restart();
    let cli = Cli::new();
    let mails = minispool::plain_spool(MESSAGES, |i| vec![format!("u{}@example.net", i % 5)]);
    minispool::ingest(&cli, &mails);
    let args = run_args(
        &cli,
        &host.tcp_store(),
        &[
            "--breaker-recipients",
            "6",
            "--breaker-mailboxes",
            "3",
            "--store-timeout",
            "4s",
        ],
    );
    let out = cli.run(&args);
    check(&out, 75);

    let warnings = out.events("warning");
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    let text = warnings[0]["text"].as_str().expect("text");
    assert!(
        text.contains("refused the last 6 recipients (3 mailboxes) since ")
            && text.contains("451 4.3.0"),
        "{text}"
    );
    assert!(
        out.stderr.contains("warning: the store refused"),
        "{}",
        out.stderr
    );
    let summary = out.event("run_summary");
    let stopped = summary["stopped"].as_str().expect("a stop reason");
    assert!(
        stopped.contains("refusing every recipient") && stopped.contains("451 4.3.0"),
        "{stopped}"
    );
    assert_eq!(summary["failed"], 0, "{summary}");

    let rows = ledger_recipients(&cli.ledger);
    assert!(
        rows.iter()
            .all(|r| r.state == "deferred" || r.state == "pending"),
        "{rows:?}"
    );
    let tried = rows.iter().filter(|r| r.state == "deferred").count();
    // The first 6 tripped it; after that one message per probe, a few probes in 4 s;
    // far from all 30.
    assert!(
        (7..MESSAGES).contains(&tried),
        "{tried} recipients tried: {rows:?}\n{}",
        out.stderr
    );
}
