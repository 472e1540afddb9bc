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

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::address::{Mailbox, ReversePath};
use crate::{line_ends, sanitize};

/// Longest local part RFC 5321 (4.5.3.1.1) allows.
const MAX_LOCAL_OCTETS: usize = 64;
/// Longest domain RFC 5321 (4.5.3.1.2) allows, which is also the usual file name limit.
const MAX_DOMAIN_OCTETS: usize = 255;
/// How much of a refused address the reply quotes.
const MAX_QUOTED_CHARS: usize = 80;

/// A Maildir tree on disk, one Maildir per mailbox.
#[derive(Debug)]
pub struct MaildirStore {
    /// Absolute and canonical, so the lexical "stays under the root" check is meaningful.
    root: PathBuf,
}

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
        Ok(MaildirStore { root })
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
    fn deliver_one(&self, delivery: &Delivery<'_>, target: &Target) -> Result<Outcome, StoreError> {
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
        &self,
        delivery: &Delivery<'_>,
        target: &Target,
        maildir: &Path,
    ) -> Result<Outcome, Problem> {
        self.ensure_maildir(maildir)?;
        let bytes = stored_bytes(delivery.sender, &target.given, delivery.content);
        let name = file_name(delivery, target);
        let new_path = maildir.join("new").join(&name);
        if let Some(found) = self.find_copy(delivery, target, maildir, &name, bytes.len())? {
            return Ok(already_there(&found));
        }
        let tmp_path = maildir.join("tmp").join(&name);
        write_tmp(&tmp_path, &bytes, arrival_time(delivery))?;
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

/// A recipient whose parts are safe to use as path components.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The address as the envelope gave it (brackets and spaces dropped, case kept).
    given: String,
    /// Canonical local part (`Mailbox::canonical_local`): the mailbox folder name.
    local: String,
    /// Canonical domain (IDNA, case-folded): the domain folder name.
    domain: String,
    /// The domain folder versions before IDNA normalisation used (ASCII-lowercased only),
    /// where a copy from such a version may be.
    legacy_domain: String,
}

impl Target {
    /// The canonical mailbox: what the file name hash and duplicate check use.
    fn key(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// What went wrong with one copy: the whole store, or just this mailbox.
#[derive(Debug)]
enum Problem {
    Store(StoreError),
    Mailbox(String),
}

/// Checks an untrusted recipient for use as a path; the error is a reason for the reply.
fn check_recipient(raw: &str) -> Result<Target, String> {
    // Before parsing: `Mailbox::parse` trims, which would hide a trailing CRLF.
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "address contains the control character {}",
            sanitize::for_terminal(&c.to_string())
        ));
    }
    let mailbox = Mailbox::parse(raw).map_err(|e| match e {
        crate::address::AddressError::Empty => "address is empty".to_string(),
        crate::address::AddressError::NoDomain(_) => "address has no `@domain`".to_string(),
        crate::address::AddressError::EmptyLocal(_) => "local part is empty".to_string(),
    })?;
    // A quoted local part (`"john doe"@x`) names the mailbox `john doe`: the quotes are
    // syntax, not part of the name (RFC 5321 4.1.2), so they do not go into the folder.
    let local = mailbox.canonical_local();
    check_path_part("local part", &local)?;
    if mailbox.local.len() > MAX_LOCAL_OCTETS {
        return Err(format!(
            "local part is {} octets, more than the {MAX_LOCAL_OCTETS} RFC 5321 allows",
            mailbox.local.len()
        ));
    }
    // The form that becomes the folder is the one checked: IDNA maps some characters
    // (a full-width solidus becomes `/`).
    check_path_part("domain", &mailbox.domain)?;
    let domain = mailbox.canonical_domain();
    check_path_part("domain", &domain)?;
    check_domain(&domain)?;
    Ok(Target {
        given: mailbox.to_string(),
        local,
        legacy_domain: mailbox.domain.to_ascii_lowercase(),
        domain,
    })
}

/// Rules that keep one part a single, ordinary path component.
fn check_path_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if part == "." || part == ".." {
        return Err(format!(
            "{what} `{part}` would name a directory outside the mailbox"
        ));
    }
    if let Some(c) = part.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(format!("{what} contains `{c}`, a path separator"));
    }
    if let Some(c) = part.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} contains the control character {}",
            sanitize::for_terminal(&c.to_string())
        ));
    }
    if part.len() > MAX_DOMAIN_OCTETS {
        return Err(format!(
            "{what} is {} octets, more than a file name may hold ({MAX_DOMAIN_OCTETS})",
            part.len()
        ));
    }
    Ok(())
}

/// Letters, digits, `-` and `.` (non-ASCII allowed for IDN), with no empty label.
fn check_domain(domain: &str) -> Result<(), String> {
    if let Some(c) = domain
        .chars()
        .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "domain contains `{c}`, which no domain name may hold"
        ));
    }
    if domain.split('.').any(str::is_empty) {
        return Err(format!(
            "domain `{}` has an empty label",
            sanitize::for_terminal(domain)
        ));
    }
    Ok(())
}

/// The sender goes into a header: refuse anything that could break it.
fn check_sender(sender: &ReversePath) -> Option<String> {
    let address = sender.as_str();
    address.chars().find(|c| c.is_control()).map(|c| {
        format!(
            "sender `{}` contains the control character {}",
            quoted(address),
            sanitize::for_terminal(&c.to_string())
        )
    })
}

fn refused(raw: &str, reason: &str) -> Outcome {
    Outcome::Failed {
        reply: Answer::Local(format!("recipient `{}` refused: {reason}", quoted(raw))),
        status: "5.1.3".to_string(),
        remote: None,
    }
}

/// An address safe to put in a reply: sanitized and cut short.
fn quoted(raw: &str) -> String {
    let clean = sanitize::for_terminal(raw).into_owned();
    if clean.chars().count() <= MAX_QUOTED_CHARS {
        clean
    } else {
        let cut: String = clean.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{cut}…")
    }
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

/// The bytes stored: delivery headers, then the message with LF line ends (`line_ends`).
fn stored_bytes(sender: &ReversePath, recipient: &str, content: &[u8]) -> Vec<u8> {
    let header = format!("Return-Path: {sender}\nDelivered-To: {recipient}\n");
    let body = line_ends::to_lf(content);
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// `M{hash}.spoolreplay`: a function of the message key (content hash) and the canonical
/// mailbox only, the same in every run and from every spool that holds these bytes.
fn file_name(delivery: &Delivery<'_>, target: &Target) -> String {
    format!(
        "M{}.spoolreplay",
        name_hash(delivery.message_key, &target.key())
    )
}

/// The name versions before canonical mailboxes gave a copy, kept so that a crash
/// recovery of their in-flight work finds it: `{arrival secs}.M{hash}.spoolreplay,S={size}`
/// with the hash over the mailbox as they lowercased it (quotes undone, ASCII only) and
/// `size` the stored bytes. Can go once no ledger of those versions is left in flight.
fn legacy_file_name(delivery: &Delivery<'_>, target: &Target, size: usize) -> String {
    let key = format!("{}@{}", target.local, target.legacy_domain);
    let hex = name_hash(delivery.message_key, &key);
    let secs = delivery.arrival.timestamp().max(0);
    format!("{secs}.M{hex}.spoolreplay,S={size}")
}

/// The first 32 hex digits of SHA-256 over `message_key`, a NUL and `mailbox`.
pub(crate) fn name_hash(message_key: &str, mailbox: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(message_key.as_bytes());
    hasher.update([0u8]);
    hasher.update(mailbox.as_bytes());
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
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
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Problem> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_problem(&e, "cannot sync directory", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Problem> {
    Ok(())
}

/// Lexically: `path` is `root` followed only by plain names (no `..`, no root, no prefix).
fn stays_under(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
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

    #[track_caller]
    fn refused_because(raw: &str, reason: &str) {
        match check_recipient(raw) {
            Ok(t) => panic!("{raw:?} accepted as {t:?}"),
            Err(e) => assert!(e.contains(reason), "{raw:?}: {e}"),
        }
    }

    #[test]
    fn quoted_local_parts_lose_their_quotes_in_the_path() {
        let t = check_recipient("\"John Doe\"@Example.TEST").unwrap();
        assert_eq!(
            (t.local.as_str(), t.domain.as_str()),
            ("john doe", "example.test")
        );
        assert_eq!(crate::address::unquote_local("\"a\\\"b\""), "a\"b");
        assert_eq!(crate::address::unquote_local("plain"), "plain");
        assert_eq!(crate::address::unquote_local("\""), "\"");
        // Unquoting must not open a way out of the store.
        assert!(check_recipient("\"../x\"@example.test").is_err());
        assert!(check_recipient("\"..\"@example.test").is_err());
        assert!(check_recipient("\"a\\/b\"@example.test").is_err());
    }

    #[test]
    fn ordinary_addresses_are_lowercased_for_the_path() {
        let t = check_recipient("<Alice.Smith@Example.NET>").unwrap();
        assert_eq!(t.given, "Alice.Smith@Example.NET");
        assert_eq!(t.local, "alice.smith");
        assert_eq!(t.domain, "example.net");
        let idn = check_recipient("Jörg@Bücher.example").unwrap();
        assert_eq!(idn.local, "jörg");
        assert_eq!(idn.domain, "bücher.example");
        assert!(check_recipient(&format!("{}@x.test", "a".repeat(64))).is_ok());
    }

    #[test]
    fn idn_domains_share_one_folder() {
        let folder = |raw: &str| check_recipient(raw).unwrap().domain;
        assert_eq!(folder("a@EXÄMPLE.NET"), "exämple.net");
        assert_eq!(folder("a@exämple.net"), "exämple.net");
        assert_eq!(folder("a@xn--exmple-cua.net"), "exämple.net");
        assert_eq!(folder("a@Xn--Exmple-Cua.Net"), "exämple.net");
        // IDNA maps a full-width solidus to `/`: the mapped form is what is checked.
        refused_because("a@x\u{ff0f}y.test", "path separator");
    }

    fn delivery<'a>(sender: &'a ReversePath, arrival: &str) -> Delivery<'a> {
        Delivery::new(
            "0123abcd",
            sender,
            b"Subject: x\r\n\r\nbody\r\n",
            chrono::DateTime::parse_from_rfc3339(arrival).unwrap(),
        )
    }

    #[test]
    fn file_names_depend_on_content_and_mailbox_only() {
        let sender = ReversePath::Address("s@x.test".into());
        let one = delivery(&sender, "2023-01-23T10:00:00Z");
        let other_host = delivery(&sender, "2023-01-23T10:07:00+02:00");
        let names: Vec<String> = [
            (&one, "Bob@Example.NET"),
            (&other_host, "bob@example.net"),
            (&one, "\"bob\"@EXAMPLE.net"),
        ]
        .iter()
        .map(|(d, rcpt)| file_name(d, &check_recipient(rcpt).unwrap()))
        .collect();
        assert_eq!(names[0], names[1]);
        assert_eq!(names[0], names[2]);
        assert!(
            names[0].starts_with('M') && names[0].ends_with(".spoolreplay"),
            "{}",
            names[0]
        );
        let carol = file_name(&one, &check_recipient("carol@example.net").unwrap());
        assert_ne!(names[0], carol, "another mailbox, another name");
        // The name older versions gave: arrival, ASCII-lowercased mailbox, stored size.
        assert_eq!(
            legacy_file_name(&one, &check_recipient("Bob@Example.NET").unwrap(), 99),
            format!(
                "1674468000.M{}.spoolreplay,S=99",
                name_hash("0123abcd", "bob@example.net")
            )
        );
    }

    #[test]
    fn copies_carry_the_arrival_as_mtime_also_when_written_again() {
        let root = tempfile::tempdir().unwrap();
        let mut store = MaildirStore::new(root.path()).unwrap();
        let sender = ReversePath::Address("s@x.test".into());
        let d = delivery(&sender, "2023-01-23T10:00:07+01:00");
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
    fn unsafe_addresses_are_refused_with_a_reason() {
        refused_because("../../etc/passwd@example.net", "path separator");
        refused_because("a/b@x", "`/`, a path separator");
        refused_because("a\\b@x", "`\\`, a path separator");
        refused_because("..@x", "`..` would name a directory");
        refused_because(".@x", "`.` would name a directory");
        refused_because("x@..", "domain `..`");
        refused_because("x@.", "domain `.`");
        refused_because("x@a/b", "domain contains `/`");
        refused_because("x\0y@x", "control character \\x00");
        refused_because("x\x1b[2J@x", "control character \\x1b");
        refused_because("x@x\r\n", "control character \\r");
        refused_because("x\x7f@x", "control character \\x7f");
        refused_because("x\u{85}@x", "control character \\u{85}");
        refused_because("nobody", "no `@domain`");
        refused_because("@x", "local part is empty");
        refused_because("x@", "no `@domain`");
        refused_because("", "empty");
        refused_because(
            &format!("{}@x", "a".repeat(65)),
            "65 octets, more than the 64",
        );
        refused_because(
            &format!("x@{}", "a".repeat(256)),
            "256 octets, more than a file name",
        );
        refused_because("x@exa_mple.net", "domain contains `_`");
        refused_because("x@[192.0.2.1]", "domain contains `[`");
        refused_because("x@a..b", "empty label");
        refused_because("x@.a", "empty label");
        refused_because("x@a.", "empty label");
    }

    #[test]
    fn refusal_reply_is_safe_to_print() {
        let Outcome::Failed { reply, status, .. } = refused("\x1b]0;pwned\x07@x", "because") else {
            panic!("not a failure");
        };
        assert_eq!(status, "5.1.3");
        let reply = reply.to_string();
        assert!(!reply.chars().any(char::is_control), "{reply:?}");
        let Outcome::Failed { reply, .. } = refused(&"a".repeat(300), "because") else {
            panic!("not a failure");
        };
        let reply = reply.to_string();
        assert!(reply.chars().count() < 150, "{reply}");
        assert!(reply.contains('…'));
    }

    #[test]
    fn crlf_becomes_lf_and_lone_cr_stays() {
        let sender = ReversePath::Address("s@x.test".into());
        let got = stored_bytes(&sender, "R@y.test", b"A: 1\r\n\r\nbody\rx\r\n\n");
        assert_eq!(
            got,
            b"Return-Path: <s@x.test>\nDelivered-To: R@y.test\nA: 1\n\nbody\rx\n\n".to_vec()
        );
        let kept = stored_bytes(&sender, "r@y", b"A: 1\r\n\r\nx\r\r\ny\r\r\r\n");
        assert_eq!(
            kept,
            b"Return-Path: <s@x.test>\nDelivered-To: r@y\nA: 1\n\nx\r\ny\r\r\n".to_vec(),
            "only the CR of each CRLF goes"
        );
    }

    #[test]
    fn classic_mac_mail_is_stored_as_lines() {
        let got = stored_bytes(&ReversePath::Null, "r@y", b"A: 1\rB: 2\r\rbody\r");
        assert_eq!(
            got,
            b"Return-Path: <>\nDelivered-To: r@y\nA: 1\nB: 2\n\nbody\n".to_vec()
        );
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

    #[test]
    fn lexical_check_catches_escapes() {
        let root = Path::new("/srv/mail");
        assert!(stays_under(root, Path::new("/srv/mail/x/y/Maildir")));
        assert!(!stays_under(root, Path::new("/srv/mail/x/../../etc")));
        assert!(!stays_under(root, Path::new("/srv/mailx/y")));
        assert!(!stays_under(root, Path::new("/etc/passwd")));
        // What a careless `join` of an absolute part does: it replaces the whole path.
        #[expect(clippy::join_absolute_paths, reason = "the hazard under test")]
        let replaced = root.join("x").join("/etc");
        assert!(!stays_under(root, &replaced));
    }
}
