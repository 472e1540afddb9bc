//! Postfix queue reader: committed real queue files (fixtures/postfix/) against the ground
//! truth Postfix itself gave (`postqueue -j`, `postcat -bh`), malformed files, a seeded
//! mutation run, and a fresh real Postfix queue built by tests/peers/make-postfix-spool.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use spoolreplay::address::{ReturnContent, ReversePath};
use spoolreplay::spool::postfix::{self, parse_queue_file};
use spoolreplay::spool::{self, FieldSource, Prior, QueuedMessage, SpoolFormat, SpoolItem};

use crate::support::{Rng, lf_normalized};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/postfix")
}

fn read_spool(dir: &Path) -> Vec<SpoolItem> {
    match postfix::read(dir) {
        Ok(reader) => reader.collect(),
        Err(e) => panic!("cannot open {}: {e}", dir.display()),
    }
}

fn messages(items: &[SpoolItem]) -> BTreeMap<String, &QueuedMessage> {
    items
        .iter()
        .filter_map(|i| match i {
            SpoolItem::Message(m) => Some((m.queue_id.clone(), m)),
            SpoolItem::Quarantined(_) => None,
        })
        .collect()
}

fn quarantined(items: &[SpoolItem]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| match i {
            SpoolItem::Quarantined(q) => Some((
                q.source
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                q.reason.clone(),
            )),
            SpoolItem::Message(_) => None,
        })
        .collect()
}

/// The sender as `postqueue -j` shows it.
fn shown_sender(sender: &ReversePath) -> &str {
    match sender {
        ReversePath::Null => "MAILER-DAEMON",
        ReversePath::Address(a) => a,
    }
}

/// Checks every message of a ground-truth folder (`spool/`, `postqueue.jsonl`, `postcat/`,
/// optional `incomplete.txt`) against what the reader makes of the spool; returns how many.
#[track_caller]
fn check_against_postfix(dir: &Path) -> usize {
    let items = read_spool(&dir.join("spool"));
    let ours = messages(&items);
    let truth = std::fs::read_to_string(dir.join("postqueue.jsonl")).expect("postqueue.jsonl");
    let mut seen = BTreeSet::new();
    for line in truth.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line).expect("postqueue -j line");
        let id = entry["queue_id"].as_str().expect("queue_id");
        let Some(msg) = ours.get(id) else {
            panic!(
                "{id} is in postqueue -j but not read: {:?}",
                quarantined(&items)
            );
        };
        seen.insert(id.to_string());
        assert_eq!(
            msg.queue_name.as_deref(),
            entry["queue_name"].as_str(),
            "{id} queue"
        );
        assert_eq!(msg.mta_hold, entry["queue_name"] == "hold", "{id} hold");
        assert_eq!(
            shown_sender(&msg.envelope.sender),
            entry["sender"].as_str().expect("sender"),
            "{id} sender"
        );
        // postqueue groups recipients by delay reason: compare them as multisets.
        let mut pending: Vec<&str> = msg
            .envelope
            .recipients
            .iter()
            .filter(|r| r.prior.is_none())
            .map(|r| r.address.as_str())
            .collect();
        let mut listed: Vec<&str> = entry["recipients"]
            .as_array()
            .expect("recipients")
            .iter()
            .map(|r| r["address"].as_str().expect("address"))
            .collect();
        pending.sort_unstable();
        listed.sort_unstable();
        assert_eq!(pending, listed, "{id} pending recipients");
        assert_eq!(
            Some(msg.envelope.arrival.timestamp()),
            entry["arrival_time"].as_i64(),
            "{id} arrival"
        );
        assert_eq!(msg.envelope.arrival.offset().local_minus_utc(), 0);
        assert_eq!(msg.envelope.sender_from, FieldSource::QueueFile);
        let postcat = std::fs::read(dir.join("postcat").join(id)).expect("postcat output");
        if lf_normalized(&msg.content) != postcat {
            let actual = dir.join("postcat").join(format!("{id}.actual"));
            let _ = std::fs::write(&actual, &msg.content);
            panic!(
                "{id} content differs from postcat -bh: see {}",
                actual.display()
            );
        }
        assert!(
            !msg.content
                .windows(2)
                .any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "{id}: every line ends in CRLF"
        );
        let again = spool::read_content(&msg.source).expect("read_content");
        assert!(again == msg.content, "{id}: read_content gives other bytes");
        assert_eq!(msg.source.format, SpoolFormat::Postfix);
        assert_eq!(msg.source.offset, 0);
        let len = std::fs::metadata(&msg.source.path)
            .expect("queue file")
            .len();
        assert_eq!(msg.source.len, len, "{id} source length");
    }
    assert!(!seen.is_empty(), "no messages in {}", dir.display());
    let extra: Vec<_> = ours.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(extra.is_empty(), "read but not in postqueue -j: {extra:?}");
    let incomplete = std::fs::read_to_string(dir.join("incomplete.txt")).unwrap_or_default();
    let expected: BTreeSet<String> = incomplete.lines().map(str::to_string).collect();
    let got: BTreeSet<String> = quarantined(&items)
        .into_iter()
        .map(|(name, reason)| {
            assert_eq!(
                reason, "incomplete: still being written by Postfix (no owner-execute bit)",
                "{name} quarantined"
            );
            name
        })
        .collect();
    assert_eq!(got, expected, "quarantined files");
    seen.len()
}

fn fixture_message(id: &str) -> QueuedMessage {
    let items = read_spool(&fixture_dir().join("spool"));
    let found = messages(&items).get(id).map(|m| (*m).clone());
    found.unwrap_or_else(|| panic!("fixture {id} not read"))
}

fn fixture_case(name: &str) -> String {
    let text = std::fs::read_to_string(fixture_dir().join("cases.txt")).expect("cases.txt");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no case {name} in cases.txt"))
        .trim()
        .to_string()
}

#[test]
fn fixtures_match_postqueue_and_postcat() {
    let count = check_against_postfix(&fixture_dir());
    assert!(count >= 8, "only {count} fixture messages");
}

#[test]
fn fixtures_are_detected_as_postfix() {
    let spool_dir = fixture_dir().join("spool");
    assert_eq!(spool::detect(&spool_dir).unwrap(), SpoolFormat::Postfix);
    assert_eq!(
        spool::detect(&spool_dir.join("deferred")).unwrap(),
        SpoolFormat::Postfix,
        "one queue folder on its own"
    );
    let only_deferred = read_spool(&spool_dir.join("deferred"));
    assert!(!only_deferred.is_empty());
    assert!(
        messages(&only_deferred)
            .values()
            .all(|m| m.queue_name.as_deref() == Some("deferred"))
    );
}

#[test]
fn delivered_recipients_are_marked_not_pending() {
    let msg = fixture_message(&fixture_case("done"));
    let delivered: Vec<_> = msg
        .envelope
        .recipients
        .iter()
        .filter(|r| r.prior == Some(Prior::Delivered))
        .collect();
    assert!(!delivered.is_empty(), "{:?}", msg.envelope.recipients);
    assert!(
        delivered
            .iter()
            .all(|r| r.address.ends_with("@done.example.test"))
    );
    assert!(msg.envelope.recipients.iter().any(|r| r.prior.is_none()));

    let cancelled = fixture_message(&fixture_case("cancelled"));
    let settled: Vec<_> = cancelled
        .envelope
        .recipients
        .iter()
        .filter(|r| r.prior == Some(Prior::Cancelled))
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        settled,
        vec!["cancel@example.test"],
        "removed by the milter"
    );
}

#[test]
fn null_sender_and_dsn_parameters() {
    let null = fixture_message(&fixture_case("null"));
    assert_eq!(null.envelope.sender, ReversePath::Null);

    let dsn = fixture_message(&fixture_case("dsn"));
    let envid = dsn.envelope.envid.as_deref().expect("envid");
    assert!(
        envid.starts_with("env+") && envid.ends_with("=x"),
        "{envid}"
    );
    assert!(dsn.envelope.ret.is_some());
    let r = &dsn.envelope.recipients;
    let first = r[0].notify.expect("notify");
    assert!(first.success && first.failure && !first.never && !first.delay);
    assert!(r[0].orcpt.as_deref().unwrap().starts_with("rfc822;orig-"));
    assert!(
        r[0].orcpt.as_deref().unwrap().ends_with("+x@example.test"),
        "xtext decoded"
    );
    assert!(r[1].notify.expect("notify").never);

    let hdrs = fixture_message(&fixture_case("local-dsn"));
    assert_eq!(hdrs.envelope.ret, Some(ReturnContent::Headers));
}

#[test]
fn long_lines_pointers_maildrop_hold_and_long_ids() {
    let long = fixture_message(&fixture_case("longline"));
    let longest = long.content.split(|b| *b == b'\n').map(<[u8]>::len).max();
    assert!(
        longest.unwrap_or(0) > 4000,
        "L records joined into one line"
    );

    let milter = fixture_message(&fixture_case("pointer"));
    let text = String::from_utf8_lossy(&milter.content);
    assert!(
        text.contains("X-Milter-Added: yes"),
        "header added through a pointer"
    );
    let raw = std::fs::read(&milter.source.path).unwrap();
    assert!(
        raw.windows(2).any(|w| w[0] == b'p' && w[1] == 15),
        "the fixture has pointer records"
    );

    let dropped = fixture_message(&fixture_case("maildrop"));
    assert_eq!(dropped.queue_name.as_deref(), Some("maildrop"));
    assert!(!String::from_utf8_lossy(&dropped.content).contains("Received:"));

    let held = fixture_message(&fixture_case("hold"));
    assert!(held.mta_hold);
    let long_id = fixture_case("long-id");
    assert!(long_id.contains('z') && long_id.len() > 12);
    fixture_message(&long_id);
}

// ---- malformed input ----

/// A queue file from the fixtures, as bytes, with its path.
fn fixture_bytes(id: &str) -> Vec<u8> {
    std::fs::read(fixture_message(id).source.path).unwrap()
}

fn record(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = data.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(data);
    out
}

/// The offset of the first record of `kind` in a fixture file, walking the framing.
fn first_record(bytes: &[u8], kind: u8) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let b = bytes[i];
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if bytes[at] == kind {
            return at;
        }
        at = i + len;
    }
    panic!("no record {}", kind as char)
}

#[track_caller]
fn check_quarantined_reason(name: &str, bytes: &[u8], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let hash = dir.path().join("deferred/A");
    std::fs::create_dir_all(&hash).unwrap();
    std::fs::write(hash.join(name), bytes).unwrap();
    let items = read_spool(dir.path());
    assert_eq!(items.len(), 1);
    match &items[0] {
        SpoolItem::Quarantined(q) => {
            assert_eq!(q.reason, expected, "{name}");
            assert_eq!(q.source.len, bytes.len() as u64);
        }
        SpoolItem::Message(m) => panic!("{name} read as a message: {:?}", m.envelope),
    }
}

#[test]
fn malformed_files_are_quarantined_with_the_offset() {
    let good = fixture_bytes(&fixture_case("done"));
    let len = good.len();

    check_quarantined_reason(
        "TRUNCATED",
        &good[..len - 2],
        &format!(
            "truncated: no end record (E) before the end of the file at offset {}",
            len - 2
        ),
    );
    check_quarantined_reason(
        "CUTINLENGTH",
        &good[..len - 1],
        &format!(
            "truncated: the record at offset {} ends inside its length",
            len - 2
        ),
    );
    let body_at = first_record(&good, b'N');
    check_quarantined_reason(
        "CUTINDATA",
        &good[..body_at + 4],
        &format!(
            "record at offset {body_at} claims {} bytes, past the end of the file ({} bytes)",
            good[body_at + 1],
            body_at + 4
        ),
    );

    let mut unknown = good.clone();
    let at = first_record(&good, b'S');
    unknown[at] = 0x01;
    check_quarantined_reason(
        "UNKNOWN",
        &unknown,
        &format!("unknown record type 0x01 at offset {at}"),
    );

    let mut past = good.clone();
    let at = first_record(&good, b'E');
    past[at + 1] = 0x7f;
    check_quarantined_reason(
        "PASTEND",
        &past,
        &format!("record at offset {at} claims 127 bytes, past the end of the file ({len} bytes)"),
    );

    let mut looped = good.clone();
    let at = first_record(&good, b'M');
    let p = record(b'p', format!("{at:15}").as_bytes());
    looped.splice(at..at, p.iter().copied());
    let at_p = at;
    // The pointer points at itself.
    let p = record(b'p', format!("{at_p:15}").as_bytes());
    looped[at_p..at_p + p.len()].copy_from_slice(&p);
    check_quarantined_reason("LOOP", &looped, &format!("pointer loop at offset {at_p}"));

    let mut overflow = good[..first_record(&good, b'S')].to_vec();
    overflow.extend_from_slice(&[b'N', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let at = first_record(&good, b'S');
    check_quarantined_reason(
        "OVERFLOW",
        &overflow,
        &format!("record length at offset {at} overflows (more than 5 length bytes)"),
    );

    check_quarantined_reason(
        "GARBAGE",
        b"\x00\xff\x13garbage that is not a queue file",
        "not a Postfix queue file: the first record at offset 0 is of type 0x00, not C or T",
    );
    check_quarantined_reason(
        "MBOX",
        b"From alice@example.test Mon Jan 23 10:00:00 2023\nSubject: hi\n\nbody\n",
        "not a Postfix queue file: the first record at offset 0 is of type `F`, not C or T",
    );
    check_quarantined_reason("EMPTY", b"", "file is empty");
}

#[test]
fn incomplete_symlinked_and_other_folders_are_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let good = fixture_bytes(&fixture_case("done"));
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "incoming",
        "deferred/1",
        "defer/1",
        "bounce",
        "corrupt",
        "saved",
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let write = |rel: &str, mode: u32| {
        let path = dir.path().join(rel);
        std::fs::write(&path, &good).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("incoming/AAAA", 0o600);
    write("incoming/BBBB", 0o700);
    write("deferred/1/CCCC", 0o700);
    for rel in ["defer/1/CCCC", "bounce/DDDD", "corrupt/EEEE", "saved/FFFF"] {
        write(rel, 0o700);
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), &good).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        dir.path().join("deferred/1/LINK"),
    )
    .unwrap();

    let items = read_spool(dir.path());
    let ids: Vec<_> = messages(&items).keys().cloned().collect();
    assert_eq!(ids, vec!["BBBB", "CCCC"]);
    let mut q = quarantined(&items);
    q.sort();
    assert_eq!(
        q,
        vec![
            (
                "AAAA".to_string(),
                "incomplete: still being written by Postfix (no owner-execute bit)".to_string()
            ),
            (
                "LINK".to_string(),
                "symbolic link: not followed".to_string()
            ),
        ]
    );
    // Deterministic: queues in alphabetical order, then paths.
    let order: Vec<_> = items
        .iter()
        .map(|i| match i {
            SpoolItem::Message(m) => m.queue_id.clone(),
            SpoolItem::Quarantined(q) => {
                q.source.path.file_name().unwrap().to_string_lossy().into()
            }
        })
        .collect();
    assert_eq!(order, vec!["CCCC", "LINK", "AAAA", "BBBB"]);
}

// ---- seeded mutations ----

#[test]
fn mutated_queue_files_never_panic() {
    let originals: Vec<Vec<u8>> = read_spool(&fixture_dir().join("spool"))
        .iter()
        .filter_map(|i| match i {
            SpoolItem::Message(m) if m.source.len < 100_000 => std::fs::read(&m.source.path).ok(),
            _ => None,
        })
        .collect();
    assert!(originals.len() >= 5, "fixture files to mutate");
    let mut rng = Rng::new(0x5eed_9057);
    let (mut ok, mut bad) = (0, 0);
    let dir = tempfile::tempdir().unwrap();
    let hash = dir.path().join("deferred/F");
    std::fs::create_dir_all(&hash).unwrap();
    for round in 0..3000u64 {
        let mut bytes = originals[rng.below(originals.len() as u64) as usize].clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut bytes, &mut rng);
        }
        match parse_queue_file(&bytes) {
            Ok(parsed) => {
                assert!(!parsed.recipients.is_empty());
                ok += 1;
            }
            Err(e) => {
                assert!(!e.0.is_empty());
                bad += 1;
            }
        }
        // Every 50th case also goes through the directory reader.
        if round % 50 == 0 {
            std::fs::write(hash.join(format!("M{round}")), &bytes).unwrap();
        }
    }
    let items = read_spool(dir.path());
    assert_eq!(items.len(), 60);
    assert!(
        items
            .iter()
            .all(|i| matches!(i, SpoolItem::Message(_) | SpoolItem::Quarantined(_)))
    );
    assert!(
        ok > 100 && bad > 100,
        "mutations both kept and broke files: {ok} ok, {bad} bad"
    );
}

fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    if bytes.is_empty() {
        bytes.push(b'C');
        return;
    }
    let at = rng.below(bytes.len() as u64) as usize;
    match rng.below(5) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes.truncate(at),
        2 => {
            let kinds = b"NLpRDSATOXEMw/\x00\xff";
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let data: Vec<u8> = if kind == b'p' {
                format!("{:15}", rng.below(bytes.len() as u64 + 10)).into_bytes()
            } else {
                (0..rng.below(40)).map(|_| rng.below(256) as u8).collect()
            };
            let rec = record(kind, &data);
            bytes.splice(at..at, rec);
        }
        3 => bytes[at] = rng.below(256) as u8,
        _ => {
            // A length byte changed: somewhere after a type byte.
            if at + 1 < bytes.len() {
                bytes[at + 1] = bytes[at + 1]
                    .wrapping_add(rng.below(7) as u8)
                    .wrapping_sub(3);
            }
        }
    }
}

// ---- real Postfix ----

/// The output folder of one make-postfix-spool.sh run, with the private Postfix instance
/// it ran (`instance/`: config, queue, `postfix.log`). If the test fails, the logs are
/// printed: an empty assertion message says nothing about what Postfix did.
struct RealQueue {
    out: tempfile::TempDir,
}

impl RealQueue {
    fn path(&self) -> &Path {
        self.out.path()
    }

    fn logs(&self) -> String {
        let instance = self.path().join("instance");
        [
            "postfix.log",
            "run/milter.log",
            "run/tarpit.log",
            "run/stall.log",
        ]
        .iter()
        .map(|name| {
            let text =
                std::fs::read_to_string(instance.join(name)).unwrap_or_else(|e| format!("({e})"));
            format!("--- {name} ---\n{text}")
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for RealQueue {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Why the script may not have been able to run at all, if it is one of the things it
/// needs (said only when it is so, not as a guess).
fn missing_prerequisites() -> Vec<&'static str> {
    let mut missing = Vec::new();
    let uid = Command::new("id").arg("-u").output();
    if !uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        missing.push("it must run as root");
    }
    let postconf = Command::new("postconf")
        .arg("-d")
        .arg("mail_version")
        .output();
    if !postconf.is_ok_and(|o| o.status.success()) {
        missing.push("Postfix is not installed (the script installs it with apt-get)");
    }
    missing
}

/// Builds a fresh real queue with a private Postfix instance: its own config, queue and
/// data directories under a temp dir, smtpd on a free loopback port, the milter on a unix
/// socket. Nothing machine-wide is used, so both id flavours run at once and beside any
/// other Postfix on the machine.
#[track_caller]
fn real_postfix(ids: &str) {
    let queue = RealQueue {
        out: tempfile::tempdir().expect("temp dir"),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/make-postfix-spool.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(queue.path())
        .arg(ids)
        .output()
        .expect("run make-postfix-spool.sh");
    assert!(
        run.status.success(),
        "make-postfix-spool.sh {ids} failed ({}){}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        missing_prerequisites()
            .iter()
            .map(|m| format!("; {m}"))
            .collect::<String>(),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Everything the script started (master and its daemons, the milter, the tarpit, the
    // stalled injector) has stopped: nothing runs from the instance any more.
    let left = crate::support::processes_under(&queue.path().join("instance"));
    assert!(left.is_empty(), "left running: {left:#?}");
    let out = &queue;
    let count = check_against_postfix(out.path());
    assert!(
        count >= 200,
        "only {count} messages in the real {ids}-id queue"
    );
    let items = read_spool(&out.path().join("spool"));
    let ours = messages(&items);
    for queue in ["active", "deferred", "hold", "maildrop"] {
        assert!(
            ours.values()
                .any(|m| m.queue_name.as_deref() == Some(queue)),
            "no message in {queue}/"
        );
    }
    assert!(
        ours.values()
            .flat_map(|m| &m.envelope.recipients)
            .any(|r| r.prior == Some(Prior::Delivered)),
        "no delivered (D) recipient"
    );
    if ids == "long" {
        assert!(ours.keys().all(|id| id.contains('z')), "long queue ids");
    }
}

#[test]
fn real_postfix_short_ids() {
    real_postfix("short");
}

#[test]
fn real_postfix_long_ids() {
    real_postfix("long");
}
