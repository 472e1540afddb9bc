//! Safe at 3 a.m. (issue 12): mistakes a tired operator makes are refused or said out loud,
//! never a silent success or an irreversible action. A missing ledger, an unknown audit
//! window, a mass bounce by a wrong clock, an unwritable outbox, DSNs left unsent, a spool
//! that changed since ingest, and numbers that must agree between tables.

use spoolreplay::ledger::{DsnFilter, RcptState};

use crate::support::{Cli, check, ingested, ledger_messages, list_files, read_ledger};

#[test]
fn run_without_a_ledger_exits_66_and_creates_nothing() {
    let cli = Cli::new();
    let out = cli.run(&cli.run_args(&[]));
    check(&out, 66);
    assert!(out.stderr.contains("no ledger"), "{}", out.stderr);
    assert!(out.stderr.contains("ingest"), "{}", out.stderr);
    // Not the ledger, not its lock file, not the store nor the outbox.
    assert_eq!(list_files(cli.path()), Default::default());
    for args in [
        vec!["bounces", "write", "--outbox", "out"],
        vec!["bounces", "send", "--relay", "smtp://127.0.0.1:1"],
    ] {
        let out = cli.run(&args);
        check(&out, 66);
        assert_eq!(list_files(cli.path()), Default::default(), "{args:?}");
    }
}

#[test]
fn audit_names_a_window_the_ledger_does_not_know() {
    let cli = ingested();
    let out = cli.run(&["audit", "--window", "queued"]);
    check(&out, 0);
    assert!(
        out.stderr.contains("window `queued`") && out.stderr.contains("none yet"),
        "{}",
        out.stderr
    );
    check(&cli.run(&cli.run_args(&[])), 0);
    let out = cli.run(&["audit", "--window", "queud"]);
    check(&out, 0);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("window `queud`") && out.stderr.contains("queued, rejected-550"),
        "{}",
        out.stderr
    );
    let out = cli.run(&["audit", "--window", "queued"]);
    check(&out, 0);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert!(!out.stdout.is_empty());
}

/// The recipients' states in `status --json`, for "nothing changed" checks.
fn states(cli: &Cli) -> serde_json::Value {
    cli.status()["states"].clone()
}

#[test]
fn an_unwritable_outbox_is_found_before_the_first_delivery() {
    let cli = ingested();
    let before = states(&cli);
    // A regular file where the outbox's parent folder should be: no outbox can exist there.
    std::fs::write(cli.at("not-a-folder"), b"x").expect("write");
    let outbox = cli.at("not-a-folder/bounces").display().to_string();
    let mut args = cli.run_args(&[]);
    let at = args.iter().position(|a| a == "--outbox").expect("--outbox") + 1;
    args[at] = outbox.clone();
    let out = cli.run(&args);
    check(&out, 73);
    assert!(
        out.stderr.contains("cannot create outbox") && out.stderr.contains("nothing was delivered"),
        "{}",
        out.stderr
    );
    assert!(
        list_files(&cli.store()).is_empty(),
        "delivered before the check"
    );
    assert_eq!(states(&cli), before);
}

/// A read-only tmpfs mounted on a folder for the length of a test (needs root, like the
/// disk-full drill: the test fails, never skips, where it cannot mount).
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    #[track_caller]
    fn at(dir: &std::path::Path) -> ReadOnlyMount {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "mount a read-only tmpfs on {} (run the tests as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        ReadOnlyMount(dir.to_path_buf())
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn a_read_only_store_is_found_before_the_first_delivery() {
    let cli = ingested();
    // Declared after `cli`, so it is unmounted before the temp dir is removed.
    let _mount = ReadOnlyMount::at(&cli.store());
    let out = cli.run(&cli.run_args(&[]));
    check(&out, 69);
    let summary = out.event("run_summary");
    let stopped = summary["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains("cannot write in store root") && stopped.contains("Read-only"),
        "{summary}"
    );
    assert_eq!(summary["delivered"], 0, "{summary}");
    let status = cli.status();
    assert_eq!(status["states"]["delivered"], 0, "{status}");
    assert_eq!(status["states"]["in_flight"], 0, "{status}");
}

/// Every recipient's state, status and reply, every message's classification, the events
/// and DSNs: equal fingerprints mean the ledger's content did not change.
fn fingerprint(ledger: &std::path::Path) -> Vec<String> {
    let read = read_ledger(ledger);
    let messages = ledger_messages(ledger);
    let mut out = Vec::new();
    let mut events = 0;
    for work in &messages {
        for r in &work.recipients {
            out.push(format!(
                "{} {} {} {}",
                r.id,
                r.state.as_str(),
                r.status.as_deref().unwrap_or_default(),
                r.reply.as_deref().unwrap_or_default()
            ));
            events += read.events_of(r.id).expect("events").len();
        }
    }
    for work in &messages {
        let m = &work.message;
        out.push(format!(
            "{} {} {}",
            m.id,
            m.window.as_deref().unwrap_or_default(),
            m.disposition.as_deref().unwrap_or_default()
        ));
    }
    out.push(format!("events {events}"));
    let dsns = read.dsns(DsnFilter::All).expect("dsns").len();
    out.push(format!("dsns {dsns}"));
    assert!(out.len() > 2, "an empty ledger proves nothing");
    out
}

/// `run` arguments without `--now`: the sample's 2023 mail against today's clock.
fn run_args_wall_clock(cli: &Cli, extra: &[&str]) -> Vec<String> {
    let mut args = cli.run_args(extra);
    let at = args.iter().position(|a| a == "--now").expect("--now");
    args.drain(at..at + 2);
    args
}

#[test]
fn a_run_that_would_bounce_most_mail_stops_before_changing_anything() {
    let cli = ingested();
    let ledger_before = fingerprint(&cli.ledger);
    let out = cli.run(&run_args_wall_clock(&cli, &[]));
    check(&out, 78);
    for phrase in [
        "refusing to run, nothing was changed",
        "of 291 open messages",
        "more than --max-bounce-share 50%",
        "queue_lifetime 5d from arrival",
        "--now was not given",
    ] {
        assert!(out.stderr.contains(phrase), "{phrase}: {}", out.stderr);
    }
    assert!(
        out.stderr.contains("hint:") && out.stderr.contains("--max-bounce-share 100"),
        "{}",
        out.stderr
    );
    let event = out.event("mass_bounce");
    assert_eq!(event["open_messages"], 291, "{event}");
    assert_eq!(event["fixed_clock"], false, "{event}");
    assert!(event["expire"].as_u64().unwrap_or(0) > 200, "{event}");
    assert_eq!(fingerprint(&cli.ledger), ledger_before);
    assert!(list_files(&cli.store()).is_empty());
    assert!(list_files(&cli.outbox()).is_empty());
    let status = cli.status();
    assert_eq!(status["dsns"], 0, "{status}");

    // The dry run says the same, in its table and in its JSON summary.
    let inc = crate::support::incident().display().to_string();
    let report = cli.run(&["report", "--incident", &inc]);
    check(&report, 0);
    assert!(
        report
            .stdout
            .contains("WARNING: `run` would refuse this plan (exit 78)")
            && report.stdout.contains("of 291 open messages"),
        "{}",
        report.stdout
    );
    let report = cli.run(&["--json", "report", "--incident", &inc]);
    check(&report, 0);
    let summary = report.event("report_summary");
    assert_eq!(summary["mass_bounce"]["open_messages"], 291, "{summary}");
    // With the incident's own clock the plan is fine and report says nothing.
    let report = cli.run(&[
        "--json",
        "report",
        "--incident",
        &inc,
        "--now",
        crate::support::NOW,
    ]);
    assert!(report.event("report_summary")["mass_bounce"].is_null());

    // Meant: the operator lifts the limit, and the run goes ahead.
    let out = cli.run(&run_args_wall_clock(&cli, &["--max-bounce-share", "100"]));
    check(&out, 0);
    assert_eq!(out.event("run_summary")["delivered"], 0);
    let out = cli.run(&run_args_wall_clock(&cli, &["--max-bounce-share", "101"]));
    check(&out, 64);
}

/// `run` arguments without `--outbox`: the DSNs stay in the ledger.
fn run_args_without_outbox(cli: &Cli) -> Vec<String> {
    let mut args = cli.run_args(&[]);
    let at = args.iter().position(|a| a == "--outbox").expect("--outbox");
    args.drain(at..at + 2);
    args
}

#[test]
fn dsns_not_sent_are_work_that_remains_and_status_names_the_command() {
    let cli = ingested();
    // Without --outbox: where the DSNs are and what writes or sends them, not "run again".
    let args: Vec<String> = run_args_without_outbox(&cli).into_iter().skip(1).collect();
    let out = cli.run(&args);
    check(&out, 75);
    assert!(
        out.stdout.contains("70 are kept in the ledger")
            && out
                .stdout
                .contains("spoolreplay bounces write --outbox DIR")
            && out.stdout.contains("spoolreplay bounces send --relay"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("run again"),
        "running again cannot send DSNs:\n{}",
        out.stdout
    );

    let table = cli.run(&["status"]);
    check(&table, 0);
    assert!(
        !table.stdout.contains("Nothing remains"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("70 DSNs not sent") && table.stdout.contains("bounces send --relay"),
        "{}",
        table.stdout
    );
    let status = cli.status();
    assert_eq!(status["dsns_unsent"], 70, "{status}");
    assert_eq!(status["remaining"], 0, "{status}");
    assert_eq!(
        status["next"], "spoolreplay bounces send --relay smtp://HOST:25",
        "{status}"
    );

    // Sent through a real relay: now nothing remains.
    let sink = crate::support::sink::Sink::start(&cli.at("sink"));
    let sent = cli.run(&["bounces", "send", "--relay", &sink.url()]);
    check(&sent, 0);
    let status = cli.status();
    assert_eq!(status["dsns_unsent"], 0, "{status}");
    assert!(status["next"].is_null(), "{status}");
    let table = cli.run(&["status"]);
    assert!(table.stdout.contains("Nothing remains"), "{}", table.stdout);
}

#[test]
fn a_spool_that_changed_after_ingest_is_said_counted_and_exits_65() {
    use crate::support::minispool::{self, Mail};
    let cli = Cli::new();
    let mails: Vec<Mail> = (1..=4)
        .map(|n| Mail::plain(n, &["a@example.net", "b@example.net"]))
        .collect();
    minispool::ingest(&cli, &mails);
    let spool = cli.at("spool");
    // One file edited in place, one removed; the other two are as ingested.
    std::fs::write(
        spool.join("0001-mini.eml"),
        b"Subject: edited\r\n\r\nnot the same\r\n",
    )
    .expect("edit");
    std::fs::remove_file(spool.join("0002-mini.eml")).expect("remove");
    let args = minispool::run_args(&cli, &format!("maildir:{}", cli.store().display()), &[]);
    let table: Vec<String> = args.iter().skip(1).cloned().collect();
    let out = cli.run(&table);
    check(&out, 65);
    for phrase in [
        "Held because the spool changed since ingest: 4 recipients",
        "0001-mini.eml is not what was ingested (content hash differs)",
        "cannot read",
        "0002-mini.eml",
        "put the spool back",
        "Exit 65",
    ] {
        assert!(out.stdout.contains(phrase), "{phrase}:\n{}", out.stdout);
    }
    assert!(
        !out.stdout.contains("run again to resume"),
        "{}",
        out.stdout
    );

    let out = cli.run(&args);
    check(&out, 65);
    let summary = out.event("run_summary");
    assert_eq!(summary["spool_changed"], 4, "{summary}");
    assert_eq!(
        summary["delivered"], 0,
        "the other two were delivered by the first run"
    );
    assert_eq!(summary["exit"], 65, "{summary}");

    let status = cli.status();
    assert_eq!(status["spool_changed"], 4, "{status}");
    assert_eq!(status["states"]["held"], 4, "{status}");
    assert_eq!(status["states"]["delivered"], 4, "{status}");
    let table = cli.run(&["status"]);
    check(&table, 0);
    assert!(
        table
            .stdout
            .contains("Held because the spool changed since ingest: 4 recipients")
            && !table.stdout.contains("Nothing remains"),
        "{}",
        table.stdout
    );
}

/// The rows of a text table (after its `---` rule) as cells split on runs of 2+ spaces.
fn table_rows(text: &str, header: &str) -> Vec<Vec<String>> {
    let start = text
        .find(header)
        .unwrap_or_else(|| panic!("no table `{header}` in:\n{text}"));
    text[start..]
        .trim_start_matches('\n')
        .lines()
        .skip(2)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("This run"))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

/// Checks that the numeric column `col` of the rows before `total` adds up to it.
#[track_caller]
fn adds_up(rows: &[Vec<String>], col: usize, what: &str) -> u64 {
    let n = |r: &Vec<String>| -> u64 {
        r[col]
            .parse()
            .unwrap_or_else(|_| panic!("{what}: not a count: {r:?}"))
    };
    let (total, rows) = rows.split_last().expect("rows");
    assert_eq!(
        total[0], "total",
        "{what}: the last row is the total: {rows:?}"
    );
    assert!(rows.len() > 1, "{what}: too few rows to prove anything");
    let sum: u64 = rows.iter().map(n).sum();
    assert_eq!(sum, n(total), "{what}, column {col}: rows {rows:?}");
    sum
}

#[test]
fn report_run_summary_and_status_agree_and_every_table_adds_up() {
    let cli = ingested();
    let inc = incident_path();
    let report = cli.run(&[
        "--json",
        "report",
        "--incident",
        &inc,
        "--now",
        crate::support::NOW,
    ]);
    check(&report, 0);
    let plan = report.events("plan");
    let planned = |window: &str, dispositions: &[&str]| -> u64 {
        plan.iter()
            .filter(|p| {
                p["window"] == window
                    && dispositions.contains(&p["disposition"].as_str().unwrap_or(""))
            })
            .map(|p| p["recipients"].as_u64().unwrap_or(0))
            .sum()
    };
    // The NOTIFY=NEVER recipient of the bounce window is a drop in the plan, as in `run`.
    assert_eq!(planned("rejected-550", &["bounce"]), 52, "{plan:?}");
    assert_eq!(planned("rejected-550", &["drop"]), 4, "{plan:?}");
    let open: u64 = plan
        .iter()
        .map(|p| p["recipients"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(open, 392, "the plan's rows add up to the open recipients");
    let domains = report.events("domain");
    assert!(!domains.is_empty());
    for d in &domains {
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        assert_eq!(
            n("deliver") + n("bounce") + n("hold") + n("drop"),
            n("recipients"),
            "a domain's dispositions add up to its recipients: {d}"
        );
    }

    let args: Vec<String> = cli.run_args(&[]).into_iter().skip(1).collect();
    let run = cli.run(&args);
    check(&run, 0);
    let rows = table_rows(&run.stdout, "recipients by state");
    adds_up(&rows, 1, "run summary, before");
    let after = adds_up(&rows, 2, "run summary, after");

    let status = cli.status();
    let states = status["states"].as_object().expect("states");
    let in_ledger: u64 = states.values().map(|n| n.as_u64().unwrap_or(0)).sum();
    assert_eq!(after, in_ledger, "run summary vs status");
    for row in &rows[..rows.len() - 1] {
        assert_eq!(
            states[&row[0]].to_string(),
            row[2],
            "run summary vs status: {row:?}"
        );
    }
    let windows = status["windows"].as_object().expect("windows");
    assert!(
        windows.keys().all(|w| !w.contains("classified")),
        "the duplicates have their real window: {windows:?}"
    );
    let duplicates: u64 = windows
        .values()
        .map(|w| w["duplicate"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(duplicates, 3, "{windows:?}");
    let got = |window: &str, states: &[&str]| -> u64 {
        states
            .iter()
            .map(|s| windows[window][*s].as_u64().unwrap_or(0))
            .sum()
    };
    for window in [
        "queued",
        "smtp-stopped",
        "rejected-550",
        "tempfail-452",
        "outside",
    ] {
        // What the plan delivers, expires or bounces ends delivered or bounced (the store
        // may refuse some); what it drops is dropped; what it holds is held.
        assert_eq!(
            planned(window, &["deliver", "expire", "bounce"]),
            got(window, &["delivered", "bounced", "failed", "deferred"]),
            "window {window}"
        );
        assert_eq!(
            planned(window, &["drop"]),
            got(window, &["dropped"]),
            "window {window}"
        );
        assert_eq!(
            planned(window, &["hold"]),
            got(window, &["held"]),
            "window {window}"
        );
    }
    // The dropped recipient's last reply says so, not "bounced by the incident policy".
    let never: Vec<(RcptState, String)> = ledger_messages(&cli.ledger)
        .into_iter()
        .flat_map(|w| w.recipients)
        .filter(|r| r.notify.is_some_and(|n| n.never))
        .map(|r| (r.state, r.reply.unwrap_or_default()))
        .collect();
    assert!(!never.is_empty(), "the sample has a NOTIFY=NEVER recipient");
    for (state, reply) in never {
        assert_eq!(state, RcptState::Dropped, "{reply}");
        assert!(
            reply.starts_with("dropped without a DSN: NOTIFY=NEVER"),
            "{reply}"
        );
    }

    // status's own tables: states add up to the total; each window column too.
    let table = cli.run(&["status"]);
    check(&table, 0);
    let state_rows = table_rows(&table.stdout, "\nstate ");
    let state_rows: Vec<Vec<String>> = state_rows
        .into_iter()
        .take_while(|r| !r[0].starts_with("quarantined"))
        .collect();
    assert_eq!(adds_up(&state_rows, 1, "status states"), in_ledger);
    let window_rows = table_rows(&table.stdout, "\nwindow ");
    for col in 1..window_rows[0].len() {
        adds_up(&window_rows, col, "status per window");
    }
}

fn incident_path() -> String {
    crate::support::incident().display().to_string()
}

#[test]
fn an_expired_mail_dsn_tells_what_really_happened_and_the_operator_words() {
    let cli = ingested();
    // The sample's incident with the operator's own sentence for the senders.
    let sample = std::fs::read_to_string(crate::support::incident()).expect("incident");
    let sentence = "We are sorry: our mail storage failed in January. Please send your message again if it is still needed.";
    let with_text = sample.replacen(
        "\n[[window]]",
        &format!("\ndsn_text = \"{sentence}\"\n\n[[window]]"),
        1,
    );
    let inc = cli.at("incident.toml");
    std::fs::write(&inc, with_text).expect("write incident");
    let mut args = cli.run_args(&[]);
    let at = args
        .iter()
        .position(|a| a == "--incident")
        .expect("--incident")
        + 1;
    args[at] = inc.display().to_string();
    check(&cli.run(&args), 0);

    let dsns = crate::support::minispool::outbox_dsns(&cli.outbox());
    assert!(!dsns.is_empty());
    let expired: Vec<&String> = dsns
        .values()
        .filter(|d| d.contains("Status: 4.4.7"))
        .collect();
    assert!(!expired.is_empty(), "the sample has expired mail");
    for dsn in &expired {
        // The explanation, between the incident's name and the recipients, unwrapped.
        let text = dsn.replace("\r\n", " ");
        let from = text.find("Incident:").expect("incident line");
        let to = from + text[from..].find("Recipients:").expect("recipients");
        let text = &text[from..to];
        assert!(
            !text.contains("did not come back"),
            "the store came back on 26 January, before the deadline: {dsn}"
        );
        assert!(
            text.contains("back in service on Thu, 26 Jan 2023 13:00:00 +0100"),
            "{dsn}"
        );
        assert!(text.contains("for up to 5 days, that is until"), "{dsn}");
        assert!(!text.contains("queue lifetime"), "jargon: {dsn}");
    }
    for dsn in dsns.values() {
        let text = dsn.replace("\r\n", " ");
        assert!(
            text.contains(sentence),
            "every DSN has the operator's words: {dsn}"
        );
    }

    // A control character in it is refused with the key and line.
    std::fs::write(
        &inc,
        sample.replacen("\n[[window]]", "\ndsn_text = \"a\\u0007b\"\n[[window]]", 1),
    )
    .expect("write incident");
    let out = cli.run(&args);
    check(&out, 78);
    assert!(
        out.stderr.contains("dsn_text") && out.stderr.contains("control"),
        "{}",
        out.stderr
    );
}
