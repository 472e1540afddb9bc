//! Envelope addresses: the reverse-path (which may be null) and recipient mailboxes.
//!
//! Addresses come from strangers. They are kept exactly as the envelope carried them
//! (case preserved); `Mailbox::parse` only splits them, and callers that build paths or
//! headers from them must check them first (see `deliver::maildir`, `dsn`).
//!
//! **One rule for "the same mailbox"** (`Mailbox::canonical`), used by duplicate
//! detection at ingest and by the Maildir store's folders and file names, so the two never
//! disagree: quoting that is only syntax is undone (`"carol"` is `carol`, `"a\"b"` is
//! `a"b`); the local part's ASCII letters are lowercased, as Dovecot (`%Lu`) and Postfix
//! treat local parts; other characters of the local part are kept as given (RFC 6531 leaves
//! non-ASCII local parts to the store, so `JÖRG` and `jÖrg` are one mailbox, `jörg` another);
//! the domain is IDNA-normalised (UTS #46: the Unicode form, case-folded, so
//! `EXÄMPLE.NET`, `exämple.net` and `xn--exmple-cua.net` are one domain).
//!
//! Only what a delimiter could split (ASCII space and tab) is trimmed from an address:
//! other whitespace such as U+0085 is a control character and is kept, so the checks
//! downstream refuse it instead of it vanishing silently.

use std::fmt;

/// The RFC 3461 values travel with addresses; their home is `rfc3461`.
pub use crate::rfc3461::{Notify, ReturnContent};

/// The envelope sender. The null reverse-path `<>` is its own variant, never an empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Address(String),
}

impl ReversePath {
    /// Parses an envelope sender as found in a spool: `""`, `"<>"` and `"MAILER-DAEMON"`-free
    /// forms; surrounding angle brackets and whitespace are dropped.
    pub fn parse(raw: &str) -> ReversePath {
        let inner = unbracketed(raw);
        if inner.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Address(inner.to_string())
        }
    }

    /// Whether this can be an SMTP reverse-path (RFC 5321 4.1.2), and so the address of a
    /// DSN: the null sender, or `local@domain` (a source route `@a,@b:` before it is
    /// allowed and ignored) with no control characters, a dot-string or quoted local
    /// part, a domain of letters, digits, `-`, `_` and non-ASCII (or an address literal),
    /// within the 256-octet path limit (4.5.3.1.3). `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let ReversePath::Address(address) = self else {
            return Ok(());
        };
        let shown = || crate::sanitize::for_terminal(address);
        if let Some(c) = address.chars().find(|c| c.is_control()) {
            return Err(format!(
                "sender `{}` contains the control character {}: it cannot be a return path",
                shown(),
                crate::sanitize::for_terminal(&c.to_string())
            ));
        }
        // `<` and `>` are part of the path's 256 octets.
        if address.len() + 2 > MAX_PATH_OCTETS {
            return Err(format!(
                "sender is {} octets, longer than the {MAX_PATH_OCTETS} of an SMTP path \
                 (RFC 5321 4.5.3.1.3)",
                address.len() + 2
            ));
        }
        let mailbox = match address.split_once(':') {
            Some((route, rest)) if route.starts_with('@') => rest,
            _ => address,
        };
        let Some((local, domain)) = mailbox.rsplit_once('@') else {
            return Err(format!(
                "sender `{}` has no `@domain`: it cannot be a return path (give `\"\"` for \
                 the null sender of a bounce)",
                shown()
            ));
        };
        check_local(local).map_err(|why| format!("sender `{}`: {why}", shown()))?;
        check_domain_syntax(domain).map_err(|why| format!("sender `{}`: {why}", shown()))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }

    /// The address, or `""` for the null sender (the form the ledger stores).
    pub fn as_str(&self) -> &str {
        match self {
            ReversePath::Null => "",
            ReversePath::Address(a) => a,
        }
    }
}

impl fmt::Display for ReversePath {
    /// The SMTP form: `<>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.as_str())
    }
}

/// A recipient mailbox split at its last `@`. The parts are raw: not validated for use
/// as a path or a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address `{0}` has no `@domain`")]
    NoDomain(String),
    #[error("address `{0}` has an empty local part")]
    EmptyLocal(String),
}

impl Mailbox {
    pub fn parse(raw: &str) -> Result<Mailbox, AddressError> {
        let inner = unbracketed(raw);
        if inner.is_empty() {
            return Err(AddressError::Empty);
        }
        let Some((local, domain)) = inner.rsplit_once('@') else {
            return Err(AddressError::NoDomain(inner.to_string()));
        };
        if local.is_empty() {
            return Err(AddressError::EmptyLocal(inner.to_string()));
        }
        if domain.is_empty() {
            return Err(AddressError::NoDomain(inner.to_string()));
        }
        Ok(Mailbox {
            local: local.to_string(),
            domain: domain.to_string(),
        })
    }
}

impl Mailbox {
    /// The local part as the store names the mailbox: quoting undone (`"john doe"` →
    /// `john doe`, `"a\"b"` → `a"b`), ASCII letters lowercased.
    pub fn canonical_local(&self) -> String {
        unquote_local(&self.local).to_ascii_lowercase()
    }

    /// The domain in one form: IDNA (UTS #46) to Unicode, case-folded; a domain IDNA
    /// refuses (a bad `xn--` label) is only lowercased.
    pub fn canonical_domain(&self) -> String {
        canonical_domain(&self.domain)
    }

    /// `local@domain` in the form two spellings of one mailbox share (see the module
    /// comment): what duplicate detection compares and Maildir names hash.
    pub fn canonical(&self) -> String {
        format!("{}@{}", self.canonical_local(), self.canonical_domain())
    }

    /// `canonical` of a raw address; an address that does not parse is its own key
    /// (it matches only itself).
    pub fn canonical_key(raw: &str) -> String {
        Mailbox::parse(raw).map_or_else(|_| raw.to_string(), |m| m.canonical())
    }
}

/// Longest reverse- or forward-path, brackets included (RFC 5321 4.5.3.1.3).
const MAX_PATH_OCTETS: usize = 256;

/// Trims ASCII spaces and tabs only (see the module comment on U+0085).
fn trim_blanks(raw: &str) -> &str {
    raw.trim_matches([' ', '\t'])
}

/// The one place angle brackets come off an address: blanks around it, then one pair of
/// brackets that encloses all of it, then blanks inside (`" <a@b> "` → `a@b`).
pub fn unbracketed(raw: &str) -> &str {
    let trimmed = trim_blanks(raw);
    trim_blanks(
        trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed),
    )
}

/// `"john doe"` → `john doe`, `"a\"b"` → `a"b`; anything else unchanged.
pub fn unquote_local(local: &str) -> String {
    let Some(inner) = local
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|_| local.len() >= 2)
    else {
        return local.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

fn canonical_domain(domain: &str) -> String {
    let plain_ascii = domain.is_ascii()
        && !domain
            .split('.')
            .any(|label| label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--"));
    if plain_ascii {
        // What UTS #46 gives for these, without its tables (the common case, 100k times
        // per big message).
        return domain.to_ascii_lowercase();
    }
    match idna::domain_to_unicode(domain) {
        (unicode, Ok(())) => unicode,
        (_, Err(_)) => domain.to_lowercase(),
    }
}

/// RFC 5321 atext, plus non-ASCII (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A Dot-string or a Quoted-string (RFC 5321 4.1.2), not empty.
fn check_local(local: &str) -> Result<(), String> {
    if let Some(quoted) = local.strip_prefix('"') {
        let Some(inner) = quoted.strip_suffix('"') else {
            return Err("its local part opens a quote it does not close".into());
        };
        let mut chars = inner.chars();
        let mut empty = true;
        while let Some(c) = chars.next() {
            empty = false;
            match c {
                '\\' if chars.next().is_none() => {
                    return Err("its local part ends in a lone backslash".into());
                }
                '\\' => {}
                '"' => return Err("its local part has a quote inside the quotes".into()),
                _ => {}
            }
        }
        if empty {
            return Err("its local part is empty".into());
        }
        return Ok(());
    }
    if local.is_empty() {
        return Err("its local part is empty".into());
    }
    if local.split('.').any(str::is_empty) {
        return Err("its local part has an empty dot-separated part".into());
    }
    match local.chars().find(|&c| c != '.' && !is_atext(c)) {
        Some(c) => Err(format!(
            "its local part holds `{}`, which needs quoting",
            crate::sanitize::for_terminal(&c.to_string())
        )),
        None => Ok(()),
    }
}

/// A domain (letters, digits, `-`, `_`, non-ASCII; no empty label) or an address literal.
fn check_domain_syntax(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("its domain is empty".into());
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let ok = literal.strip_suffix(']').is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
        });
        return if ok {
            Ok(())
        } else {
            Err("its domain is not a well-formed address literal".into())
        };
    }
    if domain.split('.').any(str::is_empty) {
        return Err("its domain has an empty label".into());
    }
    match domain.chars().find(|&c| {
        c != '.' && !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
    }) {
        Some(c) => Err(format!(
            "its domain holds `{}`, which no domain name may hold",
            crate::sanitize::for_terminal(&c.to_string())
        )),
        None => Ok(()),
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_sender_forms() {
        assert_eq!(ReversePath::parse(""), ReversePath::Null);
        assert_eq!(ReversePath::parse("<>"), ReversePath::Null);
        assert_eq!(ReversePath::parse(" < > "), ReversePath::Null);
        assert_eq!(
            ReversePath::parse("<a@b.test>"),
            ReversePath::Address("a@b.test".into())
        );
        assert_eq!(ReversePath::Null.to_string(), "<>");
    }

    #[test]
    fn one_mailbox_in_every_spelling() {
        let key = Mailbox::canonical_key;
        assert_eq!(key("Bob@Example.NET"), "bob@example.net");
        assert_eq!(key("\"carol\"@example.net"), key("carol@example.net"));
        assert_eq!(key("<\"Carol\"@EXAMPLE.net>"), "carol@example.net");
        assert_eq!(key("\"john doe\"@x.test"), "john doe@x.test");
        assert_eq!(key("\"a\\\"b\"@x.test"), "a\"b@x.test");
        // IDNA: the Unicode form, case-folded, whatever the spelling.
        assert_eq!(key("a@EXÄMPLE.NET"), "a@exämple.net");
        assert_eq!(key("a@exämple.net"), "a@exämple.net");
        assert_eq!(key("a@xn--exmple-cua.net"), "a@exämple.net");
        assert_eq!(key("a@XN--EXMPLE-CUA.NET"), "a@exämple.net");
        // Non-ASCII local parts: only ASCII letters fold.
        assert_eq!(key("JÖRG@x.test"), "jÖrg@x.test");
        assert_ne!(key("JÖRG@x.test"), key("jörg@x.test"));
        // Different mailboxes stay different.
        assert_ne!(key("bob@example.net"), key("bob@example.org"));
        assert_ne!(key("bob+1@example.net"), key("bob@example.net"));
        // Unparsable: only itself.
        assert_eq!(key("nobody"), "nobody");
    }

    #[test]
    fn only_blanks_are_trimmed() {
        assert_eq!(
            Mailbox::parse(" bob@x.test\t").unwrap().domain,
            "x.test",
            "spaces and tabs go"
        );
        assert_eq!(
            Mailbox::parse("bob@x.test\u{85}").unwrap().domain,
            "x.test\u{85}",
            "U+0085 stays, for the control checks to refuse"
        );
        assert_eq!(
            ReversePath::parse("a@x.test\u{85}"),
            ReversePath::Address("a@x.test\u{85}".into())
        );
    }

    #[test]
    fn return_paths() {
        let check = |raw: &str| ReversePath::parse(raw).check();
        for good in [
            "",
            "<>",
            "a@example.org",
            "<a.b+c@example.org>",
            "\"john doe\"@example.org",
            "\"a\\\"b\"@example.org",
            "jörg@exämple.net",
            "a@[192.0.2.1]",
            "a@sub_domain.example.org",
            "@relay.test:a@example.org",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        for (bad, why) in [
            (
                "alice@example.org\r\nBcc: victim@evil.com",
                "control character",
            ),
            ("a\u{1b}[31m@example.org", "control character"),
            ("a@example.org\u{85}", "control character"),
            (long.as_str(), "longer than the 256"),
            ("<@>", "local part is empty"),
            ("<\"\">", "no `@domain`"),
            ("<\"\"@>", "local part is empty"),
            ("a@", "domain is empty"),
            ("\"\"@example.org", "local part is empty"),
            ("MAILER-DAEMON", "no `@domain`"),
            ("a@example.org> BODY=8BITMIME", "domain holds `>`"),
            ("a b@example.org", "needs quoting"),
            ("a..b@example.org", "empty dot-separated"),
            ("\"ab@example.org", "does not close"),
            ("a@example..org", "empty label"),
            ("a@[1.2.3.4", "address literal"),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: `{err}` does not say `{why}`");
        }
    }

    #[test]
    fn mailbox_splits_at_last_at() {
        let m = Mailbox::parse("\"a@b\"@example.test").unwrap();
        assert_eq!(m.local, "\"a@b\"");
        assert_eq!(m.domain, "example.test");
        assert_eq!(
            Mailbox::parse("nobody"),
            Err(AddressError::NoDomain("nobody".into()))
        );
        assert!(Mailbox::parse("@x").is_err());
        assert!(Mailbox::parse("x@").is_err());
    }
}
