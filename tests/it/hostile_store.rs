//! `run` and `bounces send` against a hostile SMTP store or relay (the scripted
//! `support::smtp_peer`, threads of this process on 127.0.0.1:0): a reply line that never
//! ends, a reply dripped a byte at a time, a 550 that is not UTF-8, Cyrus' multi-line 550
//! with the enhanced code on its last line only, a server that breaks the connection
//! after every final dot, and one slow to answer after the dot (the progress line keeps
//! coming). Memory against the endless line is measured by
//! `bench/hostile-reply-memory.sh`, not here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::minispool::{self, Mail, message_id, state_paths};
use crate::support::smtp_peer::{Dot, Peer, Script};
use crate::support::{Cli, check, ledger_recipients};

fn spool(n: usize) -> Vec<Mail> {
    minispool::plain_spool(n, |i| vec![format!("rcpt{i}@example.test")])
}

/// A peer that does `dot` after the final dot of message 1 (every time), accepts the rest.
fn peer_hostile_to_message_1(dot: impl Fn() -> Dot + Send + Sync + 'static) -> Peer {
    Peer::start(Script {
        on_dot: Box::new(move |_, t| {
            if t.contains(&message_id(1)) {
                dot()
            } else {
                Dot::Accept
            }
        }),
        ..Script::accepting(&["8BITMIME"])
    })
}

/// How many times the peer saw message `n`.
fn seen(peer: &Peer, n: usize) -> usize {
    peer.transactions()
        .iter()
        .filter(|t| t.contains(&message_id(n)))
        .count()
}

#[test]
fn an_endless_reply_line_is_refused_as_too_long_and_the_rest_is_delivered() {
    let peer = peer_hostile_to_message_1(|| Dot::Endless);
    let cli = Cli::new();
    let mails = spool(3);
    minispool::ingest(&cli, &mails);
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--uncertain", "hold"],
    ));
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    let first = rows
        .iter()
        .find(|r| r.address == "rcpt1@example.test")
        .expect("message 1");
    assert_eq!(first.state, "uncertain", "{first:?}");
    assert!(
        first.reply.as_deref().is_some_and(|r| r.contains(
            "no reply after the final dot (reply too long: a line of more than 4096 octets)"
        )),
        "{first:?}"
    );
    assert_eq!(cli.status()["states"]["delivered"], 2);
    assert_eq!(seen(&peer, 1), 1, "held, yet sent again");
}

#[test]
fn a_550_that_is_not_utf8_fails_the_recipient_once_with_its_status() {
    let peer = peer_hostile_to_message_1(|| {
        Dot::Raw(b"550 5.7.1 <rcpt1@example.test> refus\x9b par la politique\r\n".to_vec())
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &spool(2));
    let out = cli.run(&minispool::run_args(&cli, &peer.url(), &[]));
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    let first = rows
        .iter()
        .find(|r| r.address == "rcpt1@example.test")
        .expect("message 1");
    // Failed and bounced at once, not "connection lost" and retried.
    assert_eq!(first.state, "bounced", "{first:?}");
    assert_eq!(first.status.as_deref(), Some("5.7.1"), "{first:?}");
    assert!(
        first
            .reply
            .as_deref()
            .is_some_and(|r| r.starts_with("550 5.7.1 <rcpt1@example.test> refus\u{fffd} par")),
        "{first:?}"
    );
    assert_eq!(seen(&peer, 1), 1);
    assert_eq!(cli.status()["states"]["delivered"], 1);
}

#[test]
fn a_reply_dripped_a_byte_a_second_meets_one_deadline_for_the_whole_reply() {
    // 24 bytes 250 ms apart: 6 s for the reply; each read gets a byte in 250 ms, well
    // within the 1 s reply timeout (2 s after the final dot) that the reply as a whole
    // does not meet.
    let peer = peer_hostile_to_message_1(|| {
        Dot::Drip(
            "250 2.0.0 Ok: queued as D".into(),
            Duration::from_millis(250),
        )
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &spool(2));
    let out = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--uncertain", "hold", "--reply-timeout", "1s"],
    ));
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    let first = rows
        .iter()
        .find(|r| r.address == "rcpt1@example.test")
        .expect("message 1");
    assert_eq!(first.state, "uncertain", "{first:?}");
    assert!(
        first
            .reply
            .as_deref()
            .is_some_and(|r| r.contains("no answer within 2s")),
        "{first:?}"
    );
}

#[test]
fn a_store_that_breaks_after_every_dot_gets_at_most_two_copies_and_the_run_stops_with_75() {
    let peer = Peer::start(Script {
        on_dot: Box::new(|_, _| Dot::Cut),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = spool(6);
    minispool::ingest(&cli, &mails);
    // Each lost reply stops the hand-over and waits (1 s, 2 s, …): within 2 s of the first
    // loss two batches of at most two messages go out, far from the 12 attempts that would
    // settle this spool, so the run stops because the store is losing its replies.
    let args = minispool::run_args(&cli, &peer.url(), &["--store-timeout", "2s"]);
    let out = cli.run(&args);
    check(&out, 75);
    let summary = out.event("run_summary");
    assert!(
        summary["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("losing its replies after the final dot")),
        "{summary}"
    );
    // Later runs against the same store go on until nothing is left to try: then every
    // message was sent exactly twice (once, then once again), and its second uncertainty
    // holds it.
    let open = |cli: &Cli| {
        let status = cli.status();
        let n = |s: &str| status["states"][s].as_u64().unwrap_or(0);
        n("pending") + n("deferred")
    };
    let mut runs = 1;
    while open(&cli) > 0 {
        runs += 1;
        assert!(runs <= 8, "still open work after {runs} runs");
        let code = cli.run(&args).code;
        assert!(matches!(code, Some(0 | 75)), "{code:?}");
    }
    for n in 1..=mails.len() {
        assert_eq!(seen(&peer, n), 2, "message {n}");
    }
    assert_eq!(cli.status()["states"]["uncertain"], mails.len() as u64);
    let paths = state_paths(&cli.ledger);
    assert_eq!(paths.len(), mails.len());
    for (key, path) in &paths {
        let uncertain = path.iter().filter(|s| *s == "uncertain").count();
        assert_eq!(uncertain, 2, "{key:?}: {path:?}");
        assert_eq!(
            path.last().map(String::as_str),
            Some("uncertain"),
            "{path:?}"
        );
    }

    // Not a third time, even to a store that answers.
    let calm = Peer::start(Script::accepting(&["8BITMIME"]));
    check(&cli.run(&minispool::run_args(&cli, &calm.url(), &[])), 0);
    assert!(calm.delivered().is_empty(), "sent a third time");
}

#[test]
fn the_progress_line_keeps_coming_while_the_store_takes_its_time() {
    let slow_once = AtomicBool::new(false);
    let peer = Peer::start(Script {
        on_dot: Box::new(move |_, _| {
            if slow_once.swap(true, Ordering::SeqCst) {
                Dot::Accept
            } else {
                Dot::Slow(Duration::from_secs(8))
            }
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &spool(1));
    let out = cli.run(&minispool::run_args(&cli, &peer.url(), &[]));
    check(&out, 0);
    // Printed every 5 s while nothing else happens: at least once in the 8 s wait.
    let waiting: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: 0/1 messages") && l.contains("waiting for the store"))
        .collect();
    assert!(!waiting.is_empty(), "{}", out.stderr);
}

#[test]
fn bounces_send_refuses_a_relay_reply_that_never_ends() {
    let cli = Cli::new();
    // One message the incident bounces: its DSN is owed (the sample's incident is not
    // needed; a 550 from a first store makes the DSN).
    let refusing = Peer::start(Script {
        on_rcpt: Box::new(|_, _| Some("550 5.1.1 no such user".into())),
        ..Script::accepting(&["8BITMIME"])
    });
    minispool::ingest(&cli, &spool(2));
    let args: Vec<String> = minispool::run_args(&cli, &refusing.url(), &[])
        .into_iter()
        .filter(|a| !a.ends_with("outbox") && a != "--outbox")
        .collect();
    check(&cli.run(&args), 75);
    let relay = Peer::start(Script {
        on_dot: Box::new(|_, _| Dot::Endless),
        ..Script::accepting(&["8BITMIME", "DSN"])
    });
    let out = cli.run(&["--json", "bounces", "send", "--relay", &relay.url()]);
    let summary = out.event("send_summary");
    assert_eq!(summary["uncertain"], 2, "{summary}");
    let sent = out.events("dsn_sent");
    assert_eq!(sent.len(), 2, "{}", out.stdout);
    for s in &sent {
        assert_eq!(s["state"], "uncertain", "{s}");
        assert!(
            s["reply"]
                .as_str()
                .is_some_and(|r| r.contains("reply too long")),
            "{s}"
        );
    }
}

#[test]
fn a_cyrus_multi_line_550_bounces_with_the_enhanced_code_of_its_last_line() {
    let peer = Peer::start(Script {
        on_rcpt: Box::new(|_, address| {
            (address == "rcpt1@example.test").then(|| {
                "550-Mailbox unknown.  Either there is no mailbox associated with this\r\n\
                 550-name or you do not have authorization to see it.\r\n\
                 550 5.1.1 User unknown"
                    .to_string()
            })
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    minispool::ingest(&cli, &spool(2));
    check(&cli.run(&minispool::run_args(&cli, &peer.url(), &[])), 0);
    let rows = ledger_recipients(&cli.ledger);
    let first = rows
        .iter()
        .find(|r| r.address == "rcpt1@example.test")
        .expect("message 1");
    assert_eq!(first.state, "bounced", "{first:?}");
    assert_eq!(first.status.as_deref(), Some("5.1.1"), "{first:?}");
    let dsns: Vec<String> = std::fs::read_dir(cli.outbox())
        .expect("the outbox")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read_to_string(e.path()).expect("read the DSN"))
        .collect();
    assert_eq!(dsns.len(), 1);
    assert!(dsns[0].contains("Status: 5.1.1"), "{}", dsns[0]);
    assert!(
        dsns[0].contains("smtp; 550 5.1.1 Mailbox unknown."),
        "{}",
        dsns[0]
    );
}
