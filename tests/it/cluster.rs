//! `run --cluster`: several runs share one pace through a real `redis-server` (started by
//! the test on a free port), deliver into Postfix's `smtp-sink`, and follow one another's
//! back-off; `cluster pause|resume|status`; the coordinator unreachable or lost mid-run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::mailhost::{MailHost, User};
use crate::support::minispool::{
    copies_of, ledger_events, message_id, plain_spool, run_args, write_spool,
};
use crate::support::redis::Redis;
use crate::support::sink::{Sink, header};
use crate::support::smtp_peer::{Peer, Script};
use crate::support::{ChildGuard, Cli, Output, check};

/// A spool of `n` one-recipient messages in `dir/spool`.
fn spool(dir: &Path, n: usize) -> PathBuf {
    write_spool(
        &dir.join("spool"),
        &plain_spool(n, |i| vec![format!("user{}@example.net", i % 7)]),
    )
}

/// A member: its own ledger, holding shard `i/of` of `spool` (`of` = 1: all of it).
fn member(spool: &Path, i: u32, of: u32) -> Cli {
    let cli = Cli::new();
    let shard = format!("{i}/{of}");
    let out = cli.run(&[
        "ingest".as_ref(),
        "--shard".as_ref(),
        shard.as_ref(),
        spool.as_os_str(),
    ]);
    check(&out, 0);
    cli
}

fn spawn_run(cli: &Cli, store: &str, extra: &[&str]) -> ChildGuard {
    cli.spawn(&run_args(cli, store, extra))
}

#[track_caller]
fn finish(child: ChildGuard, code: i32) -> Output {
    let out = Output::from(child.wait_with_output().expect("wait for run"));
    check(&out, code);
    out
}

/// When each transaction was dumped (the files' modification times), in order.
fn dump_times(sink: &Sink) -> Vec<SystemTime> {
    let mut times: Vec<SystemTime> = std::fs::read_dir(&sink.dir)
        .expect("sink dir")
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .collect();
    times.sort();
    times
}

/// Messages per second between the first and the last of `times`.
fn rate_of(times: &[SystemTime]) -> f64 {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return 0.0;
    };
    let span = last
        .duration_since(*first)
        .unwrap_or_default()
        .as_secs_f64();
    (times.len() - 1) as f64 / span.max(1e-3)
}

/// Each Message-ID the sink got, and how often.
fn copies(sink: &Sink) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for m in sink.messages_settled() {
        let id = header(&m, "Message-ID").unwrap_or("").to_string();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

fn cluster_status(redis: &Redis, name: &str) -> Value {
    let cli = Cli::new();
    let url = redis.url(name);
    let out = cli.run(&["--json", "cluster", "status", "--cluster", &url]);
    check(&out, 0);
    out.event("cluster_status")
}

fn notices(out: &Output) -> Vec<String> {
    out.events("notice")
        .iter()
        .filter_map(|n| n["text"].as_str().map(String::from))
        .collect()
}

#[test]
fn three_members_on_three_shards_share_one_rate() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 750;
    let spool = spool(dir.path(), n);
    let sink = Sink::start(&dir.path().join("sink"));
    let url = redis.url("three");
    let members: Vec<Cli> = (1..=3).map(|i| member(&spool, i, 3)).collect();
    let runs: Vec<ChildGuard> = members
        .iter()
        .map(|m| {
            // One store connection each: `--concurrency` is the cluster's total.
            let args = ["--rate", "150/s", "--concurrency", "3", "--cluster", &url];
            spawn_run(m, &sink.url(), &args)
        })
        .collect();
    for run in runs {
        finish(run, 0);
    }
    let seen = copies(&sink);
    assert_eq!(seen.len(), n, "every message once");
    assert!(seen.values().all(|c| *c == 1), "no copy doubled: {seen:?}");
    // The combined rate, measured from the sink: the limit is the cluster's total (three
    // runs alone would each go at 150/s), and the members together use all of it.
    let rate = rate_of(&dump_times(&sink));
    assert!(
        rate <= 150.0 * 1.1,
        "combined rate {rate:.1}/s is above 150/s + 10%"
    );
    assert!(
        rate >= 150.0 * 0.8,
        "combined rate {rate:.1}/s is below 80% of 150/s"
    );

    // `cluster status` lists the three members, finished, with their counts.
    let status = cluster_status(&redis, "three");
    let listed = status["members"].as_array().expect("members");
    assert_eq!(listed.len(), 3, "{status}");
    for m in listed {
        assert_eq!(m["state"], "finished", "{status}");
        assert_eq!(m["stale"], false, "{status}");
        assert!(m["handled"].as_u64().unwrap_or(0) > 0, "{status}");
    }
    assert_eq!(status["handled"], n as u64, "{status}");
    assert_eq!(status["counts"]["delivered"], n as u64, "{status}");
}

#[test]
fn a_member_that_finishes_early_leaves_its_share_to_the_others() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let small = Cli::new();
    let big = Cli::new();
    // Different recipients, so different content: no copy is the other's duplicate.
    for (cli, n, who) in [(&small, 60, "small"), (&big, 600, "big")] {
        let spool = write_spool(
            &cli.at("spool"),
            &plain_spool(n, |i| vec![format!("{who}{}@example.net", i % 7)]),
        );
        check(&cli.run(&["ingest".as_ref(), spool.as_os_str()]), 0);
    }
    let small_sink = Sink::start(&dir.path().join("small"));
    let big_sink = Sink::start(&dir.path().join("big"));
    let url = redis.url("early");
    // One store connection each (`--concurrency` is the cluster's total).
    let args = [
        "--rate",
        "150/s",
        "--concurrency",
        "2",
        "--cluster",
        url.as_str(),
    ];
    let a = spawn_run(&small, &small_sink.url(), &args);
    let b = spawn_run(&big, &big_sink.url(), &args);
    finish(a, 0);
    finish(b, 0);
    let small_times = dump_times(&small_sink);
    let big_times = dump_times(&big_sink);
    assert_eq!(small_times.len(), 60);
    assert_eq!(big_times.len(), 600);
    // After the small member's last message, the big one is alone: it gets the whole
    // budget, not the half it had while both ran.
    let small_done = *small_times.last().expect("small dumps");
    let alone: Vec<SystemTime> = big_times
        .iter()
        .copied()
        .filter(|t| *t > small_done + Duration::from_millis(500))
        .collect();
    assert!(
        alone.len() > 300,
        "{} messages after the small run",
        alone.len()
    );
    let rate = rate_of(&alone);
    assert!(
        rate >= 150.0 * 0.8,
        "alone at {rate:.1}/s: the share was not taken over"
    );
    assert!(
        rate <= 150.0 * 1.1,
        "alone at {rate:.1}/s: above the cluster's limit"
    );
}

#[test]
fn a_451_storm_seen_by_one_member_slows_all_of_them() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 600);
    let sink = Sink::start(&dir.path().join("sink"));
    // The first member's store answers 451 to MAIL FROM a few times early on.
    let mut script = Script::accepting(&["8BITMIME"]);
    script.on_mail = Box::new(|n| {
        (20..=24)
            .contains(&n)
            .then(|| "451 4.3.2 system overloaded".into())
    });
    let stormy = Peer::start(script);
    let url = redis.url("storm");
    let members: Vec<Cli> = (1..=3).map(|i| member(&spool, i, 3)).collect();
    // `--concurrency` is the cluster's total, and the store connections go to the members
    // in the order they ask: the stormy member starts first and the others only once it
    // has joined, so it reaches its 451s while they still have their share to send (started
    // together, the others could hold every connection and finish before the storm began).
    let args = [
        "--rate",
        "150/s",
        "--concurrency",
        "3",
        "--cluster",
        url.as_str(),
        "--retry-delay",
        "1s",
    ];
    let first = spawn_run(&members[0], &stormy.url(), &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster_status(&redis, "storm")["handled"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stormy member never handled a message"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let others: Vec<ChildGuard> = members[1..]
        .iter()
        .map(|m| spawn_run(m, &sink.url(), &args))
        .collect();
    let first = finish(first, 0);
    assert!(
        notices(&first)
            .iter()
            .any(|t| t.contains("store answered 451")),
        "the first member did not back off: {:?}",
        notices(&first)
    );
    let stormy_ledger = members[0]
        .ledger
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for (m, run) in members[1..].iter().zip(others) {
        let out = finish(run, 0);
        let followed: Vec<String> = notices(&out)
            .into_iter()
            .filter(|t| t.contains("cluster: store answered 451"))
            .collect();
        assert!(
            !followed.is_empty(),
            "{} did not follow the back-off: {:?}",
            m.ledger.display(),
            notices(&out)
        );
        // It names the member that saw the 451, and the pace it took is below the limit.
        assert!(followed[0].contains(&stormy_ledger), "{followed:?}");
        let pace: f64 = followed[0]
            .strip_prefix("pace ")
            .and_then(|t| t.split('/').next())
            .and_then(|r| r.parse().ok())
            .expect("a pace in the notice");
        assert!(pace < 150.0, "{followed:?}");
    }
}

#[test]
fn pause_holds_every_member_until_resume() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 40);
    let sink = Sink::start(&dir.path().join("sink"));
    let url = redis.url("paused");
    let admin = Cli::new();
    check(&admin.run(&["cluster", "pause", "--cluster", &url]), 0);
    let m = member(&spool, 1, 1);
    let run = spawn_run(&m, &sink.url(), &["--cluster", &url]);
    // Wait until the member has joined (its first heartbeat), then a moment more.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster_status(&redis, "paused")["members"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never joined"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(sink.messages().is_empty(), "a paused cluster delivered");
    assert_eq!(cluster_status(&redis, "paused")["paused"], true);
    // The member shows as paused by the cluster, not as running (nor as gone).
    let status = status_until(&redis, "paused", "a paused member", |s| {
        s["members"][0]["state"] == "paused"
    });
    assert_eq!(
        status["members"][0]["paused_by"], "cluster pause",
        "{status}"
    );
    assert_eq!(status["members"][0]["stale"], false, "{status}");
    check(&admin.run(&["cluster", "resume", "--cluster", &url]), 0);
    let out = finish(run, 0);
    assert!(
        notices(&out).iter().any(|t| t.contains("cluster paused")),
        "{:?}",
        notices(&out)
    );
    assert_eq!(copies(&sink).len(), 40);
}

#[test]
fn an_unreachable_coordinator_stops_the_run_before_it_delivers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 5);
    let sink = Sink::start(&dir.path().join("sink"));
    let m = member(&spool, 1, 1);
    // A free port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}/gone");
    let out = m.run(&run_args(&m, &sink.url(), &["--cluster", &url]));
    check(&out, 69);
    assert!(
        out.stderr.contains("cannot reach the cluster coordinator"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(sink.messages().is_empty());
    assert_eq!(m.status()["states"]["pending"], 5);
}

#[test]
fn the_coordinator_lost_and_back_mid_run_doubles_nothing() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 400;
    let spool = spool(dir.path(), n);
    let sink = Sink::start(&dir.path().join("sink"));
    let url = redis.url("lost");
    let members: Vec<Cli> = (1..=2).map(|i| member(&spool, i, 2)).collect();
    let args = ["--rate", "100/s", "--cluster", url.as_str()];
    let runs: Vec<ChildGuard> = members
        .iter()
        .map(|m| spawn_run(m, &sink.url(), &args))
        .collect();
    // Kill Redis once mail is flowing, bring it back (empty) a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 50 {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let outs: Vec<Output> = runs.into_iter().map(|r| finish(r, 0)).collect();
    let seen = copies(&sink);
    assert_eq!(seen.len(), n, "every message delivered");
    assert!(seen.values().all(|c| *c == 1), "a copy doubled: {seen:?}");
    for (m, out) in members.iter().zip(&outs) {
        let all = notices(out);
        assert!(all.iter().any(|t| t.contains("lost")), "{all:?}");
        assert!(all.iter().any(|t| t.contains("back; rejoined")), "{all:?}");
        assert_eq!(m.status()["remaining"], 0);
    }
    // Alone, each went at its last share at most: the cluster never went above its limit.
    let rate = rate_of(&dump_times(&sink));
    // Per half second, for the message if it fails.
    let times = dump_times(&sink);
    let t0 = times[0];
    let mut per: std::collections::BTreeMap<u64, usize> = Default::default();
    for t in &times {
        *per.entry(t.duration_since(t0).unwrap().as_millis() as u64 / 500)
            .or_insert(0) += 1;
    }
    assert!(
        rate <= 100.0 * 1.1,
        "combined rate {rate:.1}/s {per:?} {:?}",
        outs.iter().map(notices).collect::<Vec<_>>()
    );
}

/// Recipients per state in a ledger's `status`.
fn state_count(cli: &Cli, state: &str) -> u64 {
    cli.status()["states"][state].as_u64().unwrap_or(0)
}

#[test]
fn two_ledgers_of_one_spool_deliver_each_copy_once_into_dovecot() {
    let users = ["anna@example.net", "bert@example.net", "cora@example.net"];
    let host = MailHost::start(&users.map(User::new));
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    // The same spool copied from two MX hosts: every message in both ledgers; some
    // messages have two recipients, one written in another case (the same mailbox).
    let n = 60;
    let mails = plain_spool(n, |i| {
        let mut r = vec![users[i % 3].to_string()];
        if i % 4 == 0 {
            r.push(users[(i + 1) % 3].to_ascii_uppercase());
        }
        r
    });
    let spool = write_spool(&dir.path().join("spool"), &mails);
    let a = member(&spool, 1, 1);
    let b = member(&spool, 1, 1);
    let url = redis.url("twice");
    let args = ["--rate", "100/s", "--cluster", url.as_str()];
    let runs = [
        spawn_run(&a, &host.tcp_store(), &args),
        spawn_run(&b, &host.tcp_store(), &args),
    ];
    let outs: Vec<Output> = runs.into_iter().map(|r| finish(r, 0)).collect();
    for (i, user) in users.iter().enumerate() {
        let stored = host.delivered(user);
        for m in 1..=n {
            let expected = usize::from(m % 3 == i || (m % 4 == 0 && (m + 1) % 3 == i));
            assert_eq!(
                copies_of(&stored, &message_id(m)),
                expected,
                "{user}: copies of message {m}"
            );
        }
    }
    // Between them, the ledgers delivered every copy once; the other copy is a duplicate
    // whose event names the ledger that has it.
    let copies: u64 = mails
        .iter()
        .map(|m| {
            m.sidecar["recipients"]
                .as_array()
                .map_or(0, |r| r.len() as u64)
        })
        .sum();
    let delivered = state_count(&a, "delivered") + state_count(&b, "delivered");
    let duplicates = state_count(&a, "duplicate") + state_count(&b, "duplicate");
    assert_eq!(delivered, copies);
    assert_eq!(duplicates, copies);
    // `cluster status` counts the same, per member and in total.
    let status = cluster_status(&redis, "twice");
    assert_eq!(status["counts"]["delivered"], copies, "{status}");
    assert_eq!(status["counts"]["duplicate"], copies, "{status}");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    for (cli, other, out) in [(&a, &b, &outs[0]), (&b, &a, &outs[1])] {
        let other_ledger = other
            .ledger
            .canonicalize()
            .expect("ledger")
            .display()
            .to_string();
        for e in out.events("outcome") {
            if e["state"] == "duplicate" {
                let detail = e["detail"].as_str().unwrap_or("");
                assert!(
                    detail.contains(&other_ledger),
                    "{}: {detail}",
                    cli.ledger.display()
                );
            }
        }
    }
}

#[test]
fn strict_dedupe_waits_for_a_lost_coordinator_and_stops_with_75() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 300;
    let spool = spool(dir.path(), n);
    let sink = Sink::start(&dir.path().join("sink"));
    let m = member(&spool, 1, 1);
    let url = redis.url("strict");
    let run = spawn_run(
        &m,
        &sink.url(),
        &[
            "--rate",
            "50/s",
            "--cluster",
            &url,
            "--cluster-dedupe",
            "strict",
            "--store-timeout",
            "2s",
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    let out = finish(run, 75);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("cluster coordinator has been unreachable"),
        "{said}"
    );
    // Nothing was sent unchecked: what the sink has is what the ledger delivered.
    let seen = copies(&sink);
    assert!(seen.len() < n);
    assert_eq!(state_count(&m, "delivered"), seen.len() as u64);
    assert_eq!(state_count(&m, "pending"), (n - seen.len()) as u64);
}

#[test]
fn best_effort_dedupe_goes_on_without_the_coordinator_and_says_so() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 150;
    let spool = spool(dir.path(), n);
    let sink = Sink::start(&dir.path().join("sink"));
    let m = member(&spool, 1, 1);
    let url = redis.url("besteffort");
    let run = spawn_run(&m, &sink.url(), &["--rate", "100/s", "--cluster", &url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    finish(run, 0);
    assert_eq!(copies(&sink).len(), n);
    let unchecked = ledger_events(&m.ledger)
        .iter()
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("duplicates across ledgers not checked"))
        })
        .count();
    assert!(
        unchecked > 0 && unchecked < n,
        "{unchecked} copies recorded as unchecked"
    );
}

#[test]
fn cluster_status_marks_a_member_whose_heartbeat_stopped() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 200);
    let sink = Sink::start(&dir.path().join("sink"));
    let m = member(&spool, 1, 1);
    let url = redis.url("stale");
    let mut run = spawn_run(&m, &sink.url(), &["--rate", "20/s", "--cluster", &url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 5 {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = cluster_status(&redis, "stale");
    assert_eq!(status["members"][0]["stale"], false, "{status}");
    assert_eq!(status["members"][0]["state"], "running", "{status}");
    // A member that dies (SIGKILL: no goodbye) stops its heartbeat: shown as stale.
    run.kill().expect("kill the run");
    let _ = run.wait();
    let status = loop {
        let status = cluster_status(&redis, "stale");
        if status["members"][0]["stale"] == true {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never stale: {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(status["members"][0]["state"], "running", "{status}");
    // The table says so too, with the total.
    let out = Cli::new().run(&["cluster", "status", "--cluster", &url]);
    check(&out, 0);
    assert!(out.stdout.contains("(stale)"), "{}", out.stdout);
    assert!(out.stdout.contains("Total"), "{}", out.stdout);
    assert!(out.stdout.contains("ledger.db"), "{}", out.stdout);
}

#[test]
fn bad_cluster_options_are_usage_errors() {
    let cli = Cli::new();
    let out = cli.run(&["cluster", "status"]);
    check(&out, 64);
    assert!(out.stderr.contains("--cluster"), "{}", out.stderr);
    let out = cli.run(&["cluster", "pause", "--cluster", "http://10.0.0.5/x"]);
    check(&out, 64);
    assert!(out.stderr.contains("redis://"), "{}", out.stderr);
    // A password in a refused address is never echoed.
    let out = cli.run(&["cluster", "status", "--cluster", "redis://:hunter2@h:0/x"]);
    check(&out, 64);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let dir = tempfile::tempdir().expect("temp dir");
    let m = member(&spool(dir.path(), 1), 1, 1);
    let mut args = run_args(&m, "smtp://127.0.0.1:1", &["--cluster", "redis://h/x"]);
    args.extend(["--cluster-dedupe".into(), "sometimes".into()]);
    let out = m.run(&args);
    check(&out, 64);
    assert!(out.stderr.contains("--cluster-dedupe"), "{}", out.stderr);
}

/// A TCP relay in front of a real store that counts the connections open through it at
/// once, and the most it saw. Stopped (accept thread ended) when dropped.
struct Counting {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Counting {
    fn start(upstream: u16) -> Counting {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, m, s) = (Arc::clone(&open), Arc::clone(&most), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = Arc::clone(&o);
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut s_in, mut c_out) = (server, client);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = up.join();
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            port,
            open,
            most,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn most(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn concurrency_is_the_number_of_store_connections_across_the_cluster() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 300;
    let spool = spool(dir.path(), n);
    let sink = Sink::start(&dir.path().join("sink"));
    let relay = Counting::start(sink.port);
    let url = redis.url("conns");
    let members: Vec<Cli> = (1..=2).map(|i| member(&spool, i, 2)).collect();
    // Each member alone would open 2: together 4, were the limit per member.
    let args = ["--concurrency", "2", "--cluster", url.as_str()];
    let runs: Vec<ChildGuard> = members
        .iter()
        .map(|m| spawn_run(m, &relay.url(), &args))
        .collect();
    for run in runs {
        finish(run, 0);
    }
    let seen = copies(&sink);
    assert_eq!(seen.len(), n, "every message delivered");
    assert!(seen.values().all(|c| *c == 1), "a copy doubled: {seen:?}");
    assert!(
        relay.most() <= 2,
        "{} store connections at once, the cluster's limit is 2",
        relay.most()
    );
    // The limit is used, not just respected.
    assert_eq!(relay.most(), 2, "never two connections at once");
    // Every slot went back when the runs ended.
    let status = cluster_status(&redis, "conns");
    assert_eq!(status["connections"], 0, "{status}");
}

#[test]
fn a_member_killed_with_kill_9_frees_its_connections_when_their_lease_expires() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 400);
    let sink = Sink::start(&dir.path().join("sink"));
    let relay = Counting::start(sink.port);
    let url = redis.url("killed");
    let (a, b) = (member(&spool, 1, 2), member(&spool, 2, 2));
    let args = [
        "--rate",
        "20/s",
        "--concurrency",
        "2",
        "--cluster",
        url.as_str(),
    ];
    let mut first = spawn_run(&a, &relay.url(), &args);
    // Until the first member holds both of the cluster's connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster_status(&redis, "killed")["connections"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first member never held 2 connections: {}",
            cluster_status(&redis, "killed")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().expect("kill -9 the first member");
    let _ = first.wait();
    // Dead, it cannot give them back: its slots stay taken until their lease expires.
    let status = cluster_status(&redis, "killed");
    assert_eq!(status["connections"], 2, "{status}");
    let delivered_by_a = sink.messages().len();
    // The second member waits for them, then delivers all of its shard.
    let second = spawn_run(&b, &relay.url(), &args);
    finish(second, 0);
    assert_eq!(
        sink.messages_settled().len(),
        delivered_by_a + state_count(&b, "delivered") as usize
    );
    assert_eq!(b.status()["remaining"], 0);
    assert!(relay.most() <= 2, "{} connections at once", relay.most());
    assert_eq!(relay.open(), 0);
    assert_eq!(cluster_status(&redis, "killed")["connections"], 0);
}

/// `cluster status` until `ready` holds for its JSON (or the test fails after 30 s).
#[track_caller]
fn status_until(redis: &Redis, name: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster_status(redis, name);
        if ready(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_status_shows_eta_last_refusal_and_a_paused_member() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = spool(dir.path(), 300);
    // The store refuses one mailbox's first two tries, naming it in the reply.
    let mut script = Script::accepting(&["8BITMIME"]);
    let refused = std::sync::atomic::AtomicU64::new(0);
    script.on_rcpt = Box::new(move |_, address| {
        let busy = address.contains("user3@")
            && refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
        busy.then(|| format!("450 4.2.0 <{address}> mailbox busy, try later"))
    });
    let peer = Peer::start(script);
    let m = member(&spool, 1, 1);
    let url = redis.url("outlook");
    let run = spawn_run(
        &m,
        &peer.url(),
        &["--rate", "30/s", "--retry-delay", "1s", "--cluster", &url],
    );
    let status = status_until(&redis, "outlook", "a refusal and an ETA", |s| {
        s["members"][0]["last_refusal"].is_string() && s["members"][0]["eta_seconds"].is_u64()
    });
    let member = &status["members"][0];
    let refusal = member["last_refusal"].as_str().expect("refusal");
    assert!(refusal.starts_with("450 4.2.0"), "{status}");
    assert!(refusal.contains("mailbox busy"), "{status}");
    assert!(
        !refusal.contains('@'),
        "an address in the cluster's status: {status}"
    );
    assert!(member["last_refusal_at"].is_string(), "{status}");
    assert!(status["eta_seconds"].is_u64(), "a total ETA: {status}");
    let out = Cli::new().run(&["cluster", "status", "--cluster", &url]);
    check(&out, 0);
    assert!(out.stdout.contains("ETA"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Last refusal seen by") && out.stdout.contains("450 4.2.0"),
        "{}",
        out.stdout
    );
    // Paused on its own ledger, the member says so, and its heartbeat goes on.
    check(&m.run(&["control", "pause"]), 0);
    status_until(&redis, "outlook", "paused", |s| {
        s["members"][0]["state"] == "paused" && s["members"][0]["paused_by"] == "control pause"
    });
    std::thread::sleep(STALE_WAIT);
    let status = cluster_status(&redis, "outlook");
    assert_eq!(status["members"][0]["state"], "paused", "{status}");
    assert_eq!(status["members"][0]["stale"], false, "{status}");
    let out = Cli::new().run(&["cluster", "status", "--cluster", &url]);
    assert!(
        out.stdout.contains("paused (control pause)"),
        "{}",
        out.stdout
    );
    check(&m.run(&["control", "resume"]), 0);
    finish(run, 0);
    let status = cluster_status(&redis, "outlook");
    assert_eq!(status["members"][0]["state"], "finished", "{status}");
    assert_eq!(status["eta_seconds"], 0, "{status}");
}

/// Longer than a heartbeat may be missed before a member is shown as stale (5 s).
const STALE_WAIT: Duration = Duration::from_secs(6);
