//! Integration tests: the `[bounces]` policy. A spool whose messages carry real-format
//! verdicts of our MX (and forged ones) is bounced by its window; only the senders the
//! policy trusts get a DSN, the others' recipients end `dropped` with the rule and verdict,
//! and Sisimai reads every DSN made.

use std::collections::BTreeMap;

use crate::dsn::sisimai_dump;
use crate::support::incident::TestIncident;
use crate::support::{Cli, check, ledger_recipients};

/// The outage of these tests, at the MX whose verdicts the messages carry.
fn at_our_mx() -> TestIncident {
    TestIncident::new()
        .reporting_mta("mx.example.net")
        .restored_at("2023-01-10T00:00:00Z")
}

/// Bounces what arrived in the five days before the restore: the policy decides who is told.
fn rejected() -> TestIncident {
    at_our_mx().bounce_window(
        "rejected",
        "2023-01-05T00:00:00Z",
        "2023-01-10T00:00:00Z",
        "5.2.1",
    )
}

const POLICY: &str = "[bounces]\nauthserv_id = \"mx.example.net\"\nrequire = \"dmarc-or-aligned-pass\"\nspam = \"suppress\"\n";

/// Our MX's Received: (the topmost one of every message here).
const OUR_RECEIVED: &str = "Received: from mail.sender.example (mail.sender.example [192.0.2.7])\n\
    \tby mx.example.net (Postfix) with ESMTPS id 4QxYz1\n\
    \tfor <b@example.net>; Fri, 6 Jan 2023 10:00:00 +0000\n";

/// One message: its name, envelope sender, fields above and below our Received:, and
/// whether the policy bounces it (`None`) or why it drops it (`Some(text in the reason)`).
struct Case {
    name: &'static str,
    sender: &'static str,
    above: &'static str,
    below: &'static str,
    dropped: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "01-spf-pass",
            sender: "a@s1.example",
            above: "Authentication-Results: mx.example.net;\n\tspf=pass (mx.example.net: domain of a@s1.example designates 192.0.2.7 as permitted sender) smtp.mailfrom=a@s1.example\n",
            below: "",
            dropped: None,
        },
        Case {
            name: "02-spf-fail",
            sender: "a@s2.example",
            above: "Authentication-Results: mx.example.net; spf=fail (mx.example.net: domain of a@s2.example does not designate 198.51.100.9 as permitted sender) smtp.mailfrom=a@s2.example\n",
            below: "",
            dropped: Some(
                "unauthenticated sender: require = dmarc-or-aligned-pass, mx.example.net found spf=fail",
            ),
        },
        Case {
            name: "03-spf-softfail",
            sender: "a@s3.example",
            above: "Authentication-Results: mx.example.net; spf=softfail smtp.mailfrom=a@s3.example\n",
            below: "",
            dropped: Some("found spf=softfail"),
        },
        Case {
            name: "04-dkim-aligned",
            sender: "bounces@news.s4.example",
            above: "Authentication-Results: mx.example.net; dkim=pass (2048-bit key; unprotected) header.d=s4.example header.i=@s4.example header.b=\"kX3+9aQ1\"\n",
            below: "",
            dropped: None,
        },
        Case {
            name: "05-dkim-unaligned",
            sender: "a@s5.example",
            above: "Authentication-Results: mx.example.net; dkim=pass (1024-bit key) header.d=esp.example header.i=@esp.example header.b=\"Zz9\"\n",
            below: "",
            dropped: Some(
                "dkim=pass (header.d=esp.example header.i=@esp.example header.b=Zz9) by mx.example.net is not aligned",
            ),
        },
        Case {
            name: "06-dmarc-pass",
            sender: "a@s6.example",
            above: "Authentication-Results: mx.example.net; dmarc=pass (p=reject dis=none) header.from=s6.example\n",
            below: "",
            dropped: None,
        },
        Case {
            name: "07-dmarc-fail",
            sender: "a@s7.example",
            above: "Authentication-Results: mx.example.net; dmarc=fail (p=none dis=none) header.from=s7.example\n",
            below: "",
            dropped: Some("found dmarc=fail"),
        },
        Case {
            name: "08-forged-other-id",
            sender: "a@s8.example",
            above: "Authentication-Results: mx.attacker.example; dmarc=pass header.from=s8.example\n",
            below: "",
            dropped: Some("no Authentication-Results from mx.example.net above our Received"),
        },
        Case {
            name: "09-forged-below",
            sender: "a@s9.example",
            above: "",
            below: "Authentication-Results: mx.example.net; dmarc=pass header.from=s9.example\n",
            dropped: Some("below our Received: ignored as forged"),
        },
        Case {
            name: "10-spam-spamassassin",
            sender: "a@s10.example",
            above: "X-Spam-Flag: YES\nX-Spam-Status: Yes, score=12.9 required=5.0 tests=BAYES_99,\n\tRDNS_NONE autolearn=no version=3.4.6\nAuthentication-Results: mx.example.net; dmarc=pass header.from=s10.example\n",
            below: "",
            dropped: Some("spam: our MX marked it as spam (X-Spam-Flag: YES)"),
        },
        Case {
            name: "11-spam-rspamd",
            sender: "a@s11.example",
            above: "X-Spamd-Result: default: True [17.20 / 15.00];\n\tBAYES_SPAM(5.10)[99.99%]; R_DKIM_ALLOW(-0.20)[s11.example:s]\nAuthentication-Results: mx.example.net; dmarc=pass header.from=s11.example\n",
            below: "",
            dropped: Some(
                "spam: our MX marked it as spam (X-Spamd-Result: default: True [17.20 / 15.00])",
            ),
        },
        Case {
            name: "12-ham-rspamd",
            sender: "a@s12.example",
            above: "X-Spamd-Result: default: False [-0.10 / 15.00];\n\tR_DKIM_ALLOW(-0.20)[s12.example:s]\nX-Spam-Flag: NO\nAuthentication-Results: mx.example.net; dmarc=pass header.from=s12.example\n",
            below: "X-Spam-Flag: YES\n",
            dropped: None,
        },
    ]
}

fn message(c: &Case) -> String {
    format!(
        "{above}{OUR_RECEIVED}{below}From: <{sender}>\nTo: b@example.net\nSubject: {name}\n\
         Message-ID: <{name}@example.test>\nDate: Fri, 6 Jan 2023 09:59:00 +0000\n\nHello.\n",
        above = c.above,
        below = c.below,
        sender = c.sender,
        name = c.name,
    )
    .replace('\n', "\r\n")
}

#[test]
fn only_senders_the_policy_trusts_get_a_dsn_and_the_rest_are_dropped_with_the_reason() {
    let cli = Cli::new();
    let spool = cli.at("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let cases = cases();
    for c in &cases {
        std::fs::write(spool.join(format!("{}.eml", c.name)), message(c)).expect("eml");
        std::fs::write(
            spool.join(format!("{}.json", c.name)),
            format!(
                r#"{{"sender": "{}", "recipients": ["b@example.net"], "arrival": "2023-01-06T10:00:00Z"}}"#,
                c.sender
            ),
        )
        .expect("sidecar");
    }
    let incident = rejected().section(POLICY).write(cli.path());
    check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    let incident_arg = incident.display().to_string();
    let now = "2023-01-11T00:00:00Z";

    // Before anything happens: the report predicts the policy's counts.
    let report = cli.run(&[
        "report",
        "--incident",
        &incident_arg,
        "--now",
        now,
        "--format",
        "json",
    ]);
    check(&report, 0);
    let bounced = cases.iter().filter(|c| c.dropped.is_none()).count();
    let spam = cases
        .iter()
        .filter(|c| c.dropped.is_some_and(|w| w.starts_with("spam:")))
        .count();
    let unauthenticated = cases.len() - bounced - spam;
    let summary = report.event("report_summary");
    assert_eq!(summary["dsns"], bounced, "{summary}");
    assert_eq!(summary["dsns_suppressed_unauthenticated"], unauthenticated);
    assert_eq!(summary["dsns_suppressed_spam"], spam);
    let window = report.event("bounce_policy");
    assert_eq!(window["window"], "rejected");
    assert_eq!(window["dsns"], bounced);
    assert_eq!(window["suppressed_unauthenticated"], unauthenticated);
    assert_eq!(window["suppressed_spam"], spam);
    let domains = report.events("dsn_sender_domain");
    assert_eq!(domains.len(), 10, "the top 10 of 12 sender domains");
    assert!(
        domains[..bounced].iter().all(|d| d["dsns"] == 1),
        "domains that receive DSNs come first: {domains:?}"
    );

    // The HTML report shows the same numbers.
    let html = cli.at("report.html");
    check(
        &cli.run(&[
            "report",
            "--incident",
            &incident_arg,
            "--now",
            now,
            "--html",
            &html.display().to_string(),
        ]),
        0,
    );
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    let row = format!(
        "<tr><td class=\"name\">rejected</td><td class=\"n\">{bounced}</td><td class=\"n\">{unauthenticated}</td><td class=\"n\">{spam}</td></tr>"
    );
    assert!(page.contains(&row), "{row} not in the HTML report");

    // `bounces preview` names the rule that decides.
    let preview = |name: &str| {
        let out = cli.run(&[
            "bounces",
            "preview",
            "--message",
            name,
            "--incident",
            &incident_arg,
            "--now",
            now,
        ]);
        check(&out, 0);
        out
    };
    let pass = preview("01-spf-pass");
    assert!(
        pass.stderr
            .contains("bounce policy: DSN sent: require = dmarc-or-aligned-pass: spf=pass"),
        "{}",
        pass.stderr
    );
    assert!(
        pass.stdout
            .contains("Final-Recipient: rfc822; b@example.net")
    );
    let forged = preview("09-forged-below");
    assert!(
        forged.stderr.contains("no DSN would be made")
            && forged.stderr.contains("ignored as forged"),
        "{}",
        forged.stderr
    );
    assert!(
        forged.stdout.is_empty(),
        "no DSN printed: {}",
        forged.stdout
    );

    let out = cli.run(&cli.run_args_with(&incident, now, &["--max-bounce-share", "100"]));
    check(&out, 0);

    let by_name: BTreeMap<String, _> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| (r.queue_id.clone(), r))
        .collect();
    for c in &cases {
        let r = by_name
            .iter()
            .find(|(q, _)| q.contains(c.name))
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("{} not in the ledger: {by_name:?}", c.name));
        let reply = r.reply.as_deref().unwrap_or_default();
        match c.dropped {
            None => assert_eq!(r.state, "bounced", "{}: {reply}", c.name),
            Some(why) => {
                assert_eq!(r.state, "dropped", "{}: {reply}", c.name);
                assert!(
                    reply.contains("dropped without a DSN by the bounce policy"),
                    "{}: {reply}",
                    c.name
                );
                assert!(reply.contains(why), "{}: {reply:?} lacks {why:?}", c.name);
            }
        }
    }

    let dsns = cli.run(&["--json", "bounces"]).events("dsn");
    let mut to: Vec<String> = dsns
        .iter()
        .map(|d| d["to"].as_str().unwrap_or_default().to_string())
        .collect();
    to.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .filter(|c| c.dropped.is_none())
        .map(|c| c.sender.to_string())
        .collect();
    expected.sort();
    assert_eq!(to, expected, "a DSN exactly where the policy says");
    assert_eq!(
        dsns.len(),
        bounced,
        "the run made what the report predicted"
    );
    let dropped = cli.status()["states"]["dropped"]
        .as_u64()
        .unwrap_or_default();
    assert_eq!(dropped as usize, unauthenticated + spam, "as predicted");

    // Sisimai reads every DSN made, and names the original recipient.
    for d in &dsns {
        let path = cli.outbox().join(format!("dsn-{}.eml", d["id"]));
        let results = sisimai_dump(&path);
        assert_eq!(results.len(), 1, "{}: {results:?}", path.display());
        assert_eq!(results[0]["recipient"], "b@example.net", "{results:?}");
    }
}

/// How long after the run starts the over-quota message's queue lifetime ends.
const FULL_LEAD: std::time::Duration = std::time::Duration::from_secs(4);

#[test]
fn a_552_full_mailbox_is_retried_until_its_lifetime_ends_and_its_dsn_says_it_was_full() {
    use crate::support::dovecot::{Dovecot, User};
    use crate::support::minispool::{self, Mail};
    use chrono::{DateTime, TimeDelta};

    // Dovecot's default: a full mailbox is a permanent 552 5.2.2.
    let dovecot = Dovecot::start_hard_quota(&[
        User::with_quota("full@example.test", "1K"),
        User::new("alice@example.test"),
    ]);
    let cli = Cli::new();
    let now = DateTime::parse_from_rfc3339(crate::support::NOW).expect("NOW");
    let arrival = now - TimeDelta::days(1) + TimeDelta::from_std(FULL_LEAD).expect("lead");
    let mut mail = Mail::plain(1, &["full@example.test", "alice@example.test"]);
    mail.sidecar["arrival"] = arrival.to_rfc3339().into();
    mail.content
        .extend_from_slice("padding to exceed the quota\r\n".repeat(150).as_bytes());
    minispool::ingest(&cli, &[mail]);
    let incident = TestIncident::new()
        .lifetime("1d")
        .window(
            "all",
            "2023-01-01T00:00:00+01:00",
            "2023-02-01T00:00:00+01:00",
            "deliver",
        )
        .write(cli.path());
    let store = format!("lmtp://127.0.0.1:{}", dovecot.port);
    let out = cli.run(&[
        "--json",
        "run",
        "--incident",
        &incident.display().to_string(),
        "--store",
        &store,
        "--outbox",
        &cli.outbox().display().to_string(),
        "--now",
        crate::support::NOW,
        "--retry-delay",
        "1s",
        "--retry-max",
        "1s",
    ]);
    check(&out, 0);

    // Deferred (not failed at once) and retried, then expired into one DSN.
    let paths = minispool::state_paths(&cli.ledger);
    let full = paths
        .iter()
        .find(|((_, a), _)| a == "full@example.test")
        .map(|(_, p)| p.clone())
        .expect("full@ in the ledger");
    let deferrals = full.iter().filter(|s| *s == "deferred").count();
    assert!(deferrals >= 2, "retried within its lifetime: {full:?}");
    assert_eq!(full.last().map(String::as_str), Some("bounced"), "{full:?}");
    assert_eq!(dovecot.delivered("alice@example.test").len(), 1);
    assert!(dovecot.delivered("full@example.test").is_empty());

    let dsns = minispool::outbox_dsns(&cli.outbox());
    assert_eq!(dsns.len(), 1, "{:?}", dsns.keys());
    let dsn = dsns.values().next().expect("one DSN");
    let fields = minispool::dsn_recipient_fields(dsn);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0]["status"], "5.2.2", "{fields:?}");
    assert!(
        fields[0]["diagnostic-code"].contains("Quota exceeded"),
        "{fields:?}"
    );
    let words = dsn.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("The recipient's mailbox was full (over its storage quota)"),
        "{dsn}"
    );
    let path = cli.outbox().join(dsns.keys().next().expect("one DSN"));
    let results = sisimai_dump(&path);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["recipient"], "full@example.test", "{results:?}");

    // `report --affected` lists the mailbox whose quota to raise.
    let affected = cli.run(&["report", "--affected", "--format", "json"]);
    check(&affected, 0);
    let rows = affected.events("mailbox");
    let row = |mailbox: &str| {
        rows.iter()
            .find(|r| r["mailbox"] == mailbox)
            .unwrap_or_else(|| panic!("{mailbox} not in {rows:?}"))
            .clone()
    };
    assert_eq!(row("full@example.test")["over_quota"], 1);
    assert_eq!(row("alice@example.test")["over_quota"], 0);
}

/// Ingests `senders.len()` messages of the bounce window (no policy), one from each
/// sender, and runs without an outbox: their DSNs wait in the ledger for `bounces send`.
fn owed_dsns(cli: &Cli, senders: &[String]) {
    let spool = cli.at("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    for (i, sender) in senders.iter().enumerate() {
        let name = format!("{i:02}-paced");
        let c = Case {
            name: "paced",
            sender: "unused@example.test",
            above: "",
            below: "",
            dropped: None,
        };
        let content = message(&c).replace("<paced@", &format!("<{name}@"));
        std::fs::write(spool.join(format!("{name}.eml")), content).expect("eml");
        std::fs::write(
            spool.join(format!("{name}.json")),
            format!(
                r#"{{"sender": "{sender}", "recipients": ["b@example.net"], "arrival": "2023-01-06T10:00:00Z"}}"#
            ),
        )
        .expect("sidecar");
    }
    let incident = rejected().write(cli.path());
    check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    let out = cli.run(&[
        "run",
        "--incident",
        &incident.display().to_string(),
        "--store",
        &format!("maildir:{}", cli.store().display()),
        "--now",
        "2023-01-11T00:00:00Z",
        "--max-bounce-share",
        "100",
    ]);
    check(&out, 75);
}

fn senders(a: usize, b: usize) -> Vec<String> {
    (0..a)
        .map(|i| format!("s{i}@a.example"))
        .chain((0..b).map(|i| format!("s{i}@b.example")))
        .collect()
}

/// The domains' (sent, deferred, refused) from `send_domain` events.
fn by_domain(out: &crate::support::Output) -> BTreeMap<String, (u64, u64, u64)> {
    out.events("send_domain")
        .iter()
        .map(|d| {
            let n = |k: &str| d[k].as_u64().unwrap_or_default();
            (
                d["domain"].as_str().unwrap_or_default().to_string(),
                (n("sent"), n("deferred"), n("refused")),
            )
        })
        .collect()
}

#[test]
fn bounces_send_stays_under_rate_and_per_domain_rate_and_reports_per_domain() {
    use crate::support::sink::Sink;
    use std::time::Instant;

    // --rate: 8 DSNs at 4/s take at least 7 quarter seconds (the first goes at once).
    let cli = Cli::new();
    owed_dsns(&cli, &senders(6, 2));
    let sink = Sink::start(&cli.at("sink"));
    let started = Instant::now();
    let out = cli.run(&[
        "--json",
        "bounces",
        "send",
        "--rate",
        "4/s",
        "--relay",
        &sink.url(),
    ]);
    let elapsed = started.elapsed().as_secs_f64();
    check(&out, 0);
    assert_eq!(sink.messages_settled().len(), 8);
    let rate = 7.0 / elapsed;
    assert!(rate <= 4.0, "measured {rate:.2}/s over --rate 4/s");
    let domains = by_domain(&out);
    assert_eq!(domains["a.example"], (6, 0, 0), "{domains:?}");
    assert_eq!(domains["b.example"], (2, 0, 0), "{domains:?}");

    // --per-domain-rate: a.example's 6 DSNs at 2/s take at least 5 half seconds, however
    // fast the overall rate.
    let cli = Cli::new();
    owed_dsns(&cli, &senders(6, 2));
    let sink = Sink::start(&cli.at("sink"));
    let started = Instant::now();
    let out = cli.run(&[
        "--json",
        "bounces",
        "send",
        "--rate",
        "1000/s",
        "--per-domain-rate",
        "2/s",
        "--relay",
        &sink.url(),
    ]);
    let elapsed = started.elapsed().as_secs_f64();
    check(&out, 0);
    assert_eq!(sink.messages_settled().len(), 8);
    let rate = 5.0 / elapsed;
    assert!(
        rate <= 2.0,
        "measured {rate:.2}/s to a.example over --per-domain-rate 2/s"
    );
}

#[test]
fn a_421_from_the_relay_halves_the_pace_of_bounces_send() {
    use crate::support::smtp_peer::{Peer, Script};

    let cli = Cli::new();
    owed_dsns(&cli, &senders(4, 0));
    let mut script = Script::accepting(&["8BITMIME", "DSN"]);
    script.on_mail = Box::new(|n| (n == 2).then(|| "421 4.7.0 slow down, please".to_string()));
    let relay = Peer::start(script);
    let out = cli.run(&[
        "--json",
        "bounces",
        "send",
        "--rate",
        "20/s",
        "--relay",
        &relay.url(),
    ]);
    // The deferred DSN waits for the next send.
    check(&out, 75);
    let paces = out.events("pace");
    assert_eq!(paces.len(), 1, "{}", out.stdout);
    assert_eq!(paces[0]["rate"], 10.0, "{paces:?}");
    assert!(
        paces[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("421"),
        "{paces:?}"
    );
    assert_eq!(by_domain(&out)["a.example"], (3, 1, 0), "{}", out.stdout);
    assert!(out.stderr.contains("pace now"), "{}", out.stderr);
}

#[test]
fn delay_warnings_skip_senders_the_policy_would_not_bounce_to() {
    let cli = Cli::new();
    let spool = cli.at("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let held = [
        Case {
            name: "1-ham",
            sender: "a@ham.example",
            above: "",
            below: "",
            dropped: None,
        },
        Case {
            name: "2-spam",
            sender: "a@spam.example",
            above: "X-Spam-Flag: YES\n",
            below: "",
            dropped: Some("spam"),
        },
    ];
    for c in &held {
        std::fs::write(spool.join(format!("{}.eml", c.name)), message(c)).expect("eml");
        std::fs::write(
            spool.join(format!("{}.json", c.name)),
            format!(
                r#"{{"sender": "{}", "recipients": ["b@example.net"], "arrival": "2023-01-02T10:00:00Z"}}"#,
                c.sender
            ),
        )
        .expect("sidecar");
    }
    let incident = at_our_mx()
        .window(
            "held",
            "2023-01-01T00:00:00Z",
            "2023-01-05T00:00:00Z",
            "hold",
        )
        .section("[bounces]\nspam = \"suppress\"\n")
        .write(cli.path());
    check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    let out =
        cli.run(&cli.run_args_with(&incident, "2023-01-04T00:00:00Z", &["--warn-after", "24h"]));
    check(&out, 0);
    let dsns = cli.run(&["--json", "bounces"]).events("dsn");
    let to: Vec<&str> = dsns
        .iter()
        .map(|d| d["to"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(to, ["a@ham.example"], "{dsns:?}");
    assert_eq!(dsns[0]["kind"], "delay");
}
