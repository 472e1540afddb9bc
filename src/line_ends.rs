//! The one line-end rule for message bytes. The readers (envelope, content hash), the
//! Maildir store, SMTP/LMTP DATA and the DSN builder all go through these functions, so a
//! message means the same lines everywhere.
//!
//! * A line ends at CRLF or at a bare LF.
//! * A bare CR is a byte of its line, except in **classic-Mac mail**: a message with CRs
//!   and no other line end. There every bare CR is a line end. An LF as the very last byte
//!   does not count: mbox writers add one after a CR-only message.
//! * On the wire every line end is CRLF (RFC 5321 2.3.8); in a Maildir every line end is
//!   LF. No other byte changes: `\r\r\n` is a bare CR followed by a CRLF line end, so it
//!   is `\r\n` in a Maildir (the CR kept, though a reader of the Maildir will take it for
//!   a CRLF: LF-only files cannot say otherwise) and `\r\r\n` on the wire.
//!
//! The LF form is what the content hash is taken over, so the same mail saved once with
//! LF, once with CRLF and once with CR is one content.

use std::borrow::Cow;

/// True for classic-Mac mail: a message with a CR and no LF, an LF as its last byte aside.
pub fn is_mac(content: &[u8]) -> bool {
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    !body.contains(&b'\n') && body.contains(&b'\r')
}

/// The message with LF line ends (the Maildir form). Borrowed when nothing changes.
pub fn to_lf(content: &[u8]) -> Cow<'_, [u8]> {
    if !content.contains(&b'\r') {
        return Cow::Borrowed(content);
    }
    let mac = is_mac(content);
    if !mac && !has_crlf(content) {
        return Cow::Borrowed(content);
    }
    let mut out = Vec::with_capacity(content.len());
    let mut bytes = content.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            // The CR of a CRLF: the LF that follows is the line end.
            b'\r' if bytes.peek() == Some(&b'\n') => {}
            b'\r' if mac => out.push(b'\n'),
            _ => out.push(b),
        }
    }
    Cow::Owned(out)
}

/// Feeds the LF form of `content` to `sink` in pieces, without building it: what the
/// content hash reads, so a 100 MB CRLF message is not held twice.
pub fn lf_pieces(content: &[u8], mut sink: impl FnMut(&[u8])) {
    let mac = is_mac(content);
    let mut rest = content;
    while let Some(i) = memchr::memchr(b'\r', rest) {
        sink(&rest[..i]);
        let crlf = rest.get(i + 1) == Some(&b'\n');
        if mac && !crlf {
            sink(b"\n");
        } else if !crlf {
            sink(b"\r");
        }
        // For a CRLF the LF starts the next piece.
        rest = &rest[i + 1..];
    }
    sink(rest);
}

/// The message with CRLF line ends (the wire form). Borrowed when nothing changes.
pub fn to_crlf(content: &[u8]) -> Cow<'_, [u8]> {
    let mac = is_mac(content);
    let needs_change = memchr::memchr_iter(b'\n', content)
        .any(|i| i == 0 || content[i - 1] != b'\r')
        || (mac && memchr::memchr_iter(b'\r', content).any(|i| content.get(i + 1) != Some(&b'\n')));
    if !needs_change {
        return Cow::Borrowed(content);
    }
    let mut out = Vec::with_capacity(content.len() + content.len() / 32);
    let mut bytes = content.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' if bytes.peek() == Some(&b'\n') => {
                bytes.next();
                out.extend_from_slice(b"\r\n");
            }
            b'\r' if mac => out.extend_from_slice(b"\r\n"),
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    Cow::Owned(out)
}

/// The lines of a message as `(text, line end)` pairs, line ends by the rule (the last
/// line's end is empty when the message does not end with one).
pub fn lines(content: &[u8]) -> Lines<'_> {
    Lines {
        rest: content,
        mac: is_mac(content),
    }
}

/// The iterator behind [`lines`]: decides Mac or not once, for the whole message.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
    mac: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        // memchr, not a byte loop: every message sent or hashed goes through here.
        let found = if self.mac {
            memchr::memchr2(b'\n', b'\r', rest)
        } else {
            memchr::memchr(b'\n', rest)
        };
        let (text_len, end_len) = match found {
            Some(i) if rest[i] == b'\n' && i > 0 && rest[i - 1] == b'\r' => (i - 1, 2),
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => (i, 2),
            Some(i) => (i, 1),
            None => (rest.len(), 0),
        };
        self.rest = &rest[text_len + end_len..];
        Some((&rest[..text_len], &rest[text_len..text_len + end_len]))
    }
}

/// The length of the first line, its line end included (the whole input if it has none).
pub fn first_line_len(content: &[u8]) -> usize {
    lines(content)
        .next()
        .map_or(0, |(text, end)| text.len() + end.len())
}

fn has_crlf(content: &[u8]) -> bool {
    content.windows(2).any(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &[u8], lf: &[u8], crlf: &[u8]) {
        assert_eq!(&*to_lf(input), lf, "to_lf({input:?})");
        assert_eq!(&*to_crlf(input), crlf, "to_crlf({input:?})");
        let mut pieces = Vec::new();
        lf_pieces(input, |p| pieces.extend_from_slice(p));
        assert_eq!(pieces, lf, "lf_pieces({input:?})");
        // The wire form read again has the same LF form: one content, three spellings.
        assert_eq!(&*to_lf(&to_crlf(input)), lf, "to_lf(to_crlf({input:?}))");
    }

    #[test]
    fn unix_dos_and_mac_mail_have_one_lf_form() {
        check(
            b"A: 1\n\nbody\n",
            b"A: 1\n\nbody\n",
            b"A: 1\r\n\r\nbody\r\n",
        );
        check(
            b"A: 1\r\n\r\nbody\r\n",
            b"A: 1\n\nbody\n",
            b"A: 1\r\n\r\nbody\r\n",
        );
        check(
            b"A: 1\r\rbody\r",
            b"A: 1\n\nbody\n",
            b"A: 1\r\n\r\nbody\r\n",
        );
        check(b"A: 1\r\n\nb\n", b"A: 1\n\nb\n", b"A: 1\r\n\r\nb\r\n");
    }

    #[test]
    fn a_bare_cr_in_unix_or_dos_mail_is_a_byte_never_dropped() {
        check(b"A: 1\r\r\nb\r\n", b"A: 1\r\nb\n", b"A: 1\r\r\nb\r\n");
        check(b"A: 1\nx\ry\n", b"A: 1\nx\ry\n", b"A: 1\r\nx\ry\r\n");
        check(b"A: 1\r\nx\r\r\r\n", b"A: 1\nx\r\r\n", b"A: 1\r\nx\r\r\r\n");
    }

    #[test]
    fn mac_mail_with_a_trailing_lf_stays_mac_mail() {
        // What an mbox writer leaves: a CR-only message, then its own LF.
        check(b"A: 1\r\rb\r\n", b"A: 1\n\nb\n", b"A: 1\r\n\r\nb\r\n");
        assert!(is_mac(b"A: 1\rB: 2\n"));
        assert!(is_mac(b"A: 1\rB: 2\r\n"));
        assert!(is_mac(b"A: 1\r"));
        assert!(!is_mac(b"A: 1\r\nB\r"));
        assert!(!is_mac(b"A: 1\r\r\nB\r\n"), "a CRLF later: not Mac mail");
        assert!(!is_mac(b"A: 1\nB\r"));
        assert!(!is_mac(b"no line end"));
        assert!(is_mac(b"\r"));
    }

    #[test]
    fn nothing_to_change_is_borrowed() {
        assert!(matches!(to_lf(b"a\nb\rc\n"), Cow::Borrowed(_)));
        assert!(matches!(to_lf(b"a\nb"), Cow::Borrowed(_)));
        assert!(matches!(to_crlf(b"a\r\nb\rc\r\n"), Cow::Borrowed(_)));
        assert!(matches!(to_crlf(b""), Cow::Borrowed(_)));
    }

    #[test]
    fn first_line_follows_the_rule() {
        assert_eq!(first_line_len(b"From a\nX: 1\n"), 7);
        assert_eq!(first_line_len(b"From a\r\nX: 1\r\n"), 8);
        assert_eq!(first_line_len(b"From a\rX: 1\r"), 7);
        assert_eq!(first_line_len(b"From a"), 6);
    }

    #[test]
    fn lines_decide_mac_once_for_the_whole_message() {
        let unix: Vec<_> = lines(b"A: 1\nx\ry\r\n\nz").collect();
        assert_eq!(
            unix,
            [
                (&b"A: 1"[..], &b"\n"[..]),
                (b"x\ry", b"\r\n"),
                (b"", b"\n"),
                (b"z", b""),
            ]
        );
        let mac: Vec<_> = lines(b"A: 1\r\rb\r\n").collect();
        assert_eq!(
            mac,
            [(&b"A: 1"[..], &b"\r"[..]), (b"", b"\r"), (b"b", b"\r\n")]
        );
    }
}
