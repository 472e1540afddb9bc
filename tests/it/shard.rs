//! `ingest --shard I/N`: over fixture spools of every format, the shards are disjoint and
//! together hold what one unsharded ingest holds; a ledger keeps its shard; bad specs are
//! refused.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::{Cli, check, fixtures, ledger_messages, read_ledger, sample_spool};

const SHARDS: u32 = 3;

/// What a ledger holds, as sets that do not depend on ingest order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// (source path, offset, queue id, content hash)
    pub messages: BTreeSet<(String, i64, String, String)>,
    /// (source path, offset, address)
    pub recipients: BTreeSet<(String, i64, String)>,
    /// (source path, offset, reason)
    pub quarantined: BTreeSet<(String, i64, String)>,
}

impl Holdings {
    pub fn of(ledger: &Path) -> Holdings {
        let mut held = Holdings::default();
        for work in ledger_messages(ledger) {
            let m = work.message;
            let path = m.source.path.display().to_string();
            let offset = m.source.offset as i64;
            for r in work.recipients {
                held.recipients.insert((path.clone(), offset, r.address));
            }
            held.messages
                .insert((path, offset, m.queue_id, m.content_hash));
        }
        let (_, quarantined) = read_ledger(ledger)
            .quarantined(usize::MAX)
            .expect("quarantine");
        held.quarantined = quarantined
            .into_iter()
            .map(|q| (q.source_path, q.source_offset, q.reason))
            .collect();
        held
    }

    fn items(&self) -> usize {
        self.messages.len() + self.quarantined.len()
    }

    /// Adds `other`, failing the test if anything is held twice.
    #[track_caller]
    fn add_disjoint(&mut self, other: Holdings, what: &str) {
        let before = (
            self.messages.len() + other.messages.len(),
            self.recipients.len() + other.recipients.len(),
            self.quarantined.len() + other.quarantined.len(),
        );
        self.messages.extend(other.messages);
        self.recipients.extend(other.recipients);
        self.quarantined.extend(other.quarantined);
        let after = (
            self.messages.len(),
            self.recipients.len(),
            self.quarantined.len(),
        );
        assert_eq!(before, after, "{what}: shards overlap");
    }
}

/// `ingest` of `spool` into `cli`'s ledger, with extra arguments; returns its summary.
#[track_caller]
pub fn ingest(cli: &Cli, spool: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "ingest"];
    args.extend_from_slice(extra);
    args.push(spool.to_str().expect("utf-8 path"));
    let out = cli.run(&args);
    check(&out, 0);
    out.event("ingest_summary")
}

/// The spool ingested whole, and in `SHARDS` shards (one ledger each).
pub struct Sharded {
    pub whole: Cli,
    pub shards: Vec<Cli>,
    pub summaries: Vec<Value>,
}

#[track_caller]
pub fn ingest_sharded(spool: &Path, extra: &[&str]) -> Sharded {
    let whole = Cli::new();
    let unsharded = ingest(&whole, spool, extra);
    assert_eq!(unsharded["other_shards"], 0, "{unsharded}");
    assert_eq!(unsharded["shard"], Value::Null, "{unsharded}");
    let mut shards = Vec::new();
    let mut summaries = Vec::new();
    for i in 1..=SHARDS {
        let cli = Cli::new();
        let spec = format!("{i}/{SHARDS}");
        let mut args = extra.to_vec();
        args.extend(["--shard", &spec]);
        let summary = ingest(&cli, spool, &args);
        assert_eq!(summary["shard"], spec.as_str(), "{summary}");
        shards.push(cli);
        summaries.push(summary);
    }
    Sharded {
        whole,
        shards,
        summaries,
    }
}

/// Shards are disjoint, their union is the unsharded ingest, and each shard's summary
/// counts the items it left to the others. Returns the items per shard.
#[track_caller]
fn check_split(spool: &Path, extra: &[&str]) -> Vec<usize> {
    let sharded = ingest_sharded(spool, extra);
    let whole = Holdings::of(&sharded.whole.ledger);
    assert!(whole.items() > 0, "{}: nothing ingested", spool.display());
    let mut union = Holdings::default();
    let mut sizes = Vec::new();
    for (cli, summary) in sharded.shards.iter().zip(&sharded.summaries) {
        let held = Holdings::of(&cli.ledger);
        sizes.push(held.items());
        let skipped = summary["other_shards"].as_u64().expect("other_shards");
        assert_eq!(
            skipped as usize + held.items(),
            whole.items(),
            "{}: {summary}",
            spool.display()
        );
        union.add_disjoint(held, &spool.display().to_string());
    }
    assert_eq!(union, whole, "{}", spool.display());
    sizes
}

#[test]
fn eml_sample_spool_splits_into_disjoint_shards() {
    let sizes = check_split(&sample_spool(), &[]);
    // 300 items over 3 shards: a hash that sent everything to one shard would be useless.
    assert!(sizes.iter().all(|n| *n > 60), "{sizes:?}");
}

#[test]
fn maildir_mbox_and_eml_fixture_spools_split() {
    let spools = fixtures().join("spools");
    for (path, format) in [
        (spools.join("maildir"), "maildir"),
        (spools.join("inbox.mbox"), "mbox"),
        (spools.join("crlf.mbox"), "mbox"),
        (spools.join("eml"), "eml"),
    ] {
        let sizes = check_split(&path, &["--format", format]);
        assert!(sizes.iter().sum::<usize>() > 0, "{}", path.display());
    }
}

#[test]
fn postfix_and_exim_queues_split() {
    for spool in [
        fixtures().join("postfix/spool"),
        fixtures().join("exim/flat/spool"),
        fixtures().join("exim/split/spool"),
    ] {
        let sizes = check_split(&spool, &[]);
        assert!(
            sizes.iter().filter(|n| **n > 0).count() >= 2,
            "{}: {sizes:?}",
            spool.display()
        );
    }
}

/// A Maildir message keeps its shard when it moves to `cur/` with flags, and a Postfix
/// message when Postfix moves it to another queue: the key is the queue id, not the path.
#[test]
fn a_message_keeps_its_shard_when_it_moves() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let maildir = tmp.path().join("md");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("mkdir");
    }
    let mail = "Return-Path: <a@x.test>\nDelivered-To: b@y.test\nDate: Mon, 23 Jan 2023 10:00:00 +0100\n\nhi\n";
    let names: Vec<String> = (0..12)
        .map(|i| format!("16744680{i:02}.M1P1.host"))
        .collect();
    for name in &names {
        std::fs::write(maildir.join("new").join(name), mail).expect("write");
    }
    let before = shard_of_each(&maildir, "maildir");
    for name in &names {
        std::fs::rename(
            maildir.join("new").join(name),
            maildir.join("cur").join(format!("{name}:2,S")),
        )
        .expect("move");
    }
    assert_eq!(shard_of_each(&maildir, "maildir"), before);
    assert_eq!(before.len(), names.len());

    // Postfix: every deferred message released into active/ (as the queue manager does).
    let postfix = tmp.path().join("postfix");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixtures().join("postfix/spool"))
        .arg(&postfix)
        .status()
        .expect("cp");
    assert!(copied.success());
    let before = shard_of_each(&postfix, "postfix");
    let mut moved = 0;
    for hashed in std::fs::read_dir(postfix.join("deferred")).expect("deferred") {
        for file in std::fs::read_dir(hashed.expect("entry").path()).expect("hashed folder") {
            let file = file.expect("entry").path();
            let name = file.file_name().expect("name").to_owned();
            std::fs::rename(&file, postfix.join("active").join(name)).expect("move");
            moved += 1;
        }
    }
    assert!(moved > 5, "only {moved} deferred messages");
    assert_eq!(shard_of_each(&postfix, "postfix"), before);
}

/// Queue id -> the shard (1..=SHARDS) whose ingest took it.
fn shard_of_each(spool: &Path, format: &str) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    for i in 1..=SHARDS {
        let cli = Cli::new();
        ingest(
            &cli,
            spool,
            &["--format", format, "--shard", &format!("{i}/{SHARDS}")],
        );
        for m in Holdings::of(&cli.ledger).messages {
            out.insert((m.2, i));
        }
    }
    out
}

/// Pinned: which shard of 3 each sample message lands in. A change of the key or the hash
/// would move half-ingested spools between shards, so it must fail here.
#[test]
fn sample_messages_land_in_pinned_shards() {
    let pinned = [
        ("0001-invoice", 2),
        ("0002-invoice", 1),
        ("0003-invoice", 1),
        ("0005-bank", 3),
    ];
    for (queue_id, shard) in pinned {
        let found: Vec<u32> = (1..=SHARDS)
            .filter(|i| {
                let cli = Cli::new();
                let tmp = tempfile::tempdir().expect("temp dir");
                for ext in ["eml", "json"] {
                    let from = sample_spool().join(format!("{queue_id}.{ext}"));
                    std::fs::copy(&from, tmp.path().join(format!("{queue_id}.{ext}")))
                        .expect("copy");
                }
                let summary = ingest(&cli, tmp.path(), &["--shard", &format!("{i}/{SHARDS}")]);
                summary["messages"] == 1
            })
            .collect();
        assert_eq!(found, [shard], "{queue_id}");
    }
}

#[test]
fn a_ledger_keeps_its_shard() {
    let cli = Cli::new();
    let spool = sample_spool();
    let first = ingest(&cli, &spool, &["--shard", "2/3"]);
    let again = ingest(&cli, &spool, &["--shard", "2/3"]);
    assert_eq!(again["new"], 0, "{again}");
    assert_eq!(again["known"], first["messages"], "{again}");
    let spool_arg = spool.to_str().expect("utf-8");
    for (args, phrase) in [
        (
            vec!["ingest", "--shard", "1/3", spool_arg],
            "holds shard 2/3",
        ),
        (
            vec!["ingest", "--shard", "2/4", spool_arg],
            "holds shard 2/3",
        ),
        (vec!["ingest", spool_arg], "--shard 2/3"),
    ] {
        let out = cli.run(&args);
        check(&out, 64);
        assert!(out.stderr.contains(phrase), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    }

    let whole = Cli::new();
    ingest(&whole, &spool, &[]);
    let out = whole.run(&["ingest", "--shard", "1/3", spool_arg]);
    check(&out, 64);
    assert!(out.stderr.contains("holds whole spools"), "{}", out.stderr);
}

#[test]
fn bad_shard_specs_are_usage_errors() {
    let cli = Cli::new();
    let spool = sample_spool();
    for (spec, phrase) in [
        ("0/3", "between 1 and 3"),
        ("4/3", "between 1 and 3"),
        ("1/0", "at least 1"),
        ("two/3", "is not a shard like 2/8"),
        ("1-3", "is not a shard like 2/8"),
    ] {
        let out = cli.run(&["ingest", "--shard", spec, spool.to_str().expect("utf-8")]);
        check(&out, 64);
        assert!(
            out.stderr.contains("--shard") && out.stderr.contains(phrase),
            "{spec}: {}",
            out.stderr
        );
    }
    assert!(!cli.ledger.exists(), "a refused ingest created the ledger");
}

/// The human summary names the shard and what it left to the others.
#[test]
fn human_output_names_the_shard() {
    let cli = Cli::new();
    let out = cli.run(&[
        "ingest",
        "--shard",
        "3/3",
        sample_spool().to_str().expect("utf-8"),
    ]);
    check(&out, 0);
    assert!(
        out.stdout.contains("took shard 3/3: ") && out.stdout.contains("left to the other shards"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains(", shard 3/3"), "{}", out.stderr);
}

/// The ledgers' paths, as `--ledger` arguments.
pub fn ledger_args(clis: &[Cli]) -> Vec<String> {
    clis.iter()
        .flat_map(|c| ["--ledger".to_string(), c.ledger.display().to_string()])
        .collect()
}
