//! The IMAP protocol's text, without IO: tagged status responses (`Tagged`, `parse_status`),
//! capabilities and literals in responses, the APPEND date-time, our trace field and the
//! bytes of an appended copy, and what a tagged answer to APPEND means for the recipient.

use super::super::maildir::name_hash;
use super::super::{Answer, Delivery, Outcome};
use crate::address::{Mailbox, ReversePath};
use crate::{line_ends, sanitize};

/// A server's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tagged {
    /// `OK`, `NO` or `BAD`.
    pub(super) status: String,
    /// The response code's name, upper-cased (`OVERQUOTA`, `APPENDUID`), if any.
    pub(super) code: Option<String>,
    /// The text after the status (code included), for the ledger and DSNs.
    pub(super) text: String,
}

impl Tagged {
    pub(super) fn ok(&self) -> bool {
        self.status == "OK"
    }

    pub(super) fn line(&self) -> String {
        sanitize::for_terminal(&format!("{} {}", self.status, self.text)).into_owned()
    }
}

/// `{123}` at the end of a line: a literal of 123 octets follows.
pub(super) fn literal_size(line: &str) -> Option<usize> {
    let open = line.strip_suffix('}')?.rfind('{')?;
    line[open + 1..line.len() - 1].parse().ok()
}

/// `OK [CODE args] text` → status, code, text.
pub(super) fn parse_status(rest: &str) -> Tagged {
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let code = text
        .strip_prefix('[')
        .and_then(|t| t.split([']', ' ']).next())
        .map(str::to_ascii_uppercase);
    Tagged {
        status: status.to_ascii_uppercase(),
        code,
        text: text.to_string(),
    }
}

/// The `n`th space-separated word (empty if there is none).
pub(super) fn word(s: &str, n: usize) -> &str {
    s.split(' ').nth(n).unwrap_or("")
}

/// Capabilities from a `CAPABILITY …` untagged response or `[CAPABILITY …]` code.
pub(super) fn capabilities(text: &str) -> Vec<String> {
    let text = text.trim_start_matches('[');
    let body = text
        .strip_prefix("CAPABILITY ")
        .or_else(|| text.strip_prefix("capability "))
        .unwrap_or("");
    body.split([' ', ']'])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The IMAP date-time of `arrival` (`date-time` of RFC 3501: `" 1-Feb-2023 09:00:00 +0100"`).
pub fn imap_date(arrival: chrono::DateTime<chrono::FixedOffset>) -> String {
    arrival.format("%e-%b-%Y %H:%M:%S %z").to_string()
}

/// The trace id of the copy of `message_key` for `mailbox` (canonical).
pub fn trace_id(message_key: &str, mailbox: &str) -> String {
    format!("SR{}", name_hash(message_key, mailbox))
}

/// Our `Received:` field for the copy of `delivery` for `mailbox` (canonical), CRLF-ended:
/// its `id` is [`trace_id`], its date the arrival, so the same copy gets the same bytes in
/// every run. `with` is the protocol it is handed over with (`IMAP`, `LMTP`, `ESMTP`).
pub fn trace_field(
    delivery: &Delivery<'_>,
    rcpt: &str,
    mailbox: &str,
    host: &str,
    with: &str,
) -> String {
    let id = trace_id(delivery.message_key, mailbox);
    let date = delivery.arrival.to_rfc2822();
    format!("Received: by {host} (spoolreplay) with {with} id {id}\r\n\tfor <{rcpt}>; {date}\r\n")
}

/// The copy as appended: our three delivery headers, then the message, CRLF line ends.
pub fn appended_bytes(delivery: &Delivery<'_>, rcpt: &str, mailbox: &str, host: &str) -> Vec<u8> {
    let sender = match delivery.sender {
        ReversePath::Null => String::new(),
        other => other.as_str().to_string(),
    };
    let header = format!(
        "Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n{}",
        trace_field(delivery, rcpt, mailbox, host, "IMAP")
    );
    let body = line_ends::to_crlf(delivery.content);
    let mut out = Vec::with_capacity(header.len() + body.len() + 2);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The outcome of a tagged answer to APPEND.
pub(super) fn append_outcome(tagged: &Tagged, mailbox: &str, remote: Option<String>) -> Outcome {
    let reply = tagged.line();
    if tagged.ok() {
        return Outcome::Delivered {
            detail: format!(
                "appended to {} INBOX: {reply}",
                sanitize::for_terminal(mailbox)
            ),
            remote,
        };
    }
    match tagged.code.as_deref() {
        // RFC 5530: over quota, or a per-user limit: later may work.
        Some("OVERQUOTA" | "LIMIT" | "UNAVAILABLE" | "INUSE" | "SERVERBUG") => Outcome::Deferred {
            reply: Answer::Local(reply),
            remote,
        },
        // No INBOX: the mailbox does not exist as a place to deliver to.
        Some("TRYCREATE" | "NONEXISTENT") => Outcome::Failed {
            reply: Answer::Local(format!(
                "{reply} (mailbox {} has no INBOX)",
                sanitize::for_terminal(mailbox)
            )),
            status: "5.1.1".to_string(),
            remote,
        },
        _ if tagged.status == "BAD" => Outcome::Failed {
            reply: Answer::Local(reply),
            status: "5.6.0".to_string(),
            remote,
        },
        _ => Outcome::Deferred {
            reply: Answer::Local(reply),
            remote,
        },
    }
}

/// The canonical mailbox of `raw`, if it is safe to put in an AUTHENTICATE line and a
/// header (no control characters, no line ends, no angle brackets or NUL).
pub(super) fn checked_mailbox(raw: &str) -> Option<String> {
    if raw
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
    {
        return None;
    }
    Mailbox::parse(raw).ok().map(|m| m.canonical())
}
