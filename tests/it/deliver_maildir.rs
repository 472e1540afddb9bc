//! Integration tests: deliver_maildir, through the library API on a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};
use spoolreplay::address::ReversePath;
use spoolreplay::deliver::maildir::MaildirStore;
use spoolreplay::deliver::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};

/// These tests give plain addresses; the trait takes recipients with DSN parameters.
trait DeliverPlain {
    fn deliver_plain(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[&str],
    ) -> Result<Vec<Outcome>, StoreError>;
}

impl<T: Deliverer> DeliverPlain for T {
    fn deliver_plain(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[&str],
    ) -> Result<Vec<Outcome>, StoreError> {
        let specs: Vec<RecipientSpec<'_>> =
            recipients.iter().map(|a| RecipientSpec::plain(a)).collect();
        self.deliver(delivery, &specs)
    }
}

const MESSAGE: &[u8] =
    b"From: Alice <alice@example.org>\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n";
const STORED_BODY: &[u8] = b"From: Alice <alice@example.org>\nSubject: hi\n\nline one\nline two\n";

fn arrival() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2024-03-05T10:20:30+01:00").unwrap()
}

fn sender() -> ReversePath {
    ReversePath::Address("Alice@Example.org".to_string())
}

fn delivery<'a>(sender: &'a ReversePath, recovering: bool) -> Delivery<'a> {
    Delivery {
        recovering,
        ..Delivery::new("spool:q/4F2A1B", sender, MESSAGE, arrival())
    }
}

/// A store nested a few levels down, so `..` escapes would still land inside the tempdir
/// where `snapshot` can see them.
fn store_in(tmp: &Path) -> (MaildirStore, PathBuf) {
    let root = tmp.join("a/b/c/store");
    let store = MaildirStore::new(&root).unwrap();
    (store, root)
}

/// Every path under `dir` with its file contents (`None` for directories).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path.clone());
                out.insert(path, None);
            } else {
                out.insert(path.clone(), Some(fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[track_caller]
fn delivered_path(outcome: &Outcome) -> PathBuf {
    match outcome {
        Outcome::Delivered { detail, .. } => PathBuf::from(detail),
        other => panic!("expected Delivered, got {other:?}"),
    }
}

#[track_caller]
fn assert_failed_513(outcome: &Outcome, what: &str) {
    match outcome {
        Outcome::Failed { status, reply, .. } => {
            assert_eq!(status, "5.1.3", "{what}");
            let reply = reply.to_string();
            assert!(reply.contains("refused"), "{what}: {reply}");
            assert!(!reply.chars().any(char::is_control), "{what}: {reply:?}");
        }
        other => panic!("{what}: expected Failed 5.1.3, got {other:?}"),
    }
}

#[test]
fn delivers_each_recipient_with_headers_and_lf() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let root = fs::canonicalize(root).unwrap();
    let s = sender();
    let outcomes = store
        .deliver_plain(
            &delivery(&s, false),
            &["Bob@Example.NET", "<carol@example.net>", "dave@other.test"],
        )
        .unwrap();
    assert_eq!(outcomes.len(), 3);

    let cases = [
        (&outcomes[0], "example.net/bob", "Bob@Example.NET"),
        (&outcomes[1], "example.net/carol", "carol@example.net"),
        (&outcomes[2], "other.test/dave", "dave@other.test"),
    ];
    for (outcome, folder, given) in cases {
        let path = delivered_path(outcome);
        let new_dir = root.join(folder).join("Maildir/new");
        assert_eq!(path.parent(), Some(new_dir.as_path()), "{given}");
        let mut expected =
            format!("Return-Path: <Alice@Example.org>\nDelivered-To: {given}\n").into_bytes();
        expected.extend_from_slice(STORED_BODY);
        assert_eq!(fs::read(&path).unwrap(), expected, "{given}");
        assert_eq!(files_in(&new_dir).len(), 1, "{given}");
        for sub in ["tmp", "cur"] {
            let dir = root.join(folder).join("Maildir").join(sub);
            assert!(dir.is_dir(), "{}", dir.display());
            assert!(files_in(&dir).is_empty(), "{}", dir.display());
        }
    }
}

#[test]
fn null_sender_gets_empty_return_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = store_in(tmp.path());
    let null = ReversePath::Null;
    let outcomes = store
        .deliver_plain(&delivery(&null, false), &["bob@example.net"])
        .unwrap();
    let stored = fs::read(delivered_path(&outcomes[0])).unwrap();
    assert!(stored.starts_with(b"Return-Path: <>\nDelivered-To: bob@example.net\nFrom: "));
}

#[test]
fn file_name_is_deterministic_and_dovecot_shaped() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let s = sender();
    let mut names = Vec::new();
    for tmp in [&first, &second] {
        let (mut store, _) = store_in(tmp.path());
        let outcomes = store
            .deliver_plain(&delivery(&s, false), &["bob@example.net"])
            .unwrap();
        let path = delivered_path(&outcomes[0]);
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(names[0], names[1]);
    // M + 32 hex digits: nothing of the arrival time or the stored size (they differ
    // between two spools' copies of the same bytes).
    let name = &names[0];
    let (hash, tail) = name.strip_prefix('M').unwrap().split_once('.').unwrap();
    assert_eq!(hash.len(), 32, "{name}");
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{name}"
    );
    assert_eq!(tail, "spoolreplay", "{name}");

    // Another mailbox or another message gets another name.
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = store_in(tmp.path());
    let other_rcpt = store
        .deliver_plain(&delivery(&s, false), &["carol@example.net"])
        .unwrap();
    let mut other = delivery(&s, false);
    other.message_key = "spool:q/4F2A1C";
    let other_msg = store.deliver_plain(&other, &["bob@example.net"]).unwrap();
    for outcome in [&other_rcpt[0], &other_msg[0]] {
        let n = delivered_path(outcome)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_ne!(&n, name);
    }
}

#[test]
fn second_delivery_is_already_there_with_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let first = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    let path = delivered_path(&first[0]);
    // Another case of the same mailbox is the same mailbox.
    let again = store
        .deliver_plain(&delivery(&s, false), &["BOB@example.net"])
        .unwrap();
    assert_eq!(
        again,
        vec![Outcome::AlreadyThere {
            detail: path.display().to_string()
        }]
    );
    assert_eq!(files_in(&root.join("example.net/bob/Maildir/new")).len(), 1);
}

#[test]
fn recipient_listed_twice_gets_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let outcomes = store
        .deliver_plain(
            &delivery(&s, false),
            &["bob@example.net", "carol@example.net", "Bob@EXAMPLE.net"],
        )
        .unwrap();
    let path = delivered_path(&outcomes[0]);
    delivered_path(&outcomes[1]);
    assert_eq!(
        outcomes[2],
        Outcome::AlreadyThere {
            detail: path.display().to_string()
        }
    );
    assert_eq!(files_in(&root.join("example.net/bob/Maildir/new")).len(), 1);
}

/// Issue 13.1: two spools' copies of one message (another arrival time, another spelling
/// of the mailbox, so another `Delivered-To:` line and file size) are one copy.
#[test]
fn the_same_bytes_from_two_spools_make_one_copy_per_mailbox() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let first = store
        .deliver_plain(
            &delivery(&s, false),
            &["bob@example.net", "\"carol\"@example.net"],
        )
        .unwrap();
    let bob = delivered_path(&first[0]);
    let carol = delivered_path(&first[1]);
    let mut other_host = delivery(&s, false);
    other_host.arrival = DateTime::parse_from_rfc3339("2024-03-05T11:02:00+01:00").unwrap();
    let second = store
        .deliver_plain(&other_host, &["Bob@Example.NET", "carol@EXAMPLE.net"])
        .unwrap();
    assert_eq!(
        second,
        vec![
            Outcome::AlreadyThere {
                detail: bob.display().to_string()
            },
            Outcome::AlreadyThere {
                detail: carol.display().to_string()
            },
        ]
    );
    for mailbox in ["bob", "carol"] {
        let new = root.join("example.net").join(mailbox).join("Maildir/new");
        assert_eq!(files_in(&new).len(), 1, "{mailbox}");
    }
}

#[test]
fn idn_domains_in_either_form_share_one_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let first = store
        .deliver_plain(&delivery(&s, false), &["a@EXÄMPLE.NET"])
        .unwrap();
    let path = delivered_path(&first[0]);
    for spelling in ["a@exämple.net", "a@xn--exmple-cua.net"] {
        let again = store
            .deliver_plain(&delivery(&s, false), &[spelling])
            .unwrap();
        assert_eq!(
            again,
            vec![Outcome::AlreadyThere {
                detail: path.display().to_string()
            }],
            "{spelling}"
        );
    }
    assert_eq!(files_in(&root), ["exämple.net"]);
}

/// A copy an earlier version made (`{arrival}.M{hash}.spoolreplay,S={size}`, hash over the
/// ASCII-lowercased mailbox) before a crash is found by a recovering run: no second copy.
#[test]
fn a_copy_named_by_an_earlier_version_is_found_when_recovering() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let given = "Bob@Example.NET";
    let mut stored =
        format!("Return-Path: <Alice@Example.org>\nDelivered-To: {given}\n").into_bytes();
    stored.extend_from_slice(STORED_BODY);
    let hash = crate::support::sha256_hex(b"spool:q/4F2A1B\0bob@example.net")[..32].to_string();
    let legacy = format!("1709630430.M{hash}.spoolreplay,S={}", stored.len());
    let maildir = root.join("example.net/bob/Maildir");
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for (folder, name) in [("new", legacy.clone()), ("cur", format!("{legacy}:2,S"))] {
        let path = maildir.join(folder).join(&name);
        fs::write(&path, &stored).unwrap();
        let found = store.deliver_plain(&delivery(&s, true), &[given]).unwrap();
        assert_eq!(
            found,
            vec![Outcome::AlreadyThere {
                detail: path.display().to_string()
            }],
            "in {folder}/"
        );
        fs::remove_file(&path).unwrap();
    }
    assert!(files_in(&maildir.join("new")).is_empty());
}

#[test]
fn copy_moved_to_cur_is_found_when_recovering() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let first = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    let new_path = delivered_path(&first[0]);
    let name = new_path.file_name().unwrap().to_string_lossy().into_owned();
    // What a mail client does when it has seen the message.
    let cur_path = root
        .join("example.net/bob/Maildir/cur")
        .join(format!("{name}:2,S"));
    fs::rename(&new_path, &cur_path).unwrap();

    let recovered = store
        .deliver_plain(&delivery(&s, true), &["bob@example.net"])
        .unwrap();
    assert_eq!(
        recovered,
        vec![Outcome::AlreadyThere {
            detail: cur_path.display().to_string()
        }]
    );
    assert!(files_in(&root.join("example.net/bob/Maildir/new")).is_empty());

    // Without `recovering` only `new/` is checked: that is the documented cost of the
    // cheaper path, and the run loop sets the flag whenever it matters.
    let plain = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    delivered_path(&plain[0]);
}

#[test]
fn leftover_tmp_file_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    // Learn the name, then go back to a crash between writing tmp/ and the rename.
    let first = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    let name = delivered_path(&first[0]).file_name().unwrap().to_owned();
    let maildir = root.join("example.net/bob/Maildir");
    fs::remove_file(maildir.join("new").join(&name)).unwrap();
    fs::write(maildir.join("tmp").join(&name), b"half a mess").unwrap();

    let again = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    let path = delivered_path(&again[0]);
    assert!(fs::read(&path).unwrap().ends_with(STORED_BODY));
    assert!(files_in(&maildir.join("tmp")).is_empty());
}

#[test]
fn hostile_recipients_are_refused_and_nothing_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let s = sender();
    let long_local = format!("{}@example.net", "a".repeat(300));
    let hostile: Vec<&str> = vec![
        "../../etc/passwd@example.net",
        "a/b@x",
        "..@x",
        "x@..",
        "nul\0byte@example.net",
        "esc\x1b[2J@example.net",
        "crlf@example.net\r\nX-Injected: 1",
        "x\r\n@example.net",
        &long_local,
        "x@a/b",
        "x@../../..",
        "back\\slash@example.net",
        "no-at-sign",
    ];
    let before = snapshot(tmp.path());
    let outcomes = store.deliver_plain(&delivery(&s, false), &hostile).unwrap();
    assert_eq!(outcomes.len(), hostile.len());
    for (outcome, raw) in outcomes.iter().zip(&hostile) {
        assert_failed_513(outcome, &format!("{raw:?}"));
    }
    assert_eq!(
        snapshot(tmp.path()),
        before,
        "a refused recipient changed the disk"
    );

    // Mixed with a good recipient: only the good one is written, under the root.
    let mut mixed = hostile.clone();
    mixed.insert(3, "good@example.net");
    let outcomes = store.deliver_plain(&delivery(&s, false), &mixed).unwrap();
    let good = delivered_path(&outcomes[3]);
    assert!(good.starts_with(fs::canonicalize(&root).unwrap()));
    let after = snapshot(tmp.path());
    let added: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(!added.is_empty());
    for path in &added {
        assert!(
            *path == &root.join("example.net") || path.starts_with(root.join("example.net/good")),
            "{}",
            path.display()
        );
    }
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed { .. }))
        .count();
    assert_eq!(refused, hostile.len());
}

#[test]
fn sender_with_line_break_is_refused_for_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = store_in(tmp.path());
    let evil = ReversePath::Address("a@b\r\nX-Injected: 1".to_string());
    let before = snapshot(tmp.path());
    let outcomes = store
        .deliver_plain(
            &delivery(&evil, false),
            &["bob@example.net", "carol@example.net"],
        )
        .unwrap();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Outcome::Failed { status, .. } if status == "5.1.7"),
            "{outcome:?}"
        );
    }
    assert_eq!(outcomes.len(), 2);
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn file_in_place_of_maildir_defers_that_mailbox_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    fs::create_dir_all(root.join("example.net/bob")).unwrap();
    let blocker = root.join("example.net/bob/Maildir");
    fs::write(&blocker, b"not a folder").unwrap();
    let s = sender();
    let outcomes = store
        .deliver_plain(
            &delivery(&s, false),
            &["bob@example.net", "carol@example.net"],
        )
        .unwrap();
    match &outcomes[0] {
        Outcome::Deferred { reply, .. } => {
            let reply = reply.to_string();
            assert!(reply.contains("example.net/bob/Maildir"), "{reply}");
            assert!(reply.contains("not a directory"), "{reply}");
        }
        other => panic!("expected Deferred, got {other:?}"),
    }
    delivered_path(&outcomes[1]);
    assert_eq!(fs::read(&blocker).unwrap(), b"not a folder");
}

#[test]
fn file_in_place_of_new_defers_and_leaves_no_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let maildir = root.join("example.net/bob/Maildir");
    fs::create_dir_all(maildir.join("tmp")).unwrap();
    fs::create_dir_all(maildir.join("cur")).unwrap();
    fs::write(maildir.join("new"), b"").unwrap();
    let s = sender();
    let outcomes = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Deferred { reply, .. } if reply.to_string().contains("Maildir/new")),
        "{outcomes:?}"
    );
    assert!(files_in(&maildir.join("tmp")).is_empty());
}

#[test]
fn root_replaced_by_file_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    let abs = fs::canonicalize(&root).unwrap();
    fs::remove_dir(&root).unwrap();
    fs::write(&root, b"").unwrap();
    let s = sender();
    let err = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("not a directory")),
        "{err}"
    );
    assert!(
        err.to_string().contains(&abs.display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_root_is_unavailable_and_not_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, root) = store_in(tmp.path());
    fs::remove_dir(&root).unwrap();
    let s = sender();
    let err = store
        .deliver_plain(&delivery(&s, false), &["bob@example.net"])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("store root")),
        "{err}"
    );
    assert!(!root.exists(), "deliver recreated a missing root");
}

#[test]
fn new_refuses_a_root_that_cannot_be_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("store");
    fs::write(&file, b"").unwrap();
    let err = MaildirStore::new(&file).unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("store")),
        "{err}"
    );
    let below_file = MaildirStore::new(&file.join("inner")).unwrap_err();
    assert!(matches!(below_file, StoreError::Unavailable(_)));
}

#[test]
fn describe_names_the_absolute_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, root) = store_in(tmp.path());
    let abs = fs::canonicalize(root).unwrap();
    assert_eq!(store.describe(), format!("maildir:{}", abs.display()));
    assert!(abs.is_absolute());
}
