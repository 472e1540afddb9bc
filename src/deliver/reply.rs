//! SMTP/LMTP server replies (RFC 5321 4.2, RFC 2034, RFC 3463): bytes to `Reply`.
//!
//! The parser is incremental: [`Reply::parse`] tells "need more bytes" (`Ok(None)`) apart
//! from "malformed" (`Err`), so the connection layer can read in any chunk size. Both the
//! LMTP client and the SMTP client turn server answers into this one type, and the outcome
//! layer decides per recipient from it.
//!
//! Decisions a reader should know:
//! - A line may end in CRLF or a bare LF (some servers and test peers send LF); a stray CR
//!   before the LF is dropped, nothing else.
//! - The enhanced status code (RFC 2034) is taken from the last line that has one, and only
//!   when its class agrees with the reply code (RFC 3463 2: a `5.x.x` on a 4xx reply is a
//!   server bug, and trusting the basic code is the safer reading). RFC 2034 puts it on
//!   every line, but Cyrus answers `550-Mailbox unknown` / `550-name` / `550 5.1.1 User
//!   unknown`: the last line is the one that carries it. It is stripped from each line that
//!   repeats it so `Display` shows it once.
//! - Replies are bytes: text that is not UTF-8 (a 550 with 0x9b in it) is decoded lossily
//!   and keeps its code.
//! - Limits (line length, line count, so at most `MAX_REPLY_OCTETS` in all) keep a hostile
//!   server from growing our buffer without end: past them the reply is refused as "reply
//!   too long".

use std::fmt;

use crate::sanitize;

/// Longest reply line accepted, CRLF included (RFC 5321 4.5.3.1.5 says 512; real servers
/// send longer, up to the 1000 of a text line, so we allow more still).
pub const MAX_LINE_OCTETS: usize = 4096;
/// Most lines in one multi-line reply (EHLO answers have a dozen or two).
pub const MAX_LINES: usize = 200;
/// The most bytes one reply can take: what the reader may buffer before it gives up.
pub const MAX_REPLY_OCTETS: usize = MAX_LINE_OCTETS * MAX_LINES;

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, 200..=599.
    pub code: u16,
    /// RFC 3463 `class.subject.detail`, only when the server sent one that agrees with `code`.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text of each line, without code, separator, enhanced code or line end.
    pub lines: Vec<String>,
}

/// Why bytes from the server are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line `{0}`")]
    BadLine(String),
    #[error("reply too long: a line of more than {MAX_LINE_OCTETS} octets")]
    LineTooLong,
    #[error("reply too long: more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("multi-line reply changes its code from {first} to {then}")]
    CodeChanged { first: u16, then: u16 },
}

impl Reply {
    /// Parses one reply from the start of `buf`. `Ok(None)`: the reply is not complete yet;
    /// `Ok(Some((reply, used)))`: `used` bytes made the reply (the rest belongs to the next).
    pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut used = 0;
        let mut code = None;
        let mut texts = Vec::new();
        loop {
            let rest = &buf[used..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() >= MAX_LINE_OCTETS {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if end + 1 > MAX_LINE_OCTETS {
                return Err(ReplyError::LineTooLong);
            }
            let line = &rest[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            used += end + 1;
            let (this_code, last, text) = split_line(line)?;
            match code {
                None => code = Some(this_code),
                Some(first) if first != this_code => {
                    return Err(ReplyError::CodeChanged {
                        first,
                        then: this_code,
                    });
                }
                Some(_) => {}
            }
            texts.push(text);
            if last {
                return Ok(Some((Reply::from_lines(this_code, texts), used)));
            }
            if texts.len() >= MAX_LINES {
                return Err(ReplyError::TooManyLines);
            }
        }
    }

    /// Builds a reply from a code and its text lines, finding the enhanced status code in
    /// the last line that has one.
    pub fn from_lines(code: u16, lines: Vec<String>) -> Reply {
        let enhanced = lines
            .iter()
            .rev()
            .find_map(|l| l.split_whitespace().next().and_then(parse_enhanced))
            .filter(|e| u16::from(e.0) == code / 100);
        let lines = match enhanced {
            Some(e) => strip_enhanced(lines, &format_enhanced(e)),
            None => lines,
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// 2xx (and 3xx, the "go on" of DATA).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The RFC 3463 status: the server's enhanced code, or one derived from the reply
    /// code's class (`2.0.0`, `4.0.0`, `5.0.0`) when it sent none.
    pub fn status(&self) -> String {
        match self.enhanced {
            Some(e) => format_enhanced(e),
            None => format!("{}.0.0", (self.code / 100).clamp(2, 5)),
        }
    }

    /// The enhanced status code the server sent (`4.2.2`), if it sent one.
    pub fn enhanced_status(&self) -> Option<String> {
        self.enhanced.map(format_enhanced)
    }

    /// The text alone, lines joined by a space and made safe to print.
    pub fn text(&self) -> String {
        let joined = self.lines.join(" ");
        sanitize::for_terminal(joined.trim()).into_owned()
    }
}

impl fmt::Display for Reply {
    /// One line: `452 4.2.2 text of every line`, with nothing a terminal would interpret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {}", format_enhanced(e))?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// `250-text` / `250 text` / `250` → (code, is the last line, text).
fn split_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let bad = || {
        ReplyError::BadLine(sanitize::bytes_for_terminal(&line[..line.len().min(80)]).into_owned())
    };
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(bad()),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

/// `4.2.2` → (4, 2, 2); RFC 3463: class 2, 4 or 5, subject and detail of 1 to 3 digits.
fn parse_enhanced(word: &str) -> Option<(u8, u16, u16)> {
    let mut parts = word.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() || class.len() != 1 {
        return None;
    }
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(subject) || !digits(detail) {
        return None;
    }
    let class: u8 = class.parse().ok()?;
    if !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject.parse().ok()?, detail.parse().ok()?))
}

fn format_enhanced((class, subject, detail): (u8, u16, u16)) -> String {
    format!("{class}.{subject}.{detail}")
}

/// Drops the enhanced code from the start of every line that carries it.
fn strip_enhanced(lines: Vec<String>, code: &str) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| match line.strip_prefix(code) {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => rest.trim_start().to_string(),
            _ => line,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, code: u16, enhanced: Option<(u8, u16, u16)>, shown: &str) {
        let (reply, used) = Reply::parse(input.as_bytes())
            .expect("well formed")
            .expect("complete");
        assert_eq!(used, input.len(), "{input:?}");
        assert_eq!(reply.code, code);
        assert_eq!(reply.enhanced, enhanced);
        assert_eq!(reply.to_string(), shown);
    }

    #[test]
    fn single_and_multi_line_replies() {
        check(
            "452 4.2.2 <full@example.test> Quota exceeded (mailbox for user is full)\r\n",
            452,
            Some((4, 2, 2)),
            "452 4.2.2 <full@example.test> Quota exceeded (mailbox for user is full)",
        );
        check(
            "250-mx.example.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n",
            250,
            None,
            "250 mx.example.test 8BITMIME ENHANCEDSTATUSCODES PIPELINING",
        );
        check(
            "550-5.1.1 first line\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n",
            550,
            Some((5, 1, 1)),
            "550 5.1.1 first line second third",
        );
        check("250\r\n", 250, None, "250");
        check("354 go ahead\n", 354, None, "354 go ahead");
    }

    #[test]
    fn a_reply_ends_where_the_next_begins() {
        let buf = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no";
        let (first, used) = Reply::parse(buf).unwrap().unwrap();
        assert_eq!(first.status(), "2.1.0");
        let (second, more) = Reply::parse(&buf[used..]).unwrap().unwrap();
        assert_eq!(second.status(), "2.1.5");
        assert_eq!(Reply::parse(&buf[used + more..]), Ok(None));
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in ["", "2", "250", "250-first\r\n", "250-a\r\n250 b", "250 x\r"] {
            assert_eq!(Reply::parse(partial.as_bytes()), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            "hello\r\n",
            "25 x\r\n",
            "2500 x\r\n",
            "250_x\r\n",
            "199 x\r\n",
            "600 x\r\n",
        ] {
            assert!(
                matches!(Reply::parse(bad.as_bytes()), Err(ReplyError::BadLine(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            Reply::parse(b"250-a\r\n451 b\r\n"),
            Err(ReplyError::CodeChanged {
                first: 250,
                then: 451
            })
        );
        let long = vec![b'x'; MAX_LINE_OCTETS + 10];
        assert_eq!(Reply::parse(&long), Err(ReplyError::LineTooLong));
        let many = "250-x\r\n".repeat(MAX_LINES + 1);
        assert_eq!(Reply::parse(many.as_bytes()), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn status_is_enhanced_or_derived_from_the_class() {
        let r = |s: &str| Reply::parse(s.as_bytes()).unwrap().unwrap().0;
        assert_eq!(r("550 5.1.1 unknown\r\n").status(), "5.1.1");
        assert_eq!(r("550 unknown\r\n").status(), "5.0.0");
        assert_eq!(r("421 closing\r\n").status(), "4.0.0");
        assert_eq!(r("250 ok\r\n").status(), "2.0.0");
        // A class that contradicts the code is not trusted (RFC 3463 2).
        let odd = r("451 5.7.1 odd\r\n");
        assert_eq!(odd.enhanced, None);
        assert_eq!(odd.status(), "4.0.0");
        assert_eq!(odd.to_string(), "451 5.7.1 odd");
        assert!(r("452 x\r\n").is_transient());
        assert!(r("554 x\r\n").is_permanent());
        assert!(r("354 x\r\n").is_positive());
        assert!(!r("421 x\r\n").is_positive());
        assert_eq!(r("250 2.0.0\r\n").to_string(), "250 2.0.0");
        assert_eq!(r("250 2.1234.0 x\r\n").enhanced, None);
    }

    #[test]
    fn the_enhanced_code_comes_from_the_last_line_that_has_one() {
        // Cyrus lmtpd and smtpd: the code on the last line only (issue 11, item 4).
        check(
            "550-Mailbox unknown.  Either there is no mailbox associated with this\r\n\
             550-name or you do not have authorization to see it.\r\n\
             550 5.1.1 User unknown\r\n",
            550,
            Some((5, 1, 1)),
            "550 5.1.1 Mailbox unknown.  Either there is no mailbox associated with this \
             name or you do not have authorization to see it. User unknown",
        );
        // A code on an earlier line only still counts; a later line's wins.
        check(
            "452-4.2.2 over quota\r\n452 try later\r\n",
            452,
            Some((4, 2, 2)),
            "452 4.2.2 over quota try later",
        );
        check(
            "550-5.7.1 policy\r\n550 5.1.1 unknown\r\n",
            550,
            Some((5, 1, 1)),
            "550 5.1.1 5.7.1 policy unknown",
        );
    }

    #[test]
    fn a_reply_that_is_not_utf8_keeps_its_code() {
        let raw = b"550 5.1.1 <a@b> unknown \x9b user\r\n";
        let (reply, used) = Reply::parse(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(reply.code, 550);
        assert_eq!(reply.status(), "5.1.1");
        assert!(reply.is_permanent());
        assert_eq!(reply.to_string(), "550 5.1.1 <a@b> unknown \u{fffd} user");
    }

    #[test]
    fn display_is_one_safe_line() {
        let (reply, _) = Reply::parse(b"550-5.7.1 bad\x1b[2J\r\n550 5.7.1 \xff\r\n")
            .unwrap()
            .unwrap();
        let shown = reply.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("550 5.7.1 bad\\x1b[2J "), "{shown}");
        let built = Reply::from_lines(451, vec!["4.3.0 a\r\nb".into()]);
        assert_eq!(built.to_string(), "451 4.3.0 a\\r\\nb");
    }
}
