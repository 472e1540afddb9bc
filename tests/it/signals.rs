//! Signals during a real `run` over LMTP into Dovecot: SIGTERM and SIGHUP at seeded
//! moments stop it gracefully (exit 143 / 129, the summary printed even with stderr gone,
//! nothing left in flight, no failed recipient without its DSN) and the next run finishes
//! with exactly one copy of every message; a second signal stops at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::mailhost::{MailHost, User};
use crate::support::minispool::{self, copies_of, message_id};
use crate::support::smtp_peer::{Dot, Peer, Script};
use crate::support::{
    Cli, Rng, Stderr, check, drill_trials, parse_json_lines, run_trials, send_signal, signal_after,
};

/// Messages per trial: at 20/s a run takes about 3 s, longer than the latest signal.
const MESSAGES: usize = 60;
/// Unknown to Dovecot (550 5.1.1): every fourth message has it, so DSNs are owed.
const GHOST: &str = "ghost@example.test";

fn users(trial: usize) -> Vec<String> {
    (0..3)
        .map(|k| format!("s{trial}u{k}@example.test"))
        .collect()
}

fn recipients_of(trial: usize, i: usize) -> Vec<String> {
    let u = users(trial);
    let mut r = vec![u[i % 3].clone(), u[(i + 1) % 3].clone()];
    if i.is_multiple_of(4) {
        r.push(GHOST.to_string());
    }
    r
}

/// The trial's signal: SIGTERM for even trials, SIGHUP (with stderr gone) for odd ones.
fn signal_for(trial: usize) -> (&'static str, i32, Stderr) {
    if trial.is_multiple_of(2) {
        ("TERM", 143, Stderr::Kept)
    } else {
        ("HUP", 129, Stderr::Gone)
    }
}

/// `bounces --json`: queue id → recipients of its DSN; fails on a second DSN per message.
fn dsns_by_message(cli: &Cli) -> BTreeMap<String, u64> {
    let out = cli.run(&["--json", "bounces"]);
    check(&out, 0);
    let mut dsns = BTreeMap::new();
    for d in out.events("dsn") {
        let queue_id = d["queue_id"].as_str().expect("queue_id").to_string();
        let n = d["recipients"].as_u64().expect("recipients");
        assert!(
            dsns.insert(queue_id.clone(), n).is_none(),
            "two DSNs for {queue_id}"
        );
    }
    dsns
}

#[track_caller]
fn state(status: &Value, name: &str) -> u64 {
    status["states"][name].as_u64().unwrap_or(0)
}

#[test]
fn sigterm_and_sighup_stop_a_run_gracefully_and_the_next_run_finishes() {
    let trials = drill_trials(6);
    let host = MailHost::start(
        &(0..trials)
            .flat_map(users)
            .map(|a| User::new(&a))
            .collect::<Vec<_>>(),
    );
    run_trials(trials, 3, |trial| {
        let (signal, code, stderr) = signal_for(trial);
        let mut rng = Rng::new(1_4329 + trial as u64);
        let delay = Duration::from_millis(150 + rng.below(1800));
        let what = format!("trial {trial} (SIG{signal} after {delay:?})");
        let cli = Cli::new();
        let mails = minispool::plain_spool(MESSAGES, |i| recipients_of(trial, i));
        minispool::ingest(&cli, &mails);
        let store = host.tcp_store();
        // -v: each failed recipient (the ghost) is a line on stderr, which SIGHUP trials
        // have closed by then; the run must shrug that off.
        let mut args = minispool::run_args(&cli, &store, &["--rate", "20/s", "--batch-size", "5"]);
        args.insert(0, "-v".into());
        let out = signal_after(
            cli.command(&args),
            &cli.at("run.stdout"),
            "delivering to",
            delay,
            signal,
            stderr,
        );

        assert_eq!(out.code, Some(code), "{what}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        if stderr == Stderr::Kept {
            assert!(
                out.stderr.contains(&format!("SIG{signal} received")),
                "{what}: {}",
                out.stderr
            );
        }
        let summary = parse_json_lines(&out.stdout)
            .into_iter()
            .find(|v| v["type"] == "run_summary")
            .unwrap_or_else(|| panic!("{what}: no run_summary: {}", out.stdout));
        assert_eq!(summary["exit"], code, "{what}: {summary}");
        assert!(
            summary["stopped"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("SIG{signal}"))),
            "{what}: {summary}"
        );

        // Stopped mid-run, with nothing left in flight or uncertain, and every failed
        // recipient's DSN made.
        let status = cli.status();
        assert!(
            status["remaining"].as_u64().unwrap_or(0) > 0,
            "{what}: {status}"
        );
        for s in ["in_flight", "uncertain", "failed"] {
            assert_eq!(state(&status, s), 0, "{what}: {s}: {status}");
        }
        let bounced_before = state(&status, "bounced");
        assert_eq!(
            dsns_by_message(&cli).values().sum::<u64>(),
            bounced_before,
            "{what}: a DSN per bounced recipient"
        );

        let again = cli.run(&minispool::run_args(&cli, &store, &[]));
        check(&again, 0);
        let status = cli.status();
        let ghosts = (1..=MESSAGES).filter(|i| i.is_multiple_of(4)).count() as u64;
        assert_eq!(
            state(&status, "delivered"),
            2 * MESSAGES as u64,
            "{what}: {status}"
        );
        assert_eq!(state(&status, "bounced"), ghosts, "{what}: {status}");
        let dsns = dsns_by_message(&cli);
        assert_eq!(dsns.len() as u64, ghosts, "{what}: {dsns:?}");
        assert!(dsns.values().all(|&n| n == 1), "{what}: {dsns:?}");
        for user in users(trial) {
            let files = host.delivered(&user);
            for i in 1..=MESSAGES {
                let want = usize::from(recipients_of(trial, i).contains(&user));
                assert_eq!(
                    copies_of(&files, &message_id(i)),
                    want,
                    "{what}: {user}, message {i}"
                );
            }
        }
    });
    // Dovecot stops with its guard: nothing runs from its folder afterwards.
    let root = host.root().to_path_buf();
    drop(host);
    let left = crate::support::processes_under(&root);
    assert!(left.is_empty(), "left running: {left:#?}");
}

/// The first SIGTERM waits for the message in flight, which the (scripted) store holds
/// without a reply; a second SIGTERM ends the process at once with 143, no summary. The
/// message it held is `in_flight` in the ledger, as after a crash, and the next run
/// settles it by the `--uncertain` policy.
#[test]
fn a_second_sigterm_stops_at_once() {
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::new(Mutex::new(false));
    let (release_peer, held_peer) = (release.clone(), held.clone());
    let peer = Peer::start(Script {
        on_dot: Box::new(move |n, _| {
            if n == 2 {
                *held_peer.lock().unwrap_or_else(|e| e.into_inner()) = true;
                for _ in 0..600 {
                    if release_peer.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Dot::Accept
        }),
        ..Script::accepting(&["8BITMIME"])
    });
    let cli = Cli::new();
    let mails = minispool::plain_spool(5, |_| vec!["alice@example.test".to_string()]);
    minispool::ingest(&cli, &mails);
    let args = minispool::run_args(&cli, &peer.url(), &[]);
    let child = cli.spawn(&args);
    let pid = child.id();
    for _ in 0..600 {
        if *held.lock().unwrap_or_else(|e| e.into_inner()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        *held.lock().unwrap_or_else(|e| e.into_inner()),
        "the second message never reached the store"
    );
    send_signal(pid, "TERM");
    // The note says the first signal was seen; then the second one.
    std::thread::sleep(Duration::from_millis(300));
    send_signal(pid, "TERM");
    let out = child.wait_with_output().expect("wait");
    release.store(true, Ordering::SeqCst);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stdout}\n{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(!stdout.contains("run_summary"), "{stdout}");
    // The held message, and the next one if it was being handed over (a rendezvous:
    // marked in flight, waiting for the worker).
    let status = cli.status();
    let in_flight = state(&status, "in_flight");
    assert!((1..=2).contains(&in_flight), "{status}");
    assert_eq!(state(&status, "delivered"), 1, "{status}");

    let again = cli.run(&minispool::run_args(
        &cli,
        &peer.url(),
        &["--uncertain", "hold"],
    ));
    check(&again, 0);
    let status = cli.status();
    assert_eq!(state(&status, "uncertain"), in_flight, "{status}");
    assert_eq!(state(&status, "delivered"), 5 - in_flight, "{status}");
}

#[test]
fn help_lists_the_exit_code_of_each_signal() {
    let out = Cli::new().run(&["--help"]);
    check(&out, 0);
    for phrase in [
        "130  interrupted by Ctrl-C",
        "143  stopped by SIGTERM",
        "129 by SIGHUP",
    ] {
        assert!(out.stdout.contains(phrase), "{phrase}: {}", out.stdout);
    }
}
