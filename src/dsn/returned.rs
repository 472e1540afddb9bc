//! Part 3 of a DSN: the returned original (`message/rfc822`, `message/global`) or its
//! header (`text/rfc822-headers`, `message/global-headers`), and which of them it can be.

use crate::address::ReturnContent;
use crate::line_ends;

use super::encode::quoted_printable;
use super::{Action, DsnRequest, LINE_LIMIT};

/// What part 3 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Returned {
    Full,
    Headers,
}

/// Part 3, or `None` when nothing can usefully be returned (an empty header, or a header
/// alone larger than the return limit).
pub(super) fn returned_part(req: &DsnRequest<'_>) -> Option<(Returned, Vec<u8>)> {
    let any_failed = req.recipients.iter().any(|r| r.action == Action::Failed);
    let wants_full = req.ret != Some(ReturnContent::Headers)
        && any_failed
        && req.original.len() <= req.return_limit;
    if wants_full && let Some(part) = full_part(req) {
        return Some((Returned::Full, part));
    }
    headers_part(req).map(|part| (Returned::Headers, part))
}

/// The whole original, when it can travel as it is: 7-bit, or 8-bit on an SMTPUTF8 path
/// (`message/global` may carry 8bit; `message/rfc822` on a 7-bit path may not, and never
/// takes base64/QP, RFC 2046 §5.2.1).
fn full_part(req: &DsnRequest<'_>) -> Option<Vec<u8>> {
    let full = normalise_line_ends(req.original);
    let content_type = if req.smtputf8 {
        "message/global"
    } else {
        "message/rfc822"
    };
    let encoding = if is_seven_bit(&full) {
        "7bit"
    } else if req.smtputf8 && is_eight_bit(&full) {
        "8bit"
    } else {
        return None;
    };
    let mut part =
        format!("Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n")
            .into_bytes();
    part.extend_from_slice(&full);
    Some(part)
}

fn headers_part(req: &DsnRequest<'_>) -> Option<Vec<u8>> {
    let mut header = normalise_line_ends(header_section(req.original));
    if header.is_empty() || header.len() > req.return_limit {
        return None;
    }
    if !header.ends_with(b"\r\n") {
        header.extend_from_slice(b"\r\n");
    }
    let content_type = if req.smtputf8 {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    let mut part = format!("Content-Type: {content_type}\r\n").into_bytes();
    if is_seven_bit(&header) {
        part.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n\r\n");
        part.extend_from_slice(&header);
    } else if req.smtputf8 && is_eight_bit(&header) {
        part.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n\r\n");
        part.extend_from_slice(&header);
    } else {
        part.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        part.extend_from_slice(quoted_printable(&header).as_bytes());
    }
    Some(part)
}

/// The header lines up to (not including) the first empty line; the whole input when it
/// has no empty line. Lines end as `line_ends` says (classic-Mac CRs included).
pub(super) fn header_section(message: &[u8]) -> &[u8] {
    let mut start = 0;
    for (text, end) in line_ends::lines(message) {
        if text.is_empty() && !end.is_empty() {
            return &message[..start];
        }
        start += text.len() + end.len();
    }
    message
}

/// Every line end CRLF, by the one rule of `line_ends`.
pub(super) fn normalise_line_ends(bytes: &[u8]) -> Vec<u8> {
    line_ends::to_crlf(bytes).into_owned()
}

/// Legal as 7bit MIME content (RFC 2045 §2.7): no 8-bit bytes, no NUL, lines of at most
/// 998 octets. Expects CRLF line ends.
fn is_seven_bit(crlf_text: &[u8]) -> bool {
    crlf_text.is_ascii() && is_eight_bit(crlf_text)
}

/// Legal as 8bit MIME content (RFC 2045 §2.8): no NUL, CR only in CRLF, lines of at most
/// 998 octets. Expects CRLF line ends (a bare CR left in a line by the line-end rule makes
/// the text not 8bit: it then travels quoted-printable, headers only).
fn is_eight_bit(crlf_text: &[u8]) -> bool {
    !crlf_text.contains(&0)
        && !has_bare_cr(crlf_text)
        && crlf_text
            .split(|&b| b == b'\n')
            .all(|line| line.strip_suffix(b"\r").unwrap_or(line).len() <= LINE_LIMIT)
}

fn has_bare_cr(text: &[u8]) -> bool {
    text.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && text.get(i + 1) != Some(&b'\n'))
}
