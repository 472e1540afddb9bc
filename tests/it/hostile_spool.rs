//! Hostile spool files and what they must not do (issue 13: items 1, 3, 7, 8, 9, 10, 12,
//! 13): a FIFO, a link to `/dev/zero` or out of the spool, a sender that cannot be a return
//! path, an arrival in year -1199, 100k recipients, one mailbox in two spellings, a second
//! path to a ledger in use. Each is quarantined (or refused) with its reason, and the rest
//! of the spool goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::incident::TestIncident;
use crate::support::minispool::{self, Mail};
use crate::support::postfix_queue::record;
use crate::support::{Cli, Output, check, ledger_recipients};

/// `--json ingest SPOOL`, expected to succeed.
#[track_caller]
fn ingest(cli: &Cli, spool: &Path) -> Output {
    let out = cli.run(&["--json".as_ref(), "ingest".as_ref(), spool.as_os_str()]);
    check(&out, 0);
    out
}

/// The reason ingest gave for quarantining the item whose path ends with `file`.
#[track_caller]
fn reason_for(out: &Output, file: &str) -> String {
    out.events("quarantined")
        .iter()
        .find(|q| q["path"].as_str().is_some_and(|p| p.ends_with(file)))
        .and_then(|q| q["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{file} not quarantined: {:?}", out.events("quarantined")))
}

#[track_caller]
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[track_caller]
fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

/// A mini eml spool of `mails` in `DIR/spool`.
fn eml_spool(cli: &Cli, mails: &[Mail]) -> PathBuf {
    minispool::write_spool(&cli.at("spool"), mails)
}

// ---------------------------------------------------------------------------------------
// 7: FIFOs, devices and links

#[test]
fn a_fifo_sidecar_is_quarantined_and_the_rest_is_ingested() {
    let cli = Cli::new();
    let spool = eml_spool(
        &cli,
        &[
            Mail::plain(1, &["a@example.net"]),
            Mail::plain(2, &["b@example.net"]),
        ],
    );
    let sidecar = spool.join("0001-mini.json");
    std::fs::remove_file(&sidecar).unwrap();
    mkfifo(&sidecar);
    // A FIFO `.eml` too: it must not be opened either.
    mkfifo(&spool.join("0003-mini.eml"));
    let out = ingest(&cli, &spool);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["new"], 1, "{summary}");
    assert_eq!(summary["quarantined"], 2, "{summary}");
    let reason = reason_for(&out, "0001-mini.eml");
    assert!(reason.contains("a FIFO"), "{reason}");
    assert!(reason.contains("0001-mini.json"), "{reason}");
    assert!(reason_for(&out, "0003-mini.eml").contains("a FIFO"));
}

#[test]
fn links_to_dev_zero_and_out_of_the_spool_are_refused_not_followed() {
    let cli = Cli::new();
    let secret = cli.at("secret.txt");
    std::fs::write(
        &secret,
        "Subject: secret\r\nDelivered-To: x@example.net\r\nReturn-Path: <s@example.org>\r\n\r\nSECRET\r\n",
    )
    .unwrap();
    let spool = eml_spool(
        &cli,
        &[
            Mail::plain(1, &["a@example.net"]),
            Mail::plain(2, &["b@example.net"]),
        ],
    );
    let sidecar = spool.join("0001-mini.json");
    std::fs::remove_file(&sidecar).unwrap();
    symlink("/dev/zero", &sidecar);
    symlink(&secret, &spool.join("0003-leak.eml"));
    let out = ingest(&cli, &spool);
    assert_eq!(out.event("ingest_summary")["new"], 1);
    for file in ["0001-mini.eml", "0003-leak.eml"] {
        let reason = reason_for(&out, file);
        assert!(
            reason.contains("symbolic link: not followed"),
            "{file}: {reason}"
        );
    }
    assert!(
        !ledger_recipients(&cli.ledger)
            .iter()
            .any(|r| r.address == "x@example.net"),
        "the linked file was ingested"
    );

    // Maildir: a link in `cur/` to a file outside, and a FIFO in `new/`.
    let maildir = cli.at("maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::copy(&secret, maildir.join("new/1.M1.host")).unwrap();
    symlink(&secret, &maildir.join("cur/2.M2.host:2,S"));
    mkfifo(&maildir.join("new/3.M3.host"));
    let other = Cli::new();
    let out = ingest(&other, &maildir);
    assert_eq!(out.event("ingest_summary")["new"], 1);
    assert!(reason_for(&out, "cur/2.M2.host:2,S").contains("symbolic link: not followed"));
    assert!(reason_for(&out, "new/3.M3.host").contains("a FIFO"));
}

#[test]
fn an_mbox_that_is_a_fifo_is_refused_without_hanging() {
    let cli = Cli::new();
    let fifo = cli.at("inbox.mbox");
    mkfifo(&fifo);
    let out = cli.run(&[
        "ingest".as_ref(),
        "--format".as_ref(),
        "mbox".as_ref(),
        fifo.as_os_str(),
    ]);
    check(&out, 65);
    assert!(
        out.stderr.contains("must be a regular file"),
        "{}",
        out.stderr
    );
}

/// An Exim spool with the flat fixture's messages, in `DIR/exim`.
fn exim_spool(cli: &Cli) -> (PathBuf, Vec<String>) {
    let from = crate::support::fixtures().join("exim/flat/spool/input");
    let input = cli.at("exim/input");
    std::fs::create_dir_all(&input).unwrap();
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::copy(entry.path(), input.join(&name)).unwrap();
        if let Some(id) = name.strip_suffix("-H") {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    assert!(ids.len() >= 3, "the Exim fixture has too few messages");
    (cli.at("exim"), ids)
}

#[test]
fn exim_data_files_that_are_fifos_or_links_to_dev_zero_are_quarantined() {
    let cli = Cli::new();
    let (spool, ids) = exim_spool(&cli);
    let input = spool.join("input");
    let fifo = input.join(format!("{}-D", ids[0]));
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let zero = input.join(format!("{}-D", ids[1]));
    std::fs::remove_file(&zero).unwrap();
    symlink("/dev/zero", &zero);
    let journal = input.join(format!("{}-J", ids[2]));
    mkfifo(&journal);
    let out = ingest(&cli, &spool);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["messages"], ids.len() as u64 - 3, "{summary}");
    assert!(reason_for(&out, &format!("{}-D", ids[0])).contains("a FIFO"));
    assert!(reason_for(&out, &format!("{}-D", ids[1])).contains("symbolic link: not followed"));
    assert!(reason_for(&out, &format!("{}-J", ids[2])).contains("a FIFO"));
}

// ---------------------------------------------------------------------------------------
// 9, 10: senders that cannot be a return path, arrivals that cannot be real

#[test]
fn senders_that_cannot_be_a_return_path_are_quarantined_at_ingest() {
    let cli = Cli::new();
    let bad = [
        "alice@example.org\r\nBcc: victim@evil.com",
        "alice\u{1b}[2J@example.org",
        "@",
        "<@>",
        "\"\"",
        "\"\"@",
        "MAILER-DAEMON",
        "a@example.org> BODY=8BITMIME",
        "bob@example.org\u{85}",
    ];
    let long = format!("{}@example.org", "a".repeat(900));
    let mut mails: Vec<Mail> = bad
        .iter()
        .copied()
        .chain([long.as_str()])
        .enumerate()
        .map(|(i, sender)| {
            let mut m = Mail::plain(i + 1, &["r@example.net"]);
            m.sidecar["sender"] = json!(sender);
            m
        })
        .collect();
    mails.push(Mail::plain(99, &["r@example.net"]));
    let spool = eml_spool(&cli, &mails);
    let out = ingest(&cli, &spool);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["new"], 1, "{summary}");
    assert_eq!(summary["quarantined"], bad.len() as u64 + 1, "{summary}");
    for (i, sender) in bad.iter().enumerate() {
        let reason = reason_for(&out, &format!("{:04}-mini.eml", i + 1));
        assert!(reason.starts_with("sender"), "{sender:?}: {reason}");
        assert!(
            !reason.chars().any(char::is_control),
            "{sender:?}: {reason:?}"
        );
    }
    let reason = reason_for(&out, &format!("{:04}-mini.eml", bad.len() + 1));
    assert!(reason.contains("longer than the 256"), "{reason}");
}

/// A small Postfix queue file whose `T` record says `time`.
fn postfix_file(time: &str, sender: &str) -> Vec<u8> {
    let mut f = record(b'C', format!("{:>15} {:>15} {:>15}", 0, 0, 1).as_bytes());
    f.extend(record(b'T', format!("{time} 0").as_bytes()));
    f.extend(record(b'S', sender.as_bytes()));
    f.extend(record(b'R', b"r@example.net"));
    f.extend(record(b'M', b""));
    f.extend(record(b'N', format!("Subject: sent at {time}").as_bytes()));
    f.extend(record(b'N', b""));
    f.extend(record(b'N', b"body"));
    f.extend(record(b'X', b""));
    f.extend(record(b'E', b""));
    f
}

#[test]
fn arrivals_before_1990_or_after_the_file_are_quarantined_postfix_and_exim() {
    let cli = Cli::new();
    let deferred = cli.at("postfix/deferred/A");
    std::fs::create_dir_all(&deferred).unwrap();
    let in_a_week = (chrono::Utc::now() + chrono::TimeDelta::days(7)).timestamp();
    let cases = [
        (
            "A1111111111",
            "-99999999999".to_string(),
            Some("before 1990"),
        ),
        ("A2222222222", "0".to_string(), Some("before 1990")),
        (
            "A3333333333",
            in_a_week.to_string(),
            Some("more than a day after"),
        ),
        ("A4444444444", "1674468000".to_string(), None),
        ("A5555555555", "1674468001".to_string(), None),
    ];
    for (id, time, _) in &cases {
        std::fs::write(deferred.join(id), postfix_file(time, "s@example.org")).unwrap();
    }
    // A bad sender in a real queue file is screened the same way.
    std::fs::write(
        deferred.join("A6666666666"),
        postfix_file("1674468000", "MAILER-DAEMON"),
    )
    .unwrap();
    let out = ingest(&cli, &cli.at("postfix"));
    assert_eq!(out.event("ingest_summary")["new"], 2);
    for (id, _, why) in &cases {
        if let Some(why) = why {
            let reason = reason_for(&out, id);
            assert!(reason.contains(why), "{id}: {reason}");
        }
    }
    assert!(reason_for(&out, "A6666666666").contains("no `@domain`"));
    assert!(reason_for(&out, "A1111111111").starts_with("arrival time -1199-"));

    // Exim: the received time on the `-H` file's third line.
    let exim = Cli::new();
    let (spool, ids) = exim_spool(&exim);
    let h = spool.join("input").join(format!("{}-H", ids[0]));
    let text = std::fs::read_to_string(&h).unwrap();
    let mut lines: Vec<&str> = text.split('\n').collect();
    assert!(lines[3].ends_with(" 0"), "line 4 of -H: {}", lines[3]);
    lines[3] = "-99999999999 0";
    std::fs::write(&h, lines.join("\n")).unwrap();
    let out = ingest(&exim, &spool);
    assert_eq!(
        out.event("ingest_summary")["messages"],
        ids.len() as u64 - 1
    );
    assert!(reason_for(&out, &format!("{}-H", ids[0])).contains("before 1990"));
}

/// Rewrites one message of the ledger as an earlier version may have left it. Raw SQL on
/// purpose: it forges rows that `Ledger`'s API never writes.
fn patch_message(ledger: &Path, queue_id: &str, column: &str, value: &dyn rusqlite::ToSql) {
    let conn = rusqlite::Connection::open(ledger).expect("open ledger");
    let n = conn
        .execute(
            &format!("UPDATE messages SET {column} = ?1 WHERE queue_id = ?2"),
            rusqlite::params![value, queue_id],
        )
        .expect("patch ledger");
    assert_eq!(n, 1, "no message {queue_id}");
}

/// `run` into a Maildir store where `/` in a local part fails the recipient (5.1.3), so
/// each message owes a DSN.
fn failing_run(cli: &Cli) -> Output {
    let store = format!("maildir:{}", cli.store().display());
    cli.run(&minispool::run_args(cli, &store, &[]))
}

#[test]
fn a_sender_no_dsn_can_be_made_for_drops_its_recipients_and_the_other_dsns_are_made() {
    let cli = Cli::new();
    let mails = [
        Mail::plain(1, &["a/b@example.net"]),
        Mail::plain(2, &["c/d@example.net"]),
        Mail::plain(3, &["e/f@example.net"]),
    ];
    minispool::ingest(&cli, &mails);
    // Senders an earlier version ingested without looking.
    patch_message(
        &cli.ledger,
        "0001-mini",
        "sender",
        &"alice@example.org\r\nBcc: victim@evil.com",
    );
    patch_message(
        &cli.ledger,
        "0003-mini",
        "sender",
        &"a@example.org> BODY=8BITMIME",
    );
    let out = failing_run(&cli);
    check(&out, 0);
    let by_queue: Vec<(String, String)> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| (r.queue_id, r.state))
        .collect();
    assert_eq!(
        by_queue,
        [
            ("0001-mini".to_string(), "dropped".to_string()),
            ("0002-mini".to_string(), "bounced".to_string()),
            ("0003-mini".to_string(), "dropped".to_string()),
        ]
    );
    let dsns = minispool::outbox_dsns(&cli.outbox());
    assert_eq!(dsns.len(), 1, "{:?}", dsns.keys());
    let events = minispool::ledger_events(&cli.ledger);
    let dropped: Vec<_> = events.iter().filter(|e| e.to_state == "dropped").collect();
    assert_eq!(dropped.len(), 2, "{events:?}");
    for e in dropped {
        let detail = e.detail.as_deref().unwrap_or_default();
        assert!(detail.starts_with("no DSN: sender"), "{detail}");
    }
    // The next run has nothing left owed: it does not fail either.
    check(&failing_run(&cli), 0);
}

#[test]
fn bounces_preview_says_a_dsn_cannot_be_made_instead_of_failing() {
    let cli = Cli::new();
    minispool::ingest(&cli, &[Mail::plain(1, &["r@example.net"])]);
    patch_message(&cli.ledger, "0001-mini", "sender", &"MAILER-DAEMON");
    let incident = TestIncident::deliver_all()
        .every_window("bounce")
        .write(cli.path());
    let out = cli.run(&[
        "bounces".as_ref(),
        "preview".as_ref(),
        "--message".as_ref(),
        "0001-mini".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--now".as_ref(),
        crate::support::NOW.as_ref(),
    ]);
    check(&out, 0);
    assert!(
        out.stderr.contains("no DSN would be made") && out.stderr.contains("no `@domain`"),
        "{}",
        out.stderr
    );
}

#[test]
fn one_arrival_an_earlier_version_kept_does_not_break_report_or_run() {
    let cli = Cli::new();
    let mails = [
        Mail::plain(1, &["a/b@example.net"]),
        Mail::plain(2, &["c/d@example.net"]),
    ];
    minispool::ingest(&cli, &mails);
    let ancient = chrono::DateTime::from_timestamp(-99_999_999_999, 0).unwrap();
    patch_message(&cli.ledger, "0001-mini", "arrival", &ancient.to_rfc3339());
    patch_message(
        &cli.ledger,
        "0001-mini",
        "arrival_unix",
        &ancient.timestamp(),
    );
    let incident = TestIncident::deliver_all().write(cli.path());
    let report = cli.run(&[
        "--json".as_ref(),
        "report".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--now".as_ref(),
        crate::support::NOW.as_ref(),
    ]);
    check(&report, 0);
    let html = cli.at("report.html");
    let report = cli.run(&[
        "report".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--now".as_ref(),
        crate::support::NOW.as_ref(),
        "--html".as_ref(),
        html.as_os_str(),
    ]);
    check(&report, 0);
    // One column per hour: the year -1199 arrival is left out of the chart, and said so
    // (it made 28 million columns, 2 GB and four minutes).
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("1 messages that arrived before"),
        "the page does not say what it left out"
    );
    assert_eq!(cli.status()["messages"], 2);
    let out = failing_run(&cli);
    check(&out, 0);
    let states: Vec<String> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| r.state)
        .collect();
    // The ancient one is out of every window, so held by `outside = "hold"`; the other
    // failed at the store and was bounced.
    assert_eq!(states.len(), 2);
    assert_eq!(states[1], "bounced", "{states:?}");
}

// ---------------------------------------------------------------------------------------
// 1, 8, 12, 13: one mailbox, many spellings; many recipients

#[test]
fn the_same_bytes_spooled_twice_with_other_spellings_are_duplicates() {
    let cli = Cli::new();
    let first = Mail::plain(
        1,
        &["bob@example.net", "\"carol\"@example.net", "a@EXÄMPLE.NET"],
    );
    let mut second = first.clone();
    second.name = "0002-copy".into();
    second.sidecar["recipients"] = json!([
        "Bob@Example.NET",
        "carol@example.net",
        "a@xn--exmple-cua.net",
        "dave@example.net"
    ]);
    let spool = eml_spool(&cli, &[first, second]);
    ingest(&cli, &spool);
    let states: Vec<(String, String, String)> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| (r.queue_id, r.address, r.state))
        .collect();
    let want = [
        ("0001-mini", "bob@example.net", "pending"),
        ("0001-mini", "\"carol\"@example.net", "pending"),
        ("0001-mini", "a@EXÄMPLE.NET", "pending"),
        ("0002-copy", "Bob@Example.NET", "duplicate"),
        ("0002-copy", "carol@example.net", "duplicate"),
        ("0002-copy", "a@xn--exmple-cua.net", "duplicate"),
        ("0002-copy", "dave@example.net", "pending"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(q, a, s)| (q.to_string(), a.to_string(), s.to_string()))
        .collect();
    assert_eq!(states, want);

    // Delivered into Maildir: one file per mailbox, even across the two messages.
    let out = failing_run(&cli);
    check(&out, 0);
    for folder in [
        "example.net/bob",
        "example.net/carol",
        "exämple.net/a",
        "example.net/dave",
    ] {
        let new = cli.store().join(folder).join("Maildir/new");
        let files = crate::support::list_files(&new);
        assert_eq!(files.len(), 1, "{folder}: {files:?}");
    }
}

/// Over LMTP into a real Dovecot: two MX hosts' copies of one message, the recipients
/// spelled differently, reach each mailbox once (each got two copies before).
#[test]
fn two_spools_copies_reach_each_dovecot_mailbox_once_over_lmtp() {
    use crate::support::mailhost::{MailHost, User};
    let host = MailHost::start(&[User::new("bob@example.net"), User::new("carol@example.net")]);
    let cli = Cli::new();
    let first = Mail::plain(1, &["bob@example.net", "\"carol\"@example.net"]);
    let mut second = first.clone();
    second.name = "0002-other-mx".into();
    second.sidecar["recipients"] = json!(["Bob@Example.NET", "carol@EXAMPLE.net"]);
    minispool::ingest(&cli, &[first, second]);
    check(
        &cli.run(&minispool::run_args(&cli, &host.tcp_store(), &[])),
        0,
    );
    for mailbox in ["bob@example.net", "carol@example.net"] {
        let copies = minispool::copies_of(&host.delivered(mailbox), &minispool::message_id(1));
        assert_eq!(copies, 1, "{mailbox}");
    }
}

#[test]
fn u0085_in_an_address_is_kept_and_refused_like_other_controls() {
    let cli = Cli::new();
    minispool::ingest(
        &cli,
        &[Mail::plain(
            1,
            &["bob@example.net\u{85}", "carol@example.net"],
        )],
    );
    let rows = ledger_recipients(&cli.ledger);
    assert_eq!(
        rows[0].address, "bob@example.net\u{85}",
        "stripped at ingest"
    );
    check(&failing_run(&cli), 0);
    let rows = ledger_recipients(&cli.ledger);
    assert_eq!(rows[0].status.as_deref(), Some("5.1.3"), "{:?}", rows[0]);
    assert_eq!(rows[0].state, "bounced");
    assert_eq!(rows[1].state, "delivered");
}

#[test]
fn a_sidecar_with_100k_recipients_is_ingested_whole() {
    let cli = Cli::new();
    let n = 100_000;
    let mut recipients: Vec<Value> = (0..n)
        .map(|i| json!(format!("user{i}@example.net")))
        .collect();
    // Other spellings of mailboxes already listed: one recipient each.
    recipients.extend((0..1000).map(|i| json!(format!("USER{i}@Example.NET"))));
    recipients.extend((0..1000).map(|i| json!(format!("\"user{i}\"@example.net"))));
    let mut mail = Mail::plain(1, &["x@example.net"]);
    mail.sidecar["recipients"] = Value::Array(recipients);
    let mut copy = mail.clone();
    copy.name = "0002-copy".into();
    let spool = eml_spool(&cli, &[mail, copy]);
    let out = ingest(&cli, &spool);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["new"], 2, "{summary}");
    assert_eq!(summary["recipients"], 2 * n, "{summary}");
    let status = cli.status();
    let states = &status["states"];
    assert_eq!(states["pending"], n, "{status}");
    assert_eq!(states["duplicate"], n, "{status}");
}

// ---------------------------------------------------------------------------------------
// 3: one lock per ledger, whatever the path

#[test]
fn a_second_run_through_a_symlink_to_the_ledger_is_refused() {
    let cli = Cli::new();
    let mails = minispool::plain_spool(20, |i| vec![format!("u{i}@example.net")]);
    minispool::ingest(&cli, &mails);
    let store = format!("maildir:{}", cli.store().display());
    let slow = minispool::run_args(&cli, &store, &["--rate", "2/s", "--batch-size", "1"]);
    // `ChildGuard` stops it when the test ends, pass or fail.
    let mut first = cli.spawn(&slow);
    let lock = PathBuf::from(format!("{}.lock", cli.ledger.display()));
    let started = Instant::now();
    // The ingest left its own name in the lock file: wait for the run's.
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("`spoolreplay run`")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let link = cli.at("other-name.db");
    symlink(&cli.ledger, &link);
    let mut second = Command::new(env!("CARGO_BIN_EXE_spoolreplay"));
    second
        .current_dir(cli.path())
        .arg("--ledger")
        .arg(&link)
        .args(&slow)
        .stdin(std::process::Stdio::null());
    let second = Output::from(second.output().expect("run the second"));
    let still_running = first.try_wait().expect("try_wait").is_none();
    assert!(
        still_running,
        "the first run ended before the second started"
    );
    check(&second, 75);
    assert!(
        second.stderr.contains("in use by") && second.stderr.contains("`spoolreplay run`"),
        "the refusal does not name the holder:\n{}",
        second.stderr
    );
}
