//! Building RFC 3464 delivery status notifications. Pure: no IO, the clock and the
//! Message-ID are passed in.
//!
//! What goes in, what comes out (the rules are in README, "Bounces"):
//! * a `multipart/report; report-type=delivery-status` message with CRLF line ends, one
//!   DSN for one original message and the recipients the caller chose to report (use
//!   [`dsn_owed`] to choose them: RFC 3461 §5.2.8 wants no others);
//! * part 1 is plain text for people; part 2 is `message/delivery-status`, always 7-bit
//!   ASCII; part 3 returns the original (`message/rfc822`) or its header
//!   (`text/rfc822-headers`). Only a DSN reporting a failure returns the whole message:
//!   delay warnings and success reports return the header (RFC 3461 §4.3, §6.2), as does
//!   RET=HDRS and an original above the return limit.
//! * An 8-bit original is returned headers-only. The alternative, re-encoding its body
//!   parts as legal 7-bit MIME, means rewriting a stranger's MIME tree: any bug there damages
//!   the very copy the sender needs, and RFC 6522 §3 names headers-only as an equally valid
//!   choice. The header itself is sent quoted-printable if it has 8-bit bytes or long lines
//!   (legal for a `text/*` part, unlike `message/rfc822`).
//! * An original that came in with SMTPUTF8 (`DsnRequest::smtputf8`) goes back over a path
//!   that is known to take 8-bit UTF-8, so RFC 6533 applies: part 2 is
//!   `message/global-delivery-status` with UTF-8 addresses in their native form
//!   (`utf-8; jörg@bücher.example`), and part 3 is `message/global` (the whole message,
//!   8-bit included) or `message/global-headers`. The outer `report-type` stays
//!   `delivery-status`, as Postfix and Exim write it and as parsers expect.
//! * Untrusted text (addresses, server replies, ENVID, ORCPT, the original's header) never
//!   reaches a header or part 2 raw: control characters are removed or escaped, non-ASCII is
//!   encoded (except in the UTF-8 parts of an SMTPUTF8 DSN), long values are truncated, and
//!   the MIME boundary is re-picked until it occurs in no part.
//!
//! Which status code to report is `status.rs`'s job, whether a DSN is owed `notify.rs`'s.
//!
//! Here: the request, its limits, `build` and the top-level header and boundary. The
//! request's checks are in `check.rs`, the encodings of untrusted text in `encode.rs`, the
//! three parts in `human.rs`, `delivery_status.rs` and `returned.rs`.

mod check;
mod delivery_status;
mod encode;
pub mod explain;
mod human;
mod notify;
mod returned;
mod status;

pub use notify::{dsn_owed, failure_dsn_owed, warn_suppressed};
pub use status::{
    LocalFailure, is_over_quota, reply_is_over_quota, status_at_expiry, status_for,
    status_for_local, status_for_reply,
};

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};
use sha2::{Digest, Sha256};

use crate::address::{ReturnContent, ReversePath};
use crate::line_ends;

use check::{
    check_message_id, check_recipient, check_reporting_mta, envelope_to, from_address,
    is_msg_id_inner, is_valid_status,
};
use delivery_status::delivery_status_part;
use human::human_part;
use returned::{header_section, returned_part};

/// RFC 3464 Action for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
}

impl Action {
    /// The RFC 3464 action-value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
        }
    }

    /// The RFC 3463 status classes this action may be reported with: `failed` also takes
    /// 4.x.x, for a transient condition that lasted until the message expired.
    fn allows_class(self, class: u8) -> bool {
        match self {
            Action::Failed => class == b'4' || class == b'5',
            Action::Delayed => class == b'4',
            Action::Delivered => class == b'2',
        }
    }
}

/// Where a Diagnostic-Code came from: a real SMTP/LMTP reply (`smtp;`), or a local reason
/// (`X-Spoolreplay;`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    Smtp(String),
    Local(String),
}

impl Diagnostic {
    fn type_and_text(&self) -> (&'static str, &str) {
        match self {
            Diagnostic::Smtp(text) => ("smtp", text),
            Diagnostic::Local(text) => ("X-Spoolreplay", text),
        }
    }
}

/// One recipient reported in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The envelope recipient exactly as accepted.
    pub final_recipient: String,
    /// ORCPT as `addr-type;value`, already decoded; only when ORCPT was given.
    pub original_recipient: Option<String>,
    pub action: Action,
    /// An RFC 3463 enhanced status code such as `4.4.7`.
    pub status: String,
    pub diagnostic: Option<Diagnostic>,
    /// Only when a remote server really answered.
    pub remote_mta: Option<String>,
    /// Only when a delivery attempt really happened.
    pub last_attempt: Option<DateTime<FixedOffset>>,
    /// Only for `Action::Delayed`.
    pub will_retry_until: Option<DateTime<FixedOffset>>,
}

/// Everything a DSN is built from.
#[derive(Debug, Clone)]
pub struct DsnRequest<'a> {
    /// FQDN of the reporting MTA (`Reporting-MTA: dns; …`, and the `From:` host).
    pub reporting_mta: &'a str,
    /// Name of the incident, for the human-readable part.
    pub incident: &'a str,
    /// Plain-words explanation of what happened, for the human-readable part.
    pub explanation: &'a str,
    /// The original reverse-path (a DSN to the null sender `<>` is refused).
    pub to: &'a ReversePath,
    /// The original message bytes.
    pub original: &'a [u8],
    /// RFC 3461 ENVID, already xtext-decoded (as the spool readers store it).
    pub envid: Option<&'a str>,
    pub ret: Option<ReturnContent>,
    /// Above this many bytes only the headers are returned.
    pub return_limit: usize,
    pub arrival: DateTime<FixedOffset>,
    /// `Final-Log-ID` / `X-Spoolreplay-Queue-ID`: the spool's id of the original.
    pub queue_id: &'a str,
    pub recipients: &'a [DsnRecipient],
    /// The DSN's own `Date:`.
    pub date: DateTime<FixedOffset>,
    /// The DSN's own Message-ID, without angle brackets; unique, chosen by the caller.
    pub message_id: &'a str,
    /// The original was received with SMTPUTF8: answer with the RFC 6533 `message/global*`
    /// parts, UTF-8 allowed (see the module comment).
    pub smtputf8: bool,
    /// The `From:` address, as a bare `local@domain` (ASCII, no display name); `None` means
    /// `MAILER-DAEMON@<reporting_mta>`. The display name is always "Mail Delivery System".
    pub from: Option<&'a str>,
}

/// Why a DSN cannot be built. Untrusted values in the messages are escaped, so printing
/// an error never prints raw control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("a DSN must not be sent to the null sender")]
    NullSender,
    #[error("a DSN needs at least one recipient")]
    NoRecipients,
    #[error("return address `{0}` has control characters or is too long for a DSN header")]
    BadSender(String),
    #[error("reporting MTA name `{0}` is not a host name")]
    BadReportingMta(String),
    #[error("DSN message id `{0}` is not of the form left@right")]
    BadMessageId(String),
    #[error("DSN from address `{0}` is not a plain ASCII local@domain address")]
    BadFrom(String),
    #[error("a reported recipient has an empty address")]
    EmptyRecipient,
    #[error("recipient `{recipient}` has malformed status `{status}`")]
    BadStatus { recipient: String, status: String },
    #[error(
        "recipient `{recipient}` has action `{action}` with status `{status}`, which do not go together"
    )]
    ActionStatusMismatch {
        recipient: String,
        action: &'static str,
        status: String,
    },
    #[error("recipient `{0}` names a remote MTA but has no SMTP reply from it")]
    RemoteMtaWithoutReply(String),
}

/// RFC 5322 line limit, without the CRLF.
const LINE_LIMIT: usize = 998;
/// Diagnostic text is cut here, as Exim does, so `Diagnostic-Code: smtp; …` stays in one
/// line under `LINE_LIMIT`.
const DIAGNOSTIC_LIMIT: usize = 950;
/// Longest encoded address written into one field line.
const ADDRESS_LIMIT: usize = 900;
/// Host names, queue ids, envelope ids: RFC limits are far below this.
const SHORT_LIMIT: usize = 255;
/// Longest quoted-printable line (RFC 2045 §6.7).
const TEXT_WIDTH: usize = 76;
/// Width the human-readable part is wrapped to: below `TEXT_WIDTH`, so quoted-printable
/// needs no soft breaks for ASCII lines.
const HUMAN_WIDTH: usize = 72;
/// Marks text we cut short.
const ELLIPSIS: &str = "...";

/// Builds the DSN: a complete RFC 5322 message with CRLF line ends.
pub fn build(req: &DsnRequest<'_>) -> Result<Vec<u8>, DsnError> {
    let to = envelope_to(req.to)?;
    check_reporting_mta(req.reporting_mta)?;
    check_message_id(req.message_id)?;
    let from = from_address(req)?;
    if req.recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    for rcpt in req.recipients {
        check_recipient(rcpt)?;
    }

    let returned = returned_part(req);
    let mut parts = vec![
        human_part(req, returned.as_ref().map(|(kind, _)| *kind)),
        delivery_status_part(req),
    ];
    parts.extend(returned.map(|(_, part)| part));
    let boundary = pick_boundary(&base_boundary(req), &parts);

    // Only an SMTPUTF8 DSN has 8-bit parts; the multipart around them must say so
    // (RFC 2045 §6.4), or a strict relay may think it 7-bit and mangle it.
    let eight_bit = parts.iter().any(|part| !part.is_ascii());
    let mut out = top_headers(req, &from, &to, &boundary, eight_bit).into_bytes();
    out.extend_from_slice(b"This is a delivery status notification in MIME format.\r\n");
    for part in &parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Top-level header

fn top_headers(
    req: &DsnRequest<'_>,
    from: &str,
    to: &str,
    boundary: &str,
    eight_bit: bool,
) -> String {
    let mut h = String::new();
    let mut line = |text: String| {
        h.push_str(&text);
        h.push_str("\r\n");
    };
    line(format!("From: Mail Delivery System <{from}>"));
    line(format!("To: <{to}>"));
    line(format!("Subject: {}", subject(req.recipients)));
    line(format!("Date: {}", rfc5322_date(&req.date)));
    line(format!("Message-ID: <{}>", req.message_id));
    if let Some(id) = original_message_id(req.original) {
        line(format!("In-Reply-To: {id}"));
        line(format!("References: {id}"));
    }
    line("Auto-Submitted: auto-replied".to_string());
    line("MIME-Version: 1.0".to_string());
    line(format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    if eight_bit {
        line("Content-Transfer-Encoding: 8bit".to_string());
    }
    h.push_str("\r\n");
    h
}

/// Our own wording: Sisimai picks an MTA-specific parser when a subject imitates Postfix
/// or Exim, and then reads our prose instead of part 2.
fn subject(recipients: &[DsnRecipient]) -> &'static str {
    let any = |action: Action| recipients.iter().any(|r| r.action == action);
    if any(Action::Failed) {
        "Undelivered mail: returned to sender"
    } else if any(Action::Delayed) {
        "Delayed mail (still being retried)"
    } else {
        "Delivery report: mail delivered"
    }
}

/// RFC 5322 date-time with the numeric zone RFC 3464 requires.
fn rfc5322_date(date: &DateTime<FixedOffset>) -> String {
    date.format("%a, %-d %b %Y %H:%M:%S %z").to_string()
}

/// The original's Message-ID as `<left@right>`, when it has exactly one well-formed one.
fn original_message_id(original: &[u8]) -> Option<String> {
    let mut ids = header_fields(header_section(original))
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("message-id"))
        .map(|(_, value)| value);
    let value = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    let inner = value.trim().strip_prefix('<')?.strip_suffix('>')?;
    is_msg_id_inner(inner).then(|| format!("<{inner}>"))
}

/// Unfolded `(name, value)` pairs of a header section; lines that are not fields are
/// skipped.
fn header_fields(section: &[u8]) -> Vec<(String, String)> {
    let lf = line_ends::to_lf(section);
    let text = String::from_utf8_lossy(&lf);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.to_string()));
        }
    }
    fields
}

// ---------------------------------------------------------------------------------------
// MIME boundary

/// Derived from inputs that do not include the reported diagnostics, so the same
/// request always gets the same boundary (byte-exact goldens) and a test can plant it in a
/// diagnostic to check that it is re-picked.
pub(crate) fn base_boundary(req: &DsnRequest<'_>) -> String {
    let mut hash = Sha256::new();
    for input in [
        req.message_id.as_bytes(),
        req.reporting_mta.as_bytes(),
        req.to.as_str().as_bytes(),
        req.queue_id.as_bytes(),
        req.original,
    ] {
        hash.update((input.len() as u64).to_be_bytes());
        hash.update(input);
    }
    let digest = hash.finalize();
    let mut hex = String::new();
    for byte in &digest[..12] {
        let _ = write!(hex, "{byte:02x}");
    }
    format!("spoolreplay=_{hex}")
}

/// The first of `base`, `base.1`, `base.2`, … that occurs in no part.
fn pick_boundary(base: &str, parts: &[Vec<u8>]) -> String {
    let occurs = |candidate: &str| {
        parts
            .iter()
            .any(|part| contains(part, candidate.as_bytes()))
    };
    let mut candidate = base.to_string();
    let mut counter = 0u64;
    while occurs(&candidate) {
        counter += 1;
        candidate = format!("{base}.{counter}");
    }
    candidate
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
