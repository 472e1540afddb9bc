//! `spoolreplay run` end to end into a Maildir store and an outbox: what lands where, the
//! refused recipients, the DSNs (parsed back field by field), and that a second run is a
//! no-op.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mail_parser::{MessageParser, MimeHeaders};

use crate::support::{
    Cli, LedgerRecipient, assert_settled, check, ledger_recipients, lf_normalized, list_files,
    parse_json_lines, sha256_hex,
};

/// The recipients the store refuses (5.1.3) in the sample spool.
const HOSTILE: [&str; 2] = ["../../etc/passwd@example.net", "\u{1b}[31mred@example.net"];

/// A full run of the sample spool; returns the run's output.
fn full_run(cli: &Cli) -> crate::support::Output {
    cli.ingest_sample();
    let out = cli.run(&cli.run_args(&["--batch-size", "50"]));
    check(&out, 0);
    out
}

/// `DIR/<domain>/<local>/Maildir/new` of a mailbox, lowercased as the store does.
fn new_dir(store: &Path, address: &str) -> std::path::PathBuf {
    let (local, domain) = address.rsplit_once('@').expect("address has @");
    store
        .join(domain.to_ascii_lowercase())
        .join(local.to_ascii_lowercase())
        .join("Maildir/new")
}

/// The stored file without its `Return-Path:` and `Delivered-To:` lines.
#[track_caller]
fn stored_body<'a>(bytes: &'a [u8], file: &Path) -> &'a [u8] {
    let mut rest = bytes;
    for prefix in ["Return-Path: ", "Delivered-To: "] {
        assert!(
            rest.starts_with(prefix.as_bytes()),
            "{} does not start with `{prefix}`",
            file.display()
        );
        let end = rest.iter().position(|&b| b == b'\n').expect("line end");
        rest = &rest[end + 1..];
    }
    rest
}

#[test]
fn full_run_delivers_each_copy_once_and_writes_nothing_else() {
    let cli = Cli::new();
    let out = full_run(&cli);
    let summary = out.event("run_summary");
    assert_eq!(summary["exit"], 0, "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    // 0069, 0071 and 0173 are exact duplicates (of 0062, 0039, 0152): settled at ingest by
    // the first copy, so the store never sees them.
    assert_eq!(summary["already_there"], 0, "{summary}");

    let status = cli.status();
    assert_settled(&status);
    assert_eq!(status["messages"], 294);

    let rows = ledger_recipients(&cli.ledger);
    assert_eq!(rows.len(), 395);
    let duplicates: Vec<&LedgerRecipient> =
        rows.iter().filter(|r| r.state == "duplicate").collect();
    let dup_ids: BTreeSet<&str> = duplicates.iter().map(|r| r.queue_id.as_str()).collect();
    assert_eq!(
        dup_ids,
        BTreeSet::from(["0069-dup-of-0062", "0071-dup-of-0039", "0173-dup-of-0152"]),
        "{duplicates:?}"
    );
    assert_eq!(status["states"]["duplicate"], duplicates.len() as u64);
    let delivered: Vec<&LedgerRecipient> = rows.iter().filter(|r| r.state == "delivered").collect();
    assert_eq!(status["states"]["delivered"], delivered.len() as u64);
    assert!(delivered.len() > 250, "{status}");

    // Each delivered recipient's Maildir holds exactly one copy of its message.
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for r in &delivered {
        let original = std::fs::read(&r.source_path).expect("read spool item");
        let want = lf_normalized(&original);
        let dir = new_dir(&cli.store(), &r.address);
        let files = list_files(&dir);
        let matching: Vec<&String> = files
            .iter()
            .filter(|f| {
                let path = dir.join(f);
                let bytes = std::fs::read(&path).expect("read stored");
                stored_body(&bytes, &path) == want.as_slice()
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{} <{}>: copies in {}: {matching:?}",
            r.queue_id,
            r.address,
            dir.display()
        );
        let mailbox = dir.strip_prefix(cli.store()).expect("under store");
        expected.insert((mailbox.display().to_string(), sha256_hex(&want)));
    }
    // And there is nothing else in the store: one file per distinct (mailbox, message).
    let mut actual: BTreeSet<(String, String)> = BTreeSet::new();
    let store_files = list_files(&cli.store());
    for f in &store_files {
        let path = cli.store().join(f);
        assert!(f.contains("/Maildir/new/"), "stray file in the store: {f}");
        let bytes = std::fs::read(&path).expect("read stored");
        let mailbox = Path::new(f).parent().expect("parent").display().to_string();
        actual.insert((mailbox, sha256_hex(stored_body(&bytes, &path))));
    }
    assert_eq!(store_files.len(), expected.len(), "files in the store");
    assert_eq!(actual, expected);

    // The hostile recipients were refused, bounced, and never became paths.
    for (queue_id, address, why) in [
        (
            "0222-personal",
            "../../etc/passwd@example.net",
            "path separator",
        ),
        (
            "0097-personal",
            "\u{1b}[31mred@example.net",
            "control character",
        ),
    ] {
        let r = rows
            .iter()
            .find(|r| r.queue_id == queue_id && r.address == address)
            .unwrap_or_else(|| panic!("{queue_id} <{address:?}> not in the ledger"));
        assert_eq!(r.state, "bounced", "{r:?}");
        assert_eq!(r.status.as_deref(), Some("5.1.3"), "{r:?}");
        // The reason is in the run's outcome event (the ledger row now names the DSN).
        let outcome = out
            .events("outcome")
            .into_iter()
            .find(|o| o["queue_id"] == queue_id && o["recipient"] == address)
            .unwrap_or_else(|| panic!("no outcome for {queue_id} <{address:?}>"));
        assert_eq!(outcome["state"], "failed", "{outcome}");
        let detail = outcome["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("refused") && detail.contains(why),
            "{outcome}"
        );
        // The other recipient of the same message was delivered.
        assert!(
            rows.iter()
                .any(|o| o.queue_id == queue_id && o.address != address && o.state == "delivered"),
            "{queue_id}: the valid recipient was not delivered"
        );
    }
    for f in list_files(cli.path()) {
        let top = f.split('/').next().unwrap_or_default();
        assert!(
            top == "store" || top == "outbox" || top.starts_with("ledger.db"),
            "file written outside the store and outbox: {f}"
        );
        assert!(!f.contains("passwd") && !f.contains('\u{1b}'), "{f}");
    }
}

/// Header fields of a DSN part-2 group list: `(name, value)` per field, folding undone.
fn status_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in g.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some(last) = fields.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(line.trim());
                    }
                } else if let Some((name, value)) = line.split_once(':') {
                    fields.push((name.trim().to_string(), value.trim().to_string()));
                }
            }
            fields
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    group
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The top-level header fields of a message, raw (before the first blank line).
fn top_headers(bytes: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or_default().to_string();
    status_groups(&head).into_iter().next().unwrap_or_default()
}

#[test]
fn dsns_in_the_outbox_parse_back_field_by_field() {
    let cli = Cli::new();
    full_run(&cli);
    let rows = ledger_recipients(&cli.ledger);
    let bounces = cli.run(&["--json", "bounces"]);
    check(&bounces, 0);
    let dsns = bounces.events("dsn");
    assert!(dsns.len() > 50, "{}", bounces.stdout);
    assert_eq!(cli.status()["dsns"], dsns.len() as u64);

    // The outbox holds exactly one .eml and one .json per DSN.
    let outbox = list_files(&cli.outbox());
    let mut want_files = BTreeSet::new();
    for d in &dsns {
        want_files.insert(format!("dsn-{}.eml", d["id"]));
        want_files.insert(format!("dsn-{}.json", d["id"]));
    }
    assert_eq!(outbox, want_files);

    let mut seen_statuses = BTreeSet::new();
    for d in &dsns {
        let id = &d["id"];
        let queue_id = d["queue_id"].as_str().expect("queue_id");
        let mine: Vec<&LedgerRecipient> = rows.iter().filter(|r| r.queue_id == queue_id).collect();
        let sender = &mine.first().expect("message in ledger").sender;
        assert!(!sender.is_empty(), "DSN {id} for a null-sender message");
        assert_eq!(d["to"], sender.as_str(), "DSN {id}");
        assert_eq!(
            d["written_path"].as_str().map(Path::new),
            Some(cli.outbox().join(format!("dsn-{id}.eml")).as_path())
        );

        let envelope: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cli.outbox().join(format!("dsn-{id}.json"))).expect("read json"),
        )
        .expect("envelope is JSON");
        assert_eq!(envelope["sender"], "", "DSN {id}");
        assert_eq!(
            envelope["recipients"],
            serde_json::json!([sender]),
            "DSN {id}"
        );

        let bytes = std::fs::read(cli.outbox().join(format!("dsn-{id}.eml"))).expect("read eml");
        let shown = cli.run(&["bounces".to_string(), "--show".into(), id.to_string()]);
        check(&shown, 0);
        assert_eq!(
            shown.stdout.as_bytes(),
            bytes.as_slice(),
            "bounces --show {id}"
        );

        let top = top_headers(&bytes);
        assert_eq!(field(&top, "Auto-Submitted"), ["auto-replied"], "DSN {id}");
        assert_eq!(field(&top, "To"), [format!("<{sender}>")], "DSN {id}");

        let msg = MessageParser::default().parse(&bytes).expect("DSN parses");
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart", "DSN {id}");
        assert_eq!(ct.subtype(), Some("report"), "DSN {id}");
        assert_eq!(
            ct.attribute("report-type"),
            Some("delivery-status"),
            "DSN {id}"
        );
        let ids = msg.root_part().sub_parts().expect("multipart").to_vec();
        assert!(
            ids.len() == 2 || ids.len() == 3,
            "DSN {id}: {} parts",
            ids.len()
        );
        let status = &msg.parts[ids[1] as usize];
        assert!(
            status.is_content_type("message", "delivery-status"),
            "DSN {id}"
        );
        let contents = std::str::from_utf8(status.contents()).expect("part 2 is text");
        let groups = status_groups(contents);
        assert_eq!(field(&groups[0], "Reporting-MTA"), ["dns; mx1.example.net"]);

        let failed: Vec<&&LedgerRecipient> = mine.iter().filter(|r| r.state == "bounced").collect();
        assert_eq!(
            groups.len() - 1,
            failed.len(),
            "DSN {id}: one group per bounced recipient"
        );
        assert_eq!(d["recipients"], failed.len(), "DSN {id}");
        let mut finals = BTreeMap::new();
        for g in &groups[1..] {
            assert_eq!(field(g, "Action"), ["failed"], "DSN {id}");
            let fr = field(g, "Final-Recipient");
            assert_eq!(fr.len(), 1, "DSN {id}");
            finals.insert(fr[0].to_string(), field(g, "Status").concat());
        }
        for r in failed {
            let expected_status = if r.window.as_deref() == Some("rejected-550") {
                "5.2.1"
            } else if HOSTILE.contains(&r.address.as_str()) {
                "5.1.3"
            } else {
                assert_eq!(r.window.as_deref(), Some("queued"), "{r:?}");
                "4.4.7"
            };
            seen_statuses.insert(expected_status);
            let key = if r.address.bytes().all(|b| b.is_ascii_graphic()) {
                format!("rfc822; {}", r.address)
            } else {
                // Control characters cannot go out raw; only one such recipient exists.
                let (k, _) = finals
                    .iter()
                    .find(|(k, _)| k.starts_with("utf-8; "))
                    .expect("utf-8 final recipient");
                k.clone()
            };
            let got = finals
                .get(&key)
                .unwrap_or_else(|| panic!("DSN {id}: no group for {key}: {finals:?}"));
            assert_eq!(got, expected_status, "DSN {id} {key}");
        }
    }
    assert_eq!(
        seen_statuses,
        BTreeSet::from(["4.4.7", "5.1.3", "5.2.1"]),
        "every kind of DSN was checked"
    );

    // The null-sender messages got no DSN: their failed recipients were dropped.
    let null: Vec<&LedgerRecipient> = rows.iter().filter(|r| r.sender.is_empty()).collect();
    assert_eq!(null.len(), 10, "null-sender recipients in the sample");
    let dropped: Vec<&&LedgerRecipient> = null.iter().filter(|r| r.state == "dropped").collect();
    assert_eq!(dropped.len(), 5, "{null:?}");
    for r in &null {
        assert!(
            ["dropped", "delivered", "held"].contains(&r.state.as_str()),
            "{r:?}"
        );
        assert!(
            dsns.iter().all(|d| d["queue_id"] != r.queue_id.as_str()),
            "DSN for null-sender {}",
            r.queue_id
        );
    }
    assert!(
        dropped
            .iter()
            .any(|r| r.window.as_deref() == Some("rejected-550")),
        "{dropped:?}"
    );
}

#[test]
fn second_run_does_nothing_more() {
    let cli = Cli::new();
    full_run(&cli);
    let files = |cli: &Cli| -> BTreeSet<String> {
        list_files(cli.path())
            .into_iter()
            .filter(|f| !f.starts_with("ledger.db"))
            .collect()
    };
    let before = files(&cli);
    let dsns_before = cli.status()["dsns"].clone();

    let again = cli.run(&cli.run_args(&[]));
    check(&again, 0);
    let summary = again.event("run_summary");
    for key in [
        "delivered",
        "already_there",
        "failed",
        "dsns_made",
        "dsns_written",
        "remaining",
    ] {
        assert_eq!(summary[key], 0, "{key}: {summary}");
    }
    assert!(again.events("outcome").is_empty(), "{}", again.stdout);
    assert_eq!(files(&cli), before, "the second run wrote files");
    let status = cli.status();
    assert_settled(&status);
    assert_eq!(status["dsns"], dsns_before);
    // Sanity: the JSON Lines helper sees every line.
    assert_eq!(parse_json_lines(&again.stdout).len(), again.json().len());
}

/// The sample's special bounce cases: NOTIFY=NEVER gets no DSN, an exact duplicate of a
/// bounced message is covered by the first copy's DSN (no second DSN to the same sender),
/// and a refused recipient keeps the store's reason after its DSN is made.
#[test]
fn notify_never_duplicates_and_refusal_reasons() {
    let cli = Cli::new();
    full_run(&cli);
    let rows = ledger_recipients(&cli.ledger);
    let bounces = cli.run(&["--json", "bounces"]);
    check(&bounces, 0);
    let dsns = bounces.events("dsn");
    let dsn_for = |queue_id: &str| -> Vec<serde_json::Value> {
        dsns.iter()
            .filter(|d| d["queue_id"] == queue_id)
            .cloned()
            .collect()
    };
    let of = |queue_id: &str| -> Vec<&LedgerRecipient> {
        rows.iter().filter(|r| r.queue_id == queue_id).collect()
    };

    // 0172 (rejected-550): one recipient NOTIFY=NEVER, one SUCCESS,FAILURE.
    let notify = of("0172-personal");
    assert_eq!(notify.len(), 2, "{notify:?}");
    let never: Vec<_> = notify.iter().filter(|r| r.state == "dropped").collect();
    let bounced: Vec<_> = notify.iter().filter(|r| r.state == "bounced").collect();
    assert_eq!((never.len(), bounced.len()), (1, 1), "{notify:?}");
    let d = dsn_for("0172-personal");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["recipients"], 1);
    let eml = std::fs::read_to_string(cli.outbox().join(format!("dsn-{}.eml", d[0]["id"])))
        .expect("read DSN");
    assert!(eml.contains(&format!("Final-Recipient: rfc822; {}", bounced[0].address)));
    assert!(
        !eml.contains(&format!("Final-Recipient: rfc822; {}", never[0].address)),
        "NOTIFY=NEVER recipient listed in the DSN"
    );

    // 0173 is a byte-identical copy of 0152: one DSN, from the first copy.
    assert_eq!(dsn_for("0152-invoice").len(), 1);
    assert!(
        dsn_for("0173-dup-of-0152").is_empty(),
        "second DSN for a duplicate"
    );
    assert!(
        of("0173-dup-of-0152")
            .iter()
            .all(|r| r.state == "duplicate")
    );

    // Refused recipients keep the refusal as their reply.
    for r in rows
        .iter()
        .filter(|r| HOSTILE.contains(&r.address.as_str()))
    {
        assert_eq!(r.state, "bounced", "{r:?}");
        let reply = r.reply.as_deref().unwrap_or_default();
        assert!(!reply.starts_with("dsn "), "reply overwritten: {r:?}");
        assert!(!reply.is_empty(), "{r:?}");
    }
}

/// An operator searches by queue id: `status --message` shows where the message came from
/// and each recipient's state and last reply.
#[test]
fn status_of_one_message_by_queue_id() {
    let cli = Cli::new();
    full_run(&cli);
    let out = cli.run(&["--json", "status", "--message", "0222-personal"]);
    check(&out, 0);
    let m = out.event("message");
    assert_eq!(m["queue_id"], "0222-personal");
    assert_eq!(m["window"], "tempfail-452");
    assert!(
        m["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("0222-personal.eml"),
        "{m}"
    );
    let recipients = m["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 2, "{m}");
    let hostile = recipients
        .iter()
        .find(|r| r["address"] == HOSTILE[0])
        .expect("the path-traversal recipient");
    assert_eq!(hostile["state"], "bounced");
    assert_eq!(hostile["status"], "5.1.3");
    assert!(
        hostile["reply"].as_str().unwrap_or("").contains("refused"),
        "{hostile}"
    );
    assert!(recipients.iter().any(|r| r["state"] == "delivered"), "{m}");

    check(&cli.run(&["status", "--message", "no-such-id"]), 66);
}

/// Every DSN the sample run wrote reads back through Sisimai (the bounce parser operators
/// use) via its generic RFC 3464 engine, recipient by recipient, with our Status.
#[test]
fn every_dsn_of_the_sample_run_reads_through_sisimai() {
    let cli = Cli::new();
    full_run(&cli);
    // Sisimai reads a folder of messages in one go: give it the .eml files alone.
    let folder = cli.at("dsns-only");
    std::fs::create_dir_all(&folder).expect("folder");
    let mut expected = BTreeMap::new();
    for name in list_files(&cli.outbox()) {
        if !name.ends_with(".eml") {
            continue;
        }
        let bytes = std::fs::read(cli.outbox().join(&name)).expect("read DSN");
        std::fs::write(folder.join(&name), &bytes).expect("copy DSN");
        let msg = MessageParser::default().parse(&bytes).expect("DSN parses");
        let parts = msg.root_part().sub_parts().expect("multipart").to_vec();
        let part2 = std::str::from_utf8(msg.parts[parts[1] as usize].contents())
            .expect("part 2 is text")
            .to_string();
        for group in status_groups(&part2).iter().skip(1) {
            let recipient = field(group, "Final-Recipient").concat();
            let address = recipient.trim_start_matches("rfc822;").trim().to_string();
            let status = field(group, "Status").concat();
            expected.insert((name.clone(), address), status);
        }
    }
    assert!(expected.len() > 60, "{expected:?}");
    let parsed = crate::dsn::sisimai_dump(&folder);
    let mut seen = BTreeMap::new();
    for item in &parsed {
        let origin = item["origin"].as_str().unwrap_or("");
        let name = Path::new(origin)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        assert_eq!(item["smtpagent"], "RFC3464", "{item}");
        assert_eq!(item["action"], "failed", "{item}");
        let address = item["recipient"].as_str().unwrap_or("").to_string();
        seen.insert(
            (name, address),
            item["deliverystatus"].as_str().unwrap_or("").to_string(),
        );
    }
    // Sisimai drops addresses it cannot parse as mailboxes: the two hostile ones (the
    // path-traversal local part, and the ESC one that the DSN carries as utf-8 xtext).
    // Every other recipient must come back with our status.
    let hostile_in_dsn = |a: &str| a.starts_with("../") || a.contains("\\x{1B}");
    let readable: BTreeMap<_, _> = expected
        .into_iter()
        .filter(|((_, address), _)| !hostile_in_dsn(address))
        .collect();
    assert!(readable.len() >= 60, "{readable:?}");
    for (key, status) in &readable {
        assert_eq!(seen.get(key), Some(status), "{key:?} in Sisimai's reading");
    }
}

/// `run` of the sample into the temp dir, without `--json`, with `flags` before the command.
fn plain_run_args(cli: &Cli, flags: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(cli.run_args(extra).into_iter().skip(1));
    args
}

#[test]
fn quiet_prints_only_what_was_asked_for_and_errors() {
    let cli = Cli::new();
    let spool = crate::support::sample_spool().display().to_string();
    // Commands that act: nothing at all on either stream, the exit code says how it went.
    let ingest = cli.run(&["-q", "ingest", &spool]);
    check(&ingest, 0);
    assert_eq!((ingest.stdout.as_str(), ingest.stderr.as_str()), ("", ""));
    let run = cli.run(&plain_run_args(&cli, &["-q"], &[]));
    check(&run, 0);
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let written = cli.run(&[
        "-q",
        "bounces",
        "write",
        "--outbox",
        &cli.at("outbox2").display().to_string(),
    ]);
    check(&written, 0);
    assert_eq!((written.stdout.as_str(), written.stderr.as_str()), ("", ""));

    // What was asked for still prints; so do --json events.
    let status = cli.run(&["-q", "status"]);
    check(&status, 0);
    assert!(status.stdout.contains("delivered"), "{}", status.stdout);
    let list = cli.run(&["-q", "bounces", "list"]);
    check(&list, 0);
    assert!(!list.stdout.is_empty());
    let again = cli.run(&plain_run_args(&cli, &["-q", "--json"], &[]));
    check(&again, 0);
    again.event("run_summary");
    assert_eq!(again.stderr, "");

    // Errors still go out.
    let missing = cli.run(&[
        "-q",
        "run",
        "--incident",
        &cli.at("nope.toml").display().to_string(),
        "--store",
        &format!("maildir:{}", cli.store().display()),
    ]);
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.starts_with("error:"), "{}", missing.stderr);

    // Without -q the same commands do print their summaries (so the checks above can fail).
    let loud = Cli::new();
    let ingest = loud.run(&["ingest", &spool]);
    check(&ingest, 0);
    assert!(
        ingest.stdout.contains("ingested 294 messages"),
        "{}",
        ingest.stdout
    );
    let run = loud.run(&plain_run_args(&loud, &[], &[]));
    check(&run, 0);
    assert!(run.stdout.contains("Exit 0"), "{}", run.stdout);
    let written = loud.run(&[
        "bounces",
        "write",
        "--outbox",
        &loud.at("outbox2").display().to_string(),
    ]);
    check(&written, 0);
    assert!(
        written.stdout.starts_with("wrote 0 DSNs"),
        "{}",
        written.stdout
    );
}

#[test]
fn progress_counts_messages_against_the_messages_to_deliver() {
    let cli = Cli::new();
    cli.ingest_sample();
    let plan = cli.run(&[
        "--json",
        "report",
        "--incident",
        &crate::support::incident().display().to_string(),
        "--now",
        crate::support::NOW,
    ]);
    check(&plan, 0);
    let deliveries = plan.event("report_summary")["deliveries"]
        .as_u64()
        .expect("deliveries");
    // Slow enough (at least 8 s by the throttle) for the plain progress line, every 5 s.
    let out = cli.run(&cli.run_args(&["--rate", "25/s"]));
    check(&out, 0);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line:\n{}", out.stderr);
    for line in lines {
        let counted = line["progress: ".len()..]
            .split(' ')
            .next()
            .unwrap_or_default();
        let (done, total) = counted.split_once('/').expect("done/total");
        assert_eq!(total, deliveries.to_string(), "{line}");
        assert!(done.parse::<u64>().is_ok(), "{line}");
        assert!(
            line.contains(&format!("/{deliveries} messages (")),
            "{line}"
        );
        // `(12/s, ETA 6s)`: a whole number from 10/s up, one decimal below (`6.6/s`, what
        // a loaded machine measures at this pace), never more digits.
        let rate = line.split(" messages (").nth(1).unwrap_or_default();
        let rate = &rate[..rate.find("/s").unwrap_or(0)];
        let value: f64 = rate
            .parse()
            .unwrap_or_else(|_| panic!("rate `{rate}` in {line}"));
        let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
        assert_eq!(
            decimals,
            if value >= 10.0 { 0 } else { 1 },
            "rate `{rate}` in {line}"
        );
    }
}
