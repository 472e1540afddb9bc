//! One Postfix queue file (cleanup's format, or postdrop's in `maildrop/`) read into an
//! envelope and the message content as Postfix would send it.
//!
//! Segments: envelope, then `M` and the content (`N` whole lines, `L` partial lines), then
//! `X` and the records extracted from headers, then `E`. Recipients count in the envelope
//! and the extracted segment alike. Content lines end in CRLF, as on the wire.

use std::io::{Read, Seek};

use chrono::{DateTime, FixedOffset};

use super::record::{Malformed, RecordHead, RecordReader};
use crate::address::{Notify, ReturnContent, ReversePath};
use crate::spool::{Prior, Recipient};

/// What one queue file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFile {
    pub arrival: DateTime<FixedOffset>,
    pub sender: ReversePath,
    /// In file order, settled ones (`D`, `/`) included; duplicates kept, as Postfix has them.
    pub recipients: Vec<Recipient>,
    pub envid: Option<String>,
    pub ret: Option<ReturnContent>,
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Envelope,
    Content,
    Extracted,
}

/// Parameters that precede the recipient record they belong to.
#[derive(Debug, Default)]
struct PendingRecipient {
    original: Option<String>,
    orcpt: Option<String>,
    notify: Option<Notify>,
}

/// Builds the `QueueFile` as records arrive.
#[derive(Debug, Default)]
struct Builder {
    arrival: Option<DateTime<FixedOffset>>,
    sender: Option<ReversePath>,
    recipients: Vec<Recipient>,
    pending: PendingRecipient,
    envid: Option<String>,
    ret: Option<ReturnContent>,
    content: Vec<u8>,
    saw_content: bool,
}

/// Reads a whole queue file of `file_len` bytes.
pub(super) fn parse<R: Read + Seek>(inner: R, file_len: u64) -> Result<QueueFile, Malformed> {
    let mut reader = RecordReader::new(inner, file_len);
    let mut built = Builder::default();
    let mut segment = Segment::Envelope;
    let mut scratch = Vec::new();
    // Checked before any length is read, so other files get a plain answer.
    check_first(reader.peek_kind()?)?;
    loop {
        let Some(head) = reader.next_head()? else {
            return Err(Malformed(format!(
                "truncated: no end record (E) before the end of the file at offset {file_len}"
            )));
        };
        if segment == Segment::Content && matches!(head.kind, b'N' | b'L') {
            reader.read_data(head, &mut built.content)?;
            if head.kind == b'N' {
                built.content.extend_from_slice(b"\r\n");
            }
            continue;
        }
        scratch.clear();
        match head.kind {
            b'E' => break,
            b'M' if segment == Segment::Envelope => {
                reader.skip_data(head)?;
                // Each line costs at least two record bytes, as much as the CRLF it gets:
                // the rest of the file bounds the content, so it is allocated once.
                let rest = usize::try_from(file_len.saturating_sub(head.offset)).unwrap_or(0);
                built.content.reserve_exact(rest);
                segment = Segment::Content;
                built.saw_content = true;
            }
            b'X' if segment == Segment::Content => {
                reader.skip_data(head)?;
                segment = Segment::Extracted;
            }
            b'w' => reader.skip_data(head)?,
            kind if segment == Segment::Content => {
                return Err(unexpected(kind, "message content", head.offset));
            }
            b'T' | b'S' | b'A' | b'O' | b'R' | b'D' | b'/' | b'<' | b'i' | b'o' | b'n' => {
                reader.read_data(head, &mut scratch)?;
                built.envelope_record(head, &scratch)?;
            }
            kind if is_ignored_envelope_record(kind) => reader.skip_data(head)?,
            kind if is_known(kind) => {
                let segment = match segment {
                    Segment::Envelope => "envelope",
                    _ => "extracted segment",
                };
                return Err(unexpected(kind, segment, head.offset));
            }
            kind => {
                return Err(Malformed(format!(
                    "unknown record type {} at offset {}",
                    show_kind(kind),
                    head.offset
                )));
            }
        }
    }
    built.finish()
}

/// A queue file starts with `C` (cleanup) or `T` (postdrop); anything else is not one.
fn check_first(kind: Option<u8>) -> Result<(), Malformed> {
    match kind {
        Some(b'C' | b'T') => Ok(()),
        Some(kind) => Err(Malformed(format!(
            "not a Postfix queue file: the first record at offset 0 is of type {}, not C or T",
            show_kind(kind)
        ))),
        None => Err(Malformed("file is empty".into())),
    }
}

/// Envelope records that say nothing a replay needs (sizes, full name, filters, warning
/// times, flags, kill and redirect records, priority, VERP, milter counts, create time).
fn is_ignored_envelope_record(kind: u8) -> bool {
    matches!(
        kind,
        b'C' | b'c'
            | b'F'
            | b'I'
            | b'L'
            | b'W'
            | b'K'
            | b'>'
            | b'f'
            | b'd'
            | b'P'
            | b'V'
            | b'm'
            | b'r'
            | b'e'
    )
}

/// Every record type in Postfix's rec_type.h.
fn is_known(kind: u8) -> bool {
    b"CTcFILSD/ROWAK>fdMNLwXrePVEp<ionm".contains(&kind)
}

fn show_kind(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        format!("`{}`", kind as char)
    } else {
        format!("0x{kind:02x}")
    }
}

fn unexpected(kind: u8, segment: &str, offset: u64) -> Malformed {
    Malformed(format!(
        "unexpected record type {} in the {segment} at offset {offset}",
        show_kind(kind)
    ))
}

impl Builder {
    fn envelope_record(&mut self, head: RecordHead, data: &[u8]) -> Result<(), Malformed> {
        let text = |what: &str| {
            std::str::from_utf8(data).map_err(|_| {
                Malformed(format!(
                    "{what} record at offset {} is not valid UTF-8",
                    head.offset
                ))
            })
        };
        match head.kind {
            b'T' => self.arrival = Some(parse_arrival(text("arrival time")?, head.offset)?),
            b'S' => {
                if self.sender.is_some() {
                    return Err(Malformed(format!(
                        "second sender record at offset {}",
                        head.offset
                    )));
                }
                let raw = text("sender")?;
                self.sender = Some(if raw.is_empty() {
                    ReversePath::Null
                } else {
                    ReversePath::Address(quote_address(raw))
                });
            }
            b'A' => self.attribute(text("attribute")?, head.offset)?,
            b'O' => self.pending.original = Some(text("original recipient")?.to_string()),
            b'o' => self.pending.orcpt = Some(text("original recipient")?.to_string()),
            b'n' => self.pending.notify = parse_notify(text("notify")?, head.offset)?,
            b'i' => self.envid = Some(text("envelope id")?.to_string()),
            b'<' => self.ret = parse_ret(text("return")?, head.offset)?,
            b'R' | b'D' | b'/' => {
                let prior = match head.kind {
                    b'D' => Some(Prior::Delivered),
                    b'/' => Some(Prior::Cancelled),
                    _ => None,
                };
                let address = text("recipient")?;
                self.recipient(address, prior);
            }
            _ => {}
        }
        Ok(())
    }

    fn attribute(&mut self, attr: &str, offset: u64) -> Result<(), Malformed> {
        let Some((name, value)) = attr.split_once('=') else {
            return Err(Malformed(format!(
                "attribute record at offset {offset} has no `=`"
            )));
        };
        match name {
            "envelope_id" => self.envid = Some(value.to_string()),
            "ret_flags" => self.ret = parse_ret(value, offset)?,
            "dsn_orig_rcpt" => self.pending.orcpt = Some(value.to_string()),
            "notify_flags" => self.pending.notify = parse_notify(value, offset)?,
            _ => {}
        }
        Ok(())
    }

    /// A recipient record takes the `O`, ORCPT and NOTIFY written just before it.
    fn recipient(&mut self, address: &str, prior: Option<Prior>) {
        let pending = std::mem::take(&mut self.pending);
        // Postfix's smtp client sends ORCPT=rfc822;<original> when no ORCPT was given.
        let orcpt = pending.orcpt.filter(|o| !o.is_empty()).or_else(|| {
            pending
                .original
                .filter(|o| !o.is_empty())
                .map(|o| format!("rfc822;{}", quote_address(&o)))
        });
        self.recipients.push(Recipient {
            address: quote_address(address),
            orcpt,
            notify: pending.notify,
            prior,
        });
    }

    fn finish(self) -> Result<QueueFile, Malformed> {
        let arrival = self
            .arrival
            .ok_or_else(|| Malformed("no arrival time (T record)".into()))?;
        let sender = self
            .sender
            .ok_or_else(|| Malformed("no sender (S record)".into()))?;
        if self.recipients.is_empty() {
            return Err(Malformed("no recipients (R or D records)".into()));
        }
        if !self.saw_content {
            return Err(Malformed("no message content (M record)".into()));
        }
        Ok(QueueFile {
            arrival,
            sender,
            recipients: self.recipients,
            envid: self.envid,
            ret: self.ret,
            content: self.content,
        })
    }
}

/// `T` holds `"seconds microseconds"` (older files: seconds only), UTC.
fn parse_arrival(text: &str, offset: u64) -> Result<DateTime<FixedOffset>, Malformed> {
    let bad = || Malformed(format!("bad arrival time `{text}` at offset {offset}"));
    let mut parts = text.split_whitespace();
    let secs: i64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let usecs: u32 = match parts.next() {
        Some(u) => u.parse().ok().filter(|u| *u < 1_000_000).ok_or_else(bad)?,
        None => 0,
    };
    DateTime::from_timestamp(secs, usecs * 1000)
        .map(|t| t.fixed_offset())
        .ok_or_else(bad)
}

/// `notify_flags`: NEVER 1, SUCCESS 2, FAILURE 4, DELAY 8; 0 = not given.
fn parse_notify(value: &str, offset: u64) -> Result<Option<Notify>, Malformed> {
    let flags: u32 = value
        .trim()
        .parse()
        .map_err(|_| Malformed(format!("bad notify flags `{value}` at offset {offset}")))?;
    Ok((flags != 0).then_some(Notify {
        never: flags & 1 != 0,
        success: flags & 2 != 0,
        failure: flags & 4 != 0,
        delay: flags & 8 != 0,
    }))
}

/// `ret_flags`: FULL 1, HDRS 2; 0 = not given.
fn parse_ret(value: &str, offset: u64) -> Result<Option<ReturnContent>, Malformed> {
    let flags: u32 = value
        .trim()
        .parse()
        .map_err(|_| Malformed(format!("bad return flags `{value}` at offset {offset}")))?;
    Ok(if flags & 2 != 0 {
        Some(ReturnContent::Headers)
    } else if flags & 1 != 0 {
        Some(ReturnContent::Full)
    } else {
        None
    })
}

/// Postfix stores addresses unquoted (`john doe@remote.test`); the wire needs the local
/// part quoted when it is not a dot-atom (`"john doe"@remote.test`), as Postfix's own
/// `quote_822_local` does. UTF-8 counts as atom text (RFC 6531).
pub fn quote_address(internal: &str) -> String {
    let (local, domain) = match internal.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (internal, None),
    };
    let mut out = String::with_capacity(internal.len() + 2);
    if local.is_empty() || is_dot_atom(local) {
        out.push_str(local);
    } else {
        out.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    if let Some(domain) = domain {
        out.push('@');
        out.push_str(domain);
    }
    out
}

fn is_dot_atom(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_are_quoted_when_not_dot_atoms() {
        assert_eq!(
            quote_address("john doe@remote.test"),
            "\"john doe\"@remote.test"
        );
        assert_eq!(quote_address("a.b..c@x.test"), "\"a.b..c\"@x.test");
        assert_eq!(quote_address("a\"b@x.test"), "\"a\\\"b\"@x.test");
        assert_eq!(quote_address("a@b@x.test"), "\"a@b\"@x.test");
        assert_eq!(
            quote_address("plain.name+tag@x.test"),
            "plain.name+tag@x.test"
        );
        assert_eq!(quote_address("józef@x.test"), "józef@x.test");
        assert_eq!(quote_address("root"), "root");
    }

    #[test]
    fn arrival_notify_and_ret() {
        let t = parse_arrival("1795823735 221389", 0).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T23:55:35.221389+00:00");
        assert!(parse_arrival("x", 7).unwrap_err().0.contains("offset 7"));
        let n = parse_notify("14", 0).unwrap().unwrap();
        assert!(!n.never && n.success && n.failure && n.delay);
        let n = parse_notify("1", 0).unwrap().unwrap();
        assert!(n.never && !n.success && !n.failure && !n.delay);
        assert_eq!(parse_notify("0", 0).unwrap(), None);
        assert_eq!(parse_ret("2", 0).unwrap(), Some(ReturnContent::Headers));
        assert_eq!(parse_ret("1", 0).unwrap(), Some(ReturnContent::Full));
    }
}
