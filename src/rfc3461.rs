//! RFC 3461 DSN parameters as values: NOTIFY, RET and the xtext they travel in.
//!
//! Each value parses (`FromStr`) and prints (`Display`) in its wire spelling, so the spool
//! readers, the ledger, the SMTP/LMTP client and the DSN builder share one: a value is
//! parsed once where it enters (a spool file, a ledger row) and stays typed after.

use std::fmt;
use std::str::FromStr;

/// RFC 3461 NOTIFY, as a set. `None` at the use site means "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// No keyword at all: what a spool that gave no NOTIFY leaves.
    pub fn is_empty(&self) -> bool {
        *self == Notify::default()
    }
}

impl FromStr for Notify {
    type Err = String;

    /// `NEVER`, or a comma list of SUCCESS, FAILURE, DELAY (any case, blanks around items).
    fn from_str(value: &str) -> Result<Notify, String> {
        let mut notify = Notify::default();
        for word in value.split(',').map(str::trim) {
            match word.to_ascii_uppercase().as_str() {
                "NEVER" => notify.never = true,
                "SUCCESS" => notify.success = true,
                "FAILURE" => notify.failure = true,
                "DELAY" => notify.delay = true,
                "" => return Err(format!("has an empty item in `{value}`")),
                _ => {
                    return Err(format!(
                        "has unknown value `{word}` (expected NEVER, SUCCESS, FAILURE or DELAY)"
                    ));
                }
            }
        }
        if notify.never && (notify.success || notify.failure || notify.delay) {
            return Err(format!("combines NEVER with other values in `{value}`"));
        }
        Ok(notify)
    }
}

impl fmt::Display for Notify {
    /// `NEVER` or the comma list in RFC order; nothing for an empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.never {
            return f.write_str("NEVER");
        }
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        f.write_str(&words.join(","))
    }
}

/// RFC 3461 RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnContent {
    Full,
    Headers,
}

impl FromStr for ReturnContent {
    type Err = String;

    fn from_str(value: &str) -> Result<ReturnContent, String> {
        if value.eq_ignore_ascii_case("FULL") {
            Ok(ReturnContent::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Ok(ReturnContent::Headers)
        } else {
            Err(format!("must be FULL or HDRS, not `{value}`"))
        }
    }
}

impl fmt::Display for ReturnContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReturnContent::Full => "FULL",
            ReturnContent::Headers => "HDRS",
        })
    }
}

/// RFC 3461 4: `+`, `=`, and anything outside `!`..`~` become `+XX`.
pub fn xtext_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes RFC 3461 xtext: `+XX` (two hex digits) is the byte 0xXX. A `+` not followed by
/// two hex digits is kept as it is, since being lenient with strangers' parameters beats
/// losing them. Bytes that are not UTF-8 become U+FFFD.
pub fn xtext_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(hex_byte);
        match (bytes[i], hex) {
            (b'+', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(pair).ok()?;
    if text.len() != 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

/// Checks an ORCPT value, `addr-type;address` (xtext-decoded), as a spool gives it.
pub fn check_orcpt(orcpt: &str) -> Result<(), String> {
    match orcpt.split_once(';') {
        Some((kind, addr)) if !kind.trim().is_empty() && !addr.trim().is_empty() => Ok(()),
        _ => Err(format!("must be `addr-type;address`, not `{orcpt}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_round_trips() {
        for text in ["NEVER", "SUCCESS", "FAILURE,DELAY", "SUCCESS,FAILURE,DELAY"] {
            let notify: Notify = text.parse().unwrap();
            assert_eq!(notify.to_string(), text);
        }
        let all: Notify = "success,FAILURE,Delay".parse().unwrap();
        assert!(all.success && all.failure && all.delay && !all.never);
        let mixed: Notify = " delay , Failure".parse().unwrap();
        assert_eq!(mixed.to_string(), "FAILURE,DELAY");
        assert_eq!(Notify::default().to_string(), "");
        assert!("".parse::<Notify>().is_err());
        assert!("FAILURE,".parse::<Notify>().is_err());
        assert!("DELAY,NEVER".parse::<Notify>().is_err());
        assert!("SOMETIMES".parse::<Notify>().is_err());
    }

    #[test]
    fn ret_round_trips() {
        for ret in [ReturnContent::Full, ReturnContent::Headers] {
            assert_eq!(ret.to_string().parse::<ReturnContent>(), Ok(ret));
        }
        assert_eq!("hdrs".parse::<ReturnContent>(), Ok(ReturnContent::Headers));
        assert!("BODY".parse::<ReturnContent>().is_err());
    }

    #[test]
    fn xtext_round_trips() {
        for value in ["rfc822;a@b.test", "a+b=c d", "caf\u{e9}@x", ""] {
            assert_eq!(xtext_decode(&xtext_encode(value)), value);
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("+zz+4"), "+zz+4");
    }

    #[test]
    fn xtext_decodes_plus_hex_and_keeps_malformed_escapes() {
        assert_eq!(xtext_decode("QQ+2B1"), "QQ+1");
        assert_eq!(xtext_decode("a+3Db+2Bc"), "a=b+c");
        assert_eq!(xtext_decode("plain"), "plain");
        assert_eq!(xtext_decode("bad+zz"), "bad+zz");
        assert_eq!(xtext_decode("trail+4"), "trail+4");
        assert_eq!(xtext_decode("+2b"), "+");
        assert_eq!(xtext_decode("j+C3+B6rg"), "jörg");
        assert_eq!(xtext_decode(""), "");
    }
}
