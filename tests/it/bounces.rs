//! `spoolreplay bounces`: sending DSNs through a real relay (Postfix's smtp-sink) from `<>`
//! and never twice, even across kill -9; delay warnings; postmaster copies; preview; write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::incident::TestIncident;
use crate::support::sink::{Sink, header};
use crate::support::{Cli, Rng, check, drill_trials, kill_9_after, run_trials, sha256_file};

/// Runs the sample without an outbox: DSNs are made and kept in the ledger (exit 75).
fn run_without_outbox(cli: &Cli) {
    cli.ingest_sample();
    let args: Vec<String> = cli
        .run_args(&[])
        .into_iter()
        .filter(|a| !a.ends_with("outbox") && a != "--outbox")
        .collect();
    check(&cli.run(&args), 75);
}

/// DSN id → send state, from `bounces --json`.
fn send_states(cli: &Cli) -> BTreeMap<i64, String> {
    let out = cli.run(&["--json", "bounces"]);
    check(&out, 0);
    out.events("dsn")
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().expect("id"),
                d["send_state"].as_str().expect("send_state").to_string(),
            )
        })
        .collect()
}

/// Message-ID of each DSN in the ledger, by id.
fn dsn_message_ids(cli: &Cli) -> BTreeMap<i64, String> {
    let out = cli.run(&["--json", "bounces"]);
    out.events("dsn")
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().expect("id"),
                format!("<{}>", d["message_id"].as_str().expect("message_id")),
            )
        })
        .collect()
}

/// How many times the sink got each Message-ID.
fn received(sink: &Sink) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for m in sink.messages_settled() {
        let id = header(&m, "Message-ID")
            .expect("dump has a Message-ID")
            .to_string();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[test]
fn send_goes_from_null_sender_with_notify_never_and_only_once() {
    let cli = Cli::new();
    run_without_outbox(&cli);
    let ids = dsn_message_ids(&cli);
    assert!(ids.len() > 50, "{ids:?}");
    let sink = Sink::start(&cli.at("sink"));

    let out = cli.run(&["--json", "bounces", "send", "--relay", &sink.url()]);
    check(&out, 0);
    let summary = out.event("send_summary");
    assert_eq!(summary["sent"], ids.len() as u64);
    assert_eq!(summary["unsent"], 0);

    let messages = sink.messages();
    assert_eq!(messages.len(), ids.len());
    let outbox: BTreeMap<String, &String> = messages
        .iter()
        .map(|m| (header(m, "Message-ID").unwrap_or("").to_string(), m))
        .collect();
    for (id, message_id) in &ids {
        let m = outbox
            .get(message_id)
            .unwrap_or_else(|| panic!("DSN {id} {message_id} never reached the relay"));
        assert_eq!(header(m, "X-Mail-Args"), Some("<>"), "DSN {id}: MAIL FROM");
        let to = header(m, "To").expect("To");
        let rcpt = header(m, "X-Rcpt-Args").expect("RCPT");
        assert_eq!(
            rcpt,
            format!("{to} NOTIFY=NEVER"),
            "DSN {id}: RCPT = To, NOTIFY=NEVER"
        );
        assert!(!header(m, "X-Mail-Args").unwrap_or("").contains("RET="));
    }
    assert!(send_states(&cli).values().all(|s| s == "sent"));

    // Nothing is sent twice.
    let again = cli.run(&["--json", "bounces", "send", "--relay", &sink.url()]);
    check(&again, 0);
    assert_eq!(again.event("send_summary")["sent"], 0);
    assert_eq!(sink.messages().len(), ids.len());
}

#[test]
fn kill_during_send_never_sends_a_dsn_twice_and_reports_the_uncertain() {
    for (point, n) in [
        ("after-dsn-send", 3),
        ("after-dsn-sending", 5),
        ("after-dsn-send", 17),
    ] {
        let cli = Cli::new();
        run_without_outbox(&cli);
        let ids = dsn_message_ids(&cli);
        let sink = Sink::start(&cli.at("sink"));
        let spec = format!("{point}:{n}");
        let crashed = cli.run_env(
            &["bounces", "send", "--relay", &sink.url()],
            &[("SPOOLREPLAY_CRASH_AT", &spec)],
        );
        assert!(
            crashed.signal.is_some(),
            "{spec}: expected a crash, got {crashed:?}"
        );
        check(&cli.run(&["bounces", "send", "--relay", &sink.url()]), 0);

        let states = send_states(&cli);
        let got = received(&sink);
        assert!(
            got.values().all(|&n| n == 1),
            "{spec}: a DSN was sent twice: {got:?}"
        );
        let uncertain: Vec<&i64> = states
            .iter()
            .filter(|(_, s)| s.as_str() == "uncertain")
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            uncertain.len(),
            1,
            "{spec}: exactly the DSN in flight: {states:?}"
        );
        for (id, state) in &states {
            let count = got.get(&ids[id]).copied().unwrap_or(0);
            match state.as_str() {
                "sent" => assert_eq!(count, 1, "{spec}: DSN {id}"),
                "uncertain" => {
                    let expected = usize::from(point == "after-dsn-send");
                    assert_eq!(count, expected, "{spec}: DSN {id}");
                }
                other => panic!("{spec}: DSN {id} left {other}"),
            }
        }

        let uncertain: Vec<i64> = uncertain.into_iter().copied().collect();
        resend_uncertain_then_each_dsn_arrived_once(&cli, &sink, &ids, &uncertain, &spec);
    }
}

/// The operator decides: resending the uncertain DSNs delivers every DSN at least once,
/// and only an uncertain one may arrive twice.
#[track_caller]
fn resend_uncertain_then_each_dsn_arrived_once(
    cli: &Cli,
    sink: &Sink,
    ids: &BTreeMap<i64, String>,
    uncertain: &[i64],
    what: &str,
) {
    check(
        &cli.run(&[
            "bounces",
            "send",
            "--relay",
            &sink.url(),
            "--resend-uncertain",
        ]),
        0,
    );
    let got = received(sink);
    for (id, message_id) in ids {
        let count = got.get(message_id).copied().unwrap_or(0);
        let limit = if uncertain.contains(id) { 2 } else { 1 };
        assert!(
            (1..=limit).contains(&count),
            "{what}: DSN {id} arrived {count} times"
        );
    }
}

/// A ledger whose run made DSNs but sent none, copied once per trial (ledger file and WAL)
/// so that twenty trials do not ingest and run twenty times.
fn unsent_dsns() -> Cli {
    static PREPARED: std::sync::OnceLock<Vec<(&'static str, Vec<u8>)>> = std::sync::OnceLock::new();
    let files = PREPARED.get_or_init(|| {
        let cli = Cli::new();
        run_without_outbox(&cli);
        ["", "-wal"]
            .into_iter()
            .filter_map(|suffix| {
                let path = PathBuf::from(format!("{}{suffix}", cli.ledger.display()));
                path.exists()
                    .then(|| (suffix, std::fs::read(&path).expect("read the ledger")))
            })
            .collect()
    });
    let cli = Cli::new();
    for (suffix, bytes) in files {
        let to = PathBuf::from(format!("{}{suffix}", cli.ledger.display()));
        std::fs::write(&to, bytes).expect("copy the prepared ledger");
    }
    cli
}

/// `kill -9` at seeded random moments of a paced `bounces send` (20 trials in CI, more with
/// `SPOOLREPLAY_DRILL_TRIALS`): sending again never sends a DSN twice; the one DSN that
/// may have been in flight is uncertain, reported by the next send, and sent again only
/// when the operator asks.
#[test]
fn kill_9_at_random_moments_of_send_never_sends_a_dsn_twice() {
    run_trials(drill_trials(20), 4, |trial| {
        let cli = unsent_dsns();
        let ids = dsn_message_ids(&cli);
        let sink = Sink::start(&cli.at("sink"));
        let mut rng = Rng::new(3464 + trial as u64);
        // 50 DSNs a second: the whole send takes longer than the latest kill.
        let delay = Duration::from_millis(50 + rng.below(ids.len() as u64 * 20 - 100));
        let child = cli.spawn(&["bounces", "send", "--rate", "50/s", "--relay", &sink.url()]);
        kill_9_after(child, delay, &format!("trial {trial}"));

        let again = cli.run(&["--json", "bounces", "send", "--relay", &sink.url()]);
        check(&again, 0);
        let states = send_states(&cli);
        let got = received(&sink);
        let uncertain: Vec<i64> = states
            .iter()
            .filter(|(_, s)| s.as_str() == "uncertain")
            .map(|(id, _)| *id)
            .collect();
        assert!(
            uncertain.len() <= 1,
            "trial {trial} ({delay:?}): more than the DSN in flight is uncertain: {states:?}"
        );
        assert_eq!(
            again.event("send_summary")["recovered_uncertain"],
            uncertain.len() as u64,
            "trial {trial} ({delay:?}): the uncertain DSN is reported"
        );
        for (id, state) in &states {
            let count = got.get(&ids[id]).copied().unwrap_or(0);
            match state.as_str() {
                "sent" => assert_eq!(count, 1, "trial {trial} ({delay:?}): DSN {id}"),
                "uncertain" => assert!(count <= 1, "trial {trial} ({delay:?}): DSN {id}"),
                other => panic!("trial {trial} ({delay:?}): DSN {id} left {other}"),
            }
        }

        let what = format!("trial {trial} ({delay:?})");
        resend_uncertain_then_each_dsn_arrived_once(&cli, &sink, &ids, &uncertain, &what);
    });
}

/// A small spool in `dir`: (name, sidecar JSON, message).
fn write_spool(dir: &Path, items: &[(&str, &str, &str)]) {
    std::fs::create_dir_all(dir).expect("spool dir");
    for (name, sidecar, message) in items {
        std::fs::write(dir.join(format!("{name}.json")), sidecar).expect("sidecar");
        std::fs::write(
            dir.join(format!("{name}.eml")),
            message.replace('\n', "\r\n"),
        )
        .expect("eml");
    }
}

/// Holds what arrived in the first days of January, bounces what arrived in the five days
/// before the restore.
fn small_incident() -> TestIncident {
    TestIncident::new()
        .reporting_mta("mx.example.net")
        .restored_at("2023-01-10T00:00:00Z")
        .window(
            "held",
            "2023-01-01T00:00:00Z",
            "2023-01-05T00:00:00Z",
            "hold",
        )
        .bounce_window(
            "rejected",
            "2023-01-05T00:00:00Z",
            "2023-01-10T00:00:00Z",
            "5.2.1",
        )
}

fn sidecar(sender: &str, recipients: &str, arrival: &str) -> String {
    format!(r#"{{"sender": "{sender}", "recipients": {recipients}, "arrival": "{arrival}"}}"#)
}

fn message(extra_headers: &str, subject: &str) -> String {
    format!(
        "From: someone <a@remote.example>\nTo: b@example.net\nSubject: {subject}\n\
         Message-ID: <{subject}@remote.example>\nDate: Mon, 2 Jan 2023 10:00:00 +0000\n{extra_headers}\nHello.\n"
    )
}

/// Ingests a small spool and returns the paths of the incident file and store.
fn small(cli: &Cli, items: &[(&str, String, String)]) -> String {
    let spool = cli.at("spool");
    let borrowed: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|(n, s, m)| (*n, s.as_str(), m.as_str()))
        .collect();
    write_spool(&spool, &borrowed);
    let incident = small_incident().write(cli.path());
    check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    incident.display().to_string()
}

#[test]
fn delay_warnings_go_once_and_only_where_owed() {
    let cli = Cli::new();
    let at = "2023-01-02T10:00:00Z";
    let incident = small(
        &cli,
        &[
            (
                "1-plain",
                sidecar("a@remote.example", r#"["b@example.net"]"#, at),
                message("", "plain"),
            ),
            (
                "2-list",
                sidecar("list@remote.example", r#"["b@example.net"]"#, at),
                message("List-Id: <news.remote.example>\n", "list"),
            ),
            (
                "3-bulk",
                sidecar("bulk@remote.example", r#"["b@example.net"]"#, at),
                message("Precedence: bulk\n", "bulk"),
            ),
            (
                "4-null",
                sidecar("", r#"["b@example.net"]"#, at),
                message("", "null"),
            ),
            (
                "5-notify",
                sidecar(
                    "n@remote.example",
                    r#"[{"address": "c@example.net", "notify": "FAILURE"}, {"address": "d@example.net", "notify": "DELAY"}]"#,
                    at,
                ),
                message("", "notify"),
            ),
        ],
    );
    let run = |now: &str| {
        let out = cli.run(&cli.run_args_with(Path::new(&incident), now, &["--warn-after", "24h"]));
        check(&out, 0);
        out
    };
    run("2023-01-04T00:00:00Z");
    let out = cli.run(&["--json", "bounces"]);
    let dsns = out.events("dsn");
    let delays: Vec<_> = dsns.iter().filter(|d| d["kind"] == "delay").collect();
    let to: Vec<&str> = delays
        .iter()
        .map(|d| d["to"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(to, ["a@remote.example", "n@remote.example"], "{dsns:?}");
    assert_eq!(
        delays[1]["recipients"], 1,
        "only the DELAY recipient of 5-notify"
    );
    let eml = std::fs::read_to_string(cli.outbox().join(format!("dsn-{}.eml", delays[0]["id"])))
        .expect("delay DSN written");
    assert!(eml.contains("Action: delayed"), "{eml}");
    assert!(eml.contains("Will-Retry-Until: "), "{eml}");
    assert!(eml.contains("Subject: Delayed mail"), "{eml}");
    let notify = std::fs::read_to_string(cli.outbox().join(format!("dsn-{}.eml", delays[1]["id"])))
        .expect("delay DSN written");
    assert!(notify.contains("Final-Recipient: rfc822; d@example.net"));
    assert!(!notify.contains("Final-Recipient: rfc822; c@example.net"));

    // A later run warns nobody again.
    run("2023-01-04T12:00:00Z");
    let again = cli.run(&["--json", "bounces"]).events("dsn");
    assert_eq!(again.len(), dsns.len(), "a recipient was warned twice");
}

#[test]
fn failed_bounces_get_a_postmaster_copy_only_when_asked() {
    for postmaster in [None, Some("postmaster@example.net")] {
        let cli = Cli::new();
        let incident = small(
            &cli,
            &[(
                "1-null",
                sidecar("", r#"["b@example.net"]"#, "2023-01-06T10:00:00Z"),
                message("", "bounce-of-a-bounce"),
            )],
        );
        // Its one message is bounced by the window, as meant: above the default guard.
        let mut args = cli.run_args_with(
            Path::new(&incident),
            "2023-01-07T00:00:00Z",
            &["--max-bounce-share", "100"],
        );
        if let Some(p) = postmaster {
            args.extend(["--postmaster".to_string(), p.to_string()]);
        }
        check(&cli.run(&args), 0);
        assert_eq!(cli.status()["states"]["dropped"], 1, "never bounced to <>");
        let dsns = cli.run(&["--json", "bounces"]).events("dsn");
        match postmaster {
            None => assert!(dsns.is_empty(), "{dsns:?}"),
            Some(p) => {
                assert_eq!(dsns.len(), 1, "{dsns:?}");
                assert_eq!(dsns[0]["kind"], "postmaster");
                assert_eq!(dsns[0]["to"], p);
                let eml = std::fs::read_to_string(
                    cli.outbox().join(format!("dsn-{}.eml", dsns[0]["id"])),
                )
                .expect("copy written");
                assert_eq!(eml.matches("Auto-Submitted:").count(), 1);
                assert!(eml.contains("Auto-Submitted: auto-generated\r\n"), "{eml}");
                assert!(eml.contains(&format!("To: <{p}>\r\n")), "{eml}");
                assert!(eml.contains("Subject: Postmaster copy"), "{eml}");
                assert!(eml.contains("Status: 5.2.1"), "{eml}");
            }
        }
    }
}

#[test]
fn preview_shows_the_dsn_and_records_nothing() {
    let cli = Cli::new();
    cli.ingest_sample();
    let before = sha256_file(&cli.ledger);
    let out = cli.run(&[
        "bounces",
        "preview",
        "--message",
        "0009-personal",
        "--incident",
        &crate::support::incident().display().to_string(),
        "--now",
        crate::support::NOW,
    ]);
    check(&out, 0);
    assert!(
        out.stdout.contains("To: <ricardo@mail.example.org>"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("Action: failed").count(),
        4,
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Status: 4.4.7"));
    assert_eq!(
        sha256_file(&cli.ledger),
        before,
        "preview changed the ledger"
    );
    assert!(cli.run(&["--json", "bounces"]).events("dsn").is_empty());

    let missing = cli.run(&[
        "bounces",
        "preview",
        "--message",
        "no-such-id",
        "--incident",
        &crate::support::incident().display().to_string(),
    ]);
    check(&missing, 66);
}

/// `preview` follows the decision `run` takes (`bounce::decide`): a bounce of a bounce
/// gets no DSN because its sender is `<>`, whatever its recipients' NOTIFY says, and a
/// recipient whose NOTIFY asks for none is left out of the sender's DSN.
#[test]
fn preview_decides_as_run_does() {
    let cli = Cli::new();
    let incident = small(
        &cli,
        &[
            (
                "1-null",
                sidecar(
                    "",
                    r#"[{"address": "b@example.net", "notify": "NEVER"}]"#,
                    "2023-01-06T10:00:00Z",
                ),
                message("", "bounce-of-a-bounce"),
            ),
            (
                "2-mixed",
                sidecar(
                    "a@remote.example",
                    r#"[{"address": "b@example.net", "notify": "NEVER"}, "c@example.net"]"#,
                    "2023-01-06T10:00:00Z",
                ),
                message("", "mixed"),
            ),
        ],
    );
    let preview = |id: &str| {
        let out = cli.run(&[
            "bounces",
            "preview",
            "--message",
            id,
            "--incident",
            &incident,
            "--now",
            "2023-01-07T00:00:00Z",
        ]);
        check(&out, 0);
        out
    };
    let null = preview("1-null");
    assert!(null.stdout.is_empty(), "{}", null.stdout);
    assert!(null.stderr.contains("the sender is <>"), "{}", null.stderr);
    let mixed = preview("2-mixed");
    assert!(
        mixed
            .stdout
            .contains("Final-Recipient: rfc822; c@example.net"),
        "{}",
        mixed.stdout
    );
    assert!(
        !mixed
            .stdout
            .contains("Final-Recipient: rfc822; b@example.net"),
        "{}",
        mixed.stdout
    );
}

#[test]
fn write_puts_each_dsn_in_the_outbox_once() {
    let cli = Cli::new();
    run_without_outbox(&cli);
    let n = dsn_message_ids(&cli).len();
    let outbox = cli.at("written");
    let out = cli.run(&[
        "--json".as_ref(),
        "bounces".as_ref(),
        "write".as_ref(),
        "--outbox".as_ref(),
        outbox.as_os_str(),
    ]);
    check(&out, 0);
    assert_eq!(out.event("dsns_written")["written"], n as u64);
    assert_eq!(crate::support::list_files(&outbox).len(), 2 * n);
    let again = cli.run(&[
        "--json".as_ref(),
        "bounces".as_ref(),
        "write".as_ref(),
        "--outbox".as_ref(),
        outbox.as_os_str(),
    ]);
    assert_eq!(again.event("dsns_written")["written"], 0);
}

/// SIGTERM and SIGHUP (stderr closed first) at seeded moments of a paced `bounces send`:
/// the DSN being sent is finished and recorded, the summary printed, exit 143 / 129; no
/// DSN is left sending or uncertain, and the next send sends the rest, each DSN once.
#[test]
fn sigterm_or_sighup_during_send_finishes_the_dsn_being_sent() {
    use crate::support::{Stderr, parse_json_lines, signal_after};
    run_trials(drill_trials(4), 2, |trial| {
        let (signal, code, stderr) = if trial.is_multiple_of(2) {
            ("TERM", 143, Stderr::Kept)
        } else {
            ("HUP", 129, Stderr::Gone)
        };
        let cli = unsent_dsns();
        let ids = dsn_message_ids(&cli);
        let sink = Sink::start(&cli.at("sink"));
        let mut rng = Rng::new(1_4329 + trial as u64);
        // 20 DSNs a second: the whole send takes longer than the latest signal.
        let delay = Duration::from_millis(rng.below(ids.len() as u64 * 50 / 2));
        let what = format!("trial {trial} (SIG{signal} after {delay:?})");
        let args = [
            "--json",
            "-v",
            "bounces",
            "send",
            "--rate",
            "20/s",
            "--relay",
            &sink.url(),
        ];
        let out = signal_after(
            cli.command(&args),
            &cli.at("send.stdout"),
            "dsn ",
            delay,
            signal,
            stderr,
        );
        assert_eq!(out.code, Some(code), "{what}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        let summary = parse_json_lines(&out.stdout)
            .into_iter()
            .find(|v| v["type"] == "send_summary")
            .unwrap_or_else(|| panic!("{what}: no send_summary: {}", out.stdout));
        assert_eq!(summary["exit"], code, "{what}: {summary}");
        assert!(
            summary["stopped"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("SIG{signal}"))),
            "{what}: {summary}"
        );
        let states = send_states(&cli);
        let got = received(&sink);
        let pending = states.values().filter(|s| *s == "pending").count();
        assert!(pending > 0, "{what}: stopped before the end: {states:?}");
        for (id, state) in &states {
            let count = got.get(&ids[id]).copied().unwrap_or(0);
            match state.as_str() {
                "sent" => assert_eq!(count, 1, "{what}: DSN {id}"),
                "pending" => assert_eq!(count, 0, "{what}: DSN {id}"),
                other => panic!("{what}: DSN {id} left {other}"),
            }
        }
        assert_eq!(summary["sent"], (states.len() - pending) as u64, "{what}");

        let again = cli.run(&["--json", "bounces", "send", "--relay", &sink.url()]);
        check(&again, 0);
        let got = received(&sink);
        for (id, state) in send_states(&cli) {
            assert_eq!(state, "sent", "{what}: DSN {id}");
            assert_eq!(got.get(&ids[&id]).copied(), Some(1), "{what}: DSN {id}");
        }
    });
}
