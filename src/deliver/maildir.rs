//! Delivery into a Maildir tree on disk: `ROOT/<domain>/<local-part>/Maildir/new/`.
//!
//! Each copy follows the Maildir protocol: write `tmp/NAME`, fsync it, rename it to
//! `new/NAME`, fsync `new/` (and the parent of every directory created on the way), so a
//! crash leaves either no copy or a complete one.
//!
//! Decisions a reader should know:
//! - Folders are the canonical mailbox (`address::Mailbox::canonical`): quoting undone,
//!   the local part's ASCII letters lowercased (as Dovecot's `%Lu`; other characters of a
//!   non-ASCII local part are kept as given), the domain IDNA-normalised to its Unicode
//!   form, case-folded, so `a@EXÄMPLE.NET`, `a@exämple.net` and `a@xn--exmple-cua.net`
//!   share one folder. Path checks apply to that form, as it is what becomes the path.
//! - NAME is `M{hash}.spoolreplay` where `hash` is the first 32 hex digits of SHA-256 over
//!   the message key (its content hash), a NUL and the canonical mailbox: nothing else, so
//!   two spools' copies of the same bytes for `Bob@Example.NET` and `bob@example.net` have
//!   one name whatever their arrival time or the `Delivered-To:` line written. It is the
//!   same in every run, which is how a resumed run recognises a copy it already made (in
//!   `new/`, and when recovering also in `cur/`, where a mail client may have moved it as
//!   `NAME:2,S`).
//! - Versions before this one named copies `{arrival secs}.M{hash}.spoolreplay,S={size}`
//!   (hash over the ASCII-lowercased mailbox, size including the delivery headers): that
//!   name is looked for too (`legacy_file_name`), so a ledger left in flight by such a
//!   version resumes without a second copy.
//! - The stored file starts with `Return-Path:` and `Delivered-To:` lines, as a delivery
//!   agent writes them, followed by the message with LF line ends (the Maildir convention
//!   Dovecot follows) by the one rule of `line_ends` (classic-Mac CRs are line ends, any
//!   other bare CR a byte); nothing else changes.
//! - Addresses are untrusted: a part that could name another directory, or hold control
//!   characters, is refused with 5.1.3 before any path is built, and the final path is
//!   checked to stay under the root as a second line of defence.
//! - A missing root is never recreated by `deliver`: it most likely means the restored
//!   store is not mounted, and writing would fill the mount point instead.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::sanitize;

mod names;

pub(crate) use names::name_hash;
use names::{
    Target, check_recipient, check_sender, file_name, legacy_file_name, refused, stays_under,
    stored_bytes,
};

/// A Maildir tree on disk, one Maildir per mailbox.
#[derive(Debug)]
pub struct MaildirStore {
    /// Absolute and canonical, so the lexical "stays under the root" check is meaningful.
    root: PathBuf,
    /// Maildirs this store made or found whole (`tmp`, `new`, `cur`), so the next copy for
    /// the mailbox skips the six `mkdir` and six `stat` of `ensure_maildir`. Forgotten on
    /// any failure in it (a folder removed meanwhile is made again), and emptied when it
    /// reaches `READY_CACHE` entries, so memory does not grow with the mailboxes.
    ready: HashSet<PathBuf>,
}

/// How many maildirs `MaildirStore::ready` remembers at most (about 100 bytes each).
const READY_CACHE: usize = 4096;

impl MaildirStore {
    /// Opens the store at `root`, creating the directory if it is missing.
    pub fn new(root: &Path) -> Result<MaildirStore, StoreError> {
        fs::create_dir_all(root).map_err(|e| {
            root_error(
                &e,
                &format!("cannot create store root `{}`", root.display()),
            )
        })?;
        let root = fs::canonicalize(root).map_err(|e| {
            root_error(
                &e,
                &format!("cannot resolve store root `{}`", root.display()),
            )
        })?;
        Ok(MaildirStore {
            root,
            ready: HashSet::new(),
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store must still be a directory: an unmounted or removed store stops the run.
    fn check_root(&self) -> Result<(), StoreError> {
        let meta = fs::metadata(&self.root).map_err(|e| {
            root_error(
                &e,
                &format!("cannot reach store root `{}`", self.root.display()),
            )
        })?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "store root `{}` is not a directory",
                self.root.display()
            )))
        }
    }

    /// Delivers one copy for one checked recipient.
    fn deliver_one(
        &mut self,
        delivery: &Delivery<'_>,
        target: &Target,
    ) -> Result<Outcome, StoreError> {
        let maildir = self.maildir_path(target)?;
        match self.store_copy(delivery, target, &maildir) {
            Ok(outcome) => Ok(outcome),
            Err(Problem::Store(e)) => Err(e),
            Err(Problem::Mailbox(reply)) => Ok(Outcome::Deferred {
                reply: Answer::Local(reply),
                remote: None,
            }),
        }
    }

    /// `ROOT/<domain>/<local>/Maildir`, refused if it would leave the root.
    fn maildir_path(&self, target: &Target) -> Result<PathBuf, StoreError> {
        let path = self
            .root
            .join(&target.domain)
            .join(&target.local)
            .join("Maildir");
        if stays_under(&self.root, &path) {
            Ok(path)
        } else {
            // Unreachable after `check_recipient`; refusing the store is the safe answer.
            Err(StoreError::Unavailable(format!(
                "internal error: path for `{}` leaves the store root",
                sanitize::for_terminal(&target.given)
            )))
        }
    }

    fn store_copy(
        &mut self,
        delivery: &Delivery<'_>,
        target: &Target,
        maildir: &Path,
    ) -> Result<Outcome, Problem> {
        let known = self.ready.contains(maildir);
        if !known {
            self.ensure_maildir(maildir)?;
            if self.ready.len() >= READY_CACHE {
                self.ready.clear();
            }
            self.ready.insert(maildir.to_path_buf());
        }
        let copied = self.copy_into(delivery, target, maildir, known);
        if copied.is_err() {
            self.ready.remove(maildir);
        }
        copied
    }

    /// `store_copy` once the maildir exists (`known`: it was not checked for this copy).
    fn copy_into(
        &self,
        delivery: &Delivery<'_>,
        target: &Target,
        maildir: &Path,
        known: bool,
    ) -> Result<Outcome, Problem> {
        let bytes = stored_bytes(delivery.sender, &target.given, delivery.content);
        let name = file_name(delivery, target);
        let new_path = maildir.join("new").join(&name);
        if let Some(found) = self.find_copy(delivery, target, maildir, &name, bytes.len())? {
            return Ok(already_there(&found));
        }
        let tmp_path = maildir.join("tmp").join(&name);
        let mtime = arrival_time(delivery);
        match crate::durable::write_new_at(&tmp_path, &bytes, Some(mtime)) {
            Ok(()) => {}
            // A maildir remembered from an earlier copy was removed since: made again.
            Err(e) if known && e.source.kind() == ErrorKind::NotFound => {
                self.ensure_maildir(maildir)?;
                write_tmp(&tmp_path, &bytes, mtime)?;
            }
            Err(e) => return Err(io_problem(&e.source, e.action, &e.path)),
        }
        if let Err(e) = fs::rename(&tmp_path, &new_path) {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_problem(&e, "cannot move into", &new_path));
        }
        sync_dir(&maildir.join("new"))?;
        Ok(Outcome::Delivered {
            detail: new_path.display().to_string(),
            remote: None,
        })
    }

    /// A copy already made: under today's name, or under the name an earlier version gave
    /// it (in its folder, which differs for a non-ASCII domain); in `cur/` too when
    /// recovering.
    fn find_copy(
        &self,
        delivery: &Delivery<'_>,
        target: &Target,
        maildir: &Path,
        name: &str,
        size: usize,
    ) -> Result<Option<PathBuf>, Problem> {
        let legacy = legacy_file_name(delivery, target, size);
        let legacy_maildir = self
            .root
            .join(&target.legacy_domain)
            .join(&target.local)
            .join("Maildir");
        let mut places = vec![
            (maildir.to_path_buf(), name),
            (maildir.to_path_buf(), &legacy),
        ];
        if legacy_maildir != maildir && stays_under(&self.root, &legacy_maildir) {
            places.push((legacy_maildir, &legacy));
        }
        for (dir, name) in &places {
            let path = dir.join("new").join(name);
            if exists(&path)? {
                return Ok(Some(path));
            }
        }
        if delivery.recovering {
            for (dir, name) in &places {
                let cur = dir.join("cur");
                if (dir == maildir || exists(&cur)?)
                    && let Some(found) = find_in_cur(&cur, name)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Creates the domain, mailbox and Maildir folders as needed.
    fn ensure_maildir(&self, maildir: &Path) -> Result<(), Problem> {
        let Some(mailbox_dir) = maildir.parent() else {
            return Err(Problem::Mailbox(format!(
                "no parent for `{}`",
                maildir.display()
            )));
        };
        let Some(domain_dir) = mailbox_dir.parent() else {
            return Err(Problem::Mailbox(format!(
                "no parent for `{}`",
                mailbox_dir.display()
            )));
        };
        ensure_dir(domain_dir, true)?;
        ensure_dir(mailbox_dir, false)?;
        ensure_dir(maildir, false)?;
        for sub in ["tmp", "new", "cur"] {
            ensure_dir(&maildir.join(sub), false)?;
        }
        Ok(())
    }
}

impl Deliverer for MaildirStore {
    fn describe(&self) -> String {
        format!("maildir:{}", self.root.display())
    }

    /// The root is a folder we can write in (a probe file written, synced, removed): a
    /// read-only or full store is found before the first delivery, not at it.
    fn probe(&mut self) -> Result<(), StoreError> {
        self.check_root()?;
        // A run killed while probing (kill -9, power loss) leaves its probe behind; remove
        // those of processes that are gone, so the store holds nothing of ours but mail.
        remove_stale_probes(&self.root);
        // Unique per call: workers of one process may probe at the same time.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = self
            .root
            .join(format!("{PROBE_PREFIX}{}-{n}", std::process::id()));
        let written = (|| -> io::Result<()> {
            // Exclusive and private: never through a link planted at the name.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&probe)?;
            f.write_all(b"probe\n")?;
            f.sync_all()?;
            fs::remove_file(&probe)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&probe);
            root_error(
                &e,
                &format!("cannot write in store root `{}`", self.root.display()),
            )
        })
    }

    /// Names are deterministic, so a copy made before a crash can be found.
    fn verifiable(&self) -> bool {
        true
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.check_root()?;
        if let Some(reply) = check_sender(delivery.sender) {
            let refused = Outcome::Failed {
                reply: Answer::Local(reply),
                status: "5.1.7".to_string(),
                remote: None,
            };
            return Ok(vec![refused; recipients.len()]);
        }
        // A recipient listed twice gets one copy; the repeat reports what the first got.
        let mut seen: HashMap<String, Outcome> = HashMap::new();
        let mut outcomes = Vec::with_capacity(recipients.len());
        for spec in recipients {
            let raw = spec.address;
            let target = match check_recipient(raw) {
                Ok(target) => target,
                Err(reason) => {
                    outcomes.push(refused(raw, &reason));
                    continue;
                }
            };
            let key = target.key();
            if let Some(first) = seen.get(&key) {
                outcomes.push(repeat_of(first));
                continue;
            }
            let outcome = self.deliver_one(delivery, &target)?;
            seen.insert(key, outcome.clone());
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

/// What went wrong with one copy: the whole store, or just this mailbox.
#[derive(Debug)]
enum Problem {
    Store(StoreError),
    Mailbox(String),
}

/// What a repeated recipient reports: the first copy's outcome, never a second copy.
fn repeat_of(first: &Outcome) -> Outcome {
    match first {
        Outcome::Delivered { detail, .. } | Outcome::AlreadyThere { detail } => {
            Outcome::AlreadyThere {
                detail: detail.clone(),
            }
        }
        other => other.clone(),
    }
}

fn already_there(path: &Path) -> Outcome {
    Outcome::AlreadyThere {
        detail: path.display().to_string(),
    }
}

/// Looks in `cur/` for `NAME` with flags (`NAME:2,S`) or more Dovecot fields (`NAME,W=…`).
fn find_in_cur(cur: &Path, name: &str) -> Result<Option<PathBuf>, Problem> {
    let entries = fs::read_dir(cur).map_err(|e| io_problem(&e, "cannot list", cur))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_problem(&e, "cannot list", cur))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Some(rest) = file_name.strip_prefix(name)
            && (rest.is_empty() || rest.starts_with(':') || rest.starts_with(','))
        {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// The message's arrival as a file time: IMAP servers reading a Maildir (Dovecot) show a
/// file's modification time as its INTERNALDATE, the date mail clients sort by.
fn arrival_time(delivery: &Delivery<'_>) -> SystemTime {
    let at = delivery.arrival;
    let secs = at.timestamp();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, at.timestamp_subsec_nanos().min(999_999_999)),
        // Before 1970: screened out at ingest; the epoch is the nearest honest time.
        Err(_) => UNIX_EPOCH,
    }
}

/// Writes and fsyncs `tmp/NAME` (exclusively, mode 0600, with `mtime`), replacing a
/// leftover from a crashed run; removes it again if anything fails.
fn write_tmp(path: &Path, bytes: &[u8], mtime: SystemTime) -> Result<(), Problem> {
    crate::durable::write_new_at(path, bytes, Some(mtime))
        .map_err(|e| io_problem(&e.source, e.action, &e.path))
}

/// Makes sure `path` is a directory, creating it (and fsyncing its parent) if missing.
/// `at_root` marks the root's direct children, where failure means the store is broken.
fn ensure_dir(path: &Path, at_root: bool) -> Result<(), Problem> {
    match fs::create_dir(path) {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(Problem::Mailbox(format!(
                "`{}` exists but is not a directory",
                path.display()
            ))),
            Err(e) => Err(io_problem(&e, "cannot inspect", path)),
        },
        Err(e) if at_root && !is_full(&e) => Err(Problem::Store(StoreError::Unavailable(format!(
            "cannot create `{}`: {e}",
            path.display()
        )))),
        Err(e) => Err(io_problem(&e, "cannot create", path)),
    }
}

/// True when `path` exists (a dangling symlink counts: it still blocks the name).
fn exists(path: &Path) -> Result<bool, Problem> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_problem(&e, "cannot inspect", path)),
    }
}

/// Makes a directory's entries (a rename, a new subdirectory) durable.
fn sync_dir(dir: &Path) -> Result<(), Problem> {
    crate::durable::sync_dir(dir).map_err(|e| io_problem(&e, "cannot sync directory", dir))
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// Sorts an IO error on a mailbox path: a full disk or read-only filesystem stops the run,
/// anything else defers this mailbox only.
fn io_problem(e: &io::Error, action: &str, path: &Path) -> Problem {
    let message = format!("{action} `{}`: {e}", path.display());
    if is_full(e) {
        Problem::Store(StoreError::Full(message))
    } else if e.kind() == ErrorKind::ReadOnlyFilesystem {
        Problem::Store(StoreError::Unavailable(message))
    } else {
        Problem::Mailbox(message)
    }
}

/// Sorts an IO error on the root itself: only a full disk is not "unavailable".
fn root_error(e: &io::Error, context: &str) -> StoreError {
    let message = format!("{context}: {e}");
    if is_full(e) {
        StoreError::Full(message)
    } else {
        StoreError::Unavailable(message)
    }
}

/// The name of a probe file, followed by the writing process's pid and a counter.
const PROBE_PREFIX: &str = ".spoolreplay-probe-";

/// Removes probe files whose writer is no longer running (`kill(pid, 0)` fails with ESRCH).
/// A live process's probe is left alone: another run may share the store.
fn remove_stale_probes(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PROBE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether `pid` exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_left_by_a_killed_run_is_removed_and_a_live_one_kept() {
        let root = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = root.path().join(format!("{PROBE_PREFIX}{dead}-0"));
        let live = root
            .path()
            .join(format!("{PROBE_PREFIX}{}-999", std::process::id()));
        fs::write(&stale, b"probe\n").unwrap();
        fs::write(&live, b"probe\n").unwrap();
        let mut store = MaildirStore::new(root.path()).unwrap();
        store.probe().unwrap();
        assert!(!stale.exists(), "the dead run's probe is still there");
        assert!(live.exists(), "a live process's probe was removed");
    }

    #[test]
    fn copies_carry_the_arrival_as_mtime_also_when_written_again() {
        let root = tempfile::tempdir().unwrap();
        let mut store = MaildirStore::new(root.path()).unwrap();
        let sender = crate::address::ReversePath::Address("s@x.test".into());
        let d = Delivery::new(
            "0123abcd",
            &sender,
            b"Subject: x\r\n\r\nbody\r\n",
            chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:07+01:00").unwrap(),
        );
        let rcpt = [RecipientSpec::plain("bob@example.net")];
        let path = |o: &Outcome| match o {
            Outcome::Delivered { detail, .. } => PathBuf::from(detail),
            other => panic!("not delivered: {other:?}"),
        };
        let first = path(&store.deliver(&d, &rcpt).unwrap()[0]);
        let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let want = UNIX_EPOCH + Duration::from_secs(1_674_464_407);
        assert_eq!(mtime(&first), want);
        // A crash lost the copy (a restore from backup, say): written again, same date.
        fs::remove_file(&first).unwrap();
        let again = path(&store.deliver(&d, &rcpt).unwrap()[0]);
        assert_eq!(again, first);
        assert_eq!(mtime(&again), want);
    }

    #[test]
    fn a_maildir_removed_during_the_run_is_made_again() {
        let root = tempfile::tempdir().unwrap();
        let mut store = MaildirStore::new(root.path()).unwrap();
        let sender = crate::address::ReversePath::Address("s@x.test".into());
        let at = chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:07+01:00").unwrap();
        let rcpt = [RecipientSpec::plain("bob@example.net")];
        let maildir = root.path().join("example.net/bob/Maildir");
        let mut send = |key: &str| {
            let d = Delivery::new(key, &sender, b"Subject: x\r\n\r\nbody\r\n", at);
            store.deliver(&d, &rcpt).unwrap().remove(0)
        };
        assert!(matches!(send("k1"), Outcome::Delivered { .. }));
        // The whole maildir goes: the remembered one is made again for the next copy.
        fs::remove_dir_all(&maildir).unwrap();
        assert!(matches!(send("k2"), Outcome::Delivered { .. }));
        // Only `new/` goes: that copy is deferred, the next one finds the folder made.
        fs::remove_dir_all(maildir.join("new")).unwrap();
        assert!(matches!(send("k3"), Outcome::Deferred { .. }));
        assert!(matches!(send("k3"), Outcome::Delivered { .. }));
        let copies = fs::read_dir(maildir.join("new")).unwrap().count();
        assert_eq!(copies, 1, "k3's copy alone is in the new `new/`");
        assert!(fs::read_dir(maildir.join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn full_disk_and_quota_stop_the_run() {
        let path = Path::new("/srv/mail/x/new/n");
        for kind in [ErrorKind::StorageFull, ErrorKind::QuotaExceeded] {
            match io_problem(&io::Error::from(kind), "cannot write", path) {
                Problem::Store(StoreError::Full(m)) => assert!(m.contains("/srv/mail/x/new/n")),
                other => panic!("{kind:?} gave {other:?}"),
            }
        }
        // ENOSPC and EDQUOT as the Linux kernel reports them.
        #[cfg(target_os = "linux")]
        for errno in [28, 122] {
            assert!(matches!(
                io_problem(&io::Error::from_raw_os_error(errno), "cannot write", path),
                Problem::Store(StoreError::Full(_))
            ));
        }
        assert!(matches!(
            io_problem(
                &io::Error::from(ErrorKind::ReadOnlyFilesystem),
                "cannot write",
                path
            ),
            Problem::Store(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            io_problem(&io::Error::from(ErrorKind::PermissionDenied), "cannot write", path),
            Problem::Mailbox(m) if m.contains("/srv/mail/x/new/n")
        ));
        assert!(matches!(
            root_error(&io::Error::from(ErrorKind::StorageFull), "cannot create"),
            StoreError::Full(_)
        ));
    }
}
