//! Reader for Postfix queue directories: the queue files in `active/`, `deferred/`,
//! `hold/`, `incoming/` and `maildrop/`.
//!
//! The spool is a queue root (a folder with any of those five subfolders, like
//! `/var/spool/postfix`) or one of those folders itself. Queues are read in that
//! (alphabetical) order, and each queue's hashed subfolders, of any depth, in sorted path
//! order; only one folder's names are held at a time. Other folders (`defer/` and
//! `bounce/` hold logs, `trace/`, `flush/`, `saved/`, `corrupt/` …) are not read. Symbolic
//! links are never followed: they are quarantined, so nothing outside the spool is read.
//!
//! A file in `incoming/` or `maildrop/` without its owner-execute bit is still being
//! written by Postfix: it is quarantined as incomplete, and a later ingest, once the file
//! is complete, picks it up. The queue id is the file name; `hold/` mail is MTA-held.
//!
//! The shard key is the queue id, so a message that Postfix moves between queues (from
//! `deferred/` to `active/`, or into `hold/`) stays in its shard. Folders that cannot be
//! walked have no key (see `shard`). Entries are looked at (by the type their folder's listing
//! gives), never opened, before their shard is known.

mod queue_file;
mod record;

use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use queue_file::{QueueFile, quote_address};
pub use record::Malformed;

use super::{
    Envelope, FieldSource, Quarantined, QueuedMessage, Selection, SourceRef, SpoolError,
    SpoolFormat, SpoolItem,
};

/// The queues holding mail still to deliver, in reading order.
pub const QUEUES: [&str; 5] = ["active", "deferred", "hold", "incoming", "maildrop"];

/// Hashed queue folders are one or two levels deep; anything deeper is not Postfix's.
const MAX_DEPTH: usize = 8;

const INCOMPLETE: &str = "incomplete: still being written by Postfix (no owner-execute bit)";

/// Whether `dir` is a Postfix queue root (has any of the queue subfolders) or one queue
/// folder (named like one, holding a file that starts like a queue file).
pub fn looks_like_queue(dir: &Path) -> bool {
    if QUEUES.iter().any(|q| is_real_dir(&dir.join(q))) {
        return true;
    }
    queue_name_of(dir).is_some() && holds_queue_file(dir, 0)
}

/// Lists the queues under `path`; files are read as the iterator advances.
pub fn read(path: &Path) -> Result<PostfixReader, SpoolError> {
    read_selected(path, Selection::all())
}

/// Like `read`, yielding only the items `selection` takes.
pub fn read_selected(path: &Path, selection: Selection) -> Result<PostfixReader, SpoolError> {
    let root = std::path::absolute(path).map_err(|source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut queues: Vec<(String, PathBuf)> = QUEUES
        .iter()
        .map(|q| (q.to_string(), root.join(q)))
        .filter(|(_, dir)| dir.symlink_metadata().is_ok())
        .collect();
    if queues.is_empty() {
        match queue_name_of(&root) {
            Some(name) if root.is_dir() => queues.push((name, root.clone())),
            _ => {
                return Err(SpoolError::Unrecognized {
                    path: path.to_path_buf(),
                    why: "a Postfix queue needs an `active/`, `deferred/`, `hold/`, `incoming/` \
                          or `maildrop/` folder"
                        .into(),
                });
            }
        }
    }
    queues.reverse();
    Ok(PostfixReader {
        queues,
        current: None,
        selection,
    })
}

/// Reads a message's content again, exactly as `read` produced it.
pub fn read_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    let (file, metadata) = super::open_regular(&source.path)?;
    let len = metadata.len();
    queue_file::parse(BufReader::new(file.take(len)), len)
        .map(|q| q.content)
        .map_err(|Malformed(reason)| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("queue file `{}`: {reason}", source.path.display()),
            )
        })
}

/// Parses a queue file held in memory (for tests and tools; `read` streams from disk).
pub fn parse_queue_file(bytes: &[u8]) -> Result<QueueFile, Malformed> {
    queue_file::parse(std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Reads one queue file, listed as a regular file, into a spool item.
fn read_file(path: &Path, queue: &str) -> SpoolItem {
    let source = |len: u64| SourceRef {
        format: SpoolFormat::Postfix,
        path: path.to_path_buf(),
        offset: 0,
        len,
    };
    let quarantine = |len: u64, reason: String| {
        SpoolItem::Quarantined(Quarantined {
            source: source(len),
            reason,
        })
    };
    // Non-blocking and without following links: the walk saw a regular file, but it may
    // have been swapped since.
    let (file, metadata) = match super::file::open_listed(path) {
        Ok(opened) => opened,
        Err(super::FileError::Io(e)) => {
            return quarantine(0, format!("cannot open queue file: {e}"));
        }
        Err(e) => return quarantine(0, e.to_string()),
    };
    let len = metadata.len();
    if matches!(queue, "incoming" | "maildrop") && metadata.permissions().mode() & 0o100 == 0 {
        return quarantine(len, INCOMPLETE.into());
    }
    if len == 0 {
        return quarantine(0, "file is empty".into());
    }
    match queue_file::parse(BufReader::new(file.take(len)), len) {
        Ok(parsed) => SpoolItem::Message(QueuedMessage {
            source: source(len),
            queue_id: file_name(path),
            envelope: Envelope {
                sender: parsed.sender,
                sender_from: FieldSource::QueueFile,
                recipients: parsed.recipients,
                recipients_from: FieldSource::QueueFile,
                arrival: parsed.arrival,
                arrival_from: FieldSource::QueueFile,
                envid: parsed.envid,
                ret: parsed.ret,
            },
            content: parsed.content,
            file_time: super::envelope::file_time(&metadata),
            queue_name: Some(queue.to_string()),
            mta_hold: queue == "hold",
        }),
        Err(Malformed(reason)) => quarantine(len, reason),
    }
}

/// Streams the queue files of one Postfix spool, queue by queue.
pub struct PostfixReader {
    /// Queues still to read, the next one last.
    queues: Vec<(String, PathBuf)>,
    current: Option<QueueWalk>,
    selection: Selection,
}

impl Iterator for PostfixReader {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        loop {
            if let Some(walk) = &mut self.current {
                if let Some(item) = walk.next() {
                    return Some(item);
                }
                self.current = None;
            }
            let (name, dir) = self.queues.pop()?;
            self.current = Some(QueueWalk::new(name, dir, self.selection.clone()));
        }
    }
}

/// A depth-first walk of one queue folder in sorted order.
struct QueueWalk {
    queue: String,
    /// Per open folder level, its entries not yet visited, the next one last.
    stack: Vec<Vec<Listed>>,
    /// Set when the queue folder itself cannot be walked.
    pending: Option<SpoolItem>,
    selection: Selection,
}

impl QueueWalk {
    fn new(queue: String, dir: PathBuf, selection: Selection) -> QueueWalk {
        let mut walk = QueueWalk {
            queue,
            stack: Vec::new(),
            pending: None,
            selection,
        };
        match dir.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                walk.pending = walk.keyless(&dir, "symbolic link: not followed");
            }
            _ => walk.pending = walk.enter(&dir),
        }
        walk
    }

    /// Pushes `dir`'s sorted entries; a folder that cannot be listed becomes an item.
    fn enter(&mut self, dir: &Path) -> Option<SpoolItem> {
        match listed_entries(dir) {
            Ok(mut entries) => {
                entries.reverse();
                self.stack.push(entries);
                None
            }
            Err(e) => self.keyless(dir, &format!("cannot list folder: {e}")),
        }
    }

    /// A folder problem: no queue id to shard on, so shard 1 reports it.
    fn keyless(&self, path: &Path, reason: &str) -> Option<SpoolItem> {
        self.selection
            .takes_keyless()
            .then(|| quarantine_path(path, reason))
    }

    /// The item at a (non-folder) `path`, when its queue id falls in this shard.
    fn keyed(&self, path: &Path, item: impl FnOnce() -> SpoolItem) -> Option<SpoolItem> {
        self.selection.takes(&file_name(path)).then(item)
    }
}

impl Iterator for QueueWalk {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        if let Some(item) = self.pending.take() {
            return Some(item);
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some(Listed { path, kind }) = top.pop() else {
                self.stack.pop();
                continue;
            };
            let item = match kind {
                // Gone since the folder was listed (Postfix moved it): nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => self.keyed(&path, || {
                    quarantine_path(&path, &format!("cannot read: {e}"))
                }),
                Ok(t) if t.is_symlink() => self.keyed(&path, || {
                    quarantine_path(&path, "symbolic link: not followed")
                }),
                Ok(t) if t.is_dir() && self.stack.len() >= MAX_DEPTH => {
                    self.keyless(&path, "folder nested too deep for a queue")
                }
                Ok(t) if t.is_dir() => self.enter(&path),
                Ok(t) if !t.is_file() => {
                    self.keyed(&path, || quarantine_path(&path, "not a regular file"))
                }
                Ok(_) => self.keyed(&path, || read_file(&path, &self.queue)),
            };
            if item.is_some() {
                return item;
            }
        }
    }
}

/// A folder entry as its listing gave it: the type comes from `getdents` (`d_type`), so
/// looking at an entry costs no `lstat` (one per message was a tenth of a 1M-message
/// ingest's time); a file system that does not give types makes std fall back to `lstat`.
struct Listed {
    path: PathBuf,
    kind: std::io::Result<std::fs::FileType>,
}

/// `dir`'s entries in sorted path order. They share their parent, so comparing the paths'
/// bytes orders them by name, as comparing them component by component would, for less.
fn listed_entries(dir: &Path) -> std::io::Result<Vec<Listed>> {
    use std::os::unix::ffi::OsStrExt;
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| {
            e.map(|e| Listed {
                path: e.path(),
                kind: e.file_type(),
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_unstable_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(entries)
}

fn quarantine_path(path: &Path, reason: &str) -> SpoolItem {
    SpoolItem::Quarantined(Quarantined {
        source: SourceRef {
            format: SpoolFormat::Postfix,
            path: path.to_path_buf(),
            offset: 0,
            len: 0,
        },
        reason: reason.to_string(),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The queue `dir` is, by its name.
fn queue_name_of(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    QUEUES.contains(&name).then(|| name.to_string())
}

fn is_real_dir(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| m.is_dir())
}

/// Whether `dir` (or a hash folder below it) holds a file starting with `C` or `T`.
fn holds_queue_file(dir: &Path, depth: usize) -> bool {
    if depth > 2 {
        return false;
    }
    let Ok(entries) = listed_entries(dir) else {
        return false;
    };
    entries.iter().any(|e| match &e.kind {
        Ok(t) if t.is_dir() => holds_queue_file(&e.path, depth + 1),
        Ok(t) if t.is_file() => starts_like_queue_file(&e.path),
        _ => false,
    })
}

fn starts_like_queue_file(path: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 1];
    super::open_regular(path)
        .ok()
        .and_then(|(mut f, _)| f.read_exact(&mut first).ok())
        .is_some_and(|()| matches!(first[0], b'C' | b'T'))
}
