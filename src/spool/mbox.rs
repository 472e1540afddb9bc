//! Reader for mbox spools.
//!
//! Separators follow the mboxo/mboxrd convention: **every** line that starts with exactly
//! `From ` begins a new message (writers quote body lines as `>From `). This errs on the
//! side of splitting: an unquoted `From ` body line written by a broken writer cuts the
//! message, and the tail (which has no header block) is quarantined where an operator sees
//! it, rather than being merged into the previous message and sent to its recipients.
//!
//! A message's content is the bytes after its `From ` line up to the next one, minus one
//! trailing blank line (the separator writers add), with mboxrd unquoting: one `>` is
//! removed from each line matching `^>+From `. `SourceRef` `offset`/`len` delimit the raw
//! (still quoted) bytes in the file; `read_content` re-reads and unquotes them. LF and CRLF
//! files are both read; line endings are kept as they are (the backends write them by the
//! one rule of `line_ends`, so a CR-only message between LF separators is read as lines).
//! A file framed with CR line ends has no LF line starts to find separators at: it is
//! quarantined with a reason that says how to convert it.
//!
//! The file is read line by line through a `BufReader`, so memory is bounded by the
//! largest message. Messages are numbered `mbox#1`, `mbox#2`, … in file order, quarantined
//! ones included, so ids are stable across runs.
//!
//! The shard key of an item is `#` and its byte offset in the file (the offset of its
//! content, after the `From ` line): the relative path part of the key is empty, as the
//! spool is the one file, so a renamed copy of the mbox splits the same way. A shard still
//! reads the whole file to find the separators, but keeps, parses and hashes only its own
//! messages. A read error that stops the file has no key (see `shard`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Take};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, TimeZone, Utc};

use super::envelope::{self, Hints};
use super::{
    FileError, Links, Quarantined, QueuedMessage, Selection, SourceRef, SpoolError, SpoolFormat,
    SpoolItem,
};
use crate::address::ReversePath;

/// Opens the mbox file at `path` for streaming.
pub fn read(path: &Path) -> Result<MboxReader, SpoolError> {
    read_selected(path, Selection::all())
}

/// The shard key of the item whose content starts at byte `offset`.
pub fn shard_key(offset: u64) -> String {
    format!("#{offset}")
}

/// Like `read`, yielding only the items `selection` takes.
pub fn read_selected(path: &Path, selection: Selection) -> Result<MboxReader, SpoolError> {
    let io_err = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let abs = std::path::absolute(path).map_err(io_err)?;
    // The operator named this file, so a link to it is followed; a FIFO or device is not
    // opened, and reading stops at the size it had when opened.
    let (file, metadata) = match super::open_file(&abs, Links::Follow) {
        Ok(opened) => opened,
        Err(FileError::Io(e)) => return Err(io_err(e)),
        Err(_) => {
            return Err(SpoolError::Unrecognized {
                path: path.to_path_buf(),
                why: "an mbox spool must be a regular file".into(),
            });
        }
    };
    Ok(MboxReader {
        path: abs,
        reader: BufReader::new(file.take(metadata.len())),
        position: 0,
        pending_from: None,
        started: false,
        done: false,
        index: 0,
        file_time: envelope::file_time(&metadata),
        selection,
    })
}

/// Streams the messages of one mbox file, one `SpoolItem` per `From ` line.
pub struct MboxReader {
    path: PathBuf,
    reader: BufReader<Take<File>>,
    /// File offset of the next byte `reader` will return.
    position: u64,
    /// The `From ` line that starts the next message, already read.
    pending_from: Option<Vec<u8>>,
    started: bool,
    done: bool,
    index: usize,
    file_time: Option<DateTime<FixedOffset>>,
    selection: Selection,
}

/// One message's bytes as cut from the file.
struct Chunk {
    offset: u64,
    raw_len: u64,
    content: Vec<u8>,
}

impl MboxReader {
    fn read_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<usize> {
        line.clear();
        let n = self.reader.read_until(b'\n', line)?;
        self.position += n as u64;
        Ok(n)
    }

    /// Reads lines up to the next `From ` line (kept in `pending_from`) or the end.
    fn read_chunk(&mut self) -> std::io::Result<Chunk> {
        self.read_chunk_keeping(true)
    }

    /// `read_chunk`; without `keep` the content is not collected (another shard's message:
    /// only the framing matters).
    fn read_chunk_keeping(&mut self, keep: bool) -> std::io::Result<Chunk> {
        let mut chunk = Chunk {
            offset: self.position,
            raw_len: 0,
            content: Vec::new(),
        };
        let mut last_blank_len = 0;
        let mut line = Vec::new();
        loop {
            if self.read_line(&mut line)? == 0 {
                break;
            }
            if line.starts_with(b"From ") {
                self.pending_from = Some(std::mem::take(&mut line));
                break;
            }
            last_blank_len = if is_blank(&line) { line.len() } else { 0 };
            chunk.raw_len += line.len() as u64;
            if keep {
                chunk.content.extend_from_slice(unquote_line(&line));
            }
        }
        // The blank line before a separator (or at the end) belongs to the mbox framing.
        chunk.raw_len -= last_blank_len as u64;
        if keep {
            chunk.content.truncate(chunk.content.len() - last_blank_len);
        }
        Ok(chunk)
    }

    fn source(&self, offset: u64, len: u64) -> SourceRef {
        SourceRef {
            format: SpoolFormat::Mbox,
            path: self.path.clone(),
            offset,
            len,
        }
    }

    fn quarantine(&self, offset: u64, len: u64, reason: String) -> SpoolItem {
        SpoolItem::Quarantined(Quarantined {
            source: self.source(offset, len),
            reason,
        })
    }

    /// Text before the first `From ` line: harmless when blank, otherwise quarantined.
    fn preamble(&mut self) -> std::io::Result<Option<SpoolItem>> {
        let chunk = self.read_chunk()?;
        if chunk.content.iter().all(u8::is_ascii_whitespace)
            || !self.selection.takes(&shard_key(chunk.offset))
        {
            return Ok(None);
        }
        Ok(Some(self.quarantine(
            chunk.offset,
            chunk.raw_len,
            "text before the first `From ` line is not a message".into(),
        )))
    }

    fn next_item(&mut self) -> std::io::Result<Option<SpoolItem>> {
        if !self.started {
            self.started = true;
            if let Some(item) = self.preamble()? {
                return Ok(Some(item));
            }
        }
        loop {
            let Some(from_line) = self.pending_from.take() else {
                return Ok(None);
            };
            self.index += 1;
            // The content starts where the reader stands: the key is known before reading.
            if self.selection.takes(&shard_key(self.position)) {
                let chunk = self.read_chunk()?;
                return Ok(Some(self.message(&from_line, chunk)));
            }
            self.read_chunk_keeping(false)?;
        }
    }

    fn message(&self, from_line: &[u8], chunk: Chunk) -> SpoolItem {
        // Separators are found at LF line starts: in a file with CR line ends the whole
        // rest of the file reads as one `From ` line.
        if from_line.trim_ascii_end().contains(&b'\r') {
            return self.quarantine(
                chunk.offset,
                chunk.raw_len,
                "the mbox has classic-Mac CR line ends, so its `From ` lines cannot be found: \
                 convert it to LF line ends first (`tr '\\r' '\\n' < old > new`)"
                    .into(),
            );
        }
        if chunk.content.is_empty() {
            return self.quarantine(
                chunk.offset,
                chunk.raw_len,
                "message is empty (nothing between two `From ` lines)".into(),
            );
        }
        let hints = Hints {
            given: None,
            from_line: Some(parse_from_line(from_line)),
            file_time: self.file_time,
        };
        match envelope::derive(&chunk.content, &hints) {
            Ok(envelope) => SpoolItem::Message(QueuedMessage {
                source: self.source(chunk.offset, chunk.raw_len),
                queue_id: format!("mbox#{}", self.index),
                envelope,
                content: chunk.content,
                file_time: self.file_time,
                queue_name: None,
                mta_hold: false,
            }),
            Err(reason) => self.quarantine(chunk.offset, chunk.raw_len, reason),
        }
    }
}

impl Iterator for MboxReader {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        if self.done {
            return None;
        }
        match self.next_item() {
            Ok(Some(item)) => Some(item),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                // The rest of the file cannot be trusted to be framed right: stop here.
                self.done = true;
                let offset = self.position;
                self.selection.takes_keyless().then(|| {
                    self.quarantine(offset, 0, format!("cannot read the mbox further: {e}"))
                })
            }
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

/// mboxrd: `>From `, `>>From `, … lose one `>`; every other line is unchanged.
fn unquote_line(line: &[u8]) -> &[u8] {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    if quotes > 0 && line[quotes..].starts_with(b"From ") {
        &line[1..]
    } else {
        line
    }
}

/// Applies `unquote_line` to every line of `raw`.
pub fn unquote(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(unquote_line(line));
    }
    out
}

/// Re-reads one message's content from the mbox, exactly as the reader produced it.
pub fn read_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    let (mut file, _) = super::open_file(&source.path, Links::Follow)?;
    file.seek(SeekFrom::Start(source.offset))?;
    let len = usize::try_from(source.len).map_err(std::io::Error::other)?;
    let mut raw = vec![0; len];
    file.read_exact(&mut raw)?;
    Ok(unquote(&raw))
}

/// What an mbox `From ` separator line says about the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromLine {
    /// `None` when the line names no sender at all.
    pub sender: Option<ReversePath>,
    /// `None` when the date is missing or not in asctime form.
    pub date: Option<DateTime<FixedOffset>>,
}

/// Parses an mbox separator line (`From alice@example.org Mon Jan 23 10:00:00 2023`, line
/// ending optional). The date is asctime, optionally with a numeric or UTC/GMT zone before
/// or after the year; without a zone it is taken as UTC, since the line carries none.
pub fn parse_from_line(line: &[u8]) -> FromLine {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    let rest = text.strip_prefix("From ").unwrap_or(text);
    let tokens = token_positions(rest);
    let date_at = (0..tokens.len()).find(|&i| {
        is_weekday(tokens[i].1)
            && tokens
                .get(i + 1)
                .is_some_and(|t| month_number(t.1).is_some())
    });
    let raw_sender = match date_at {
        Some(i) => rest[..tokens[i].0].trim(),
        None => tokens.first().map_or("", |t| t.1),
    };
    let sender = if date_at.is_none() && raw_sender.is_empty() {
        None
    } else {
        Some(from_line_sender(raw_sender))
    };
    let date = date_at.and_then(|i| {
        let words: Vec<&str> = tokens[i + 1..].iter().map(|t| t.1).collect();
        parse_asctime(&words)
    });
    FromLine { sender, date }
}

fn token_positions(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(st)) => {
                out.push((st, &s[st..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, &s[st..]));
    }
    out
}

fn from_line_sender(raw: &str) -> ReversePath {
    if raw.eq_ignore_ascii_case("MAILER-DAEMON") {
        ReversePath::Null
    } else {
        ReversePath::parse(raw)
    }
}

fn is_weekday(word: &str) -> bool {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .any(|d| word.eq_ignore_ascii_case(d))
}

fn month_number(word: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let i = MONTHS.iter().position(|m| word.eq_ignore_ascii_case(m))?;
    u32::try_from(i + 1).ok()
}

/// `words` = month, day, time, then the year and an optional zone in either order.
fn parse_asctime(words: &[&str]) -> Option<DateTime<FixedOffset>> {
    let [month, day, time, tail @ ..] = words else {
        return None;
    };
    let month = month_number(month)?;
    let day: u32 = day.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u32>().ok());
    let (hour, minute) = (hms.next()??, hms.next()??);
    let second = hms.next().unwrap_or(Some(0))?;
    let mut year = None;
    let mut zone = None;
    for word in tail.iter().take(2) {
        if word.len() == 4 && word.bytes().all(|b| b.is_ascii_digit()) {
            year = word.parse::<i32>().ok();
        } else {
            zone = zone.or_else(|| parse_zone(word));
        }
    }
    let naive = NaiveDate::from_ymd_opt(year?, month, day)?.and_hms_opt(hour, minute, second)?;
    let offset = zone.unwrap_or_else(utc_offset);
    offset.from_local_datetime(&naive).single()
}

fn parse_zone(word: &str) -> Option<FixedOffset> {
    if ["UTC", "GMT", "UT"]
        .iter()
        .any(|z| word.eq_ignore_ascii_case(z))
    {
        return Some(utc_offset());
    }
    let (sign, digits) = match word.as_bytes().first()? {
        b'+' => (1, &word[1..]),
        b'-' => (-1, &word[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

fn utc_offset() -> FixedOffset {
    Utc.fix()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn unquoting_strips_one_quote_from_from_lines_only() {
        let raw = b">From a\n>>From b\r\n>>>From c\n> From d\n>Fromage\nFrom e\n>x\n";
        assert_eq!(
            unquote(raw),
            b"From a\n>From b\r\n>>From c\n> From d\n>Fromage\nFrom e\n>x\n".to_vec()
        );
    }

    #[test]
    fn blank_line_detection() {
        assert!(is_blank(b"\n"));
        assert!(is_blank(b"\r\n"));
        assert!(!is_blank(b" \n"));
        assert!(!is_blank(b""));
    }

    fn items_of(bytes: &[u8]) -> (tempfile::TempDir, Vec<SpoolItem>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        std::fs::write(&path, bytes).unwrap();
        let items = read(&path).unwrap().collect();
        (dir, items)
    }

    #[test]
    fn splits_strips_separator_blank_and_unquotes() {
        let mbox =
            b"From a@x.test Mon Jan 23 10:00:00 2023\nDelivered-To: r@y.test\n\nhi\n>From here\n\n\
From b@x.test Mon Jan 23 11:00:00 2023\nDelivered-To: r@y.test\n\nbye\n";
        let (_dir, items) = items_of(mbox);
        assert_eq!(items.len(), 2);
        let SpoolItem::Message(first) = &items[0] else {
            panic!("first item is not a message: {:?}", items[0]);
        };
        assert_eq!(first.queue_id, "mbox#1");
        assert_eq!(
            first.content,
            b"Delivered-To: r@y.test\n\nhi\nFrom here\n".to_vec()
        );
        assert_eq!(first.source.offset, 39);
        assert_eq!(first.source.len, 38);
        assert_eq!(read_content(&first.source).unwrap(), first.content);
        let SpoolItem::Message(second) = &items[1] else {
            panic!("second item is not a message: {:?}", items[1]);
        };
        assert_eq!(second.queue_id, "mbox#2");
        assert_eq!(second.content, b"Delivered-To: r@y.test\n\nbye\n".to_vec());
        assert_eq!(read_content(&second.source).unwrap(), second.content);
    }

    #[test]
    fn empty_message_and_preamble_are_quarantined() {
        let mbox = b"junk\n\nFrom a@x.test Mon Jan 23 10:00:00 2023\n\
From a@x.test Mon Jan 23 10:00:00 2023\nDelivered-To: r@y.test\n\nhi\n";
        let (_dir, items) = items_of(mbox);
        let reasons: Vec<String> = items
            .iter()
            .map(|i| match i {
                SpoolItem::Quarantined(q) => q.reason.clone(),
                SpoolItem::Message(m) => m.queue_id.clone(),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "text before the first `From ` line is not a message",
                "message is empty (nothing between two `From ` lines)",
                "mbox#2",
            ]
        );
    }

    #[test]
    fn a_cr_framed_mbox_is_quarantined_saying_why() {
        let mbox = b"From a@x.test Mon Jan 23 10:00:00 2023\rDelivered-To: r@y.test\r\rhi\r\r\
From b@x.test Mon Jan 23 10:00:00 2023\rDelivered-To: r@y.test\r\rbye\r";
        let (_dir, items) = items_of(mbox);
        let [SpoolItem::Quarantined(q)] = &items[..] else {
            panic!("{items:?}");
        };
        assert!(
            q.reason.contains("classic-Mac CR line ends"),
            "{}",
            q.reason
        );
    }

    #[test]
    fn a_cr_only_message_between_lf_separators_is_a_message() {
        let mbox = b"From a@x.test Mon Jan 23 10:00:00 2023\nDelivered-To: r@y.test\r\rhi\r\n\n";
        let (_dir, items) = items_of(mbox);
        let [SpoolItem::Message(m)] = &items[..] else {
            panic!("{items:?}");
        };
        assert_eq!(m.content, b"Delivered-To: r@y.test\r\rhi\r\n".to_vec());
        assert_eq!(m.envelope.recipients[0].address, "r@y.test");
    }

    #[test]
    fn empty_file_has_no_items() {
        let (_dir, items) = items_of(b"");
        assert!(items.is_empty());
    }

    #[test]
    fn from_line_plain_asctime() {
        let f = parse_from_line(b"From alice@example.org Mon Jan 23 10:00:00 2023\n");
        assert_eq!(
            f.sender,
            Some(ReversePath::Address("alice@example.org".into()))
        );
        assert_eq!(f.date, Some(dt("2023-01-23T10:00:00Z")));
    }

    #[test]
    fn from_line_null_sender_forms() {
        for line in [
            "From MAILER-DAEMON Mon Jan 23 10:00:00 2023\r\n",
            "From <> Mon Jan 23 10:00:00 2023",
            "From  Mon Jan 23 10:00:00 2023",
        ] {
            let f = parse_from_line(line.as_bytes());
            assert_eq!(f.sender, Some(ReversePath::Null), "{line}");
            assert_eq!(f.date, Some(dt("2023-01-23T10:00:00Z")), "{line}");
        }
    }

    #[test]
    fn from_line_zones_and_short_time() {
        let f = parse_from_line(b"From a@b.test Tue Feb  7 09:05 +0130 2023");
        assert_eq!(f.date, Some(dt("2023-02-07T09:05:00+01:30")));
        let f = parse_from_line(b"From a@b.test Tue Feb  7 09:05:06 2023 -0500");
        assert_eq!(f.date, Some(dt("2023-02-07T09:05:06-05:00")));
        let f = parse_from_line(b"From a@b.test Tue Feb  7 09:05:06 GMT 2023");
        assert_eq!(f.date, Some(dt("2023-02-07T09:05:06Z")));
    }

    #[test]
    fn from_line_quoted_sender_with_space() {
        let f = parse_from_line(b"From \"john doe\"@remote.test Mon Jan 23 10:00:00 2023");
        assert_eq!(
            f.sender,
            Some(ReversePath::Address("\"john doe\"@remote.test".into()))
        );
    }

    #[test]
    fn from_line_without_date_keeps_sender() {
        let f = parse_from_line(b"From bob@example.org");
        assert_eq!(
            f.sender,
            Some(ReversePath::Address("bob@example.org".into()))
        );
        assert_eq!(f.date, None);
        let f = parse_from_line(b"From a@b.test Mon Jan 32 10:00:00 2023");
        assert_eq!(f.date, None, "day 32 is not a date");
        assert_eq!(parse_from_line(b"From ").sender, None);
    }
}
