//! Integration tests: the Exim reader against real Exim 4.96 spools (fixtures/exim/, made
//! by make-exim-spool.sh) checked against Exim's own `-bp`, `-Mvh` and `-Mvb`; malformed
//! spools; a seeded mutation test; and ingest + run through the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use spoolreplay::address::{Notify, ReturnContent, ReversePath};
use spoolreplay::spool::{self, FieldSource, Prior, QueuedMessage, SpoolFormat, SpoolItem, exim};

use crate::support::incident::TestIncident;
use crate::support::{self, Cli, Rng, lf_normalized};

fn exim_fixture(variant: &str) -> PathBuf {
    support::fixtures().join("exim").join(variant)
}

/// One message as `exim -bp` lists it.
#[derive(Debug)]
struct BpEntry {
    sender: String,
    frozen: bool,
    /// (address, delivered)
    recipients: Vec<(String, bool)>,
}

/// Parses `exim -bp`: a line `age size id <sender> [*** frozen ***]`, then one line per
/// recipient, `D` marking the delivered ones.
fn parse_bp(text: &str) -> BTreeMap<String, BpEntry> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            current = None;
            continue;
        }
        match &current {
            None => {
                let words: Vec<&str> = line.split_whitespace().collect();
                let id = words[2].to_string();
                let start = line.find('<').expect("sender <");
                let end = line.rfind('>').expect("sender >");
                out.insert(
                    id.clone(),
                    BpEntry {
                        sender: line[start + 1..end].to_string(),
                        frozen: line.ends_with("*** frozen ***"),
                        recipients: Vec::new(),
                    },
                );
                current = Some(id);
            }
            Some(id) => {
                let rest = line.trim_start();
                let (address, delivered) = match rest.strip_prefix("D ") {
                    Some(a) => (a.to_string(), true),
                    None => (rest.to_string(), false),
                };
                let entry = out.get_mut(id).expect("current entry");
                entry.recipients.push((address, delivered));
            }
        }
    }
    out
}

/// The headers `exim -Mvh` shows (the whole -H file) as they go out: the part after the
/// first blank line, split where a line starts with `<digits><flag> `, without the `*`
/// (deleted) ones and without the length/flag prefix.
fn kept_headers_from_mvh(mvh: &[u8]) -> Vec<u8> {
    let start = mvh
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("blank line in -Mvh")
        + 2;
    let mut out = Vec::new();
    let mut keep = false;
    for line in mvh[start..].split_inclusive(|&b| b == b'\n') {
        let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits >= 3 && line.get(digits + 1) == Some(&b' ') {
            keep = line[digits] != b'*';
            if keep {
                out.extend_from_slice(&line[digits + 2..]);
            }
        } else if keep {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Reads a spool with auto-detection, asserting it is found to be Exim.
fn read_messages(path: &Path) -> Vec<QueuedMessage> {
    let (format, reader) = spool::open(path, None).expect("open exim spool");
    assert_eq!(
        format,
        SpoolFormat::Exim,
        "detected format of {}",
        path.display()
    );
    reader
        .map(|item| match item {
            SpoolItem::Message(m) => m,
            SpoolItem::Quarantined(q) => panic!("fixture quarantined: {q:?}"),
        })
        .collect()
}

fn split_content(content: &[u8]) -> (&[u8], &[u8]) {
    let at = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    (&content[..at + 2], &content[at + 4..])
}

/// Every message of one fixture spool agrees with Exim's own view of it.
fn check_against_exim(variant: &str, spool_path: &Path) -> Vec<QueuedMessage> {
    let truth = exim_fixture(variant).join("truth");
    let bp = parse_bp(&std::fs::read_to_string(truth.join("bp.txt")).expect("bp.txt"));
    let before = support::snapshot(&exim_fixture(variant).join("spool"));
    let messages = read_messages(spool_path);
    assert!(!messages.is_empty(), "no messages in {variant}");
    assert_eq!(
        messages
            .iter()
            .map(|m| m.queue_id.clone())
            .collect::<BTreeSet<_>>(),
        bp.keys().cloned().collect::<BTreeSet<_>>(),
        "{variant}: the messages -bp lists"
    );
    for m in &messages {
        let id = &m.queue_id;
        let entry = &bp[id];
        assert_eq!(m.envelope.sender.as_str(), entry.sender, "{id}: sender");
        assert_eq!(m.envelope.sender_from, FieldSource::QueueFile);
        assert_eq!(m.envelope.recipients_from, FieldSource::QueueFile);
        assert_eq!(m.envelope.arrival_from, FieldSource::QueueFile);
        let mut unique = Vec::new();
        for (address, delivered) in &entry.recipients {
            if !unique.iter().any(|(a, _)| a == address) {
                unique.push((address.clone(), *delivered));
            }
        }
        let ours: Vec<(String, bool)> = m
            .envelope
            .recipients
            .iter()
            .map(|r| (r.address.clone(), r.prior == Some(Prior::Delivered)))
            .collect();
        assert_eq!(ours, unique, "{id}: recipients and which were delivered");
        assert_eq!(m.mta_hold, entry.frozen, "{id}: frozen");
        assert_eq!(m.queue_name.as_deref(), Some("input"));

        assert!(
            !m.content
                .windows(2)
                .enumerate()
                .any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' || (i == 0 && w[0] == b'\n')),
            "{id}: every line ends in CRLF"
        );
        let (headers, body) = split_content(&m.content);
        let mvh = std::fs::read(truth.join(format!("{id}.headers"))).expect("-Mvh truth");
        assert_eq!(
            String::from_utf8_lossy(&lf_normalized(headers)),
            String::from_utf8_lossy(&kept_headers_from_mvh(&mvh)),
            "{id}: headers"
        );
        let mvb = std::fs::read(truth.join(format!("{id}.body"))).expect("-Mvb truth");
        let own_name = format!("{id}-D\n");
        let mvb_body = mvb
            .strip_prefix(own_name.as_bytes())
            .expect("-Mvb first line");
        assert_eq!(lf_normalized(body), lf_normalized(mvb_body), "{id}: body");

        assert!(m.source.path.is_absolute());
        assert!(m.source.path.ends_with(format!("{id}-H")));
        assert_eq!(m.source.format, SpoolFormat::Exim);
        assert_eq!(m.source.offset, 0);
        assert_eq!(
            m.source.len,
            std::fs::metadata(&m.source.path).expect("-H").len()
        );
        assert_eq!(
            spool::read_content(&m.source).expect("read_content"),
            m.content,
            "{id}: read_content rebuilds the same bytes"
        );
    }
    assert_eq!(
        support::snapshot(&exim_fixture(variant).join("spool")),
        before,
        "the spool was not touched"
    );
    messages
}

/// The fixture's `X-Case:` name → queue id.
fn cases(variant: &str) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(exim_fixture(variant).join("truth/cases.txt")).expect("cases.txt");
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, case)| (case.to_string(), id.to_string()))
        .collect()
}

fn by_case<'a>(messages: &'a [QueuedMessage], variant: &str, case: &str) -> &'a QueuedMessage {
    let id = &cases(variant)[case];
    messages
        .iter()
        .find(|m| &m.queue_id == id)
        .unwrap_or_else(|| panic!("no message for case {case}"))
}

#[test]
fn flat_spool_matches_exim_bp_mvh_and_mvb() {
    let messages = check_against_exim("flat", &exim_fixture("flat").join("spool"));
    assert!(messages.len() >= 30, "{} messages", messages.len());
    assert_eq!(
        messages.iter().filter(|m| m.mta_hold).count(),
        3,
        "three frozen messages"
    );
    let ids: Vec<&str> = messages.iter().map(|m| m.queue_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "read in message-id order");
}

#[test]
fn split_wireformat_spool_matches_exim() {
    // Given as the `input/` folder itself, split into one-character folders.
    let messages = check_against_exim("split", &exim_fixture("split").join("spool/input"));
    let bdat = by_case(&messages, "split", "split-bdat-1");
    assert!(bdat.content.ends_with(b"chunk size 7.\r\n.dot\r\n"));
    assert!(by_case(&messages, "split", "split-frozen").mta_hold);
}

#[test]
fn dsn_parameters_are_decoded() {
    let messages = read_messages(&exim_fixture("flat").join("spool"));
    let m = by_case(&messages, "flat", "dsn-hdrs");
    assert_eq!(m.envelope.envid.as_deref(), Some("QQ+1=x"));
    assert_eq!(m.envelope.ret, Some(ReturnContent::Headers));
    let r = &m.envelope.recipients;
    let notify = |s: bool, f: bool, d: bool| {
        Some(Notify {
            never: false,
            success: s,
            failure: f,
            delay: d,
        })
    };
    assert_eq!(r[0].address, "gina@example.test");
    assert_eq!(r[0].orcpt.as_deref(), Some("rfc822;orig+gina@example.test"));
    assert_eq!(r[0].notify, notify(true, true, false));
    assert_eq!(r[1].address, "hal@example.test");
    assert_eq!(r[1].orcpt, None);
    assert_eq!(
        r[1].notify,
        Some(Notify {
            never: true,
            ..Notify::default()
        })
    );
    assert_eq!(r[2].orcpt.as_deref(), Some("rfc822;ida@example.test"));
    assert_eq!(r[2].notify, notify(false, true, true));
    assert_eq!(
        (r[3].address.as_str(), r[3].notify),
        ("jo@example.test", None)
    );
    assert_eq!(r[4].address, "kim@done.example.test");
    assert_eq!(r[4].notify, notify(false, true, false));
    assert_eq!(r[4].prior, Some(Prior::Delivered));

    let full = by_case(&messages, "flat", "dsn-full-never");
    assert_eq!(full.envelope.envid.as_deref(), Some("plain-envid"));
    assert_eq!(full.envelope.ret, Some(ReturnContent::Full));
    assert!(full.mta_hold, "frozen with exim -Mf");
    let all = by_case(&messages, "flat", "dsn-all");
    assert_eq!(all.envelope.envid, None);
    assert_eq!(all.envelope.ret, None);
    assert_eq!(all.envelope.recipients[0].notify, notify(true, true, true));

    let split = read_messages(&exim_fixture("split").join("spool"));
    let data = by_case(&split, "split", "split-data");
    assert_eq!(data.envelope.envid.as_deref(), Some("split+env"));
}

#[test]
fn envelope_details_from_real_submissions() {
    let messages = read_messages(&exim_fixture("flat").join("spool"));
    let get = |case| by_case(&messages, "flat", case);

    let bcc = get("local-t-bcc");
    assert!(!bcc.content.windows(4).any(|w| w == b"Bcc:"), "deleted Bcc");
    assert!(
        bcc.content
            .windows(23)
            .any(|w| w == b"Cc: uma@done.example.te")
    );
    let addresses: Vec<&str> = bcc
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        [
            "tom@example.test",
            "uma@done.example.test",
            "secret@example.test",
            "hidden@done.example.test"
        ]
    );

    assert_eq!(get("local-t-dup").envelope.recipients.len(), 1, "kept once");
    assert_eq!(get("null-sender").envelope.sender, ReversePath::Null);
    assert_eq!(get("local-null").envelope.sender, ReversePath::Null);
    assert_eq!(
        get("quoted-sender").envelope.sender.as_str(),
        "\"john doe\"@remote.test"
    );
    assert_eq!(get("smtputf8").envelope.sender.as_str(), "jörg@remote.test");
    assert_eq!(
        get("odd-recipients").envelope.recipients[0].address,
        "\"a b\"@example.test"
    );

    // Arrival: the received time with its microseconds, in UTC.
    let plain = get("plain-1");
    let h = std::fs::read_to_string(&plain.source.path).expect("-H");
    let secs: i64 = h
        .lines()
        .nth(3)
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("secs");
    let usec: u32 = h
        .lines()
        .find_map(|l| l.strip_prefix("-received_time_usec ."))
        .and_then(|s| s.parse().ok())
        .expect("usec");
    assert_eq!(plain.envelope.arrival.timestamp(), secs);
    assert_eq!(plain.envelope.arrival.timestamp_subsec_micros(), usec);
    assert_eq!(plain.envelope.arrival.offset().local_minus_utc(), 0);

    // The -J journal: `ann` was delivered by the killed run; -H alone does not say so.
    let journal = get("journal");
    let j = journal
        .source
        .path
        .with_file_name(format!("{}-J", journal.queue_id));
    assert_eq!(
        std::fs::read_to_string(j).expect("-J"),
        "ann@fast.example.test\n"
    );
    let priors: Vec<(&str, Option<Prior>)> = journal
        .envelope
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.prior))
        .collect();
    assert_eq!(
        priors,
        [
            ("ann@fast.example.test", Some(Prior::Delivered)),
            ("slow@slow.example.test", None),
            ("bea@example.test", None)
        ]
    );

    // A header line of 1000 bytes or more (four-digit length).
    let long = get("long-header");
    let raw = std::fs::read(&long.source.path).expect("-H");
    assert!(
        raw.windows(6)
            .any(|w| w[..4].iter().all(u8::is_ascii_digit) && &w[4..] == b"C ")
    );
    assert!(
        long.content
            .windows(24)
            .any(|w| w == b"person059@example.test\r\n")
    );
}

// ---------------------------------------------------------------------------------------
// Malformed input

/// A spool in a temp folder holding copies of a few fixture messages, to break.
struct Broken {
    dir: tempfile::TempDir,
}

impl Broken {
    fn new(cases: &[&str]) -> Broken {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input");
        std::fs::create_dir(&input).expect("input");
        let ids = self::cases("flat");
        let src = exim_fixture("flat").join("spool/input");
        for case in cases {
            let id = &ids[*case];
            for suffix in ["-H", "-D"] {
                std::fs::copy(
                    src.join(format!("{id}{suffix}")),
                    input.join(format!("{id}{suffix}")),
                )
                .expect("copy");
            }
        }
        Broken { dir }
    }

    fn file(&self, case: &str, suffix: &str) -> PathBuf {
        let id = &cases("flat")[case];
        self.dir.path().join("input").join(format!("{id}{suffix}"))
    }

    fn edit(&self, case: &str, suffix: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        let path = self.file(case, suffix);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, f(bytes)).expect("write");
    }

    fn items(&self) -> Vec<SpoolItem> {
        let (format, reader) = spool::open(self.dir.path(), None).expect("open");
        assert_eq!(format, SpoolFormat::Exim);
        reader.collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle")
}

/// Checks the item for `path`: quarantined with `reason` at `offset`.
#[track_caller]
fn check_quarantined(items: &[SpoolItem], path: &Path, offset: u64, reason: &str) {
    let found = items.iter().find_map(|i| match i {
        SpoolItem::Quarantined(q) if q.source.path == path => Some(q),
        _ => None,
    });
    let q = found.unwrap_or_else(|| panic!("{} not quarantined: {items:?}", path.display()));
    assert_eq!(q.reason, reason, "reason for {}", path.display());
    assert_eq!(q.source.offset, offset, "offset for {}", path.display());
    assert_eq!(q.source.format, SpoolFormat::Exim);
}

#[test]
fn malformed_messages_are_quarantined_and_the_rest_read() {
    let b = Broken::new(&[
        "plain-1", "plain-2", "plain-3", "plain-4", "plain-5", "partial", "dots", "alias",
    ]);
    // Missing -D.
    std::fs::remove_file(b.file("plain-1", "-D")).expect("rm");
    // Truncated -H: cut inside the recipients.
    let mut cut_at = 0;
    b.edit("plain-2", "-H", |h| {
        cut_at = find(&h, b"rcpt2@") + 3;
        h[..cut_at].to_vec()
    });
    // A header length running past the end of the file.
    let (mut subject_at, mut available) = (0, 0);
    b.edit("plain-3", "-H", |h| {
        subject_at = find(&h, b"  Subject: plain-3") - 3;
        available = h.len() - subject_at - 5;
        let mut h = h;
        h[subject_at..subject_at + 3].copy_from_slice(b"999");
        h
    });
    // A recipient count that is not a number, and one larger than the lines.
    let mut count_at = 0;
    b.edit("plain-4", "-H", |h| {
        count_at = find(&h, b"XX\n1\n") + 3;
        let mut h = h;
        h[count_at] = b'x';
        h
    });
    let mut blank_at = 0;
    b.edit("partial", "-H", |h| {
        let at = find(&h, b"\n4\ncarol") + 1;
        blank_at = find(&h, b"alice@done.example.test\n\n") + 24;
        let mut h = h;
        h[at] = b'5';
        h
    });
    // Garbage under an -H name; a -D whose first line is not its own name.
    b.edit("plain-5", "-H", |_| b"\x00\xffgarbage\nmore".to_vec());
    b.edit("dots", "-D", |d| {
        let mut d = d;
        d[0] = b'X';
        d
    });
    // An orphan -D, and an -H that is a (dangling) link: never followed.
    std::fs::write(
        b.dir.path().join("input/1xX64b-0000ZZ-00-D"),
        b"1xX64b-0000ZZ-00-D\nbody\n",
    )
    .expect("orphan");
    std::os::unix::fs::symlink(
        "/nonexistent/exim",
        b.dir.path().join("input/1xX64b-0000ZZ-01-H"),
    )
    .expect("symlink");

    let items = b.items();
    let id = |case: &str| cases("flat")[case].clone();
    check_quarantined(
        &items,
        &b.file("plain-1", "-H"),
        0,
        &format!("its data file `{}-D` is missing", id("plain-1")),
    );
    check_quarantined(
        &items,
        &b.file("plain-2", "-H"),
        (cut_at - 3) as u64,
        "file is truncated: it ends before the recipient lines",
    );
    check_quarantined(
        &items,
        &b.file("plain-3", "-H"),
        subject_at as u64 + 5,
        &format!(
            "the header line at byte {subject_at} is 999 bytes long but the file ends \
             {available} bytes later"
        ),
    );
    check_quarantined(
        &items,
        &b.file("plain-4", "-H"),
        count_at as u64,
        "recipient count is not a number",
    );
    check_quarantined(
        &items,
        &b.file("partial", "-H"),
        blank_at as u64,
        "recipient count says 5 but only 4 recipient lines follow",
    );
    check_quarantined(
        &items,
        &b.file("plain-5", "-H"),
        0,
        &format!(
            "first line is not the file's own name `{}-H`",
            id("plain-5")
        ),
    );
    check_quarantined(
        &items,
        &b.file("dots", "-D"),
        0,
        &format!("first line is not the file's own name `{}-D`", id("dots")),
    );
    check_quarantined(
        &items,
        &b.dir.path().join("input/1xX64b-0000ZZ-00-D"),
        0,
        "data file without its `-H` envelope file (a message still being received, or a lost \
         envelope)",
    );
    check_quarantined(
        &items,
        &b.dir.path().join("input/1xX64b-0000ZZ-01-H"),
        0,
        "symbolic link: not followed (only the spool's own files are read; copy the target \
         into the spool to ingest it)",
    );
    let read: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            SpoolItem::Message(m) => Some(m.queue_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        read,
        [id("alias").as_str()],
        "the good message is still read"
    );
    assert_eq!(items.len(), 10);
}

#[test]
fn read_content_fails_cleanly_when_the_spool_changed() {
    let b = Broken::new(&["plain-1"]);
    let m = match &b.items()[0] {
        SpoolItem::Message(m) => m.clone(),
        other => panic!("expected a message: {other:?}"),
    };
    std::fs::remove_file(b.file("plain-1", "-D")).expect("rm");
    let err = spool::read_content(&m.source).expect_err("-D gone");
    assert!(err.to_string().contains("-D` is missing"), "{err}");
}

#[test]
fn not_an_exim_spool_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(!exim::looks_like_spool(dir.path()));
    assert!(exim::read(dir.path()).is_err());
    assert!(exim::looks_like_spool(&exim_fixture("flat").join("spool")));
    assert!(exim::looks_like_spool(&exim_fixture("split").join("spool")));
    assert!(exim::looks_like_spool(
        &exim_fixture("split").join("spool/input")
    ));
}

// ---------------------------------------------------------------------------------------
// Seeded mutations: never a panic, and whatever is read back rebuilds identically.

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut h = original.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        if h.is_empty() {
            break;
        }
        let len = h.len() as u64;
        match rng.below(6) {
            0 => {
                let at = rng.below(len) as usize;
                h[at] ^= 1 << rng.below(8);
            }
            1 => h.truncate(rng.below(len) as usize),
            2 | 3 => {
                // Duplicate or drop a line.
                let lines: Vec<&[u8]> = h.split_inclusive(|&b| b == b'\n').collect();
                let pick = rng.below(lines.len() as u64) as usize;
                let mut out = Vec::with_capacity(h.len() + 80);
                for (i, line) in lines.iter().enumerate() {
                    if i != pick || rng.below(2) == 0 {
                        out.extend_from_slice(line);
                    }
                    if i == pick {
                        out.extend_from_slice(line);
                    }
                }
                h = out;
            }
            4 => {
                // Change a number (a header length, the recipient count, a DSN length).
                let digits: Vec<usize> = (0..h.len()).filter(|&i| h[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let at = digits[rng.below(digits.len() as u64) as usize];
                    h[at] = b'0' + rng.below(10) as u8;
                }
            }
            _ => {
                let at = rng.below(len) as usize;
                h.insert(
                    at,
                    [b'\n', b' ', b'#', b',', b'-', b'<', b'*'][rng.below(7) as usize],
                );
            }
        }
    }
    h
}

#[test]
fn seeded_mutations_never_panic() {
    let src = exim_fixture("flat").join("spool/input");
    let mut originals = Vec::new();
    for entry in std::fs::read_dir(&src).expect("fixture input") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if let Some(id) = name.strip_suffix("-H") {
            let h = std::fs::read(&path).expect("-H");
            let d = std::fs::read(src.join(format!("{id}-D"))).expect("-D");
            originals.push((id.to_string(), h, d));
        }
    }
    originals.sort();
    assert!(!originals.is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir(&input).expect("input");
    let mut rng = Rng::new(0x5EED_E1A1);
    let (mut messages, mut quarantined) = (0, 0);
    for _ in 0..3000 {
        let (id, h, d) = &originals[rng.below(originals.len() as u64) as usize];
        let h_path = input.join(format!("{id}-H"));
        std::fs::write(&h_path, mutate(&mut rng, h)).expect("write -H");
        std::fs::write(input.join(format!("{id}-D")), d).expect("write -D");
        let items: Vec<SpoolItem> = exim::read(dir.path()).expect("open").collect();
        assert_eq!(items.len(), 1);
        match &items[0] {
            SpoolItem::Message(m) => {
                messages += 1;
                assert!(!m.envelope.recipients.is_empty());
                assert_eq!(exim::read_content(&m.source).expect("again"), m.content);
            }
            SpoolItem::Quarantined(q) => {
                quarantined += 1;
                assert_eq!(q.source.path, h_path);
                assert!(!q.reason.is_empty());
            }
        }
        std::fs::remove_file(&h_path).expect("rm -H");
        std::fs::remove_file(input.join(format!("{id}-D"))).expect("rm -D");
    }
    assert!(
        messages > 100 && quarantined > 100,
        "{messages} read, {quarantined} quarantined"
    );
}

// ---------------------------------------------------------------------------------------
// Through the binary: detection, ingest, and a run into a Maildir.

#[test]
fn ingest_and_run_an_exim_spool() {
    let cli = Cli::new();
    let spool = exim_fixture("flat").join("spool");
    let out = cli.run(&["--json", "ingest", spool.to_str().expect("utf-8 path")]);
    support::check(&out, 0);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["format"], "exim");
    let bp =
        parse_bp(&std::fs::read_to_string(exim_fixture("flat").join("truth/bp.txt")).expect("bp"));
    assert_eq!(summary["messages"], bp.len());
    assert_eq!(summary["quarantined"], 0);

    // An incident around the day the fixtures were made: everything is to be delivered.
    let incident = TestIncident::new()
        .name("exim fixture")
        .reporting_mta("mx.example.test")
        .restored_at("2026-12-01T00:00:00Z")
        .window(
            "queued",
            "2026-01-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            "deliver",
        )
        .write(cli.path());
    let out = cli.run(&cli.run_args_with(&incident, "2026-12-02T00:00:00Z", &[]));
    support::check(&out, 0);
    let delivered: BTreeSet<String> = out
        .events("outcome")
        .iter()
        .filter(|e| e["state"] == "delivered")
        .map(|e| {
            format!(
                "{} {}",
                e["queue_id"].as_str().unwrap_or(""),
                e["recipient"].as_str().unwrap_or("")
            )
        })
        .collect();
    let expected: BTreeSet<String> = bp
        .iter()
        .filter(|(_, e)| !e.frozen)
        .flat_map(|(id, e)| {
            e.recipients
                .iter()
                .filter(|(_, done)| !done)
                .map(move |(a, _)| format!("{id} {a}"))
        })
        .collect();
    assert_eq!(
        delivered, expected,
        "delivered: what Exim had pending, frozen mail held"
    );
    let files = support::list_files(&cli.store());
    assert_eq!(files.len(), expected.len(), "{files:?}");
    // What Exim had delivered is recorded as such, apart from spoolreplay's deliveries.
    let done_by_exim = bp
        .values()
        .flat_map(|e| e.recipients.iter().filter(|(_, done)| *done))
        .count();
    assert!(done_by_exim > 0, "the fixture has delivered recipients");
    assert_eq!(
        cli.status()["states"]["delivered_before"],
        done_by_exim as u64
    );
    let bcc = cli.store().join("example.test/tom/Maildir/new");
    let copy = std::fs::read_dir(&bcc)
        .expect("tom's maildir")
        .next()
        .expect("a copy");
    let bytes = std::fs::read(copy.expect("entry").path()).expect("copy");
    assert!(
        !bytes.windows(4).any(|w| w == b"Bcc:"),
        "no deleted Bcc in the copy"
    );
}
