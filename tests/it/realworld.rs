//! Real-world mail (`fixtures/realworld/`, sources and licences in its README): public test
//! corpora nobody on this project wrote, with LF, CRLF and CR-only line ends and leading
//! mbox `From ` lines, replayed from an `.eml`+sidecar folder, a Maildir and an mbox into a
//! Maildir store; and one test per defect of issue 11.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::incident::TestIncident;
use crate::support::{Cli, Output, check, fixtures, ledger_recipients, list_files};

const SENDER: &str = "relay@example.org";
const RCPT: &str = "corpus@example.test";
/// The arrival the mbox separators and the run's incident agree on.
const FROM_LINE_DATE: &str = "Mon Jan 23 10:00:00 2023";

/// One corpus message: its path below `fixtures/realworld` and its bytes.
struct Mail {
    rel: String,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Mail> {
    let root = fixtures().join("realworld");
    let mails: Vec<Mail> = list_files(&root)
        .into_iter()
        .filter(|rel| rel.ends_with(".eml"))
        .map(|rel| Mail {
            bytes: std::fs::read(root.join(&rel)).expect("read corpus file"),
            rel,
        })
        .collect();
    assert!(mails.len() > 300, "the corpus has {} messages", mails.len());
    mails
}

/// Classic-Mac mail, as README defines it: CRs and no LF (an LF as the last byte aside).
fn is_mac(bytes: &[u8]) -> bool {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    !body.contains(&b'\n') && body.contains(&b'\r')
}

/// The message as a Maildir holds it: CRLF becomes LF, and in Mac mail every CR.
fn lf_form(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mac = is_mac(bytes);
    let mut it = bytes.iter().copied().peekable();
    while let Some(b) = it.next() {
        match b {
            b'\r' if it.peek() == Some(&b'\n') => {}
            b'\r' if mac => out.push(b'\n'),
            _ => out.push(b),
        }
    }
    out
}

/// The line end the message itself uses (of its first line).
fn eol(bytes: &[u8]) -> &'static [u8] {
    if is_mac(bytes) {
        b"\r"
    } else {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(i) if i > 0 && bytes[i - 1] == b'\r' => b"\r\n",
            _ => b"\n",
        }
    }
}

/// `(leading From line with its line end, the rest)`.
fn split_from_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    if !bytes.starts_with(b"From ") {
        return (&[], bytes);
    }
    let end = if is_mac(bytes) { b'\r' } else { b'\n' };
    let cut = bytes
        .iter()
        .position(|&b| b == end)
        .map_or(bytes.len(), |i| i + 1);
    bytes.split_at(cut)
}

/// Whether the message (without its From line) starts with a `Name: value` header.
fn has_header_block(bytes: &[u8]) -> bool {
    let colon = bytes
        .iter()
        .position(|&b| b == b':' || b == b'\n' || b == b'\r');
    matches!(colon, Some(i) if i > 0 && bytes[i] == b':' && bytes[..i].iter().all(|b| (33..=126).contains(b)))
}

/// The final delivery agent's fields, in the message's own line ends.
fn delivery_fields(bytes: &[u8]) -> Vec<u8> {
    let eol = eol(bytes);
    let mut out = Vec::new();
    for line in [
        format!("Return-Path: <{SENDER}>"),
        format!("X-Original-To: {RCPT}"),
        format!("Delivered-To: {RCPT}"),
    ] {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol);
    }
    out
}

/// A spool built from the corpus, and what each message must become in the store.
struct Spool {
    path: PathBuf,
    /// LF forms a store copy must have (after its delivery headers), with how many corpus
    /// messages share each: equal after line-end normalisation is one content.
    expected: BTreeMap<Vec<u8>, usize>,
    /// Paths (or mbox offsets' file) expected in quarantine: what has no header block.
    unreadable: BTreeSet<String>,
}

fn eml_spool(dir: &Path, mails: &[Mail]) -> Spool {
    let path = dir.join("eml");
    let mut expected = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    for mail in mails {
        let file = path.join(&mail.rel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &mail.bytes).unwrap();
        std::fs::write(
            file.with_extension("json"),
            format!(r#"{{"sender": "{SENDER}", "recipients": ["{RCPT}"]}}"#),
        )
        .unwrap();
        let (_, content) = split_from_line(&mail.bytes);
        if has_header_block(content) {
            *expected.entry(lf_form(content)).or_default() += 1;
        } else {
            unreadable.insert(file.display().to_string());
        }
    }
    Spool {
        path,
        expected,
        unreadable,
    }
}

/// What a final delivery agent wrote: its fields on top (after a `From ` line some
/// converters leave), the message below. Everything has a header block then.
fn delivered(mail: &Mail) -> (Vec<u8>, Vec<u8>) {
    let (from_line, content) = split_from_line(&mail.bytes);
    let mut message = delivery_fields(&mail.bytes);
    message.extend_from_slice(content);
    (from_line.to_vec(), message)
}

fn maildir_spool(dir: &Path, mails: &[Mail]) -> Spool {
    let path = dir.join("maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(path.join(sub)).unwrap();
    }
    let mut expected = BTreeMap::new();
    for (i, mail) in mails.iter().enumerate() {
        let (from_line, message) = delivered(mail);
        let mut file = from_line;
        file.extend_from_slice(&message);
        std::fs::write(
            path.join("new")
                .join(format!("{}.M{i}P1.mx", 1_674_468_000 + i)),
            file,
        )
        .unwrap();
        *expected.entry(lf_form(&message)).or_default() += 1;
    }
    Spool {
        path,
        expected,
        unreadable: BTreeSet::new(),
    }
}

fn mbox_spool(dir: &Path, mails: &[Mail]) -> Spool {
    let path = dir.join("corpus.mbox");
    let mut mbox = Vec::new();
    let mut expected = BTreeMap::new();
    for mail in mails {
        let (from_line, mut message) = delivered(mail);
        if from_line.is_empty() || is_mac(&mail.bytes) {
            // A CR-ended `From ` line cannot separate LF-framed mbox messages.
            mbox.extend_from_slice(format!("From {SENDER} {FROM_LINE_DATE}\n").as_bytes());
        } else {
            mbox.extend_from_slice(&from_line);
        }
        // mboxrd: `From ` (after any `>`) at a line start gains a `>`.
        for line in message.split_inclusive(|&b| b == b'\n') {
            let quotes = line.iter().take_while(|&&b| b == b'>').count();
            if line[quotes..].starts_with(b"From ") {
                mbox.push(b'>');
            }
            mbox.extend_from_slice(line);
        }
        // The writer ends the message with a line end, then a blank line.
        if !message.ends_with(b"\n") {
            mbox.push(b'\n');
            message.push(b'\n');
        }
        mbox.push(b'\n');
        *expected.entry(lf_form(&message)).or_default() += 1;
    }
    std::fs::write(&path, mbox).unwrap();
    Spool {
        path,
        expected,
        unreadable: BTreeSet::new(),
    }
}

/// Every message arrived within one window that delivers, whatever its dates say.
fn write_incident(cli: &Cli) -> PathBuf {
    TestIncident::new()
        .name("real-world corpus")
        .reporting_mta("mx1.example.test")
        .lifetime("5d")
        .lifetime_from("restored")
        .outside("deliver")
        .window(
            "queued",
            "2023-01-22T20:00:00+01:00",
            "2023-01-23T16:00:00+01:00",
            "deliver",
        )
        .write(cli.path())
}

/// The store's copies for `RCPT`, each without the two delivery headers spoolreplay
/// writes (checked here).
fn store_copies(store: &Path) -> Vec<(String, Vec<u8>)> {
    let new = store.join("example.test/corpus/Maildir/new");
    let prefix = format!("Return-Path: <{SENDER}>\nDelivered-To: {RCPT}\n");
    list_files(&new)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(new.join(&name)).unwrap();
            let body = bytes
                .strip_prefix(prefix.as_bytes())
                .unwrap_or_else(|| panic!("{name} lacks the delivery headers"))
                .to_vec();
            (name, body)
        })
        .collect()
}

#[track_caller]
fn replay(spool: &Spool, format: &str) {
    let cli = Cli::new();
    let out = cli.run(&["--json".as_ref(), "ingest".as_ref(), spool.path.as_os_str()]);
    check(&out, 0);
    assert_eq!(out.event("ingest_summary")["format"], format, "detected");

    // Only the truly unreadable is quarantined, each with a reason that says what is wrong.
    let quarantined: BTreeMap<String, String> = out
        .events("quarantined")
        .iter()
        .map(|q| {
            (
                q["path"].as_str().unwrap().to_string(),
                q["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        quarantined.keys().cloned().collect::<BTreeSet<_>>(),
        spool.unreadable,
        "{format}: quarantined {quarantined:#?}"
    );
    for (path, reason) in &quarantined {
        assert!(reason.starts_with("no header block: "), "{path}: {reason}");
    }

    // No recipient beyond the envelope.
    let rows = ledger_recipients(&cli.ledger);
    let total: usize = spool.expected.values().sum();
    assert_eq!(rows.len(), total, "{format}: one recipient per message");
    for row in &rows {
        assert_eq!(
            row.address, RCPT,
            "{format}: {} gained a recipient",
            row.queue_id
        );
    }

    let incident = write_incident(&cli);
    let store = cli.store();
    let run = cli.run(&[
        "--json".as_ref(),
        "run".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--store".as_ref(),
        format!("maildir:{}", store.display()).as_ref(),
        "--now".as_ref(),
        "2023-01-27T06:00:00+01:00".as_ref(),
    ]);
    check(&run, 0);

    // Every copy equal to the spooled message in its LF form, nothing doubled: mail equal
    // after line-end normalisation is one content (the later copies are duplicates).
    let copies = store_copies(&store);
    let mut seen: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for (name, body) in copies {
        assert!(
            !body.starts_with(b"From "),
            "{format}: {name} was delivered with its From line"
        );
        assert!(
            spool.expected.contains_key(&body),
            "{format}: {name} is not any spooled message in its LF form"
        );
        if let Some(first) = seen.insert(body, name.clone()) {
            panic!("{format}: {name} doubles {first}");
        }
    }
    assert_eq!(
        seen.len(),
        spool.expected.len(),
        "{format}: every content stored"
    );
    let duplicates = rows.iter().filter(|r| r.state == "duplicate").count();
    assert_eq!(
        duplicates,
        total - spool.expected.len(),
        "{format}: duplicates settled"
    );
    assert!(
        duplicates > 0,
        "the corpus holds the same mail with LF, CRLF and CR"
    );
}

#[test]
fn corpus_replays_from_an_eml_folder_with_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let mails = corpus();
    let spool = eml_spool(dir.path(), &mails);
    assert!(
        !spool.unreadable.is_empty(),
        "malformed mail is in the corpus"
    );
    replay(&spool, "eml");
}

#[test]
fn corpus_replays_from_a_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let spool = maildir_spool(dir.path(), &corpus());
    replay(&spool, "maildir");
}

#[test]
fn corpus_replays_from_an_mbox() {
    let dir = tempfile::tempdir().unwrap();
    let spool = mbox_spool(dir.path(), &corpus());
    replay(&spool, "mbox");
}

#[test]
fn corpus_has_every_kind_of_line_end_and_from_lines() {
    let mails = corpus();
    let count = |f: &dyn Fn(&[u8]) -> bool| mails.iter().filter(|m| f(&m.bytes)).count();
    let crlf = count(&|b| eol(b) == b"\r\n");
    let mac = count(&|b| is_mac(b));
    let from = count(&|b| b.starts_with(b"From "));
    let mac_from = count(&|b| is_mac(b) && b.starts_with(b"From "));
    assert!(
        crlf >= 50 && mac >= 20 && from >= 40 && mac_from > 0,
        "crlf {crlf}, mac {mac}, From lines {from} ({mac_from} Mac)"
    );
}

// ---------------------------------------------------------------------------------------
// One test per defect of issue 11

/// `run` of everything ingested into `store` (`maildir:…` or `lmtp://…`), expected to
/// finish with exit 0.
#[track_caller]
fn run_into(cli: &Cli, store: &str) -> Output {
    let incident = write_incident(cli);
    let out = cli.run(&[
        "--json".as_ref(),
        "run".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--store".as_ref(),
        store.as_ref(),
        "--now".as_ref(),
        "2023-01-27T06:00:00+01:00".as_ref(),
    ]);
    check(&out, 0);
    out
}

#[track_caller]
fn ingest(cli: &Cli, spool: &Path) -> Output {
    let out = cli.run(&["--json".as_ref(), "ingest".as_ref(), spool.as_os_str()]);
    check(&out, 0);
    out
}

fn one_maildir_file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let spool = dir.join("maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(spool.join(sub)).unwrap();
    }
    std::fs::write(spool.join("new/1674468000.M1P1.mx"), bytes).unwrap();
    spool
}

/// Issue 11.1, its reproduction: a list's delivery fields below the first `Received:`
/// are an earlier hop's, and name nobody of this envelope.
#[test]
fn recipients_come_from_the_final_delivery_only() {
    let cli = Cli::new();
    let spool = one_maildir_file(
        cli.path(),
        b"Return-Path: <alice@example.org>\nX-Original-To: bob@example.test\n\
Delivered-To: bob@example.test\nReceived: from lists.example.org by mx.example.test \
with ESMTP id 1; Mon, 23 Jan 2023 10:00:00 +0100\nX-Original-To: some-list@lists.example.org\n\
Delivered-To: some-list@lists.example.org\nFrom: alice@example.org\nSubject: list mail\n\nhi\n",
    );
    ingest(&cli, &spool);
    let rows = ledger_recipients(&cli.ledger);
    let addresses: Vec<&str> = rows.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.test"]);

    let text = cli.run(&["status", "--message", "1674468000.M1P1.mx"]);
    check(&text, 0);
    assert!(
        text.stdout.contains(
            "envelope: sender from the Return-Path header, recipients from the X-Original-To \
             header, arrival from the newest Received header"
        ),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("some-list"), "{}", text.stdout);
    let json = cli.run(&["--json", "status", "--message", "1674468000.M1P1.mx"]);
    check(&json, 0);
    let message = json.event("message");
    assert_eq!(message["envelope_from"]["recipients"], "x-original-to");
    assert_eq!(message["envelope_from"]["sender"], "return-path");
}

/// Issue 11.2: a leading `From ` line in an `.eml` file is framing: not delivered, not in
/// the content hash, its date an arrival fallback.
#[test]
fn a_from_line_in_an_eml_file_is_framing() {
    let cli = Cli::new();
    let spool = cli.at("eml");
    std::fs::create_dir_all(&spool).unwrap();
    let message = b"From: alice@example.org\nSubject: saved by a mail client\n\nhi\n";
    let mut framed = b"From alice@example.org Mon Jan 23 10:00:00 2023\n".to_vec();
    framed.extend_from_slice(message);
    std::fs::write(spool.join("a-framed.eml"), &framed).unwrap();
    std::fs::write(spool.join("b-plain.eml"), message).unwrap();
    let sidecar = r#"{"recipients": ["bob@example.test"]}"#;
    std::fs::write(spool.join("a-framed.json"), sidecar).unwrap();
    std::fs::write(
        spool.join("b-plain.json"),
        r#"{"recipients": ["bob@example.test"], "sender": "alice@example.org"}"#,
    )
    .unwrap();
    std::fs::write(
        spool.join("c-only-framing.eml"),
        b"From alice@example.org Mon Jan 23 10:00:00 2023\n",
    )
    .unwrap();
    let out = ingest(&cli, &spool);
    assert_eq!(out.event("ingest_summary")["new"], 2, "{}", out.stdout);
    let quarantined = out.events("quarantined");
    assert_eq!(quarantined.len(), 1, "{}", out.stdout);
    assert_eq!(
        quarantined[0]["reason"],
        "file holds only an mbox `From ` line, no message"
    );

    let json = cli.run(&["--json", "status", "--message", "a-framed"]);
    check(&json, 0);
    let framed_row = json.event("message");
    assert_eq!(framed_row["envelope_from"]["arrival"], "mbox-from-line");
    assert_eq!(framed_row["envelope_from"]["sender"], "mbox-from-line");
    assert_eq!(framed_row["arrival"], "2023-01-23T10:00:00+00:00");
    assert_eq!(
        framed_row["size"],
        message.len(),
        "the From line is not content"
    );
    // The same message without the line is the same content: a duplicate.
    let states: Vec<String> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, ["pending", "duplicate"]);

    run_into(&cli, &format!("maildir:{}", cli.store().display()));
    let new = cli.store().join("example.test/bob/Maildir/new");
    let files = list_files(&new);
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = std::fs::read(new.join(files.first().unwrap())).unwrap();
    let mut expected =
        b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.test\n".to_vec();
    expected.extend_from_slice(message);
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&expected)
    );
}

/// Issue 11.3: classic-Mac mail is read as lines (not quarantined "no X-Original-To"
/// although it is there), stored as LF lines and sent as CRLF lines; a bare CR in other
/// mail is kept, never dropped.
#[test]
fn classic_mac_mail_is_read_stored_and_sent_as_lines() {
    let mac = b"Return-Path: <alice@example.org>\rX-Original-To: bob@example.test\r\
Subject: from a classic Mac\r\rline one\rline two\r";
    let lf = b"Return-Path: <alice@example.org>\nX-Original-To: bob@example.test\n\
Subject: from a classic Mac\n\nline one\nline two\n";

    let cli = Cli::new();
    let spool = one_maildir_file(cli.path(), mac);
    let out = ingest(&cli, &spool);
    assert!(out.events("quarantined").is_empty(), "{}", out.stdout);
    run_into(&cli, &format!("maildir:{}", cli.store().display()));
    let copies = list_files(&cli.store().join("example.test/bob/Maildir/new"));
    assert_eq!(copies.len(), 1);
    let stored = std::fs::read(
        cli.store()
            .join("example.test/bob/Maildir/new")
            .join(copies.first().unwrap()),
    )
    .unwrap();
    assert!(stored.ends_with(lf), "{}", String::from_utf8_lossy(&stored));
    assert!(!stored.contains(&b'\r'));

    // In an mbox too (a CR-only message between LF separators).
    let cli = Cli::new();
    let mut mbox = format!("From alice@example.org {FROM_LINE_DATE}\n").into_bytes();
    mbox.extend_from_slice(mac);
    mbox.extend_from_slice(b"\n\n");
    std::fs::write(cli.at("mac.mbox"), &mbox).unwrap();
    let out = ingest(&cli, &cli.at("mac.mbox"));
    assert!(out.events("quarantined").is_empty(), "{}", out.stdout);
    assert_eq!(
        ledger_recipients(&cli.ledger)[0].address,
        "bob@example.test"
    );
}

/// Issue 11.3 over LMTP into a real Dovecot: CR-only mail arrives as lines (Dovecot stores
/// LF), a bare CR inside a line of Unix mail arrives as the byte it was.
#[test]
fn line_ends_reach_a_real_dovecot_as_lines() {
    let dovecot = crate::support::dovecot::Dovecot::start();
    let cli = Cli::new();
    let spool = cli.at("eml");
    std::fs::create_dir_all(&spool).unwrap();
    let mac = b"From: alice@example.org\rSubject: mac\r\rone\rtwo\r";
    let unix = b"From: alice@example.org\nSubject: bare cr\n\nkeep\rthis\n";
    std::fs::write(spool.join("mac.eml"), mac).unwrap();
    std::fs::write(spool.join("unix.eml"), unix).unwrap();
    for name in ["mac", "unix"] {
        std::fs::write(
            spool.join(format!("{name}.json")),
            r#"{"recipients": ["bob@example.test"], "sender": "alice@example.org"}"#,
        )
        .unwrap();
    }
    ingest(&cli, &spool);
    run_into(&cli, &format!("lmtp://127.0.0.1:{}", dovecot.port));
    let delivered = dovecot.delivered("bob@example.test");
    assert_eq!(delivered.len(), 2, "{}", dovecot.log());
    let text: Vec<String> = delivered
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(
        text.iter()
            .any(|t| t.ends_with("From: alice@example.org\nSubject: mac\n\none\ntwo\n")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.ends_with("From: alice@example.org\nSubject: bare cr\n\nkeep\rthis\n")),
        "{text:#?}"
    );
}

/// Issue 11.5: `.eml` files in subfolders (`000/0001.eml`) are detected, with a bounded
/// look: deeper than three levels is not searched.
#[test]
fn nested_eml_folders_are_detected() {
    let cli = Cli::new();
    let spool = cli.at("export");
    std::fs::create_dir_all(spool.join("000")).unwrap();
    std::fs::write(spool.join("notes.txt"), "not mail").unwrap();
    std::fs::write(
        spool.join("000/0001.eml"),
        "Return-Path: <a@example.org>\nDelivered-To: bob@example.test\n\nhi\n",
    )
    .unwrap();
    let out = ingest(&cli, &spool);
    assert_eq!(out.event("ingest_summary")["format"], "eml");
    assert_eq!(out.event("ingest_summary")["new"], 1);

    // A folder of spools (a Maildir beside the eml folder) is no eml spool: name one.
    let mixed = cli.at("mixed");
    std::fs::create_dir_all(mixed.join("box/new")).unwrap();
    std::fs::create_dir_all(mixed.join("exported")).unwrap();
    std::fs::write(mixed.join("exported/1.eml"), "Subject: x\n\n").unwrap();
    check(&cli.run(&["ingest".as_ref(), mixed.as_os_str()]), 65);

    let deep = cli.at("deep");
    std::fs::create_dir_all(deep.join("a/b/c/d")).unwrap();
    std::fs::write(deep.join("a/b/c/d/x.eml"), "Subject: x\n\n").unwrap();
    let out = cli.run(&["ingest".as_ref(), deep.as_os_str()]);
    check(&out, 65);
    assert!(out.stderr.contains("in subfolders"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--format postfix|exim|maildir|mbox|eml"),
        "{}",
        out.stderr
    );
}

/// Issue 11.6: the help names the headline formats, Postfix and Exim queue directories.
#[test]
fn ingest_help_names_postfix_and_exim() {
    let cli = Cli::new();
    let out = cli.run(&["ingest", "--help"]);
    check(&out, 0);
    let help = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("<SPOOL> The spool: a Postfix queue directory"),
        "{help}"
    );
    assert!(help.contains("an Exim spool"), "{help}");
    assert!(
        help.contains("auto (detect), postfix, exim, maildir, mbox or eml"),
        "{help}"
    );
}

/// Mail that differs only in line ends is one content: one copy per recipient.
#[test]
fn copies_differing_only_in_line_ends_are_one_content() {
    let cli = Cli::new();
    let spool = cli.at("eml");
    std::fs::create_dir_all(&spool).unwrap();
    let lf = "From: alice@example.org\nSubject: twice\n\nsame text\n";
    for (name, bytes) in [
        ("1-lf", lf.to_string()),
        ("2-crlf", lf.replace('\n', "\r\n")),
        ("3-cr", lf.replace('\n', "\r")),
    ] {
        std::fs::write(spool.join(format!("{name}.eml")), bytes).unwrap();
        std::fs::write(
            spool.join(format!("{name}.json")),
            r#"{"recipients": ["bob@example.test"], "sender": "alice@example.org"}"#,
        )
        .unwrap();
    }
    ingest(&cli, &spool);
    let states: Vec<String> = ledger_recipients(&cli.ledger)
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, ["pending", "duplicate", "duplicate"]);
    run_into(&cli, &format!("maildir:{}", cli.store().display()));
    assert_eq!(
        list_files(&cli.store().join("example.test/bob/Maildir/new")).len(),
        1
    );
}

/// A ledger made before content hashes were taken over the LF form (no `content_hash`
/// rule in `meta`, hashes of the bytes as read, a leading `From ` line inside the source)
/// still works: reading the spool again adds nothing, and the run delivers the right bytes.
#[test]
fn a_ledger_of_the_earlier_hash_rule_still_works() {
    let cli = Cli::new();
    let spool = cli.at("eml");
    std::fs::create_dir_all(&spool).unwrap();
    let crlf = b"From: alice@example.org\r\nSubject: dos\r\n\r\nbody\r\n".to_vec();
    let mut framed = b"From alice@example.org Mon Jan 23 10:00:00 2023\n".to_vec();
    framed.extend_from_slice(b"From: alice@example.org\nSubject: framed\n\nbody\n");
    for (name, bytes) in [("crlf", &crlf), ("framed", &framed)] {
        std::fs::write(spool.join(format!("{name}.eml")), bytes).unwrap();
        std::fs::write(
            spool.join(format!("{name}.json")),
            r#"{"recipients": ["bob@example.test"], "sender": "alice@example.org"}"#,
        )
        .unwrap();
    }
    ingest(&cli, &spool);
    // Make it what the earlier version wrote: raw SQL on purpose, it forges what no
    // current `Ledger` writes.
    {
        let conn = rusqlite::Connection::open(&cli.ledger).unwrap();
        conn.execute("DELETE FROM meta WHERE key = 'content_hash'", [])
            .unwrap();
        for (name, bytes) in [("crlf", &crlf), ("framed", &framed)] {
            conn.execute(
                "UPDATE messages SET content_hash = ?1, source_offset = 0, source_len = ?2 \
                 WHERE queue_id = ?3",
                rusqlite::params![crate::support::sha256_hex(bytes), bytes.len() as i64, name],
            )
            .unwrap();
        }
    }
    let again = ingest(&cli, &spool);
    let summary = again.event("ingest_summary");
    assert_eq!(
        (summary["new"].as_u64(), summary["known"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(
        again.stderr.contains("earlier spoolreplay"),
        "{}",
        again.stderr
    );

    run_into(&cli, &format!("maildir:{}", cli.store().display()));
    let new = cli.store().join("example.test/bob/Maildir/new");
    let mut bodies: Vec<String> = list_files(&new)
        .iter()
        .map(|n| String::from_utf8_lossy(&std::fs::read(new.join(n)).unwrap()).into_owned())
        .collect();
    bodies.sort();
    let head = "Return-Path: <alice@example.org>\nDelivered-To: bob@example.test\n";
    assert_eq!(
        bodies,
        [
            format!("{head}From: alice@example.org\nSubject: dos\n\nbody\n"),
            format!("{head}From: alice@example.org\nSubject: framed\n\nbody\n"),
        ]
    );
}
