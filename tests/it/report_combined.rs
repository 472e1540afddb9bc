//! `report --ledger a.db --ledger b.db`: the sample spool split into 3 shard ledgers and
//! reported on as one says what the report of the unsharded ledger says; mistakes (a
//! ledger twice, a spool in two ledgers, several ledgers for another command) are refused.

use std::path::Path;

use serde_json::Value;

use crate::shard::{Sharded, ingest_sharded, ledger_args};
use crate::support::{Cli, NOW, Output, check, incident, sample_spool, sha256_file};

/// The sample spool without its three exact duplicates: a duplicate is settled at ingest
/// only against the mail of its own ledger, so copies that fall in two shards are both
/// open (see ARCHITECTURE.md); without them every number must match.
fn sample_without_duplicates(into: &Path) -> std::path::PathBuf {
    let spool = into.join("spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    let mut copied = 0;
    for entry in std::fs::read_dir(sample_spool()).expect("sample spool") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.contains("-dup-of-") {
            std::fs::copy(&path, spool.join(&name)).expect("copy");
            copied += 1;
        }
    }
    assert!(copied > 500, "only {copied} files copied");
    spool
}

/// `report` of the plan over `first` and `more` ledgers, in `format`.
fn plan(first: &Cli, more: &[Cli], format: &str) -> Output {
    let mut args = ledger_args(more);
    args.extend(
        [
            "report",
            "--incident",
            &incident().display().to_string(),
            "--now",
            NOW,
            "--rate",
            "500/s",
            "--format",
            format,
        ]
        .map(String::from),
    );
    let out = first.run(&args);
    check(&out, 0);
    out
}

/// JSON rows of a report, minus what legitimately differs between one ledger and several:
/// the `ledger` rows, the summary's `ledgers`, anomaly examples (the first few found, in
/// ledger order) and the order of quarantined items (first seen).
fn comparable(out: &Output) -> Vec<Value> {
    let mut rows: Vec<Value> = out
        .json()
        .into_iter()
        .filter(|v| v["type"] != "ledger")
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("ledgers");
                if o.get("type").is_some_and(|t| t == "anomaly") {
                    o.remove("examples");
                }
                o.remove("first_seen");
            }
            v
        })
        .collect();
    rows.sort_by_key(|v| v.to_string());
    rows
}

fn split_sample(tmp: &tempfile::TempDir) -> Sharded {
    ingest_sharded(&sample_without_duplicates(tmp.path()), &[])
}

#[test]
fn combined_plan_of_three_shards_equals_the_unsharded_plan() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sharded = split_sample(&tmp);
    let (first, more) = sharded.shards.split_first().expect("shards");
    // The ledgers, and their lock files (left by ingest; a writer would rewrite them).
    let state = || -> Vec<String> {
        sharded
            .shards
            .iter()
            .flat_map(|c| [sha256_file(&c.ledger), sha256_file(&c.at("ledger.db.lock"))])
            .collect()
    };
    let before = state();

    // JSON: every row the same, plus the ledgers named.
    let whole = plan(&sharded.whole, &[], "json");
    let combined = plan(first, more, "json");
    assert_eq!(comparable(&combined), comparable(&whole));
    let summary = combined.event("report_summary");
    assert!(
        summary["messages"].as_u64().is_some_and(|n| n > 250),
        "{summary}"
    );
    let named: Vec<&str> = summary["ledgers"]
        .as_array()
        .expect("ledgers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<String> = sharded
        .shards
        .iter()
        .map(|c| c.ledger.display().to_string())
        .collect();
    assert_eq!(named, expected);
    let shards: Vec<Value> = combined
        .events("ledger")
        .iter()
        .map(|l| l["shard"].clone())
        .collect();
    assert_eq!(shards, ["shard 1/3", "shard 2/3", "shard 3/3"]);
    assert!(
        whole.events("ledger").is_empty() && whole.event("report_summary").get("ledgers").is_none()
    );

    // Table: the plan and its prose are the same lines; the header says what was combined.
    let whole = plan(&sharded.whole, &[], "table").stdout;
    let combined = plan(first, more, "table").stdout;
    let block = |text: &str| -> String {
        let start = text.find("Per window and disposition").expect("plan table");
        let end = text.find("Top recipient domains").expect("domain table");
        text[start..end].to_string()
    };
    assert_eq!(block(&combined), block(&whole));
    assert!(
        combined
            .lines()
            .next()
            .is_some_and(|l| l.contains("messages in 3 ledgers")),
        "{combined}"
    );
    assert!(
        combined.contains("Combined ledgers") && combined.contains("shard 2/3"),
        "{combined}"
    );

    // CSV: the same summary rows.
    let summary_rows = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("summary,"))
            .map(String::from)
            .collect()
    };
    let whole = plan(&sharded.whole, &[], "csv").stdout;
    let combined = plan(first, more, "csv").stdout;
    assert!(summary_rows(&whole).len() > 10);
    assert_eq!(summary_rows(&combined), summary_rows(&whole));
    assert!(
        combined.lines().any(|l| l.starts_with("ledger,")),
        "{combined}"
    );

    // Read-only: no ledger changed, no writer lock taken.
    assert_eq!(state(), before);
}

/// Copies of one message that fell in two shards are one duplicate group in the combined
/// report, as in the unsharded one.
#[test]
fn duplicates_across_shards_are_found_by_the_combined_report() {
    let sharded = ingest_sharded(&sample_spool(), &[]);
    let (first, more) = sharded.shards.split_first().expect("shards");
    let whole = plan(&sharded.whole, &[], "json");
    let combined = plan(first, more, "json");
    assert_eq!(whole.event("report_summary")["duplicates"], 3);
    assert_eq!(combined.event("report_summary")["duplicates"], 3);
    let groups = |out: &Output| -> Vec<String> {
        let mut g: Vec<String> = out
            .events("anomaly")
            .iter()
            .filter(|a| a["kind"] == "duplicate")
            .map(|a| {
                // Across ledgers the copies are listed by ledger, then ledger order.
                let mut ids: Vec<&str> = a["examples"]
                    .as_str()
                    .unwrap_or_default()
                    .split(' ')
                    .collect();
                ids.sort();
                ids.join(" ")
            })
            .collect();
        g.sort();
        g
    };
    assert_eq!(groups(&combined), groups(&whole));
    assert_eq!(groups(&whole).len(), 3);
}

/// After a run of each shard (and of the whole spool), `--affected` over the shards lists
/// the same mailboxes and sender domains, mailboxes with mail in several shards once.
#[test]
fn combined_affected_mailboxes_equal_the_unsharded_ones() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sharded = split_sample(&tmp);
    for cli in std::iter::once(&sharded.whole).chain(&sharded.shards) {
        check(&cli.run(&cli.run_args(&[])), 0);
    }
    let affected = |first: &Cli, more: &[Cli]| -> Vec<Value> {
        let mut args = ledger_args(more);
        args.extend(["report", "--affected", "--format", "json"].map(String::from));
        let out = first.run(&args);
        check(&out, 0);
        out.json()
            .into_iter()
            .filter(|v| v["type"] != "ledger")
            .map(|mut v| {
                // Delays are wall-clock times of four different runs.
                if let Some(o) = v.as_object_mut() {
                    o.remove("worst_delay_seconds");
                }
                v
            })
            .collect()
    };
    let (first, more) = sharded.shards.split_first().expect("shards");
    let whole = affected(&sharded.whole, &[]);
    let combined = affected(first, more);
    assert!(whole.iter().filter(|v| v["type"] == "mailbox").count() > 20);
    assert!(whole.iter().any(|v| v["type"] == "sender_domain"));
    assert_eq!(combined, whole);

    // The HTML report combines too.
    let html = tmp.path().join("combined.html");
    let mut args = ledger_args(more);
    args.extend(
        [
            "report",
            "--incident",
            &incident().display().to_string(),
            "--now",
            NOW,
            "--html",
            &html.display().to_string(),
        ]
        .map(String::from),
    );
    check(&first.run(&args), 0);
    let page = std::fs::read_to_string(&html).expect("html report");
    assert!(
        page.contains("<svg"),
        "no chart in the combined HTML report"
    );
}

#[test]
fn the_same_ledger_twice_or_one_spool_in_two_ledgers_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sharded = split_sample(&tmp);
    let first = &sharded.shards[0];
    let report = |extra: &[String]| -> Output {
        let mut args = extra.to_vec();
        args.extend(["report", "--affected"].map(String::from));
        first.run(&args)
    };
    // The same file under another spelling.
    let again = first.path().join(".").join("ledger.db");
    let out = report(&["--ledger".into(), again.display().to_string()]);
    check(&out, 64);
    assert!(
        out.stderr.contains("is the same ledger as"),
        "{}",
        out.stderr
    );

    // The whole spool's ledger with one of its shards: that mail would count twice.
    let out = report(&ledger_args(std::slice::from_ref(&sharded.whole)));
    check(&out, 64);
    assert!(
        out.stderr.contains("both hold the message read from"),
        "{}",
        out.stderr
    );

    // A copy of a ledger is the same spool too.
    let copy = first.at("copy.db");
    std::fs::copy(&first.ledger, &copy).expect("copy ledger");
    let out = report(&["--ledger".into(), copy.display().to_string()]);
    check(&out, 64);
    assert!(out.stderr.contains("both hold"), "{}", out.stderr);
}

#[test]
fn only_report_takes_several_ledgers() {
    let cli = Cli::new();
    let other = cli.at("other.db").display().to_string();
    let spool = sample_spool().display().to_string();
    for args in [
        vec!["--ledger", &other, "status"],
        vec!["--ledger", &other, "ingest", &spool],
        vec!["--ledger", &other, "audit"],
        vec!["--ledger", &other, "bounces"],
    ] {
        let out = cli.run(&args);
        check(&out, 64);
        assert!(
            out.stderr.contains("--ledger") && out.stderr.contains("only `report` combines"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(!cli.ledger.exists(), "a refused command created a ledger");
}
