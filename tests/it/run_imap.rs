//! `spoolreplay run --store imap://…` into a real Dovecot with a master user (issue 15):
//! the sample spool appended byte for byte with INTERNALDATE = arrival, unknown users
//! bounced, and `kill -9` in the middle of IMAP delivery settled with `--uncertain verify`
//! to exactly one copy per recipient.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use spoolreplay::ledger::RcptState;

use crate::support::incident::TestIncident;
use crate::support::mailhost::{MailHost, User, as_stored, without_trace};
use crate::support::minispool::{self, Mail};
use crate::support::{
    ChildGuard, Cli, LedgerRecipient, NOW, Rng, check, drill_trials, incident, ingested,
    kill_9_after, ledger_messages, ledger_recipients, run_trials,
};

/// Left out of Dovecot's users: the master user cannot open them (5.1.1).
const UNKNOWN: [&str; 2] = ["postmaster@example.net", "familie.vogel@mail.example.net"];

fn mailbox_addresses(rows: &[LedgerRecipient]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r.address.to_ascii_lowercase())
        .filter(|a| {
            !a.chars()
                .any(|c| c.is_control() || c == '/' || c == '"' || c == ' ')
                && a.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && d.is_ascii())
        })
        .collect()
}

fn users(rows: &[LedgerRecipient]) -> Vec<User> {
    mailbox_addresses(rows)
        .into_iter()
        .filter(|a| !UNKNOWN.contains(&a.as_str()))
        .map(|a| User::new(&a))
        .collect()
}

fn run_imap(cli: &Cli, host: &MailHost, extra: &[&str]) -> crate::support::Output {
    let mut args = vec![
        "--json".to_string(),
        "run".into(),
        "--incident".into(),
        incident().display().to_string(),
        "--store".into(),
        host.imap_store(),
        "--outbox".into(),
        cli.outbox().display().to_string(),
        "--now".into(),
        NOW.into(),
        "--concurrency".into(),
        "4".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    cli.run_env(&args, &MailHost::imap_env())
}

/// Per mailbox, the arrival (unix seconds) of every message the ledger calls delivered.
fn delivered_arrivals(ledger: &std::path::Path) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for work in ledger_messages(ledger) {
        for r in work.recipients {
            if r.state == RcptState::Delivered {
                out.entry(r.address.to_lowercase())
                    .or_default()
                    .push(work.message.arrival.timestamp());
            }
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// INTERNALDATE of every message in `address`'s INBOX, fetched over IMAP (Python's
/// imaplib, logged in through the master user), as unix seconds, sorted.
#[track_caller]
fn internal_dates(host: &MailHost, address: &str) -> Vec<i64> {
    let script = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login(sys.argv[2] + "*replay", "masterpw")
m.select("INBOX", readonly=True)
typ, data = m.fetch("1:*", "(INTERNALDATE)")
for d in data:
    if d:
        print(d.decode().split('INTERNALDATE "')[1].split('"')[0])
m.logout()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &host.imap_port().to_string(), address])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "imaplib for {address}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dates: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            chrono::DateTime::parse_from_str(l.trim(), "%d-%b-%Y %H:%M:%S %z")
                .unwrap_or_else(|e| panic!("INTERNALDATE `{l}`: {e}"))
                .timestamp()
        })
        .collect();
    dates.sort_unstable();
    dates
}

/// Below Dovecot's LMTP trace headers, ours (`--verify-store`): one `Received: by …
/// (spoolreplay)` field with its folded line.
fn without_our_trace(stored: &[u8]) -> &[u8] {
    let first_line_end = stored.iter().position(|&b| b == b'\n').unwrap_or(0);
    let first = &stored[..first_line_end];
    if !(first.starts_with(b"Received: by ") && first.windows(13).any(|w| w == b"(spoolreplay)")) {
        return stored;
    }
    let mut rest = &stored[first_line_end + 1..];
    while rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |e| e + 1);
        rest = &rest[end..];
    }
    rest
}

/// Every delivered recipient has exactly its message in its INBOX (our three delivery
/// headers aside), nothing else; returns how many copies were compared.
#[track_caller]
fn assert_exactly_once(host: &MailHost, rows: &[LedgerRecipient]) -> usize {
    assert_exactly_once_of(host, rows, &|r| {
        std::fs::read(&r.source_path).expect("read the spooled message")
    })
}

/// As `assert_exactly_once`, with the original message of a row from `original`.
#[track_caller]
fn assert_exactly_once_of(
    host: &MailHost,
    rows: &[LedgerRecipient],
    original: &dyn Fn(&LedgerRecipient) -> Vec<u8>,
) -> usize {
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.state == "delivered") {
        let original = original(r);
        expected
            .entry(r.address.to_ascii_lowercase())
            .or_default()
            .push(as_stored(&original));
    }
    let mut checked = 0;
    for address in mailbox_addresses(rows) {
        let mut want = expected.remove(&address).unwrap_or_default();
        let mut got: Vec<Vec<u8>> = host
            .delivered(&address)
            .iter()
            .map(|f| {
                let rest =
                    without_trace(f).unwrap_or_else(|| panic!("{address}: no delivery headers"));
                without_our_trace(rest).to_vec()
            })
            .collect();
        want.sort();
        got.sort();
        assert_eq!(
            got.len(),
            want.len(),
            "{address}: {} copies in the store, the ledger says {} delivered",
            got.len(),
            want.len()
        );
        assert!(
            got == want,
            "{address}: a stored copy differs from the spooled message"
        );
        checked += got.len();
    }
    assert!(
        expected.is_empty(),
        "delivered to unknown: {:?}",
        expected.keys()
    );
    checked
}

#[test]
fn run_imap_sample_appends_exact_copies_dated_by_arrival_and_bounces_unknown() {
    let cli = ingested();
    let rows = ledger_recipients(&cli.ledger);
    let host = MailHost::start_imap(&users(&rows));
    let out = run_imap(&cli, &host, &[]);
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    let stored = assert_exactly_once(&host, &rows);
    assert!(stored > 100, "only {stored} copies stored");

    // INTERNALDATE, fetched over IMAP, is the arrival to the second, for every copy.
    let arrivals = delivered_arrivals(&cli.ledger);
    for (address, want) in &arrivals {
        assert_eq!(
            &internal_dates(&host, address),
            want,
            "{address}: INTERNALDATEs"
        );
    }

    // Unknown mailboxes: refused by the store, bounced with 5.1.1.
    let unknown: Vec<&LedgerRecipient> = rows
        .iter()
        .filter(|r| UNKNOWN.contains(&r.address.to_ascii_lowercase().as_str()))
        .filter(|r| r.window.as_deref() == Some("tempfail-452"))
        .collect();
    assert!(!unknown.is_empty(), "the sample has mail to unknown users");
    for r in unknown {
        assert!(
            matches!(r.state.as_str(), "bounced" | "dropped"),
            "{}: {} ({:?})",
            r.address,
            r.state,
            r.reply
        );
        assert_eq!(
            r.status.as_deref(),
            Some("5.1.1"),
            "{}: {:?}",
            r.address,
            r.reply
        );
    }
}

/// A mailbox over its quota answers `NO [OVERQUOTA]` (Dovecot's IMAP has no grace for a
/// message larger than the whole quota): every copy is deferred, retried, and when its
/// lifetime ends it expires with 4.4.7, never bounced as an unknown mailbox.
#[test]
fn run_imap_over_quota_defers() {
    let full = "full@example.test";
    let host = MailHost::start_imap(&[User::with_quota(full, "1K")]);
    let cli = Cli::new();
    let mails: Vec<Mail> = (1..=3)
        .map(|i| {
            let mut m = Mail::plain(i, &[full]);
            m.content
                .extend_from_slice("padding to exceed the quota\r\n".repeat(150).as_bytes());
            m
        })
        .collect();
    minispool::ingest(&cli, &mails);
    let args = minispool::run_args(
        &cli,
        &host.imap_store(),
        &["--retry-delay", "1s", "--retry-max", "1s"],
    );
    // The mail expires a few seconds into the run, after some retries: NOW is 116 h after
    // the mini spool's arrival.
    let lifetime = 116 * 3600 + 6;
    TestIncident::deliver_all()
        .lifetime(&format!("{lifetime}s"))
        .write(cli.path());
    let out = cli.run_env(&args, &MailHost::imap_env());
    let summary = out.event("run_summary");
    assert!(summary["deferred"].as_u64().unwrap_or(0) >= 2, "{summary}");
    let events = minispool::ledger_events(&cli.ledger);
    let over: Vec<_> = events
        .iter()
        .filter(|e| e.to_state == "deferred")
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("[OVERQUOTA]"))
        })
        .collect();
    assert!(over.len() >= 2, "no OVERQUOTA deferrals: {events:?}");
    let rows = ledger_recipients(&cli.ledger);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.state, "bounced", "{r:?}");
        assert_eq!(r.status.as_deref(), Some("4.4.7"), "{r:?}");
        assert!(
            r.reply
                .as_deref()
                .is_some_and(|t| t.contains("[OVERQUOTA]")),
            "{r:?}"
        );
    }
    assert!(
        host.delivered(full).is_empty(),
        "a copy reached the full mailbox"
    );
}

/// `kill -9` at a random moment of a paced run, then a run with `--uncertain verify`
/// until done: every delivered recipient has exactly one copy, and none is missing.
/// `lmtp`: deliver over LMTP with `--verify-store` (the same Dovecot's IMAP), else IMAP.
fn kill_9_then_verify(lmtp: bool) {
    let recovered = AtomicU64::new(0);
    let found = AtomicU64::new(0);
    run_trials(drill_trials(20), 4, |trial| {
        let mut rng = Rng::new(0x1_5000 + trial as u64 + if lmtp { 1000 } else { 0 });
        let cli = ingested();
        let rows = ledger_recipients(&cli.ledger);
        let host = MailHost::start_imap(&users(&rows));
        let store = if lmtp {
            host.tcp_store()
        } else {
            host.imap_store()
        };
        let mut args = vec![
            "--json".to_string(),
            "run".into(),
            "--incident".into(),
            incident().display().to_string(),
            "--store".into(),
            store,
            "--outbox".into(),
            cli.outbox().display().to_string(),
            "--now".into(),
            NOW.into(),
            "--concurrency".into(),
            "4".into(),
        ];
        if lmtp {
            args.extend(["--verify-store".into(), host.imap_store()]);
        }
        let mut first = cli.command(&[args.as_slice(), &["--rate".into(), "50/s".into()]].concat());
        for (k, v) in MailHost::imap_env() {
            first.env(k, v);
        }
        let child = first
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn spoolreplay");
        let delay = std::time::Duration::from_millis(200 + rng.below(1500));
        kill_9_after(ChildGuard(Some(child)), delay, &format!("trial {trial}"));
        args.extend(["--uncertain".into(), "verify".into()]);
        let out = cli.run_env(&args, &MailHost::imap_env());
        check(&out, 0);
        let summary = out.event("run_summary");
        recovered.fetch_add(
            summary["recovered_in_flight"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        found.fetch_add(
            summary["already_there"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        let rows = ledger_recipients(&cli.ledger);
        assert!(
            !rows
                .iter()
                .any(|r| r.state == "uncertain" || r.state == "in_flight"),
            "trial {trial}: left unsettled"
        );
        assert_exactly_once(&host, &rows);
    });
    // The kills landed while copies were in flight: the store was searched for them.
    assert!(
        recovered.load(Ordering::Relaxed) > 0,
        "no trial left a delivery in flight"
    );
    // Some of them had reached the store before the kill, and were found there, not sent
    // again (the other branch, not found and sent, is the rest of `recovered`).
    assert!(
        found.load(Ordering::Relaxed) > 0,
        "no copy left in flight was found in the store"
    );
}

#[test]
fn run_imap_kill_9_then_verify_ends_with_exactly_one_copy() {
    kill_9_then_verify(false);
}

#[test]
fn run_lmtp_with_verify_store_kill_9_then_verify_ends_with_exactly_one_copy() {
    kill_9_then_verify(true);
}

/// A Maildir store written by `run` and read by Dovecot's IMAP shows each copy's arrival
/// as its INTERNALDATE (the file's mtime), to the second.
#[test]
fn maildir_store_read_through_dovecot_imap_shows_arrival_as_internaldate() {
    let cli = ingested();
    let rows = ledger_recipients(&cli.ledger);
    let host = MailHost::start_imap(&users(&rows));
    // Dovecot's layout is the Maildir store's: ROOT/<domain>/<user>/Maildir.
    let root = host.root().join("mail");
    let out = cli.run(&[
        "--json",
        "run",
        "--incident",
        &incident().display().to_string(),
        "--store",
        &format!("maildir:{}", root.display()),
        "--outbox",
        &cli.outbox().display().to_string(),
        "--now",
        NOW,
    ]);
    check(&out, 0);
    // The replay ran as root; the store's owner is the mail user (as an operator would
    // run it, as that user).
    let chown = Command::new("chown")
        .args(["-R", "5000:5000"])
        .arg(&root)
        .status()
        .expect("chown");
    assert!(chown.success());
    let arrivals = delivered_arrivals(&cli.ledger);
    assert!(arrivals.len() > 30, "only {} mailboxes", arrivals.len());
    // A Maildir store has no user list: the unknown users got folders Dovecot cannot open.
    for (address, want) in arrivals
        .iter()
        .filter(|(a, _)| mailbox_addresses(&rows).contains(*a) && !UNKNOWN.contains(&a.as_str()))
    {
        assert_eq!(
            &internal_dates(&host, address),
            want,
            "{address}: INTERNALDATEs"
        );
    }
}

/// What `run` refuses before touching anything: an IMAP store without credentials (78),
/// `--uncertain verify` with a store that cannot be asked, `--verify-store` beside a
/// store that needs none (64).
#[test]
fn run_refuses_imap_without_credentials_and_verify_without_a_store_to_look_in() {
    let cli = ingested();
    let base = |store: &str, extra: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            "--incident".into(),
            incident().display().to_string(),
            "--store".into(),
            store.into(),
            "--now".into(),
            NOW.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let out = cli.run(&base("imap://127.0.0.1:1", &[]));
    check(&out, 78);
    assert!(
        out.stderr.contains("SPOOLREPLAY_IMAP_USER"),
        "{}",
        out.stderr
    );
    let out = cli.run(&base("lmtp://127.0.0.1:1", &["--uncertain", "verify"]));
    check(&out, 64);
    assert!(out.stderr.contains("--verify-store"), "{}", out.stderr);
    let out = cli.run(&base(
        "maildir:/nonexistent",
        &["--verify-store", "imap://127.0.0.1:1"],
    ));
    check(&out, 64);
    // Nothing was done: every recipient is as ingest left it.
    assert!(
        ledger_recipients(&cli.ledger).iter().all(|r| matches!(
            r.state.as_str(),
            "pending" | "duplicate" | "delivered_before" | "dropped" | "held"
        )),
        "a refused run changed the ledger"
    );
}

/// Uncertain recipients (left so by a run without a way to look: `--uncertain hold`) are
/// settled by a later `--uncertain verify` run: found in the store → delivered, not found
/// → delivered now; the summary counts both, and every recipient ends with one copy.
#[test]
fn uncertain_recipients_are_verified_in_the_store_by_a_later_run() {
    let found = AtomicU64::new(0);
    let missing = AtomicU64::new(0);
    run_trials(drill_trials(8), 4, |trial| {
        let mut rng = Rng::new(0x1_5800 + trial as u64);
        let cli = ingested();
        let rows = ledger_recipients(&cli.ledger);
        let host = MailHost::start_imap(&users(&rows));
        let base = vec![
            "--json".to_string(),
            "run".into(),
            "--incident".into(),
            incident().display().to_string(),
            "--store".into(),
            host.tcp_store(),
            "--outbox".into(),
            cli.outbox().display().to_string(),
            "--now".into(),
            NOW.into(),
            "--concurrency".into(),
            "4".into(),
        ];
        let verify = ["--verify-store".to_string(), host.imap_store()];
        let with = |extra: &[&str]| {
            let mut a = base.clone();
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        // 1: with trace fields, killed mid-run.
        let mut first = cli.command(&[with(&["--rate", "50/s"]).as_slice(), &verify].concat());
        for (k, v) in MailHost::imap_env() {
            first.env(k, v);
        }
        let child = first
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn spoolreplay");
        let delay = std::time::Duration::from_millis(200 + rng.below(1500));
        kill_9_after(ChildGuard(Some(child)), delay, &format!("trial {trial}"));
        // 2: LMTP cannot look: the in-flight ones become uncertain and are held.
        let out = cli.run(&with(&["--uncertain", "hold"]));
        let held = out.event("run_summary")["recovered_in_flight"]
            .as_u64()
            .unwrap_or(0);
        let uncertain_now = ledger_recipients(&cli.ledger)
            .iter()
            .filter(|r| r.state == "uncertain")
            .count() as u64;
        assert_eq!(uncertain_now, held, "trial {trial}: in flight → uncertain");
        // 3: looked for in the store.
        let mut third = with(&["--uncertain", "verify"]);
        third.extend(verify.iter().cloned());
        let out = cli.run_env(&third, &MailHost::imap_env());
        check(&out, 0);
        let summary = out.event("run_summary");
        let f = summary["verified_in_store"].as_u64().unwrap_or(0);
        let m = summary["verified_missing_redelivered"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(f + m, uncertain_now, "trial {trial}: {summary}");
        assert_eq!(summary["verify_impossible"], 0, "trial {trial}: {summary}");
        found.fetch_add(f, Ordering::Relaxed);
        missing.fetch_add(m, Ordering::Relaxed);
        let rows = ledger_recipients(&cli.ledger);
        assert!(
            !rows
                .iter()
                .any(|r| r.state == "uncertain" || r.state == "in_flight"),
            "trial {trial}: left unsettled"
        );
        assert_exactly_once(&host, &rows);
    });
    assert!(
        found.load(Ordering::Relaxed) > 0,
        "no uncertain copy was found in the store"
    );
}

/// A real Postfix queue (fixtures/postfix, made by a real Postfix) replayed over IMAP:
/// every recipient Dovecot knows has its message exactly once, dated by its arrival.
#[test]
fn run_imap_real_postfix_queue_exactly_once_dated_by_arrival() {
    let cli = Cli::new();
    let spool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/postfix/spool");
    check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    let incident = TestIncident::new()
        .name("postfix queue")
        .restored_at("2030-01-01T00:00:00Z")
        .lifetime("36500d")
        .window(
            "all",
            "2000-01-01T00:00:00Z",
            "2030-01-01T00:00:00Z",
            "deliver",
        )
        .write(cli.path());
    let rows = ledger_recipients(&cli.ledger);
    let host = MailHost::start_imap(
        &mailbox_addresses(&rows)
            .into_iter()
            .map(|a| User::new(&a))
            .collect::<Vec<_>>(),
    );
    let out = cli.run_env(
        &[
            "--json",
            "run",
            "--incident",
            &incident.display().to_string(),
            "--store",
            &host.imap_store(),
            "--outbox",
            &cli.outbox().display().to_string(),
            "--now",
            "2030-01-01T00:00:00Z",
            "--max-bounce-share",
            "100",
        ],
        &MailHost::imap_env(),
    );
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    // Postfix's own view of each message (`postcat -bh`), not our reader's.
    let postcat = spool.parent().expect("fixture dir").join("postcat");
    let stored = assert_exactly_once_of(&host, &rows, &|r| {
        std::fs::read(postcat.join(&r.queue_id)).expect("postcat output")
    });
    assert!(stored > 0, "nothing delivered: {}", out.stdout);
    for (address, want) in &delivered_arrivals(&cli.ledger) {
        assert_eq!(
            &internal_dates(&host, address),
            want,
            "{address}: INTERNALDATEs"
        );
    }
}
