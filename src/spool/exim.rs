//! Reader for Exim spools: each message is an `<id>-H` file (envelope and headers) and an
//! `<id>-D` file (body) in `input/`, flat or split into one-character folders.
//!
//! The message is rebuilt as it would go on the wire: the header lines not flagged `*`
//! (deleted, e.g. a `-t` submission's `Bcc:`), a blank line, then the body, with CRLF line
//! ends throughout (Exim stores LF, or CRLF with `-spool_file_wireformat`). Recipients in
//! the non-recipients tree or in a `-J` journal (left by an interrupted delivery) were
//! delivered by Exim: they are recorded as `Prior::Delivered`, never replayed. Files are
//! read in message-id order, one message at a time; only the list of `-H` names is
//! collected, 32 bytes a message (`Named`).
//!
//! The shard key is the message id (the file name without `-H` or `-D`), the same whether
//! the spool is flat or split. A split folder that cannot be listed has no key.

mod header;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};

use self::header::{HeaderLine, SpoolHeader};
use super::{
    Envelope, FieldSource, Prior, Quarantined, QueuedMessage, Recipient, Selection, SourceRef,
    SpoolError, SpoolFormat, SpoolItem,
};
use crate::rfc3461::xtext_decode;

/// The queue name reported for every message (Exim's default queue is `input/`).
const QUEUE_NAME: &str = "input";

/// Whether `dir` is an Exim spool directory (with `input/`) or an `input/` folder itself:
/// it must hold at least one `<message-id>-H` file, directly or in a one-character folder.
pub fn looks_like_spool(dir: &Path) -> bool {
    has_header_files(&dir.join("input")) || has_header_files(dir)
}

fn has_header_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.chars().count() == 1 {
            std::fs::read_dir(entry.path())
                .map(|sub| sub.flatten().any(|e| is_message_file(&e.file_name(), "-H")))
                .unwrap_or(false)
        } else {
            !is_dir && is_message_file(&entry.file_name(), "-H")
        }
    })
}

/// `<id><suffix>` with a well-formed Exim message id (16 characters before 4.97, 23 since).
fn is_message_file(name: &std::ffi::OsStr, suffix: &str) -> bool {
    name.to_str()
        .and_then(|n| n.strip_suffix(suffix))
        .is_some_and(is_message_id)
}

fn is_message_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let dashes: &[usize] = match bytes.len() {
        16 => &[6, 13],
        23 => &[6, 18],
        _ => return false,
    };
    bytes.iter().enumerate().all(|(i, b)| {
        if dashes.contains(&i) {
            *b == b'-'
        } else {
            b.is_ascii_alphanumeric()
        }
    })
}

/// Lists the messages of the Exim spool (or `input/` folder) at `path`; reading happens as
/// the iterator advances.
pub fn read(path: &Path) -> Result<EximReader, SpoolError> {
    read_selected(path, Selection::all())
}

/// Like `read`, yielding only the items `selection` takes.
pub fn read_selected(path: &Path, selection: Selection) -> Result<EximReader, SpoolError> {
    let io_err = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpoolError::Missing(path.to_path_buf()));
        }
        Err(e) => return Err(io_err(e)),
        Ok(m) if !m.is_dir() => {
            return Err(SpoolError::Unrecognized {
                path: path.to_path_buf(),
                why: "an Exim spool is a folder (with `input/`, or `input/` itself)".into(),
            });
        }
        Ok(_) => {}
    }
    let root = std::path::absolute(path).map_err(io_err)?;
    let input = if root.join("input").is_dir() {
        root.join("input")
    } else if has_header_files(&root) {
        root
    } else {
        return Err(SpoolError::Unrecognized {
            path: path.to_path_buf(),
            why: "an Exim spool needs an `input/` folder, or `<message-id>-H` files".into(),
        });
    };
    let (mut entries, folders) = list_input(&input)?;
    // Only names are known here: the other shards' messages are dropped before any file
    // of theirs is opened.
    entries.retain(|e| match e.shard_key() {
        Some(key) => selection.takes(key),
        None => selection.takes_keyless(),
    });
    entries.shrink_to_fit();
    Ok(EximReader {
        entries: entries.into_iter(),
        folders,
    })
}

/// A message file's name, held compactly: the message id (at most 23 bytes, checked by
/// `is_message_id`) and its folder, an index into the reader's folders. A flat `input/`
/// holds every message in one folder, and reading in message-id order needs every name
/// first: as paths (both files, and a set of them to find orphans) that was 485 MB at 1M
/// messages; as this, 32 bytes a message (`Entry`), the `-D` names never held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    id: [u8; 23],
    len: u8,
    folder: u32,
}

impl Named {
    fn new(id: &str, folder: u32) -> Option<Named> {
        if !is_message_id(id) {
            return None;
        }
        let mut bytes = [0u8; 23];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Some(Named {
            id: bytes,
            len: id.len() as u8,
            folder,
        })
    }

    fn id(&self) -> &str {
        // Checked ASCII by `is_message_id` when made.
        std::str::from_utf8(&self.id[..self.len as usize]).unwrap_or_default()
    }

    fn path(&self, folders: &[PathBuf], suffix: &str) -> PathBuf {
        let folder = folders
            .get(self.folder as usize)
            .map_or(Path::new(""), |f| f);
        folder.join(format!("{}{suffix}", self.id()))
    }
}

/// One thing found in `input/` that becomes a spool item. The rare kinds are boxed, so
/// an entry stays small.
#[derive(Debug)]
enum Entry {
    /// An `-H` file: a message.
    Header(Named),
    /// A file ending in `-H` not named like a message id: quarantined when read.
    OddHeader(Box<PathBuf>),
    /// A `-D` file without its `-H`: a message still being received when the spool was
    /// copied, or one whose envelope was lost.
    OrphanData(Named),
    /// A split folder that could not be listed.
    Unreadable(Box<(PathBuf, String)>),
}

impl Entry {
    /// The message id of a message's file; `None` for a folder.
    fn shard_key(&self) -> Option<&str> {
        match self {
            Entry::Header(n) | Entry::OrphanData(n) => Some(n.id()),
            Entry::OddHeader(p) => p
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.strip_suffix("-H").unwrap_or(n)),
            Entry::Unreadable(..) => None,
        }
    }
}

/// Lists `input/` and its one-character split folders: the messages (`-H` files) in
/// message-id order, then what is quarantined (orphan `-D` files, misnamed `-H` files,
/// folders that cannot be listed) in path order. Other files (`-J` journals, `hdr.*`
/// temporaries) are read with their message or ignored. Two passes over the folders:
/// the `-H` names first, then each `-D` looked up among them, so `-D` names are never held.
fn list_input(input: &Path) -> Result<(Vec<Entry>, Vec<PathBuf>), SpoolError> {
    let mut folders = vec![input.to_path_buf()];
    let mut headers = Vec::new();
    let mut quarantined = Vec::new();
    let io = |source| SpoolError::Io {
        path: input.to_path_buf(),
        source,
    };
    for_each_file(input, |name, is_dir, path| {
        if is_dir {
            if name.chars().count() == 1 {
                folders.push(path());
            }
        } else {
            header_entry(name, 0, path, &mut headers, &mut quarantined);
        }
    })
    .map_err(io)?;
    let mut listed = vec![true; folders.len()];
    for (i, folder) in folders.iter().enumerate().skip(1) {
        let folder_index = i as u32;
        let read = for_each_file(folder, |name, is_dir, path| {
            if !is_dir {
                header_entry(name, folder_index, path, &mut headers, &mut quarantined);
            }
        });
        if let Err(e) = read {
            listed[i] = false;
            quarantined.push(Entry::Unreadable(Box::new((
                folder.clone(),
                format!("cannot list folder: {e}"),
            ))));
        }
    }
    headers.sort_unstable();
    for (i, folder) in folders.iter().enumerate() {
        if !listed[i] {
            continue;
        }
        // A folder that fails now failed after its first listing: its `-D` files are
        // only not checked for orphans, their messages are read as listed.
        let _ = for_each_file(folder, |name, is_dir, _| {
            let Some(id) = name.strip_suffix("-D") else {
                return;
            };
            if is_dir {
                return;
            }
            if let Some(data) = Named::new(id, i as u32)
                && headers.binary_search(&data).is_err()
            {
                quarantined.push(Entry::OrphanData(data));
            }
        });
    }
    let quarantine_path = |e: &Entry| match e {
        Entry::OrphanData(n) => n.path(&folders, "-D"),
        Entry::OddHeader(p) => p.as_ref().clone(),
        Entry::Unreadable(u) => u.0.clone(),
        Entry::Header(n) => n.path(&folders, "-H"),
    };
    quarantined.sort_by_cached_key(quarantine_path);
    let mut entries: Vec<Entry> = headers.into_iter().map(Entry::Header).collect();
    entries.append(&mut quarantined);
    Ok((entries, folders))
}

/// Where a file ending in `-H` goes: a message, or (misnamed) a quarantine.
fn header_entry(
    name: &str,
    folder: u32,
    path: impl FnOnce() -> PathBuf,
    headers: &mut Vec<Named>,
    quarantined: &mut Vec<Entry>,
) {
    let Some(id) = name.strip_suffix("-H") else {
        return;
    };
    match Named::new(id, folder) {
        Some(named) => headers.push(named),
        None => quarantined.push(Entry::OddHeader(Box::new(path()))),
    }
}

/// Calls `f(name, is_dir, path)` for each entry of `dir`, its type from the listing.
fn for_each_file(
    dir: &Path,
    mut f: impl FnMut(&str, bool, &dyn Fn() -> PathBuf),
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        f(&text, is_dir, &|| entry.path());
    }
    Ok(())
}

/// The file name of `path`'s message with another suffix (`-H`, `-D`, `-J`).
fn sibling_name(path: &Path, suffix: &str) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = name
        .strip_suffix("-H")
        .or_else(|| name.strip_suffix("-D"))
        .unwrap_or(&name);
    format!("{id}{suffix}")
}

/// Streams the messages of one Exim spool.
pub struct EximReader {
    entries: std::vec::IntoIter<Entry>,
    /// `input/` and its split folders, as `Named::folder` indexes them.
    folders: Vec<PathBuf>,
}

impl Iterator for EximReader {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        Some(match self.entries.next()? {
            Entry::Header(named) => read_message(&named.path(&self.folders, "-H")),
            Entry::OddHeader(path) => read_message(&path),
            Entry::OrphanData(named) => quarantine(
                &named.path(&self.folders, "-D"),
                0,
                0,
                "data file without its `-H` envelope file (a message still being received, \
                 or a lost envelope)"
                    .into(),
            ),
            Entry::Unreadable(unreadable) => {
                let (path, reason) = *unreadable;
                quarantine(&path, 0, 0, reason)
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

/// What went wrong with a message, in which file, and where in it.
#[derive(Debug)]
struct Problem {
    path: PathBuf,
    offset: u64,
    /// The file's length, when it was read.
    len: u64,
    reason: String,
}

fn quarantine(path: &Path, offset: u64, len: u64, reason: String) -> SpoolItem {
    SpoolItem::Quarantined(Quarantined {
        source: source_ref(path, offset, len),
        reason,
    })
}

fn source_ref(path: &Path, offset: u64, len: u64) -> SourceRef {
    SourceRef {
        format: SpoolFormat::Exim,
        path: path.to_path_buf(),
        offset,
        len,
    }
}

/// A message's `-H` parsed and its wire bytes built.
struct Loaded {
    id: String,
    header: SpoolHeader,
    content: Vec<u8>,
    header_len: u64,
    /// The `-H` file's modification time.
    file_time: Option<DateTime<FixedOffset>>,
}

fn read_message(h_path: &Path) -> SpoolItem {
    let loaded = match load(h_path) {
        Ok(l) => l,
        Err(p) => return quarantine(&p.path, p.offset, p.len, p.reason),
    };
    let whole = |offset, reason| quarantine(h_path, offset, loaded.header_len, reason);
    let mut delivered = loaded.header.delivered.clone();
    if let Err(p) = read_journal(h_path, &mut delivered) {
        return quarantine(&p.path, p.offset, p.len, p.reason);
    }
    let Some(arrival) = Utc
        .timestamp_opt(
            loaded.header.received_secs,
            loaded.header.received_usec * 1000,
        )
        .single()
    else {
        return whole(0, "received time is out of range".into());
    };
    let recipients = recipients(&loaded.header, &delivered);
    if recipients.is_empty() {
        return whole(0, "no envelope recipients".into());
    }
    let envelope = Envelope {
        sender: loaded.header.sender.clone(),
        sender_from: FieldSource::QueueFile,
        recipients,
        recipients_from: FieldSource::QueueFile,
        arrival: arrival.fixed_offset(),
        arrival_from: FieldSource::QueueFile,
        envid: loaded.header.envid.as_deref().map(xtext_decode),
        ret: loaded.header.ret,
    };
    SpoolItem::Message(QueuedMessage {
        source: source_ref(h_path, 0, loaded.header_len),
        queue_id: loaded.id,
        envelope,
        content: loaded.content,
        file_time: loaded.file_time,
        queue_name: Some(QUEUE_NAME.into()),
        mta_hold: loaded.header.frozen,
    })
}

/// The envelope recipients, each once (first occurrence kept), with what Exim already did.
fn recipients(header: &SpoolHeader, delivered: &HashSet<String>) -> Vec<Recipient> {
    let mut seen = HashSet::new();
    header
        .recipients
        .iter()
        .filter(|r| seen.insert(r.address.clone()))
        .map(|r| Recipient {
            address: r.address.clone(),
            orcpt: r.orcpt.as_deref().map(xtext_decode),
            notify: r.notify,
            prior: delivered.contains(&r.address).then_some(Prior::Delivered),
        })
        .collect()
}

/// Reads `<id>-J`, if there is one: each complete line is an address Exim delivered
/// before its delivery run was interrupted.
fn read_journal(h_path: &Path, delivered: &mut HashSet<String>) -> Result<(), Problem> {
    let j_path = h_path.with_file_name(sibling_name(h_path, "-J"));
    let bytes = match super::read_regular(&j_path) {
        Ok((b, _)) => b,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => {
            return Err(Problem {
                path: j_path,
                offset: 0,
                len: 0,
                reason: format!(
                    "cannot read the delivery journal, so which recipients were delivered is \
                     unknown: {e}"
                ),
            });
        }
    };
    // A last line without its newline was cut off mid-write: not a whole address.
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => return Ok(()),
    };
    for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        delivered.insert(String::from_utf8_lossy(line).into_owned());
    }
    Ok(())
}

/// Reads and parses `-H`, then reads `-D` and builds the wire bytes.
fn load(h_path: &Path) -> Result<Loaded, Problem> {
    let problem = |path: &Path, offset: u64, reason: String| Problem {
        path: path.to_path_buf(),
        offset,
        len: 0,
        reason,
    };
    let name = h_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = name.strip_suffix("-H").unwrap_or(&name).to_string();
    if !is_message_id(&id) {
        return Err(problem(
            h_path,
            0,
            format!("`{name}` is not named `<Exim message id>-H`"),
        ));
    }
    let (bytes, h_metadata) =
        super::read_regular(h_path).map_err(|e| problem(h_path, 0, e.to_string()))?;
    if bytes.is_empty() {
        return Err(problem(h_path, 0, "file is empty".into()));
    }
    let header_len = bytes.len() as u64;
    let in_header = |offset: u64, reason: String| Problem {
        len: header_len,
        ..problem(h_path, offset, reason)
    };
    let header = header::parse(&id, &bytes).map_err(|e| in_header(e.offset, e.reason))?;
    let d_path = h_path.with_file_name(format!("{id}-D"));
    // A `-D` that is a FIFO or a link (to `/dev/zero`) is refused before it is opened.
    let data = match super::read_regular(&d_path) {
        Ok((d, _)) => d,
        Err(e) if e.is_not_found() => {
            return Err(in_header(0, format!("its data file `{id}-D` is missing")));
        }
        Err(e) => return Err(problem(&d_path, 0, e.to_string())),
    };
    let body = data_body(&id, &data).map_err(|reason| problem(&d_path, 0, reason))?;
    Ok(Loaded {
        content: wire_content(&header.headers, body),
        header,
        id,
        header_len,
        file_time: super::envelope::file_time(&h_metadata),
    })
}

/// The body of a `-D` file: everything after its first line, which must be `<id>-D`.
fn data_body<'a>(id: &str, data: &'a [u8]) -> Result<&'a [u8], String> {
    let Some(end) = data.iter().position(|&b| b == b'\n') else {
        return Err("data file is truncated: it has no first line".into());
    };
    let expected = format!("{id}-D");
    if &data[..end] != expected.as_bytes() {
        return Err(format!(
            "first line is not the file's own name `{expected}`"
        ));
    }
    Ok(&data[end + 1..])
}

/// The message as it goes on the wire: kept headers, blank line, body; CRLF line ends.
fn wire_content(headers: &[HeaderLine], body: &[u8]) -> Vec<u8> {
    let kept = headers.iter().filter(|h| !h.is_deleted());
    let size: usize = kept.clone().map(|h| h.text.len() + 8).sum::<usize>() + body.len() + 2;
    let mut out = Vec::with_capacity(size + size / 32);
    for h in kept {
        push_crlf(&mut out, &h.text);
        // Exim always ends a header with `\n`; a damaged one must not run into the next.
        if !h.text.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    push_crlf(&mut out, body);
    out
}

/// Appends `bytes`, turning each LF not already preceded by CR into CRLF.
fn push_crlf(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' && out.last() != Some(&b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
}

/// Reads a message's bytes again (at delivery or bounce time) from its `-H` and `-D`
/// files, exactly as `read` built them.
pub fn read_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    load(&source.path).map(|l| l.content).map_err(|p| {
        std::io::Error::other(format!(
            "cannot read Exim message `{}` (byte {}): {}",
            p.path.display(),
            p.offset,
            p.reason
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages come in message-id order across the split folders (whatever order the
    /// folders list in), then the quarantined in path order: an `-D` whose `-H` is in
    /// another folder, one with no `-H` at all, a misnamed `-H`.
    #[test]
    fn listing_orders_messages_by_id_and_finds_orphans_without_holding_data_names() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        for (folder, file) in [
            ("b", "1pJgtb-0041qf-6v-H"),
            ("b", "1pJgtb-0041qf-6v-D"),
            ("a", "1pJgta-0041qf-6v-H"),
            ("a", "1pJgta-0041qf-6v-D"),
            ("a", "1pJgtc-0041qf-6v-D"),
            ("c", "1pJgtc-0041qf-6v-H"),
            ("c", "1pJgtd-0041qf-6v-D"),
            ("c", "not-an-id-H"),
        ] {
            std::fs::create_dir_all(input.join(folder)).unwrap();
            std::fs::write(input.join(folder).join(file), b"x").unwrap();
        }
        std::fs::write(input.join("1pJgt0-0041qf-6v-H"), b"x").unwrap();
        let (entries, folders) = list_input(&input).unwrap();
        let listed: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Header(n) => format!("H {}", n.path(&folders, "-H").display()),
                Entry::OrphanData(n) => format!("orphan {}", n.path(&folders, "-D").display()),
                Entry::OddHeader(p) => format!("odd {}", p.display()),
                Entry::Unreadable(u) => format!("unreadable {}", u.0.display()),
            })
            .map(|line| line.replace(&format!("{}/", input.display()), ""))
            .collect();
        assert_eq!(
            listed,
            [
                "H 1pJgt0-0041qf-6v-H",
                "H a/1pJgta-0041qf-6v-H",
                "H b/1pJgtb-0041qf-6v-H",
                "H c/1pJgtc-0041qf-6v-H",
                "orphan a/1pJgtc-0041qf-6v-D",
                "orphan c/1pJgtd-0041qf-6v-D",
                "odd c/not-an-id-H",
            ]
        );
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[test]
    fn message_ids_old_and_new() {
        assert!(is_message_id("1xX51X-0005v2-0i"));
        assert!(is_message_id("1rEaa8-00000000Bxd-0000"));
        assert!(!is_message_id("1xX51X-0005v2-0"));
        assert!(!is_message_id("1xX51X_0005v2-0i"));
        assert!(!is_message_id("../../etc/passw"));
    }

    #[test]
    fn wire_content_drops_deleted_headers_and_uses_crlf() {
        let headers = vec![
            HeaderLine {
                flag: b'T',
                text: b"To: a@b\n".to_vec(),
            },
            HeaderLine {
                flag: b'*',
                text: b"Bcc: c@d\n".to_vec(),
            },
            HeaderLine {
                flag: b' ',
                text: b"Subject: x\n\ty\n".to_vec(),
            },
        ];
        assert_eq!(
            wire_content(&headers, b"one\ntwo\r\n"),
            b"To: a@b\r\nSubject: x\r\n\ty\r\n\r\none\r\ntwo\r\n"
        );
    }

    #[test]
    fn data_body_checks_the_own_name_line() {
        assert_eq!(
            data_body("1xX51X-0005v2-0i", b"1xX51X-0005v2-0i-D\nbody\n"),
            Ok(&b"body\n"[..])
        );
        assert_eq!(
            data_body("1xX51X-0005v2-0i", b"1xX51X-0005v2-0j-D\nbody\n"),
            Err("first line is not the file's own name `1xX51X-0005v2-0i-D`".into())
        );
        assert!(data_body("1xX51X-0005v2-0i", b"no newline").is_err());
    }
}
