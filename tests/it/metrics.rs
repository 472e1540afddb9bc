//! `run --metrics` (issue 18): a real Prometheus scrapes a run over LMTP into Dovecot
//! and holds the ledger's numbers; the endpoint's text passes a strict OpenMetrics
//! parser (python3-prometheus-client's).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::mailhost::{MailHost, User};
use crate::support::minispool::{self, run_args};
use crate::support::prometheus::{self, Prometheus, free_port};
use crate::support::{Cli, check, ledger_recipients};

/// Messages in the spool; at `RATE` the run lasts a few seconds, so Prometheus scrapes
/// it while it goes.
const MESSAGES: usize = 8;
const RATE: &str = "3/s";
/// Not a Dovecot user: refused with 550 5.1.1 (a failed outcome, a 5xx, a DSN).
const UNKNOWN: &str = "nobody@example.net";

/// Parses `text` with python3-prometheus-client's OpenMetrics parser, which rejects any
/// line out of the format; returns the metric family names it read.
#[track_caller]
fn strict_families(text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name)\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (apt-get install python3-prometheus-client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "the strict parser refused the exposition:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn prometheus_scrapes_a_run_into_dovecot_and_holds_the_ledgers_numbers() {
    let users: Vec<User> = (1..=4)
        .map(|i| User::new(&format!("u{i}@example.net")))
        .collect();
    let host = MailHost::start(&users);
    let cli = Cli::new();
    let mails = minispool::plain_spool(MESSAGES, |i| {
        if i == MESSAGES {
            vec![UNKNOWN.to_string()]
        } else {
            vec![format!("u{}@example.net", i % 4 + 1)]
        }
    });
    minispool::ingest(&cli, &mails);

    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let prom = Prometheus::start(&endpoint);
    let args = run_args(
        &cli,
        &host.tcp_store(),
        &["--rate", RATE, "--metrics", &endpoint],
    );
    let run = cli.spawn(&args);

    // Mid-run, the endpoint's own text, through the strict parser.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Some((200, body)) = prometheus::get(port, "/metrics") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the --metrics endpoint never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let families = strict_families(&text);
    for name in [
        "spoolreplay_recipients",
        "spoolreplay_deliveries",
        "spoolreplay_store_replies",
        "spoolreplay_pace_messages_per_second",
        "spoolreplay_delivery_seconds",
        "spoolreplay_delivery_delay_seconds",
        "spoolreplay_dsns",
        "spoolreplay_eta_seconds",
    ] {
        assert!(
            families.iter().any(|f| f == name),
            "no family {name} in {families:?}"
        );
    }

    let out = crate::support::Output::from(run.wait_with_output().expect("wait for the run"));
    check(&out, 0);
    let rows = ledger_recipients(&cli.ledger);
    let delivered = rows.iter().filter(|r| r.state == "delivered").count();
    assert_eq!(delivered, MESSAGES - 1, "{rows:?}");

    // The run is gone by now and Prometheus has marked its series stale: the last value
    // it scraped is the largest of the last minutes (a counter only grows).
    let ask = |q: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = prom.query(q);
            if !got.is_empty() || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let q = |m: &str| format!("max_over_time({m}[5m])");
    assert_eq!(
        ask(&q(r#"spoolreplay_deliveries_total{outcome="delivered"}"#)),
        vec![delivered as f64],
        "prometheus log:\n{}",
        prom.log()
    );
    assert_eq!(
        ask(&q(r#"spoolreplay_deliveries_total{outcome="failed"}"#)),
        vec![1.0]
    );
    assert_eq!(
        ask(&q(r#"spoolreplay_store_replies_total{class="5xx"}"#)),
        vec![1.0]
    );
    assert_eq!(
        ask(&q(r#"spoolreplay_dsns_total{kind="failure"}"#)),
        vec![1.0]
    );
    assert_eq!(
        ask(&q(r#"spoolreplay_recipients{state="delivered"}"#)),
        vec![delivered as f64]
    );
    assert_eq!(
        ask(&q("spoolreplay_delivery_seconds_count")),
        vec![MESSAGES as f64]
    );
}

#[test]
fn bounces_send_serves_its_counts_until_a_last_scrape() {
    let cli = Cli::new();
    cli.ingest_sample();
    let args: Vec<String> = cli
        .run_args(&[])
        .into_iter()
        .filter(|a| !a.ends_with("outbox") && a != "--outbox")
        .collect();
    check(&cli.run(&args), 75);
    let sink = crate::support::sink::Sink::start(&cli.at("sink"));
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let mut send = cli.spawn(&[
        "--json",
        "bounces",
        "send",
        "--relay",
        &sink.url(),
        "--rate",
        "50/s",
        "--metrics",
        &endpoint,
    ]);
    // Scrape as a Prometheus would until the command is gone: the last scrape it
    // answered came after its last DSN (it waits for one).
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while send.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "bounces send did not end");
        if let Some((200, body)) = prometheus::get(port, "/metrics") {
            last = Some(body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = crate::support::Output::from(send.wait_with_output().expect("wait"));
    check(&out, 0);
    let sent = out.event("send_summary")["sent"].as_u64().expect("sent");
    assert!(sent > 50, "{}", out.stdout);
    let text = last.expect("the endpoint answered at least once");
    let families = strict_families(&text);
    assert!(
        families.iter().any(|f| f == "spoolreplay_dsn_sends"),
        "{families:?}"
    );
    for line in [
        format!("spoolreplay_dsn_sends_total{{outcome=\"sent\"}} {sent}"),
        format!("spoolreplay_relay_replies_total{{class=\"2xx\"}} {sent}"),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[test]
fn a_metrics_port_in_use_is_refused_before_anything_is_delivered() {
    let cli = Cli::new();
    minispool::ingest(
        &cli,
        &minispool::plain_spool(2, |i| vec![format!("u{i}@example.net")]),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = taken.local_addr().expect("addr").to_string();
    let store = format!("maildir:{}", cli.store().display());
    let out = cli.run(&run_args(&cli, &store, &["--metrics", &endpoint]));
    check(&out, 73);
    assert!(
        out.stderr
            .contains(&format!("error: cannot listen on {endpoint} for --metrics"))
            && out.stderr.contains("hint: pick a free port"),
        "{}",
        out.stderr
    );
    let rows = ledger_recipients(&cli.ledger);
    assert!(rows.iter().all(|r| r.state == "pending"), "{rows:?}");
}
