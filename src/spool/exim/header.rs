//! Pure parser for Exim `-H` spool files (envelope, options, recipients, header lines).
//!
//! Layout (Exim spec, "Format of spool files"; checked on files written by 4.96): the
//! file's own name, the caller, `<sender>`, `secs warnings`, `-name value` option lines,
//! the non-recipients tree (delivered addresses), the recipient count and lines, a blank
//! line, then header lines `<len><flag> <text>` where `len` counts the text's bytes.
//! Every error carries the byte offset where the file stopped making sense.

use std::collections::HashSet;

use crate::address::{Notify, ReturnContent, ReversePath};

/// What a `-H` file says about its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpoolHeader {
    pub sender: ReversePath,
    /// Seconds since the epoch and microseconds (`-received_time_usec`) of reception.
    pub received_secs: i64,
    pub received_usec: u32,
    /// `-frozen`: Exim will not try the message until it is thawed.
    pub frozen: bool,
    /// `-dsn_envid`, as stored (xtext).
    pub envid: Option<String>,
    pub ret: Option<ReturnContent>,
    /// Addresses in the non-recipients tree: already delivered.
    pub delivered: HashSet<String>,
    pub recipients: Vec<SpoolRecipient>,
    pub headers: Vec<HeaderLine>,
}

/// One recipient line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpoolRecipient {
    pub address: String,
    /// ORCPT as stored (`type;xtext`).
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
}

/// One header line: its flag byte (`*` = deleted) and its text, newlines included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeaderLine {
    pub flag: u8,
    pub text: Vec<u8>,
}

impl HeaderLine {
    /// Deleted headers (flag `*`, e.g. `Bcc:` of a `-t` submission) are never transmitted.
    pub(super) fn is_deleted(&self) -> bool {
        self.flag == b'*'
    }
}

/// Why a `-H` file could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FormatError {
    pub offset: u64,
    pub reason: String,
}

// Exim's per-recipient DSN flag bits (`rf_notify_*` in Exim's sources).
const DSN_NEVER: u32 = 0x02;
const DSN_SUCCESS: u32 = 0x04;
const DSN_FAILURE: u32 = 0x08;
const DSN_DELAY: u32 = 0x10;

/// Parses a whole `-H` file named `<id>-H`.
pub(super) fn parse(id: &str, bytes: &[u8]) -> Result<SpoolHeader, FormatError> {
    let mut cur = Cursor { bytes, pos: 0 };
    expect_own_name(&mut cur, id)?;
    let caller = cur.line("the caller line")?;
    if caller.text.split(|&b| b == b' ').count() < 3 {
        return Err(caller.error("caller line is not `login uid gid`"));
    }
    let sender = parse_sender(&cur.line("the sender line")?)?;
    let (received_secs, _warnings) = parse_received(&cur.line("the received time line")?)?;
    let mut header = SpoolHeader {
        sender,
        received_secs,
        received_usec: 0,
        frozen: false,
        envid: None,
        ret: None,
        delivered: HashSet::new(),
        recipients: Vec::new(),
        headers: Vec::new(),
    };
    let first_after_options = read_options(&mut cur, &mut header)?;
    read_tree(&mut cur, first_after_options, &mut header.delivered)?;
    read_recipients(&mut cur, &mut header.recipients)?;
    read_headers(&mut cur, &mut header.headers)?;
    Ok(header)
}

/// A position in the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// One line without its `\n`, and where it started.
struct Line<'a> {
    text: &'a [u8],
    offset: usize,
}

impl Line<'_> {
    fn error(&self, reason: impl Into<String>) -> FormatError {
        FormatError {
            offset: self.offset as u64,
            reason: reason.into(),
        }
    }

    fn utf8(&self, what: &str) -> Result<&str, FormatError> {
        std::str::from_utf8(self.text).map_err(|_| self.error(format!("{what} is not UTF-8")))
    }
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// The next `\n`-terminated line; a file that ends without one is truncated.
    fn line(&mut self, what: &str) -> Result<Line<'a>, FormatError> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(FormatError {
                offset: self.pos as u64,
                reason: format!("file is truncated: it ends before {what}"),
            });
        };
        let line = Line {
            text: &rest[..end],
            offset: self.pos,
        };
        self.pos += end + 1;
        Ok(line)
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let available = self.bytes.len() - self.pos;
        if len > available {
            return Err(FormatError {
                offset: self.pos as u64,
                reason: format!(
                    "{what} is {len} bytes long but the file ends {available} bytes later"
                ),
            });
        }
        let taken = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }
}

fn expect_own_name(cur: &mut Cursor<'_>, id: &str) -> Result<(), FormatError> {
    let line = cur.line("its own name line")?;
    let expected = format!("{id}-H");
    if line.text != expected.as_bytes() {
        return Err(line.error(format!(
            "first line is not the file's own name `{expected}`"
        )));
    }
    Ok(())
}

fn parse_sender(line: &Line<'_>) -> Result<ReversePath, FormatError> {
    let text = line.utf8("the sender")?;
    let inner = text
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .ok_or_else(|| line.error("sender line is not `<address>`"))?;
    Ok(if inner.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Address(inner.to_string())
    })
}

fn parse_received(line: &Line<'_>) -> Result<(i64, u32), FormatError> {
    let bad = || line.error("received time line is not `seconds warnings`");
    let text = std::str::from_utf8(line.text).map_err(|_| bad())?;
    let mut words = text.split(' ');
    let secs = words.next().and_then(|w| w.parse::<i64>().ok());
    let warnings = words.next().and_then(|w| w.parse::<u32>().ok());
    match (secs, warnings, words.next()) {
        (Some(secs), Some(warnings), None) => Ok((secs, warnings)),
        _ => Err(bad()),
    }
}

/// Reads the `-name value` lines; returns the first line after them (the tree's start).
fn read_options<'a>(
    cur: &mut Cursor<'a>,
    header: &mut SpoolHeader,
) -> Result<Line<'a>, FormatError> {
    loop {
        let line = cur.line("the recipients")?;
        let Some(option) = line.text.strip_prefix(b"-") else {
            return Ok(line);
        };
        // `--name` marks a tainted value; the meaning is the same.
        let option = option.strip_prefix(b"-").unwrap_or(option);
        let (name, value) = match option.iter().position(|&b| b == b' ') {
            Some(space) => (&option[..space], Some(&option[space + 1..])),
            None => (option, None),
        };
        apply_option(cur, &line, name, value, header)?;
    }
}

fn apply_option(
    cur: &mut Cursor<'_>,
    line: &Line<'_>,
    name: &[u8],
    value: Option<&[u8]>,
    header: &mut SpoolHeader,
) -> Result<(), FormatError> {
    let text = |what: &str| -> Result<String, FormatError> {
        let raw = value.ok_or_else(|| line.error(format!("option -{what} has no value")))?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| line.error(format!("option -{what} is not UTF-8")))
    };
    match name {
        b"acl" | b"aclc" | b"aclm" => skip_acl_value(cur, line, value),
        b"frozen" => {
            header.frozen = true;
            Ok(())
        }
        b"received_time_usec" => {
            header.received_usec = parse_usec(&text("received_time_usec")?)
                .ok_or_else(|| line.error("option -received_time_usec is not `.digits`"))?;
            Ok(())
        }
        b"dsn_envid" => {
            header.envid = Some(text("dsn_envid")?);
            Ok(())
        }
        b"dsn_ret" => {
            header.ret = match text("dsn_ret")?.as_str() {
                "1" => Some(ReturnContent::Full),
                "2" => Some(ReturnContent::Headers),
                "0" => None,
                other => {
                    return Err(line.error(format!("option -dsn_ret has unknown value `{other}`")));
                }
            };
            Ok(())
        }
        // Everything else (host, protocol, line counts, TLS …) does not shape the replay.
        // `-spool_file_wireformat` (CRLF in `-D`) needs no flag: line ends are normalised.
        _ => Ok(()),
    }
}

/// `-aclc NAME LEN` / `-aclm NAME LEN` is followed by the variable's value: LEN bytes and a
/// newline, which may themselves contain newlines.
fn skip_acl_value(
    cur: &mut Cursor<'_>,
    line: &Line<'_>,
    value: Option<&[u8]>,
) -> Result<(), FormatError> {
    let len = value
        .and_then(|v| v.rsplit(|&b| b == b' ').next())
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| line.error("ACL variable line is not `-aclX name length`"))?;
    cur.take(len, "an ACL variable's value")?;
    // Exim writes a newline after the value; tolerate its absence at the very end.
    if cur.bytes.get(cur.pos) == Some(&b'\n') {
        cur.pos += 1;
    }
    Ok(())
}

/// `.221389` → 221389 microseconds (fewer digits are a fraction: `.5` is 500000).
fn parse_usec(text: &str) -> Option<u32> {
    let digits = text.strip_prefix('.').unwrap_or(text);
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u32 = digits.parse().ok()?;
    Some(value * 10u32.pow(6 - digits.len() as u32))
}

/// The non-recipients tree: `XX` when empty, else nodes in pre-order, each `LR address`
/// where L/R (`Y`/`N`) say whether a left/right subtree follows. Only the addresses
/// matter; counting the subtrees still owed avoids recursion on hostile input.
fn read_tree(
    cur: &mut Cursor<'_>,
    first: Line<'_>,
    delivered: &mut HashSet<String>,
) -> Result<(), FormatError> {
    if first.text == b"XX" {
        return Ok(());
    }
    let mut owed = 1usize;
    let mut line = first;
    loop {
        let node = line.text;
        let flag = |b: u8| match b {
            b'Y' => Some(1),
            b'N' => Some(0),
            _ => None,
        };
        let (Some(left), Some(right)) = (
            node.first().copied().and_then(flag),
            node.get(1).copied().and_then(flag),
        ) else {
            return Err(line.error("delivered-addresses line is not `YN address` (or `XX`)"));
        };
        if node.get(2) != Some(&b' ') || node.len() < 4 {
            return Err(line.error("delivered-addresses line is not `YN address` (or `XX`)"));
        }
        let address = Line {
            text: &node[3..],
            offset: line.offset + 3,
        };
        delivered.insert(address.utf8("a delivered address")?.to_string());
        owed = owed - 1 + left + right;
        if owed == 0 {
            return Ok(());
        }
        line = cur.line("the rest of the delivered addresses")?;
    }
}

fn read_recipients(
    cur: &mut Cursor<'_>,
    recipients: &mut Vec<SpoolRecipient>,
) -> Result<(), FormatError> {
    let count_line = cur.line("the recipient count")?;
    let count = std::str::from_utf8(count_line.text)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| count_line.error("recipient count is not a number"))?;
    for n in 0..count {
        let line = cur.line("the recipient lines")?;
        if line.text.is_empty() {
            return Err(line.error(format!(
                "recipient count says {count} but only {n} recipient lines follow"
            )));
        }
        recipients.push(parse_recipient(&line)?);
    }
    let blank = cur.line("the blank line before the headers")?;
    if !blank.text.is_empty() {
        return Err(blank.error(format!(
            "recipient count says {count} but more recipient lines follow"
        )));
    }
    Ok(())
}

/// A recipient line: a plain address, or `addr orcpt len,dsnflags errors_to len,pno#flags`
/// (Exim 4.96 writes `#3`). Parsed from the right, as Exim does: addresses may contain
/// spaces, the lengths say where each field starts.
fn parse_recipient(line: &Line<'_>) -> Result<SpoolRecipient, FormatError> {
    let bad = |why: &str| line.error(format!("bad recipient line: {why}"));
    let text = line.text;
    let Some((body, flags)) = split_trailing_flags(text) else {
        let address = line.utf8("a recipient address")?.to_string();
        return Ok(SpoolRecipient {
            address,
            orcpt: None,
            notify: None,
        });
    };
    let mut end = body;
    if flags & 0x01 != 0 {
        // errors_to and parent number: skipped, but their length tells where they start.
        let (start, len, _pno) =
            trailing_pair(text, end).ok_or_else(|| bad("no errors_to length"))?;
        end = start
            .checked_sub(len)
            .and_then(|e| e.checked_sub(1))
            .ok_or_else(|| bad("errors_to length runs past the start"))?;
    }
    let mut orcpt = None;
    let mut notify = None;
    if flags & 0x02 != 0 {
        let (start, len, dsn_flags) =
            trailing_pair(text, end).ok_or_else(|| bad("no ORCPT length and DSN flags"))?;
        let orcpt_start = start
            .checked_sub(len)
            .ok_or_else(|| bad("ORCPT length runs past the start"))?;
        if len > 0 {
            let raw = std::str::from_utf8(&text[orcpt_start..start])
                .map_err(|_| bad("ORCPT is not UTF-8"))?;
            orcpt = Some(raw.to_string());
        }
        notify = notify_from_flags(dsn_flags);
        end = orcpt_start
            .checked_sub(1)
            .ok_or_else(|| bad("no address before the ORCPT"))?;
    }
    if end == 0 {
        return Err(bad("empty address"));
    }
    let address = std::str::from_utf8(&text[..end])
        .map_err(|_| bad("address is not UTF-8"))?
        .to_string();
    Ok(SpoolRecipient {
        address,
        orcpt,
        notify,
    })
}

/// `...#<digits>` → (index of `#`, flags); `None` for a plain address line.
fn split_trailing_flags(text: &[u8]) -> Option<(usize, u32)> {
    let hash = text.iter().rposition(|&b| b == b'#')?;
    let digits = &text[hash + 1..];
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let flags = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((hash, flags))
}

/// Scans back from `end` over `<len>,<number>` (digits, `,`, `-`), which must follow a
/// space. Returns (index of that space, len, number).
fn trailing_pair(text: &[u8], end: usize) -> Option<(usize, usize, i64)> {
    let field = text.get(..end)?;
    let start = field
        .iter()
        .rposition(|b| !(b.is_ascii_digit() || *b == b',' || *b == b'-'))?;
    if field[start] != b' ' {
        return None;
    }
    let pair = std::str::from_utf8(&field[start + 1..]).ok()?;
    let (len, number) = pair.split_once(',')?;
    Some((start, len.parse().ok()?, number.parse().ok()?))
}

/// Exim's DSN flag bits as RFC 3461 NOTIFY; no bits = NOTIFY not given.
fn notify_from_flags(flags: i64) -> Option<Notify> {
    let bits = u32::try_from(flags).ok()?;
    let notify = Notify {
        never: bits & DSN_NEVER != 0,
        success: bits & DSN_SUCCESS != 0,
        failure: bits & DSN_FAILURE != 0,
        delay: bits & DSN_DELAY != 0,
    };
    (notify != Notify::default()).then_some(notify)
}

/// Header lines `<len><flag> <text>` up to the end of the file.
fn read_headers(cur: &mut Cursor<'_>, headers: &mut Vec<HeaderLine>) -> Result<(), FormatError> {
    while !cur.at_end() {
        let offset = cur.pos;
        let rest = &cur.bytes[cur.pos..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let bad = |why: &str| FormatError {
            offset: offset as u64,
            reason: format!("bad header line: {why}"),
        };
        if digits == 0 || digits > 9 {
            return Err(bad("does not start with its length"));
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("length is not a number"))?;
        let (Some(&flag), Some(&b' ')) = (rest.get(digits), rest.get(digits + 1)) else {
            return Err(bad("length is not followed by a flag and a space"));
        };
        cur.pos += digits + 2;
        let text = cur.take(len, &format!("the header line at byte {offset}"))?;
        headers.push(HeaderLine {
            flag,
            text: text.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1xX51X-0005v2-0i";

    fn file(middle: &str, headers: &str) -> Vec<u8> {
        format!(
            "{ID}-H\nDebian-exim 5101 5101\n<a@b.test>\n1795820795 0\n\
             -received_time_usec .221389\n{middle}\n\n{headers}"
        )
        .into_bytes()
    }

    #[track_caller]
    fn check_err(bytes: &[u8], offset: u64, reason: &str) {
        let err = parse(ID, bytes).expect_err("should not parse");
        assert_eq!(err.reason, reason);
        assert_eq!(err.offset, offset, "offset for {reason}");
    }

    #[test]
    fn parses_envelope_tree_and_dsn_recipients() {
        let bytes = file(
            "-frozen 1795820800\n-dsn_envid QQ+2B1\n-dsn_ret 2\nYN bob@d.test\nNN al@d.test\n\
             3\nbob@example.test rfc822;orig-6@example.test 26,12  0,-1#3\n\
             \"a b\"@x.test  0,2  0,-1#3\nal@d.test",
            "016  Subject: hi\n\tyo\n014* Bcc: c@d.test\n",
        );
        let h = parse(ID, &bytes).unwrap();
        assert_eq!(h.sender, ReversePath::Address("a@b.test".into()));
        assert_eq!((h.received_secs, h.received_usec), (1795820795, 221389));
        assert!(h.frozen);
        assert_eq!(h.envid.as_deref(), Some("QQ+2B1"));
        assert_eq!(h.ret, Some(ReturnContent::Headers));
        assert_eq!(h.delivered.len(), 2);
        assert!(h.delivered.contains("bob@d.test") && h.delivered.contains("al@d.test"));
        assert_eq!(h.recipients[0].address, "bob@example.test");
        assert_eq!(
            h.recipients[0].orcpt.as_deref(),
            Some("rfc822;orig-6@example.test")
        );
        let n = h.recipients[0].notify.unwrap();
        assert!(n.success && n.failure && !n.delay && !n.never);
        assert_eq!(h.recipients[1].address, "\"a b\"@x.test");
        assert_eq!(h.recipients[1].orcpt, None);
        assert!(h.recipients[1].notify.unwrap().never);
        assert_eq!(h.recipients[2].address, "al@d.test");
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[0].text, b"Subject: hi\n\tyo\n");
        assert!(h.headers[1].is_deleted());
    }

    #[test]
    fn acl_values_spanning_lines_are_skipped() {
        let bytes = file(
            "--aclm _note 12\nline1\nline2\n-dsn_ret 1\nXX\n1\nx@y.test",
            "",
        );
        let h = parse(ID, &bytes).unwrap();
        assert_eq!(h.ret, Some(ReturnContent::Full));
        assert_eq!(h.recipients.len(), 1);
    }

    #[test]
    fn null_sender_and_usec_fraction() {
        let bytes = format!("{ID}-H\nroot 0 0\n<>\n5 1\n-received_time_usec .5\nXX\n1\nx@y\n\n");
        let h = parse(ID, bytes.as_bytes()).unwrap();
        assert_eq!(h.sender, ReversePath::Null);
        assert_eq!(h.received_usec, 500_000);
    }

    #[test]
    fn errors_name_the_offset() {
        check_err(
            b"other-H\n",
            0,
            "first line is not the file's own name `1xX51X-0005v2-0i-H`",
        );
        let trunc = format!("{ID}-H\nroot 0 0\n<a@b>");
        check_err(
            trunc.as_bytes(),
            28,
            "file is truncated: it ends before the sender line",
        );
        let bytes = file("XX\n3\na@b.test\nc@d.test", "");
        let blank_at = bytes.len() as u64 - 1;
        check_err(
            &bytes,
            blank_at,
            "recipient count says 3 but only 2 recipient lines follow",
        );
        let bytes = file("XX\n1\na@b.test", "099  Subject: short\n");
        let header_at = bytes.len() as u64 - 20;
        check_err(
            &bytes,
            header_at + 5,
            &format!(
                "the header line at byte {header_at} is 99 bytes long but the file ends 15 bytes later"
            ),
        );
        let bytes = file("XX\nmany\na@b.test", "");
        // 19 + 22 + 11 + 13 + 28 bytes of fixed lines, then `XX\n`.
        check_err(&bytes, 96, "recipient count is not a number");
    }

    #[test]
    fn recipient_lengths_past_the_start_are_errors_not_panics() {
        for line in [
            "x 99,2  0,-1#3",
            " 0,2  0,-1#3",
            "x  0,2  9,-1#3",
            "#3",
            "a,1#1",
        ] {
            let bytes = file(&format!("XX\n1\n{line}"), "");
            assert!(parse(ID, &bytes).is_err(), "{line}");
        }
    }
}
