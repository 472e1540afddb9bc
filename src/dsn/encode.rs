//! Encoding untrusted text for a DSN: one-line and visible forms, truncation, typed and
//! UTF-8 addresses (RFC 3461 xtext, RFC 6533 utf-8-addr-xtext and -unitext), 7-bit field
//! text and quoted-printable.

use std::fmt::Write as _;

use super::{ADDRESS_LIMIT, ELLIPSIS, TEXT_WIDTH};

/// Runs of control characters (line breaks of a multi-line reply, tabs) become one space.
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_control = false;
    for c in s.chars() {
        if c.is_control() {
            if !in_control {
                out.push(' ');
            }
            in_control = true;
        } else {
            out.push(c);
            in_control = false;
        }
    }
    out.trim().to_string()
}

/// Control characters shown as escapes, so a hostile address is visible as what it is.
pub(super) fn visible(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Cuts `s` to at most `limit` characters, marking the cut.
pub(super) fn truncated(s: &str, limit: usize) -> String {
    if s.chars().count() <= limit {
        return s.to_string();
    }
    let keep = limit.saturating_sub(ELLIPSIS.len());
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(ELLIPSIS);
    out
}

/// `addr-type; address` for `message/global-delivery-status`. A clean ASCII address keeps
/// its type (as Postfix does, `utf-8` only for real UTF-8 addresses); a UTF-8 one is
/// written in its native form, `utf-8; jörg@bücher.example` (RFC 6533 §3 SHOULD). An
/// address with controls or spaces cannot be native: it is written as utf-8-addr-unitext,
/// native UTF-8 with `\x{HEX}` escapes for exactly those characters (and `\ + =`).
pub(super) fn global_typed_address(addr_type: &str, addr: &str) -> String {
    let is_utf8_type = addr_type.eq_ignore_ascii_case("utf-8");
    if !is_utf8_type && addr.is_ascii() {
        return typed_address(addr_type, addr);
    }
    let raw = if is_utf8_type {
        utf8_addr_xtext_decode(addr)
    } else {
        addr.to_string()
    };
    let native = raw.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if native {
        return format!("utf-8; {}", truncated_octets(&raw, ADDRESS_LIMIT));
    }
    let mut out = String::new();
    for c in raw.chars() {
        let piece = if c.is_control() || c.is_whitespace() || matches!(c, '\\' | '+' | '=') {
            format!("\\x{{{:X}}}", u32::from(c))
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > ADDRESS_LIMIT {
            break;
        }
        out.push_str(&piece);
    }
    format!("utf-8; {out}")
}

/// Cuts `s` to at most `limit` octets at a character boundary, marking the cut: a line
/// limit counts octets, and UTF-8 characters take up to four.
pub(super) fn truncated_octets(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut keep = limit.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..keep])
}

/// `addr-type; address` for part 2. A clean ASCII address keeps its type; one with
/// non-ASCII or control characters, or of type `utf-8`, is written as RFC 6533
/// `utf-8; utf-8-addr-xtext`, which escapes both, so nothing is lost and nothing injected.
pub(super) fn typed_address(addr_type: &str, addr: &str) -> String {
    let known_type = !addr_type.is_empty()
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let is_utf8_type = addr_type.eq_ignore_ascii_case("utf-8");
    let clean = addr.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if known_type && !is_utf8_type && clean {
        return format!("{addr_type}; {}", truncated(addr, ADDRESS_LIMIT));
    }
    let raw = if is_utf8_type {
        utf8_addr_xtext_decode(addr)
    } else {
        addr.to_string()
    };
    format!("utf-8; {}", utf8_addr_xtext(&raw, ADDRESS_LIMIT))
}

/// RFC 6533 utf-8-addr-xtext: non-ASCII, `\`, `+`, `=`, SP and controls as `\x{HEX}`.
/// Stops before `limit` bytes without cutting an escape.
fn utf8_addr_xtext(addr: &str, limit: usize) -> String {
    let mut out = String::new();
    for c in addr.chars() {
        let piece = if c.is_ascii_graphic() && !matches!(c, '\\' | '+' | '=') {
            c.to_string()
        } else {
            format!("\\x{{{:X}}}", u32::from(c))
        };
        if out.len() + piece.len() > limit {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// Undoes `\x{HEX}` escapes, so an ORCPT given in utf-8-addr-xtext form is not escaped
/// twice. Anything else is kept as it is.
pub(super) fn utf8_addr_xtext_decode(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("\\x{") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 3..];
        let decoded = after.split_once('}').and_then(|(hex, tail)| {
            if !(1..=6).contains(&hex.len()) {
                return None;
            }
            let code = u32::from_str_radix(hex, 16).ok()?;
            Some((char::from_u32(code)?, tail))
        });
        match decoded {
            Some((c, tail)) => {
                out.push(c);
                rest = tail;
            }
            _ => {
                out.push_str("\\x{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Untrusted text for one part-2 field: controls folded to spaces, non-ASCII as `?`
/// (part 2 must stay US-ASCII; part 1 shows the real text), cut to `limit`.
pub(super) fn ascii_text(s: &str, limit: usize) -> String {
    let ascii: String = one_line(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    truncated(&ascii, limit)
}

/// RFC 2045 quoted-printable of CRLF text, lines at most 76 characters. `=` is always
/// encoded, so `=_` (which every boundary we pick contains) never appears.
pub(super) fn quoted_printable(crlf_text: &[u8]) -> String {
    let mut out = String::new();
    let mut lines = crlf_text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let is_last = lines.peek().is_none();
        if is_last && line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        quoted_printable_line(line, &mut out);
        if !is_last {
            out.push_str("\r\n");
        }
    }
    out
}

fn quoted_printable_line(line: &[u8], out: &mut String) {
    let mut column = 0;
    for (i, &b) in line.iter().enumerate() {
        let at_end = i + 1 == line.len();
        let literal = (b.is_ascii_graphic() && b != b'=') || ((b == b' ' || b == b'\t') && !at_end);
        let width = if literal { 1 } else { 3 };
        // Leave room for the `=` of a soft line break.
        if column + width > TEXT_WIDTH - 1 {
            out.push_str("=\r\n");
            column = 0;
        }
        if literal {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
        column += width;
    }
}

/// The address without one pair of surrounding angle brackets: Final-Recipient carries
/// none (RFC 3464 §2.3.2).
pub(super) fn bare_address(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(addr)
}
