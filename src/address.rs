//! Envelope addresses: the reverse-path (which may be null) and recipient mailboxes.
//!
//! Addresses come from strangers. They are kept exactly as the envelope carried them
//! (case preserved); `Mailbox::parse` only splits them, and callers that build paths or
//! headers from them must check them first (see `deliver::maildir`, `dsn`).

use std::fmt;

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
        let trimmed = raw.trim();
        let inner = trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed)
            .trim();
        if inner.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Address(inner.to_string())
        }
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
        let trimmed = raw.trim();
        let inner = trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed);
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

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// RFC 3461 NOTIFY, as a set. `None` at the use site means "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// RFC 3461 RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnContent {
    Full,
    Headers,
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
