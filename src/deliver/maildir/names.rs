//! Where a Maildir copy goes: which addresses may have a folder (untrusted parts checked
//! before any path is built), the folder of a mailbox (`Target`), the file name of a copy
//! (`file_name`, `legacy_file_name`, `name_hash`) and the bytes stored (`stored_bytes`).
//! Pure: no IO.

use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use super::super::{Answer, Delivery, Outcome};
use crate::address::{Mailbox, ReversePath};
use crate::{line_ends, sanitize};

/// Longest local part RFC 5321 (4.5.3.1.1) allows.
const MAX_LOCAL_OCTETS: usize = 64;
/// Longest domain RFC 5321 (4.5.3.1.2) allows, which is also the usual file name limit.
const MAX_DOMAIN_OCTETS: usize = 255;
/// How much of a refused address the reply quotes.
const MAX_QUOTED_CHARS: usize = 80;

/// A recipient whose parts are safe to use as path components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The address as the envelope gave it (brackets and spaces dropped, case kept).
    pub(super) given: String,
    /// Canonical local part (`Mailbox::canonical_local`): the mailbox folder name.
    pub(super) local: String,
    /// Canonical domain (IDNA, case-folded): the domain folder name.
    pub(super) domain: String,
    /// The domain folder versions before IDNA normalisation used (ASCII-lowercased only),
    /// where a copy from such a version may be.
    pub(super) legacy_domain: String,
}

impl Target {
    /// The canonical mailbox: what the file name hash and duplicate check use.
    pub(super) fn key(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Checks an untrusted recipient for use as a path; the error is a reason for the reply.
pub(super) fn check_recipient(raw: &str) -> Result<Target, String> {
    // Before parsing: `Mailbox::parse` trims, which would hide a trailing CRLF.
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "address contains the control character {}",
            sanitize::for_terminal(&c.to_string())
        ));
    }
    let mailbox = Mailbox::parse(raw).map_err(|e| match e {
        crate::address::AddressError::Empty => "address is empty".to_string(),
        crate::address::AddressError::NoDomain(_) => "address has no `@domain`".to_string(),
        crate::address::AddressError::EmptyLocal(_) => "local part is empty".to_string(),
    })?;
    // A quoted local part (`"john doe"@x`) names the mailbox `john doe`: the quotes are
    // syntax, not part of the name (RFC 5321 4.1.2), so they do not go into the folder.
    let local = mailbox.canonical_local();
    check_path_part("local part", &local)?;
    if mailbox.local.len() > MAX_LOCAL_OCTETS {
        return Err(format!(
            "local part is {} octets, more than the {MAX_LOCAL_OCTETS} RFC 5321 allows",
            mailbox.local.len()
        ));
    }
    // The form that becomes the folder is the one checked: IDNA maps some characters
    // (a full-width solidus becomes `/`).
    check_path_part("domain", &mailbox.domain)?;
    let domain = mailbox.canonical_domain();
    check_path_part("domain", &domain)?;
    check_domain(&domain)?;
    Ok(Target {
        given: mailbox.to_string(),
        local,
        legacy_domain: mailbox.domain.to_ascii_lowercase(),
        domain,
    })
}

/// Rules that keep one part a single, ordinary path component.
fn check_path_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if part == "." || part == ".." {
        return Err(format!(
            "{what} `{part}` would name a directory outside the mailbox"
        ));
    }
    if let Some(c) = part.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(format!("{what} contains `{c}`, a path separator"));
    }
    if let Some(c) = part.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} contains the control character {}",
            sanitize::for_terminal(&c.to_string())
        ));
    }
    if part.len() > MAX_DOMAIN_OCTETS {
        return Err(format!(
            "{what} is {} octets, more than a file name may hold ({MAX_DOMAIN_OCTETS})",
            part.len()
        ));
    }
    Ok(())
}

/// Letters, digits, `-` and `.` (non-ASCII allowed for IDN), with no empty label.
fn check_domain(domain: &str) -> Result<(), String> {
    if let Some(c) = domain
        .chars()
        .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "domain contains `{c}`, which no domain name may hold"
        ));
    }
    if domain.split('.').any(str::is_empty) {
        return Err(format!(
            "domain `{}` has an empty label",
            sanitize::for_terminal(domain)
        ));
    }
    Ok(())
}

/// The sender goes into a header: refuse anything that could break it.
pub(super) fn check_sender(sender: &ReversePath) -> Option<String> {
    let address = sender.as_str();
    address.chars().find(|c| c.is_control()).map(|c| {
        format!(
            "sender `{}` contains the control character {}",
            quoted(address),
            sanitize::for_terminal(&c.to_string())
        )
    })
}

pub(super) fn refused(raw: &str, reason: &str) -> Outcome {
    Outcome::Failed {
        reply: Answer::Local(format!("recipient `{}` refused: {reason}", quoted(raw))),
        status: "5.1.3".to_string(),
        remote: None,
    }
}

/// An address safe to put in a reply: sanitized and cut short.
fn quoted(raw: &str) -> String {
    let clean = sanitize::for_terminal(raw).into_owned();
    if clean.chars().count() <= MAX_QUOTED_CHARS {
        clean
    } else {
        let cut: String = clean.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{cut}…")
    }
}

/// The bytes stored: delivery headers, then the message with LF line ends (`line_ends`).
pub(super) fn stored_bytes(sender: &ReversePath, recipient: &str, content: &[u8]) -> Vec<u8> {
    let header = format!("Return-Path: {sender}\nDelivered-To: {recipient}\n");
    let body = line_ends::to_lf(content);
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// `M{hash}.spoolreplay`: a function of the message key (content hash) and the canonical
/// mailbox only, the same in every run and from every spool that holds these bytes.
pub(super) fn file_name(delivery: &Delivery<'_>, target: &Target) -> String {
    format!(
        "M{}.spoolreplay",
        name_hash(delivery.message_key, &target.key())
    )
}

/// The name versions before canonical mailboxes gave a copy, kept so that a crash
/// recovery of their in-flight work finds it: `{arrival secs}.M{hash}.spoolreplay,S={size}`
/// with the hash over the mailbox as they lowercased it (quotes undone, ASCII only) and
/// `size` the stored bytes. Can go once no ledger of those versions is left in flight.
pub(super) fn legacy_file_name(delivery: &Delivery<'_>, target: &Target, size: usize) -> String {
    let key = format!("{}@{}", target.local, target.legacy_domain);
    let hex = name_hash(delivery.message_key, &key);
    let secs = delivery.arrival.timestamp().max(0);
    format!("{secs}.M{hex}.spoolreplay,S={size}")
}

/// The first 32 hex digits of SHA-256 over `message_key`, a NUL and `mailbox`.
pub(crate) fn name_hash(message_key: &str, mailbox: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(message_key.as_bytes());
    hasher.update([0u8]);
    hasher.update(mailbox.as_bytes());
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Lexically: `path` is `root` followed only by plain names (no `..`, no root, no prefix).
pub(super) fn stays_under(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused_because(raw: &str, reason: &str) {
        match check_recipient(raw) {
            Ok(t) => panic!("{raw:?} accepted as {t:?}"),
            Err(e) => assert!(e.contains(reason), "{raw:?}: {e}"),
        }
    }

    #[test]
    fn quoted_local_parts_lose_their_quotes_in_the_path() {
        let t = check_recipient("\"John Doe\"@Example.TEST").unwrap();
        assert_eq!(
            (t.local.as_str(), t.domain.as_str()),
            ("john doe", "example.test")
        );
        assert_eq!(crate::address::unquote_local("\"a\\\"b\""), "a\"b");
        assert_eq!(crate::address::unquote_local("plain"), "plain");
        assert_eq!(crate::address::unquote_local("\""), "\"");
        // Unquoting must not open a way out of the store.
        assert!(check_recipient("\"../x\"@example.test").is_err());
        assert!(check_recipient("\"..\"@example.test").is_err());
        assert!(check_recipient("\"a\\/b\"@example.test").is_err());
    }

    #[test]
    fn ordinary_addresses_are_lowercased_for_the_path() {
        let t = check_recipient("<Alice.Smith@Example.NET>").unwrap();
        assert_eq!(t.given, "Alice.Smith@Example.NET");
        assert_eq!(t.local, "alice.smith");
        assert_eq!(t.domain, "example.net");
        let idn = check_recipient("Jörg@Bücher.example").unwrap();
        assert_eq!(idn.local, "jörg");
        assert_eq!(idn.domain, "bücher.example");
        assert!(check_recipient(&format!("{}@x.test", "a".repeat(64))).is_ok());
    }

    #[test]
    fn idn_domains_share_one_folder() {
        let folder = |raw: &str| check_recipient(raw).unwrap().domain;
        assert_eq!(folder("a@EXÄMPLE.NET"), "exämple.net");
        assert_eq!(folder("a@exämple.net"), "exämple.net");
        assert_eq!(folder("a@xn--exmple-cua.net"), "exämple.net");
        assert_eq!(folder("a@Xn--Exmple-Cua.Net"), "exämple.net");
        // IDNA maps a full-width solidus to `/`: the mapped form is what is checked.
        refused_because("a@x\u{ff0f}y.test", "path separator");
    }

    fn delivery<'a>(sender: &'a ReversePath, arrival: &str) -> Delivery<'a> {
        Delivery::new(
            "0123abcd",
            sender,
            b"Subject: x\r\n\r\nbody\r\n",
            chrono::DateTime::parse_from_rfc3339(arrival).unwrap(),
        )
    }

    #[test]
    fn file_names_depend_on_content_and_mailbox_only() {
        let sender = ReversePath::Address("s@x.test".into());
        let one = delivery(&sender, "2023-01-23T10:00:00Z");
        let other_host = delivery(&sender, "2023-01-23T10:07:00+02:00");
        let names: Vec<String> = [
            (&one, "Bob@Example.NET"),
            (&other_host, "bob@example.net"),
            (&one, "\"bob\"@EXAMPLE.net"),
        ]
        .iter()
        .map(|(d, rcpt)| file_name(d, &check_recipient(rcpt).unwrap()))
        .collect();
        assert_eq!(names[0], names[1]);
        assert_eq!(names[0], names[2]);
        assert!(
            names[0].starts_with('M') && names[0].ends_with(".spoolreplay"),
            "{}",
            names[0]
        );
        let carol = file_name(&one, &check_recipient("carol@example.net").unwrap());
        assert_ne!(names[0], carol, "another mailbox, another name");
        // The name older versions gave: arrival, ASCII-lowercased mailbox, stored size.
        assert_eq!(
            legacy_file_name(&one, &check_recipient("Bob@Example.NET").unwrap(), 99),
            format!(
                "1674468000.M{}.spoolreplay,S=99",
                name_hash("0123abcd", "bob@example.net")
            )
        );
    }

    #[test]
    fn unsafe_addresses_are_refused_with_a_reason() {
        refused_because("../../etc/passwd@example.net", "path separator");
        refused_because("a/b@x", "`/`, a path separator");
        refused_because("a\\b@x", "`\\`, a path separator");
        refused_because("..@x", "`..` would name a directory");
        refused_because(".@x", "`.` would name a directory");
        refused_because("x@..", "domain `..`");
        refused_because("x@.", "domain `.`");
        refused_because("x@a/b", "domain contains `/`");
        refused_because("x\0y@x", "control character \\x00");
        refused_because("x\x1b[2J@x", "control character \\x1b");
        refused_because("x@x\r\n", "control character \\r");
        refused_because("x\x7f@x", "control character \\x7f");
        refused_because("x\u{85}@x", "control character \\u{85}");
        refused_because("nobody", "no `@domain`");
        refused_because("@x", "local part is empty");
        refused_because("x@", "no `@domain`");
        refused_because("", "empty");
        refused_because(
            &format!("{}@x", "a".repeat(65)),
            "65 octets, more than the 64",
        );
        refused_because(
            &format!("x@{}", "a".repeat(256)),
            "256 octets, more than a file name",
        );
        refused_because("x@exa_mple.net", "domain contains `_`");
        refused_because("x@[192.0.2.1]", "domain contains `[`");
        refused_because("x@a..b", "empty label");
        refused_because("x@.a", "empty label");
        refused_because("x@a.", "empty label");
    }

    #[test]
    fn refusal_reply_is_safe_to_print() {
        let Outcome::Failed { reply, status, .. } = refused("\x1b]0;pwned\x07@x", "because") else {
            panic!("not a failure");
        };
        assert_eq!(status, "5.1.3");
        let reply = reply.to_string();
        assert!(!reply.chars().any(char::is_control), "{reply:?}");
        let Outcome::Failed { reply, .. } = refused(&"a".repeat(300), "because") else {
            panic!("not a failure");
        };
        let reply = reply.to_string();
        assert!(reply.chars().count() < 150, "{reply}");
        assert!(reply.contains('…'));
    }

    #[test]
    fn crlf_becomes_lf_and_lone_cr_stays() {
        let sender = ReversePath::Address("s@x.test".into());
        let got = stored_bytes(&sender, "R@y.test", b"A: 1\r\n\r\nbody\rx\r\n\n");
        assert_eq!(
            got,
            b"Return-Path: <s@x.test>\nDelivered-To: R@y.test\nA: 1\n\nbody\rx\n\n".to_vec()
        );
        let kept = stored_bytes(&sender, "r@y", b"A: 1\r\n\r\nx\r\r\ny\r\r\r\n");
        assert_eq!(
            kept,
            b"Return-Path: <s@x.test>\nDelivered-To: r@y\nA: 1\n\nx\r\ny\r\r\n".to_vec(),
            "only the CR of each CRLF goes"
        );
    }

    #[test]
    fn classic_mac_mail_is_stored_as_lines() {
        let got = stored_bytes(&ReversePath::Null, "r@y", b"A: 1\rB: 2\r\rbody\r");
        assert_eq!(
            got,
            b"Return-Path: <>\nDelivered-To: r@y\nA: 1\nB: 2\n\nbody\n".to_vec()
        );
    }

    #[test]
    fn lexical_check_catches_escapes() {
        let root = Path::new("/srv/mail");
        assert!(stays_under(root, Path::new("/srv/mail/x/y/Maildir")));
        assert!(!stays_under(root, Path::new("/srv/mail/x/../../etc")));
        assert!(!stays_under(root, Path::new("/srv/mailx/y")));
        assert!(!stays_under(root, Path::new("/etc/passwd")));
        // What a careless `join` of an absolute part does: it replaces the whole path.
        #[expect(clippy::join_absolute_paths, reason = "the hazard under test")]
        let replaced = root.join("x").join("/etc");
        assert!(!stays_under(root, &replaced));
    }
}
