//! `spoolreplay run` against a scripted SMTP peer (`support::smtp_peer`, threads of this
//! process on 127.0.0.1:0): per-recipient deferral, a 421 mid-run and the pace it causes,
//! a reply lost after the final dot under both `--uncertain` policies, a stalled greeting,
//! the store going away mid-run, RFC 3461 parameters only to a DSN peer, 8BITMIME, and the
//! adaptive pace staying under `--rate`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::minispool::{self, Mail, message_id, state_paths};
use crate::support::smtp_peer::{Dot, Peer, Script, Transaction};
use crate::support::{Cli, check, ledger_recipients};

/// `n` one-recipient messages, to `rcpt1@example.test` … `rcpt4@example.test` in turn.
fn one_recipient_spool(n: usize) -> Vec<Mail> {
    minispool::plain_spool(n, |i| vec![format!("rcpt{}@example.test", i % 4 + 1)])
}

/// Every (message, recipient) of `mails` has exactly `want` accepted copies at `peer`.
#[track_caller]
fn assert_copies(peer: &Peer, mails: &[Mail], want: usize) {
    let mut checked = 0;
    for (i, mail) in mails.iter().enumerate() {
        for r in mail.sidecar["recipients"].as_array().expect("recipients") {
            let address = r.as_str().expect("plain recipient");
            assert_eq!(
                peer.copies(&message_id(i + 1), address),
                want,
                "message {} to {address}",
                i + 1
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// `pace N/s (reason)` notices as (rate, reason), in order.
fn pace_notices(json: &[Value]) -> Vec<(f64, String)> {
    json.iter()
        .filter(|v| v["type"] == "notice")
        .filter_map(|v| v["text"].as_str())
        .filter_map(|t| {
            let rest = t.strip_prefix("pace ")?;
            let (rate, reason) = rest.split_once("/s")?;
            Some((rate.parse().ok()?, reason.trim().to_string()))
        })
        .collect()
}

#[test]
fn run_smtp_452_for_one_recipient_defers_only_that_recipient() {
    let refusals = AtomicU64::new(0);
    let peer = Peer::start(Script {
        on_rcpt: Box::new(move |_, address| {
            (address == "late@example.test" && refusals.fetch_add(1, Ordering::SeqCst) < 2)
                .then(|| "452 4.2.2 <late@example.test> mailbox full, try later".into())
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = minispool::plain_spool(5, |i| match i {
        3 => vec![
            "a@example.test".into(),
            "late@example.test".into(),
            "b@example.test".into(),
        ],
        _ => vec![format!("r{i}@example.test")],
    });
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--retry-delay", "1s", "--retry-max", "1s"],
    ));
    check(&out, 0);
    assert_copies(&peer, &mails, 1);
    let paths = state_paths(&cli.ledger);
    for ((queue_id, address), path) in &paths {
        let deferrals = path.iter().filter(|s| *s == "deferred").count();
        let want = if address == "late@example.test" { 2 } else { 0 };
        assert_eq!(deferrals, want, "{queue_id} {address}: {path:?}");
        assert_eq!(path.last().map(String::as_str), Some("delivered"));
    }
    // The other recipients of message 3 went in the first transaction, without `late`.
    let first = peer
        .delivered()
        .into_iter()
        .find(|t| t.contains(&message_id(3)))
        .expect("message 3 delivered");
    assert_eq!(first.accepted(), ["a@example.test", "b@example.test"]);
}

#[test]
fn run_smtp_421_mid_run_slows_the_pace_then_recovers_delivering_each_once() {
    let peer = Peer::start(Script {
        on_mail: Box::new(|n| {
            (n == 11).then(|| "421 4.7.0 peer.example.test busy, closing".into())
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = one_recipient_spool(60);
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--rate", "50/s", "--retry-delay", "1s", "--retry-max", "1s"],
    ));
    check(&out, 0);
    assert_copies(&peer, &mails, 1);
    let notices = pace_notices(&out.json());
    let cut = notices
        .iter()
        .position(|(rate, why)| why.contains("421") && *rate < 50.0)
        .unwrap_or_else(|| panic!("no slow-down for the 421: {notices:?}"));
    let low = notices[cut].0;
    assert!(
        notices[cut + 1..]
            .iter()
            .any(|(rate, why)| why.contains("recovering") && *rate > low),
        "the pace did not recover after {low}/s: {notices:?}"
    );
    assert!(notices.iter().all(|(rate, _)| *rate <= 50.0), "{notices:?}");
    // The 421 closed the connection: the client opened another.
    assert!(peer.connections() >= 2);
}

/// A peer that cuts the connection after the final dot of message 3, the first time.
fn cutting_peer() -> Peer {
    let cut = AtomicBool::new(false);
    Peer::start(Script {
        on_dot: Box::new(move |_, t: &Transaction| {
            if t.contains(&message_id(3)) && !cut.swap(true, Ordering::SeqCst) {
                Dot::Cut
            } else {
                Dot::Accept
            }
        }),
        ..Script::accepting(&["8BITMIME"])
    })
}

#[test]
fn run_smtp_reply_lost_after_the_dot_is_uncertain_and_redelivered_by_default() {
    let peer = cutting_peer();
    let cli = Cli::new();
    let mails = one_recipient_spool(5);
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(&cli, &peer.url(), &[]));
    check(&out, 0);
    let seen = peer
        .transactions()
        .iter()
        .filter(|t| t.contains(&message_id(3)))
        .count();
    assert_eq!(seen, 2, "the peer saw message 3 {seen} times");
    assert_copies(&peer, &mails, 1);
    let paths = state_paths(&cli.ledger);
    for ((queue_id, _), path) in &paths {
        let uncertain = path.iter().any(|s| s == "uncertain");
        assert_eq!(
            uncertain,
            queue_id.starts_with("0003"),
            "{queue_id}: {path:?}"
        );
        assert_eq!(
            path.last().map(String::as_str),
            Some("delivered"),
            "{path:?}"
        );
    }
    let status = cli.status();
    assert_eq!(status["states"]["delivered"], 5, "{status}");
}

#[test]
fn run_smtp_reply_lost_after_the_dot_stays_uncertain_with_hold() {
    let peer = cutting_peer();
    let cli = Cli::new();
    let mails = one_recipient_spool(5);
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--uncertain", "hold"],
    ));
    check(&out, 0);
    let seen = peer
        .transactions()
        .iter()
        .filter(|t| t.contains(&message_id(3)))
        .count();
    assert_eq!(seen, 1, "held, yet sent again");
    let status = cli.status();
    assert_eq!(status["states"]["uncertain"], 1, "{status}");
    assert_eq!(status["states"]["delivered"], 4, "{status}");
    let rows = ledger_recipients(&cli.ledger);
    let held = rows
        .iter()
        .find(|r| r.state == "uncertain")
        .expect("one uncertain");
    assert!(held.queue_id.starts_with("0003"), "{held:?}");
    assert!(
        held.reply
            .as_deref()
            .is_some_and(|r| r.contains("final dot")),
        "{held:?}"
    );
    // A later run with the same policy leaves it alone.
    check(
        &cli.run(&minispool::run_args(
            &cli,
            &peer.url(),
            &["--uncertain", "hold"],
        )),
        0,
    );
    assert_eq!(cli.status()["states"]["uncertain"], 1);
}

/// A server that accepts the connection and never greets. The greeting is a reply: it is
/// waited for with `--reply-timeout` and the error says so (lettre used the connect
/// timeout and said "Resource temporarily unavailable (os error 11)").
#[test]
fn run_smtp_stalled_greeting_gives_up_and_exits_69() {
    let peer = Peer::start(Script {
        stall_greeting: true,
        ..Script::accepting(&[])
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &one_recipient_spool(2));
    let started = Instant::now();
    let mut child = cli.spawn(&minispool::run_args(
        &cli,
        &peer.url(),
        &[
            "--store-timeout",
            "3s",
            "--connect-timeout",
            "2s",
            "--reply-timeout",
            "2s",
        ],
    ));
    // The greeting must be given up after the timeouts set on the command line.
    let limit = Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().expect("kill");
            child.wait().expect("wait");
            panic!("the run still waited for the greeting after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(69), "{status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("read stdout");
    assert!(
        stdout.contains("timed out waiting for the greeting (2s, --reply-timeout)"),
        "{stdout}"
    );
    assert_eq!(cli.status()["states"]["pending"], 2);
}

#[test]
fn run_smtp_store_gone_mid_run_exits_75_then_a_later_run_finishes() {
    let first = Peer::start(Script {
        down_after: Some(5),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = one_recipient_spool(20);
    minispool::ingest(&cli, &mails);
    let started = Instant::now();
    let out = cli.run(&minispool::run_args(
        &cli,
        &first.url(),
        &["--store-timeout", "3s", "--batch-size", "1"],
    ));
    check(&out, 75);
    // One message per batch: the timeout is checked after each (see the next test).
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let summary = out.event("run_summary");
    assert!(
        summary["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("unreachable")),
        "{summary}"
    );
    let status = cli.status();
    let states = &status["states"];
    assert_eq!(states["delivered"], 5, "{status}");
    assert_eq!(states["in_flight"], 0, "{status}");
    assert_eq!(
        states["pending"].as_u64().unwrap_or(0) + states["deferred"].as_u64().unwrap_or(0),
        15,
        "{status}"
    );
    assert_eq!(first.delivered().len(), 5);

    let second = Peer::start(Script::accepting(&["8BITMIME"]));
    let out = cli.run(&minispool::run_args(&cli, &second.url(), &[]));
    check(&out, 0);
    assert_eq!(cli.status()["states"]["delivered"], 20);
    for (i, _) in mails.iter().enumerate() {
        let id = message_id(i + 1);
        let count = |p: &Peer| p.delivered().iter().filter(|t| t.contains(&id)).count();
        assert_eq!(count(&first) + count(&second), 1, "message {}", i + 1);
    }
}

/// `--store-timeout` is only looked at between batches (`wait_for_store` in
/// `src/replay/dispatch.rs`); inside a batch every remaining message is still handed to the
/// unreachable store, and each failure halves the pace (down to 0.2/s, 5 s a message). With
/// the default `--batch-size 100` a store lost mid-batch keeps the run going for minutes
/// whatever `--store-timeout` says.
#[test]
fn run_smtp_store_timeout_holds_inside_a_batch() {
    let peer = Peer::start(Script {
        down_after: Some(3),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &one_recipient_spool(20));
    let started = Instant::now();
    let mut child = cli.spawn(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--store-timeout", "3s"],
    ));
    let limit = Duration::from_secs(12);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().expect("kill");
            child.wait().expect("wait");
            panic!(
                "with --store-timeout 3s the run was still going {limit:?} after it started \
                 (the store went away after 3 messages)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(75), "{status:?}");
    assert_eq!(cli.status()["states"]["in_flight"], 0);
}

/// The sample's messages with RFC 3461 envelope parameters, and an 8-bit one.
fn dsn_parameter_spool() -> Vec<Mail> {
    ["0148", "0172", "0045", "0005"]
        .iter()
        .map(|number| {
            let dir = crate::support::sample_spool();
            let found = std::fs::read_dir(&dir)
                .expect("sample spool")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with(&format!("{number}-")) && n.ends_with(".json"))
                .unwrap_or_else(|| panic!("no sidecar for {number}"));
            Mail::from_sample(found.trim_end_matches(".json"))
        })
        .collect()
}

/// The parameters of a MAIL or RCPT line (the words after `MAIL FROM:<…>`).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().skip(2).map(String::from).collect()
}

/// Runs the DSN-parameter spool against a peer offering `extensions`.
fn run_parameter_spool(extensions: &[&str]) -> (Vec<Mail>, Vec<Transaction>) {
    let peer = Peer::start(Script::accepting(extensions));
    let cli = Cli::new();
    let mails = dsn_parameter_spool();
    minispool::ingest(&cli, &mails);
    check(&cli.run(&minispool::run_args(&cli, &peer.url(), &[])), 0);
    let delivered = peer.delivered();
    assert_eq!(delivered.len(), mails.len(), "{delivered:?}");
    (mails, delivered)
}

/// The delivered transaction carrying `mail`'s content.
fn transaction_of<'a>(mail: &Mail, all: &'a [Transaction]) -> &'a Transaction {
    let sent = crate::support::lf_normalized(&mail.content);
    all.iter()
        .find(|t| crate::support::lf_normalized(&t.data) == sent)
        .unwrap_or_else(|| panic!("{} was not delivered intact", mail.name))
}

#[test]
fn run_smtp_dsn_parameters_go_only_to_a_dsn_peer_and_8bit_gets_body_8bitmime() {
    let (mails, got) = run_parameter_spool(&["8BITMIME", "DSN", "ENHANCEDSTATUSCODES"]);
    for mail in &mails {
        let t = transaction_of(mail, &got);
        let mail_params = words(&t.mail);
        let eight_bit = !mail.content.is_ascii();
        assert_eq!(
            mail_params.contains(&"BODY=8BITMIME".to_string()),
            eight_bit,
            "{}: {}",
            mail.name,
            t.mail
        );
        if let Some(ret) = mail.sidecar["ret"].as_str() {
            assert!(mail_params.contains(&format!("RET={ret}")), "{}", t.mail);
        }
        if let Some(envid) = mail.sidecar["envid"].as_str() {
            assert!(
                mail_params.contains(&format!("ENVID={envid}")),
                "{}",
                t.mail
            );
        }
        for r in mail.sidecar["recipients"].as_array().expect("recipients") {
            let address = r["address"].as_str().or(r.as_str()).expect("address");
            let line = &t
                .rcpts
                .iter()
                .find(|(l, _)| l.contains(&format!("<{address}>")))
                .unwrap_or_else(|| panic!("{}: no RCPT for {address}", mail.name))
                .0;
            let mut want = Vec::new();
            if let Some(n) = r["notify"].as_str() {
                want.push(format!("NOTIFY={n}"));
            }
            if let Some(o) = r["orcpt"].as_str() {
                want.push(format!("ORCPT={o}"));
            }
            assert_eq!(words(line), want, "{}: {line}", mail.name);
        }
    }
    // The sample really has what this test is about.
    let all_mail: String = got.iter().map(|t| t.mail.clone()).collect();
    for needle in ["RET=HDRS", "RET=FULL", "ENVID=", "BODY=8BITMIME"] {
        assert!(all_mail.contains(needle), "{needle} never sent");
    }
    let all_rcpt: String = got
        .iter()
        .flat_map(|t| t.rcpts.iter().map(|(l, _)| l.clone()))
        .collect();
    for needle in [
        "NOTIFY=NEVER",
        "NOTIFY=FAILURE,DELAY",
        "ORCPT=rfc822;info@example.com",
    ] {
        assert!(all_rcpt.contains(needle), "{needle} never sent");
    }
}

#[test]
fn run_smtp_peer_without_dsn_or_8bitmime_gets_no_parameters() {
    let (_, got) = run_parameter_spool(&["PIPELINING"]);
    for t in &got {
        assert_eq!(words(&t.mail), Vec::<String>::new(), "{}", t.mail);
        for (line, _) in &t.rcpts {
            assert_eq!(words(line), Vec::<String>::new(), "{line}");
        }
    }
}

#[test]
fn run_smtp_pace_drops_on_452_and_climbs_back_never_above_the_ceiling() {
    // A 452 for the 10th and the 20th recipient, then a healthy store.
    let peer = Peer::start(Script {
        on_rcpt: Box::new(|n, address| {
            (n == 10 || n == 20)
                .then(|| format!("452 4.3.1 <{address}> insufficient system storage"))
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = one_recipient_spool(90);
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--rate", "50/s", "--retry-delay", "1s", "--retry-max", "1s"],
    ));
    check(&out, 0);
    assert_copies(&peer, &mails, 1);
    let notices = pace_notices(&out.json());
    assert!(notices.iter().all(|(rate, _)| *rate <= 50.0), "{notices:?}");
    let (low_at, low) = notices
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .map(|(i, (rate, _))| (i, *rate))
        .expect("pace notices");
    assert!(low < 50.0, "{notices:?}");
    assert!(
        notices[..=low_at]
            .iter()
            .any(|(_, why)| why.contains("452")),
        "{notices:?}"
    );
    assert!(
        notices[low_at + 1..]
            .iter()
            .any(|(rate, why)| why.contains("recovering") && *rate > low),
        "the pace never climbed back from {low}/s: {notices:?}"
    );
}

/// `src/replay/dispatch.rs` says each outcome is recorded as soon as it comes back, so
/// that a crash leaves at most one message per worker in doubt. With a slow `--rate` the
/// dispatcher sleeps for the pace before it looks at finished deliveries, so a message the
/// store accepted stays `in_flight` in the ledger for up to one pace interval (5 s at the
/// 0.2/s floor): a `kill -9` then duplicates it.
#[test]
fn run_smtp_an_accepted_message_is_recorded_while_the_pace_waits() {
    let peer = Peer::start(Script::accepting(&["8BITMIME"]));
    let cli = Cli::new();
    let mails = one_recipient_spool(3);
    minispool::ingest(&cli, &mails);
    let mut child = cli.spawn(&minispool::run_args(&cli, &peer.url(), &["--rate", "1/s"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.delivered().is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The peer has said 250 for message 1; give the run a moment to write it down.
    std::thread::sleep(Duration::from_millis(400));
    let first = ledger_recipients(&cli.ledger)
        .into_iter()
        .find(|r| r.queue_id.starts_with("0001"))
        .expect("message 1");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        first.state, "delivered",
        "400 ms after the store accepted message 1 the ledger still says {}",
        first.state
    );
}

/// fixtures/README.md: exact duplicates in the spool (same bytes, same envelope, e.g. the
/// same message from two MX hosts) are "detected (same content hash), never delivered
/// twice". The Maildir store gets this from its file names; a remote store must too.
#[test]
fn run_smtp_an_exact_duplicate_in_the_spool_is_delivered_once() {
    let peer = Peer::start(Script::accepting(&["8BITMIME"]));
    let cli = Cli::new();
    let original = Mail::plain(1, &["dup@example.test"]);
    let mut copy = original.clone();
    copy.name = "0002-copy-from-mx2".into();
    minispool::ingest(&cli, &[original, copy]);
    check(&cli.run(&minispool::run_args(&cli, &peer.url(), &[])), 0);
    assert_eq!(
        peer.copies(&message_id(1), "dup@example.test"),
        1,
        "an exact duplicate was delivered twice over SMTP"
    );
}
