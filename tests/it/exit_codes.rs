//! Exit codes a script can branch on: usage (64), no input (66), busy ledger and unwritten
//! DSNs (75), Ctrl-C (130), a corrupted ledger (65), and `--help` with examples.

use std::time::{Duration, Instant};

use crate::support::{Cli, assert_settled, check, clean_outcome, incident, ingested, list_files};

#[test]
fn usage_errors_exit_64() {
    let cli = Cli::new();
    let inc = incident().display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["status", "--no-such-flag"], "--no-such-flag"),
        (
            &["run", "--incident", &inc, "--store", "ftp://x"],
            "is not a store target",
        ),
        (
            &[
                "run",
                "--incident",
                &inc,
                "--store",
                "maildir:x",
                "--rate",
                "0/s",
            ],
            "--rate",
        ),
    ];
    for (args, phrase) in cases {
        let out = cli.run(args);
        check(&out, 64);
        assert!(out.stderr.contains(phrase), "{args:?}: {}", out.stderr);
    }
    assert!(!cli.at("x").exists(), "a usage error created the store");
}

#[test]
fn status_without_ledger_exits_66() {
    let cli = Cli::new();
    let out = cli.run(&["status"]);
    check(&out, 66);
    assert!(out.stderr.contains("no ledger"), "{}", out.stderr);
    assert!(!cli.ledger.exists(), "status created a ledger");
}

#[test]
fn store_down_at_the_start_exits_69_naming_what_was_tried() {
    let cli = Cli::new();
    cli.ingest_sample();
    let inc = incident().display().to_string();
    let out = cli.run(&[
        "run",
        "--incident",
        &inc,
        "--now",
        "2023-01-28T06:00:00+01:00",
        "--store",
        "lmtp://127.0.0.1:1",
    ]);
    check(&out, 69);
    assert!(out.stdout.contains("127.0.0.1:1"), "{}", out.stdout);
    let status = cli.status();
    assert_eq!(status["states"]["in_flight"], 0, "{status}");
    assert_eq!(status["states"]["delivered"], 0, "{status}");
    assert!(
        status["states"]["pending"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
}

/// Waits until the lock file of a running command names its holder.
fn wait_for_lock(cli: &Cli, pid: u32) -> String {
    let lock = cli.at("ledger.db.lock");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        if text.contains(&format!("pid {pid}")) {
            return text;
        }
        assert!(Instant::now() < until, "no lock by pid {pid}: `{text}`");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn busy_ledger_exits_75_naming_the_holder() {
    let cli = ingested();
    let mut child = cli.spawn(&cli.run_args(&["--rate", "5/s", "--batch-size", "5"]));
    let pid = child.id();
    wait_for_lock(&cli, pid);
    let sample = crate::support::sample_spool();
    let out = cli.run(&["ingest".as_ref(), sample.as_os_str()]);
    child.kill().expect("kill");
    child.wait().expect("wait");
    check(&out, 75);
    assert!(out.stderr.contains(&format!("pid {pid}")), "{}", out.stderr);
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
}

#[test]
fn sigint_exits_130_and_the_next_run_finishes() {
    let cli = ingested();
    let child = cli.spawn(&cli.run_args(&["--rate", "20/s", "--batch-size", "5"]));
    let pid = child.id();
    wait_for_lock(&cli, pid);
    std::thread::sleep(Duration::from_millis(400));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = crate::support::parse_json_lines(&stdout)
        .into_iter()
        .find(|v| v["type"] == "run_summary")
        .expect("run_summary after Ctrl-C");
    assert_eq!(summary["exit"], 130, "{summary}");
    assert!(
        summary["remaining"].as_u64().is_some_and(|n| n > 0),
        "{summary}"
    );

    let again = cli.run(&cli.run_args(&[]));
    check(&again, 0);
    assert_settled(&cli.status());
    let clean = clean_outcome();
    assert_eq!(
        &crate::support::Outcome::of(&cli),
        clean,
        "nothing lost or doubled"
    );
}

#[test]
fn unwritten_dsns_exit_75_until_an_outbox_is_given() {
    let cli = ingested();
    let mut args = cli.run_args(&[]);
    let at = args.iter().position(|a| a == "--outbox").expect("--outbox");
    args.drain(at..at + 2);
    let out = cli.run(&args);
    check(&out, 75);
    let summary = out.event("run_summary");
    let unwritten = summary["dsns_unwritten"].as_u64().unwrap_or_default();
    assert!(unwritten > 0, "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(cli.status()["dsns_unwritten"], unwritten);
    assert!(list_files(&cli.outbox()).is_empty());

    let out = cli.run(&cli.run_args(&[]));
    check(&out, 0);
    assert_eq!(out.event("run_summary")["dsns_written"], unwritten);
    assert_eq!(list_files(&cli.outbox()).len() as u64, 2 * unwritten);
}

#[test]
fn corrupted_ledger_is_a_clear_error_not_a_panic() {
    let cli = Cli::new();
    std::fs::write(
        &cli.ledger,
        b"this is not a database, just garbage bytes\n".repeat(200),
    )
    .expect("write");
    let sample = crate::support::sample_spool();
    let outs = [
        ("status", cli.run(&["status"])),
        ("ingest", cli.run(&["ingest".as_ref(), sample.as_os_str()])),
    ];
    for (what, out) in outs {
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        assert!(out.code.is_some_and(|c| c != 0), "{what}: {out:?}");
        assert!(out.stderr.contains("ledger.db"), "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains("not a ledger"),
            "{what}: {}",
            out.stderr
        );
        check(&out, 65);
    }
}

#[test]
fn every_subcommand_help_has_an_example_and_describes_every_argument() {
    let cli = Cli::new();
    for sub in [
        "ingest",
        "report",
        "run",
        "status",
        "bounces",
        "bounces list",
        "bounces show",
        "bounces preview",
        "bounces send",
        "bounces write",
        "audit",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let out = cli.run(&args);
        check(&out, 0);
        assert!(
            out.stdout.contains("Example"),
            "{sub} --help:\n{}",
            out.stdout
        );
        assert!(out.stdout.contains(&format!("spoolreplay {sub}")), "{sub}");
        // An argument or option line is its name, then two spaces and what it is for:
        // clap prints the name alone when the description is missing.
        let options = out.stdout.split("Example").next().unwrap_or_default();
        for line in options.lines() {
            let item = line.trim();
            if line.starts_with("  ") && (item.starts_with('-') || item.starts_with('<')) {
                assert!(
                    item.contains("  "),
                    "{sub} --help: `{item}` has no description:\n{}",
                    out.stdout
                );
            }
        }
    }
    assert!(!cli.ledger.exists());
}
