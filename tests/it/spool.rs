//! Integration tests: spool readers against the small hand-made spools in fixtures/spools/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, FixedOffset};
use spoolreplay::address::{Notify, ReturnContent, ReversePath};
use spoolreplay::spool::{
    self, Envelope, FieldSource, QueuedMessage, Recipient, SpoolError, SpoolFormat, SpoolItem,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/spools")
        .join(rel)
}

fn dt(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn addr(s: &str) -> ReversePath {
    ReversePath::Address(s.into())
}

#[track_caller]
fn read_all(path: &Path, expected_format: SpoolFormat) -> Vec<SpoolItem> {
    let (format, reader) = spool::open(path, None).unwrap();
    assert_eq!(
        format,
        expected_format,
        "detected format of {}",
        path.display()
    );
    reader.collect()
}

#[track_caller]
fn message(item: &SpoolItem) -> &QueuedMessage {
    match item {
        SpoolItem::Message(m) => m,
        SpoolItem::Quarantined(q) => panic!("expected a message, got quarantined {q:?}"),
    }
}

/// Checks a quarantined item's file name (below the fixture folder) and reason.
#[track_caller]
fn check_quarantined(item: &SpoolItem, file: &str, reason: &str) {
    match item {
        SpoolItem::Quarantined(q) => {
            assert!(
                q.source.path.ends_with(file),
                "quarantined {} but expected {file}",
                q.source.path.display()
            );
            assert_eq!(q.reason, reason, "reason for {file}");
        }
        SpoolItem::Message(m) => panic!("expected {file} quarantined, got message {}", m.queue_id),
    }
}

/// Checks a one-file message: queue id, envelope, and that the content is the file's bytes.
#[track_caller]
fn check_file_message(item: &SpoolItem, queue_id: &str, envelope: Envelope) {
    let m = message(item);
    assert_eq!(m.queue_id, queue_id);
    assert_eq!(m.envelope, envelope, "envelope of {queue_id}");
    let on_disk = std::fs::read(&m.source.path).unwrap();
    assert_eq!(m.content, on_disk, "content of {queue_id}");
    assert_eq!(m.source.offset, 0);
    assert_eq!(m.source.len, on_disk.len() as u64);
    assert!(m.source.path.is_absolute());
    assert_eq!(spool::read_content(&m.source).unwrap(), m.content);
}

fn envelope(
    sender: (ReversePath, FieldSource),
    recipients: (Vec<Recipient>, FieldSource),
    arrival: (&str, FieldSource),
) -> Envelope {
    Envelope {
        sender: sender.0,
        sender_from: sender.1,
        recipients: recipients.0,
        recipients_from: recipients.1,
        arrival: dt(arrival.0),
        arrival_from: arrival.1,
        envid: None,
        ret: None,
    }
}

fn plain(addresses: &[&str]) -> Vec<Recipient> {
    addresses.iter().map(|a| Recipient::plain(*a)).collect()
}

/// Byte-exact golden check of `fixtures/mbox-content/<case>.expected.eml`.
#[track_caller]
fn check_golden(case: &str, actual: &[u8]) {
    crate::support::golden::check_golden_file(
        &fixture(&format!("mbox-content/{case}.expected.eml")),
        actual,
    );
}

#[test]
fn maildir_fixture() {
    let items = read_all(&fixture("maildir"), SpoolFormat::Maildir);
    assert_eq!(items.len(), 5, "tmp/ is ignored: {items:#?}");
    check_file_message(
        &items[0],
        "1674468100.M2P100.mx1",
        envelope(
            (ReversePath::Null, FieldSource::ReturnPath),
            (
                // Only the topmost Delivered-To: the final delivery's own.
                plain(&["Carol@Example.NET"]),
                FieldSource::DeliveredTo,
            ),
            ("2023-01-24T08:30:00-05:00", FieldSource::DateHeader),
        ),
    );
    assert!(message(&items[0]).content.ends_with(b"CRLF line ends.\r\n"));
    check_quarantined(
        &items[1],
        "cur/1674468200.M3P100.mx1:2,",
        "no envelope recipients: no sidecar and no X-Original-To/Delivered-To/Envelope-To header",
    );
    check_file_message(
        &items[2],
        "1674468000.M1P100.mx1",
        envelope(
            (addr("alice@example.org"), FieldSource::ReturnPath),
            (plain(&["bob@example.net"]), FieldSource::XOriginalTo),
            ("2023-01-23T10:00:05+01:00", FieldSource::Received),
        ),
    );
    check_quarantined(&items[3], "new/1674468300.M4P100.mx1", "file is empty");
    check_quarantined(
        &items[4],
        "new/1674468400.M5P100.mx1",
        "no header block: the first line does not look like `Name: value`",
    );
}

#[test]
fn mbox_fixture_lf() {
    let path = fixture("inbox.mbox");
    let items = read_all(&path, SpoolFormat::Mbox);
    assert_eq!(items.len(), 5, "{items:#?}");

    let first = message(&items[0]);
    assert_eq!(first.queue_id, "mbox#1");
    assert_eq!(
        first.envelope,
        envelope(
            (addr("alice+bounces@example.org"), FieldSource::ReturnPath),
            (plain(&["bob@example.net"]), FieldSource::DeliveredTo),
            ("2023-01-23T10:00:01Z", FieldSource::Received),
        )
    );
    assert_eq!(first.source.offset, 48, "just after the first From_ line");
    check_golden("inbox-1", &first.content);

    let second = message(&items[1]);
    assert_eq!(second.queue_id, "mbox#2");
    assert_eq!(
        second.envelope,
        envelope(
            (ReversePath::Null, FieldSource::MboxFromLine),
            (plain(&["erin@example.net"]), FieldSource::XOriginalTo),
            ("2023-01-24T11:30:00Z", FieldSource::MboxFromLine),
        )
    );
    check_golden("inbox-2", &second.content);

    check_quarantined(
        &items[2],
        "inbox.mbox",
        "no envelope recipients: no sidecar and no X-Original-To/Delivered-To/Envelope-To header",
    );
    check_quarantined(
        &items[3],
        "inbox.mbox",
        "no header block: the first line does not look like `Name: value`",
    );

    let last = message(&items[4]);
    assert_eq!(last.queue_id, "mbox#5");
    assert_eq!(
        last.envelope,
        envelope(
            (addr("grace@example.org"), FieldSource::MboxFromLine),
            (
                plain(&["heidi@example.net", "ivan@example.net"]),
                FieldSource::EnvelopeTo
            ),
            ("2023-01-26T13:00:00+02:00", FieldSource::MboxFromLine),
        )
    );
    check_golden("inbox-5", &last.content);
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        last.source.offset + last.source.len,
        file_len,
        "the last message runs to the end of the file"
    );
}

#[test]
fn mbox_fixture_crlf() {
    let items = read_all(&fixture("crlf.mbox"), SpoolFormat::Mbox);
    assert_eq!(items.len(), 2, "{items:#?}");
    let one = message(&items[0]);
    assert_eq!(one.queue_id, "mbox#1");
    assert_eq!(
        one.content,
        b"Return-Path: <judy@example.org>\r\nDelivered-To: ken@example.net\r\n\
Subject: crlf one\r\n\r\nFrom a quoted line.\r\n"
            .to_vec()
    );
    assert_eq!(one.envelope.sender_from, FieldSource::ReturnPath);
    assert_eq!(one.envelope.arrival, dt("2023-01-27T14:00:00Z"));
    assert_eq!(one.envelope.arrival_from, FieldSource::MboxFromLine);
    let two = message(&items[1]);
    assert_eq!(two.queue_id, "mbox#2");
    assert_eq!(
        two.content,
        b"Delivered-To: ken@example.net\r\nSubject: crlf two\r\n\r\nSecond.\r\n".to_vec()
    );
    assert_eq!(two.envelope.sender, addr("judy@example.org"));
    assert_eq!(two.envelope.sender_from, FieldSource::MboxFromLine);
}

#[test]
fn mbox_read_content_gives_back_exactly_what_was_read() {
    let mut checked = 0;
    for name in ["inbox.mbox", "crlf.mbox"] {
        let items = read_all(&fixture(name), SpoolFormat::Mbox);
        for item in items.iter().filter_map(|i| match i {
            SpoolItem::Message(m) => Some(m),
            SpoolItem::Quarantined(_) => None,
        }) {
            let again = spool::read_content(&item.source).unwrap();
            assert_eq!(again, item.content, "{} {}", name, item.queue_id);
            let raw = std::fs::read(&item.source.path).unwrap();
            let start = usize::try_from(item.source.offset).unwrap();
            let end = start + usize::try_from(item.source.len).unwrap();
            let raw = &raw[start..end];
            assert!(!raw.starts_with(b"From "), "offset skips the From_ line");
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}

#[test]
fn eml_fixture() {
    let items = read_all(&fixture("eml"), SpoolFormat::Eml);
    assert_eq!(items.len(), 10, "notes.txt is ignored: {items:#?}");
    check_file_message(
        &items[0],
        "a-plain",
        envelope(
            (addr("alice@example.org"), FieldSource::ReturnPath),
            (plain(&["bob@example.net"]), FieldSource::DeliveredTo),
            ("2023-01-23T10:00:05+01:00", FieldSource::Received),
        ),
    );
    check_file_message(
        &items[1],
        "b-sidecar",
        Envelope {
            sender: ReversePath::Null,
            sender_from: FieldSource::Sidecar,
            recipients: vec![
                Recipient::plain("bob@example.net"),
                Recipient {
                    address: "carol@example.net".into(),
                    orcpt: Some("rfc822;Carol@example.net".into()),
                    notify: Some(Notify {
                        failure: true,
                        delay: true,
                        ..Notify::default()
                    }),
                    prior: None,
                },
                Recipient {
                    address: "dave@example.net".into(),
                    orcpt: None,
                    notify: Some(Notify {
                        never: true,
                        ..Notify::default()
                    }),
                    prior: None,
                },
            ],
            recipients_from: FieldSource::Sidecar,
            arrival: dt("2023-01-23T10:00:00+01:00"),
            arrival_from: FieldSource::Sidecar,
            envid: Some("QQ314159".into()),
            ret: Some(ReturnContent::Headers),
        },
    );
    assert!(message(&items[1]).content.contains(&b'\r'), "CRLF kept");
    check_quarantined(
        &items[2],
        "c-typo.eml",
        "bad sidecar: unknown key `recipient` (known: sender, recipients, arrival, envid, ret)",
    );
    match &items[3] {
        SpoolItem::Quarantined(q) => {
            assert!(q.source.path.ends_with("d-baddate.eml"));
            assert!(
                q.reason.starts_with(
                    "bad sidecar: `arrival` is not an RFC 3339 date (`23/01/2023 10:00`)"
                ),
                "{}",
                q.reason
            );
        }
        other => panic!("d-baddate not quarantined: {other:?}"),
    }
    match &items[4] {
        SpoolItem::Quarantined(q) => {
            assert!(q.source.path.ends_with("e-badjson.eml"));
            assert!(
                q.reason.starts_with("bad sidecar: not valid JSON: "),
                "{}",
                q.reason
            );
        }
        other => panic!("e-badjson not quarantined: {other:?}"),
    }
    check_quarantined(&items[5], "empty.eml", "file is empty");
    check_quarantined(
        &items[6],
        "f-norcpt.eml",
        "no envelope recipients: no sidecar and no X-Original-To/Delivered-To/Envelope-To header",
    );
    check_quarantined(
        &items[7],
        "g-nosender.eml",
        "no envelope sender: no sidecar, no Return-Path header and no mbox `From ` line sender \
         (add a sidecar)",
    );
    check_quarantined(
        &items[8],
        "orphan.json",
        "sidecar has no matching `.eml` file (check its name)",
    );
    check_file_message(
        &items[9],
        "sub/h-nested",
        envelope(
            (addr("alice@example.org"), FieldSource::ReturnPath),
            (
                vec![Recipient {
                    address: "oscar@example.net".into(),
                    orcpt: Some("rfc822;oscar@example.net".into()),
                    notify: None,
                    prior: None,
                }],
                FieldSource::Sidecar,
            ),
            ("2023-01-28T07:00:00-03:00", FieldSource::Received),
        ),
    );
}

#[test]
fn detect_formats_and_errors() {
    assert_eq!(
        spool::detect(&fixture("maildir")).unwrap(),
        SpoolFormat::Maildir
    );
    assert_eq!(spool::detect(&fixture("eml")).unwrap(), SpoolFormat::Eml);
    assert_eq!(
        spool::detect(&fixture("inbox.mbox")).unwrap(),
        SpoolFormat::Mbox
    );
    assert_eq!(
        spool::detect(&fixture("crlf.mbox")).unwrap(),
        SpoolFormat::Mbox
    );
    let missing = fixture("no-such-spool");
    match spool::detect(&missing) {
        Err(SpoolError::Missing(p)) => assert_eq!(p, missing),
        other => panic!("expected Missing, got {other:?}"),
    }
    for format in [SpoolFormat::Maildir, SpoolFormat::Mbox, SpoolFormat::Eml] {
        assert!(
            matches!(
                spool::open(&missing, Some(format)),
                Err(SpoolError::Missing(_))
            ),
            "forced {format} on a missing path"
        );
    }
    for not_a_spool in ["eml/notes.txt", "maildir/new", "."] {
        match spool::detect(&fixture(not_a_spool)) {
            Err(SpoolError::Unrecognized { why, .. }) => assert!(
                why.contains("`new/` or `cur/`")
                    && why.contains("`.eml`")
                    && why.contains("`From `"),
                "{not_a_spool}: {why}"
            ),
            other => panic!("{not_a_spool}: expected Unrecognized, got {other:?}"),
        }
    }
}

#[test]
fn forced_format_on_wrong_input_is_an_error_not_a_panic() {
    let cases = [
        (fixture("inbox.mbox"), SpoolFormat::Maildir),
        (fixture("inbox.mbox"), SpoolFormat::Eml),
        (fixture("eml"), SpoolFormat::Mbox),
        (fixture("eml"), SpoolFormat::Maildir),
    ];
    for (path, format) in cases {
        assert!(
            spool::open(&path, Some(format)).is_err(),
            "{} as {format}",
            path.display()
        );
    }
}

/// Path → (length, mtime) of every file and folder under `root`.
fn listing(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

#[test]
fn reading_never_modifies_the_spool() {
    for (name, format) in [
        ("maildir", SpoolFormat::Maildir),
        ("eml", SpoolFormat::Eml),
        ("inbox.mbox", SpoolFormat::Mbox),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(name);
        copy_tree(&fixture(name), &copy);
        let parent_before = listing(dir.path());
        assert!(!parent_before.is_empty(), "copied {name}");
        let items = read_all(&copy, format);
        assert!(!items.is_empty());
        for item in items.iter().filter_map(|i| match i {
            SpoolItem::Message(m) => Some(m),
            SpoolItem::Quarantined(_) => None,
        }) {
            spool::read_content(&item.source).unwrap();
        }
        assert_eq!(
            listing(dir.path()),
            parent_before,
            "{name} changed by reading"
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_file() {
        std::fs::copy(from, to).unwrap();
        return;
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        copy_tree(&entry.path(), &to.join(entry.file_name()));
    }
}

#[test]
fn file_time_is_the_last_resort_for_arrival() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("new")).unwrap();
    let path = dir.path().join("new/1700000000.M1.host");
    std::fs::write(
        &path,
        "Return-Path: <a@example.org>\nDelivered-To: b@example.net\n\nx\n",
    )
    .unwrap();
    let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let items = read_all(dir.path(), SpoolFormat::Maildir);
    let m = message(&items[0]);
    assert_eq!(m.envelope.arrival, dt("2023-11-14T22:13:20Z"));
    assert_eq!(m.envelope.arrival_from, FieldSource::FileTime);
}

#[test]
fn unreadable_entries_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cur")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("cur/dangling:2,S")).unwrap();
    std::fs::create_dir(dir.path().join("cur/a-folder")).unwrap();
    let items = read_all(dir.path(), SpoolFormat::Maildir);
    assert_eq!(items.len(), 2);
    check_quarantined(&items[0], "cur/a-folder", "not a regular file (a folder)");
    match &items[1] {
        SpoolItem::Quarantined(q) => {
            assert!(q.source.path.ends_with("cur/dangling:2,S"));
            assert!(
                q.reason.starts_with("symbolic link: not followed"),
                "{}",
                q.reason
            );
        }
        other => panic!("dangling symlink not quarantined: {other:?}"),
    }

    let eml = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", eml.path().join("gone.eml")).unwrap();
    let items: Vec<SpoolItem> = spool::open(eml.path(), Some(SpoolFormat::Eml))
        .unwrap()
        .1
        .collect();
    assert_eq!(items.len(), 1);
    match &items[0] {
        SpoolItem::Quarantined(q) => assert!(
            q.reason.starts_with("symbolic link: not followed"),
            "{}",
            q.reason
        ),
        other => panic!("dangling eml not quarantined: {other:?}"),
    }
}

#[test]
fn garbage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: [&[u8]; 8] = [
        b"From \n",
        b"From ",
        b"From x\n\n\n\n",
        b"From x Mon Jan 99 99:99:99 9999\nSubject: y\n",
        b"From a\n\xff\xfe\x00: \x00\n",
        b"From a\nReceived: ;\nDate: \nReturn-Path: <\nDelivered-To: <>, ,\n\n",
        b"From a\n>\n>>\n>From\n",
        b"From a\r\rSubject: x\r\r",
    ];
    let mut ran = 0;
    for (i, input) in inputs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.mbox"));
        std::fs::write(&path, input).unwrap();
        let items: Vec<SpoolItem> = spool::open(&path, None).unwrap().1.collect();
        assert!(!items.is_empty(), "input {i} gave no items");
        ran += 1;
    }
    assert_eq!(ran, inputs.len());
}
