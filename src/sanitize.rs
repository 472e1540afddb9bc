//! Making untrusted text (addresses, subjects, server replies, file names) safe to print.
//!
//! Output is always a single line with nothing a terminal would interpret: control
//! characters become `\xNN` (C0, DEL) or `\u{NN}` (C1), tab, CR and LF become `\t`, `\r`,
//! `\n`, and characters that reorder or break the displayed line (the Unicode `Bidi_Control`
//! set, used by "Trojan Source" tricks, and the line/paragraph separators) become `\u{NNNN}`,
//! as do the invisible ones that make two different strings look alike (zero-width
//! characters, the BOM, the soft hyphen, tag characters; fd escapes the same set).
//! Text that needs none of this is returned borrowed, without a copy.
//! Backslashes themselves are left alone: the output is for people to read, not to parse
//! back, and doubling every backslash would make ordinary paths harder to read.

use std::borrow::Cow;
use std::fmt::Write;

/// Returns `s` with control, bidi-control, invisible and line-breaking characters replaced
/// by visible escapes; ordinary printable Unicode (accents, CJK, emoji) is kept.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(needs_escape) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// Like [`for_terminal`] for bytes that may not be UTF-8 (raw header bytes, file names):
/// valid UTF-8 runs are sanitized as text and every invalid byte becomes `\xNN`, so no
/// information is lost to `U+FFFD`.
pub fn bytes_for_terminal(b: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(b) {
        return for_terminal(text);
    }
    let mut out = String::with_capacity(b.len() + 8);
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for byte in chunk.invalid() {
            push_hex_byte(&mut out, *byte);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_ascii_control() || is_hidden(c)
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        // C0 and DEL: the familiar byte form.
        '\0'..='\x1f' | '\x7f' => push_hex_byte(out, c as u8),
        _ if is_hidden(c) => push_unicode_escape(out, c),
        _ => out.push(c),
    }
}

/// C1 controls, `Bidi_Control` (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069),
/// the Unicode line and paragraph separators, and the invisible: the soft hyphen (U+00AD),
/// zero-width space, non-joiner and joiner (U+200B–U+200D), the word joiner and invisible
/// operators (U+2060–U+2064), the BOM / zero-width no-break space (U+FEFF) and the tag
/// characters (U+E0000–U+E007F), which can hide text inside an address or a subject.
fn is_hidden(c: char) -> bool {
    matches!(
        c,
        '\u{80}'..='\u{9f}'
            | '\u{ad}'
            | '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

fn push_hex_byte(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

fn push_unicode_escape(out: &mut String, c: char) {
    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(for_terminal(input), expected, "input {input:?}");
    }

    #[test]
    fn printable_text_is_kept() {
        check("", "");
        check("Grüße aus Köln — 東京 🎉", "Grüße aus Köln — 東京 🎉");
        check(r"C:\spool\q1", r"C:\spool\q1");
    }

    #[test]
    fn escape_sequences_are_neutralised() {
        check("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m");
        check("bell\x07", "bell\\x07");
        check("nul\0", "nul\\x00");
        check("del\x7f", "del\\x7f");
    }

    #[test]
    fn output_stays_on_one_line() {
        check("a\tb\r\nc", "a\\tb\\r\\nc");
        check("line\u{2028}sep\u{2029}", "line\\u{2028}sep\\u{2029}");
    }

    #[test]
    fn c1_controls_are_escaped() {
        // U+009B is the 8-bit CSI: some terminals act on it like ESC [.
        check("\u{9b}31m", "\\u{9b}31m");
        check("\u{85}", "\\u{85}");
        check("\u{80}\u{9f}\u{a0}", "\\u{80}\\u{9f}\u{a0}");
    }

    #[test]
    fn bidi_controls_are_escaped() {
        check("invoice\u{202e}fdp.exe", "invoice\\u{202e}fdp.exe");
        check("\u{202a}\u{202d}", "\\u{202a}\\u{202d}");
        check("\u{2066}x\u{2069}", "\\u{2066}x\\u{2069}");
        check("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}");
        // Neighbours of the ranges are ordinary characters.
        check(
            "\u{2029}\u{202f}\u{2065}\u{206a}",
            "\\u{2029}\u{202f}\u{2065}\u{206a}",
        );
    }

    #[test]
    fn invisible_characters_are_escaped() {
        // Zero-width space, non-joiner, joiner: `bob@exa\u{200b}mple.net` looks like bob's.
        check(
            "a\u{200b}b\u{200c}c\u{200d}d",
            "a\\u{200b}b\\u{200c}c\\u{200d}d",
        );
        check("\u{feff}Subject", "\\u{feff}Subject");
        check("pay\u{ad}pal", "pay\\u{ad}pal");
        check("\u{2060}\u{2064}", "\\u{2060}\\u{2064}");
        // Tag characters spell hidden ASCII (U+E0041 is a tag `A`).
        check("hi\u{e0041}\u{e007f}", "hi\\u{e0041}\\u{e007f}");
        // Neighbours of the ranges are ordinary characters.
        check(
            "\u{ac}\u{ae}\u{2065}\u{fefe}",
            "\u{ac}\u{ae}\u{2065}\u{fefe}",
        );
        check("\u{e0080}", "\u{e0080}");
    }

    #[test]
    fn clean_text_is_not_copied() {
        assert!(matches!(for_terminal("Grüße 東京"), Cow::Borrowed(_)));
        assert!(matches!(bytes_for_terminal(b"plain"), Cow::Borrowed(_)));
        assert!(matches!(for_terminal("tab\t"), Cow::Owned(_)));
        assert!(matches!(bytes_for_terminal(b"\xff"), Cow::Owned(_)));
    }

    #[test]
    fn bytes_keep_invalid_utf8_visible() {
        assert_eq!(bytes_for_terminal(b"ok"), "ok");
        assert_eq!(bytes_for_terminal(b"a\xffb"), "a\\xffb");
        assert_eq!(bytes_for_terminal(b"\xc3"), "\\xc3");
        assert_eq!(bytes_for_terminal("é\x1b".as_bytes()), "é\\x1b");
        assert_eq!(bytes_for_terminal(b"\xe2\x80\xaeevil"), "\\u{202e}evil");
        assert_eq!(bytes_for_terminal(b"x\r\n"), "x\\r\\n");
    }
}
