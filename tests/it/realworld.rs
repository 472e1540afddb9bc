//! Real-world mail (`fixtures/realworld/`, sources and licences in its README): public test
//! corpora nobody on this project wrote, with LF, CRLF and CR-only line ends and leading
//! mbox `From ` lines, replayed from an `.eml`+sidecar folder, a Maildir and an mbox into a
//! Maildir store; and one test per defect of issue 11.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::{Cli, check, fixtures, ledger_recipients, list_files};

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
    let path = cli.at("incident.toml");
    std::fs::write(
        &path,
        r#"name = "real-world corpus"
reporting_mta = "mx1.example.test"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "5d"
lifetime_from = "restored"
outside = "deliver"

[[window]]
name = "queued"
start = "2023-01-22T20:00:00+01:00"
end = "2023-01-23T16:00:00+01:00"
action = "deliver"
"#,
    )
    .unwrap();
    path
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
