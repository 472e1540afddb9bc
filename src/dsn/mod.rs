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

pub mod explain;
mod notify;
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
// Validation

/// The DSN's envelope and `To:` recipient: the reverse-path without angle brackets and
/// without a source route (RFC 5321 §6.1).
fn envelope_to(to: &ReversePath) -> Result<String, DsnError> {
    // `ReversePath::parse` took the angle brackets off already.
    let inner = to.as_str().trim();
    let addr = match inner.split_once(':') {
        Some((route, rest)) if route.starts_with('@') => rest,
        _ => inner,
    };
    if addr.is_empty() {
        return Err(DsnError::NullSender);
    }
    // Stripping characters would address the header to someone else than the envelope;
    // refusing is the only honest choice.
    if addr.chars().any(char::is_control) || addr.len() > ADDRESS_LIMIT {
        return Err(DsnError::BadSender(escaped(addr)));
    }
    Ok(addr.to_string())
}

fn check_reporting_mta(name: &str) -> Result<(), DsnError> {
    let ok = !name.is_empty()
        && name.len() <= SHORT_LIMIT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DsnError::BadReportingMta(escaped(name)))
    }
}

/// The DSN's `From:` address: the caller's, checked, or `MAILER-DAEMON@<reporting_mta>`.
fn from_address(req: &DsnRequest<'_>) -> Result<String, DsnError> {
    let Some(raw) = req.from else {
        return Ok(format!("MAILER-DAEMON@{}", req.reporting_mta));
    };
    let addr = raw.trim();
    let addr = addr
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(addr);
    if is_plain_address(addr) {
        Ok(addr.to_string())
    } else {
        Err(DsnError::BadFrom(escaped(raw)))
    }
}

/// `dot-atom@host`: RFC 5322 atext in dot-separated runs, then a host name. Stricter than
/// RFC 5322 on purpose: this address is configuration, and a quoted local part or a
/// domain literal in a bounce's From: would only puzzle its reader.
fn is_plain_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let is_atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext));
    let domain_ok = domain.len() <= SHORT_LIMIT
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    local_ok && domain_ok
}

fn check_message_id(id: &str) -> Result<(), DsnError> {
    if is_msg_id_inner(id) {
        Ok(())
    } else {
        Err(DsnError::BadMessageId(escaped(id)))
    }
}

/// `left@right` of a msg-id: printable ASCII, no spaces or angle brackets, one `@`.
fn is_msg_id_inner(id: &str) -> bool {
    let Some((left, right)) = id.split_once('@') else {
        return false;
    };
    !left.is_empty()
        && !right.is_empty()
        && !right.contains('@')
        && id.len() <= ADDRESS_LIMIT
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

fn check_recipient(rcpt: &DsnRecipient) -> Result<(), DsnError> {
    let addr = bare_address(&rcpt.final_recipient);
    if addr.is_empty() {
        return Err(DsnError::EmptyRecipient);
    }
    if !is_valid_status(&rcpt.status) {
        return Err(DsnError::BadStatus {
            recipient: escaped(addr),
            status: escaped(&rcpt.status),
        });
    }
    if !rcpt.action.allows_class(rcpt.status.as_bytes()[0]) {
        return Err(DsnError::ActionStatusMismatch {
            recipient: escaped(addr),
            action: rcpt.action.as_str(),
            status: escaped(&rcpt.status),
        });
    }
    // Remote-MTA says the Diagnostic-Code came from that host (RFC 3464 §2.3.5): without
    // its reply the field would claim an answer nobody gave.
    if rcpt.remote_mta.is_some() && !matches!(rcpt.diagnostic, Some(Diagnostic::Smtp(_))) {
        return Err(DsnError::RemoteMtaWithoutReply(escaped(addr)));
    }
    Ok(())
}

/// `^[245]\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$` (RFC 3463: no leading zeros).
fn is_valid_status(status: &str) -> bool {
    let mut fields = status.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    matches!(class, "2" | "4" | "5") && is_sub_code(subject) && is_sub_code(detail)
}

fn is_sub_code(code: &str) -> bool {
    (1..=3).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && (code == "0" || !code.starts_with('0'))
}

/// The address without one pair of surrounding angle brackets: Final-Recipient carries
/// none (RFC 3464 §2.3.2).
fn bare_address(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(addr)
}

/// Untrusted text made safe to print in an error message.
fn escaped(s: &str) -> String {
    s.escape_debug().to_string()
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
// Part 1: for people

fn human_part(req: &DsnRequest<'_>, returned: Option<Returned>) -> Vec<u8> {
    let text = human_text(req, returned);
    let mut part = String::new();
    if text.is_ascii() {
        part.push_str("Content-Type: text/plain; charset=us-ascii\r\n");
        part.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        part.push_str(&text);
    } else {
        part.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        part.push_str("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        part.push_str(&quoted_printable(text.as_bytes()));
    }
    part.into_bytes()
}

/// The explanation, wrapped to `TEXT_WIDTH` with CRLF line ends.
fn human_text(req: &DsnRequest<'_>, returned: Option<Returned>) -> String {
    let mut lines: Vec<String> = Vec::new();
    push_wrapped(
        &mut lines,
        "",
        &format!(
            "This report was written by spoolreplay on {}.",
            req.reporting_mta
        ),
    );
    lines.push(String::new());
    push_wrapped(&mut lines, "", summary(req.recipients));
    lines.push(String::new());
    push_wrapped(
        &mut lines,
        "",
        &format!("Incident: {}", one_line(req.incident)),
    );
    lines.push(String::new());
    for paragraph in req.explanation.lines() {
        push_wrapped(&mut lines, "", &one_line(paragraph));
    }
    lines.push(String::new());
    lines.push("Recipients:".to_string());
    for rcpt in req.recipients {
        lines.push(String::new());
        push_wrapped(
            &mut lines,
            "  ",
            &format!("<{}>", visible(bare_address(&rcpt.final_recipient))),
        );
        push_wrapped(
            &mut lines,
            "    ",
            &format!("{}, status {}", rcpt.action.as_str(), rcpt.status),
        );
        if let Some(diag) = &rcpt.diagnostic {
            let (kind, text) = diag.type_and_text();
            push_wrapped(
                &mut lines,
                "    ",
                &format!("{kind}; {}", truncated(&one_line(text), DIAGNOSTIC_LIMIT)),
            );
        }
    }
    lines.push(String::new());
    push_wrapped(
        &mut lines,
        "",
        &format!(
            "The message arrived on {} and has queue ID {}. {}",
            rfc5322_date(&req.arrival),
            visible(req.queue_id),
            match returned {
                Some(Returned::Full) => "A copy of it is attached.",
                Some(Returned::Headers) => "Its header is attached.",
                None => "It is not attached.",
            }
        ),
    );
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    text
}

fn push_wrapped(lines: &mut Vec<String>, indent: &str, text: &str) {
    lines.extend(wrap(text, indent, HUMAN_WIDTH));
}

fn summary(recipients: &[DsnRecipient]) -> &'static str {
    let any = |action: Action| recipients.iter().any(|r| r.action == action);
    if any(Action::Failed) {
        "Your message could not be delivered to one or more of its recipients, and no \
         further attempts will be made for them."
    } else if any(Action::Delayed) {
        "Your message has not yet been delivered to one or more of its recipients. It is \
         still being retried; you do not need to send it again."
    } else {
        "Your message was delivered to the recipients listed below."
    }
}

/// Greedy word wrap; words longer than the width are split.
fn wrap(text: &str, indent: &str, width: usize) -> Vec<String> {
    let room = width.saturating_sub(indent.chars().count()).max(1);
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > room {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            lines.push(word.drain(..room).collect());
        }
        let word: String = word.into_iter().collect();
        let current_len = current.chars().count();
        if current_len > 0 && current_len + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines.into_iter().map(|l| format!("{indent}{l}")).collect()
}

/// Runs of control characters (line breaks of a multi-line reply, tabs) become one space.
fn one_line(s: &str) -> String {
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
fn visible(s: &str) -> String {
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
fn truncated(s: &str, limit: usize) -> String {
    if s.chars().count() <= limit {
        return s.to_string();
    }
    let keep = limit.saturating_sub(ELLIPSIS.len());
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(ELLIPSIS);
    out
}

// ---------------------------------------------------------------------------------------
// Part 2: message/delivery-status

fn delivery_status_part(req: &DsnRequest<'_>) -> Vec<u8> {
    let text = FieldText {
        global: req.smtputf8,
    };
    let mut fields = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = write!(fields, "{name}: {value}\r\n");
    };
    // Per-message group, in the ABNF's order: extension fields come last.
    if let Some(envid) = req.envid {
        field("Original-Envelope-Id", &text.value(envid, SHORT_LIMIT));
    }
    field("Reporting-MTA", &format!("dns; {}", req.reporting_mta));
    field("Arrival-Date", &rfc5322_date(&req.arrival));
    field(
        "X-Spoolreplay-Queue-ID",
        &ascii_text(req.queue_id, SHORT_LIMIT),
    );
    for rcpt in req.recipients {
        fields.push_str("\r\n");
        recipient_fields(&mut fields, rcpt, text, req.queue_id);
    }
    let (content_type, encoding) = match (req.smtputf8, fields.is_ascii()) {
        (false, _) => ("message/delivery-status", "7bit"),
        (true, true) => ("message/global-delivery-status", "7bit"),
        (true, false) => ("message/global-delivery-status", "8bit"),
    };
    let mut part =
        format!("Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n");
    part.push_str(&fields);
    part.into_bytes()
}

/// How untrusted text is written into part 2: US-ASCII only for `message/delivery-status`
/// (RFC 3464 §2.1), UTF-8 allowed for `message/global-delivery-status` (RFC 6533 §3).
#[derive(Debug, Clone, Copy)]
struct FieldText {
    global: bool,
}

impl FieldText {
    /// One field value: controls folded to spaces, cut to `limit` octets.
    fn value(self, s: &str, limit: usize) -> String {
        if self.global {
            truncated_octets(&one_line(s), limit)
        } else {
            ascii_text(s, limit)
        }
    }

    fn address(self, addr_type: &str, addr: &str) -> String {
        if self.global {
            global_typed_address(addr_type, addr)
        } else {
            typed_address(addr_type, addr)
        }
    }
}

fn recipient_fields(fields: &mut String, rcpt: &DsnRecipient, text: FieldText, queue_id: &str) {
    let mut field = |name: &str, value: &str| {
        let _ = write!(fields, "{name}: {value}\r\n");
    };
    if let Some(orcpt) = &rcpt.original_recipient {
        let (addr_type, value) = match orcpt.split_once(';') {
            Some((t, v)) => (t.trim(), v.trim()),
            None => ("rfc822", orcpt.trim()),
        };
        field("Original-Recipient", &text.address(addr_type, value));
    }
    field(
        "Final-Recipient",
        &text.address("rfc822", bare_address(&rcpt.final_recipient)),
    );
    field("Action", rcpt.action.as_str());
    field("Status", &rcpt.status);
    if let Some(mta) = &rcpt.remote_mta {
        field(
            "Remote-MTA",
            &format!("dns; {}", ascii_text(mta, SHORT_LIMIT)),
        );
    }
    if let Some(diag) = &rcpt.diagnostic {
        let (kind, diag_text) = diag.type_and_text();
        field(
            "Diagnostic-Code",
            &format!("{kind}; {}", text.value(diag_text, DIAGNOSTIC_LIMIT)),
        );
    }
    if let Some(at) = &rcpt.last_attempt {
        field("Last-Attempt-Date", &rfc5322_date(at));
    }
    field("Final-Log-ID", &ascii_text(queue_id, SHORT_LIMIT));
    if let (Some(until), Action::Delayed) = (&rcpt.will_retry_until, rcpt.action) {
        field("Will-Retry-Until", &rfc5322_date(until));
    }
}

/// `addr-type; address` for `message/global-delivery-status`. A clean ASCII address keeps
/// its type (as Postfix does, `utf-8` only for real UTF-8 addresses); a UTF-8 one is
/// written in its native form, `utf-8; jörg@bücher.example` (RFC 6533 §3 SHOULD). An
/// address with controls or spaces cannot be native: it is written as utf-8-addr-unitext,
/// native UTF-8 with `\x{HEX}` escapes for exactly those characters (and `\ + =`).
fn global_typed_address(addr_type: &str, addr: &str) -> String {
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
fn truncated_octets(s: &str, limit: usize) -> String {
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
fn typed_address(addr_type: &str, addr: &str) -> String {
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
fn utf8_addr_xtext_decode(s: &str) -> String {
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
fn ascii_text(s: &str, limit: usize) -> String {
    let ascii: String = one_line(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    truncated(&ascii, limit)
}

// ---------------------------------------------------------------------------------------
// Part 3: the returned message or its header

/// What part 3 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    Full,
    Headers,
}

/// Part 3, or `None` when nothing can usefully be returned (an empty header, or a header
/// alone larger than the return limit).
fn returned_part(req: &DsnRequest<'_>) -> Option<(Returned, Vec<u8>)> {
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
fn header_section(message: &[u8]) -> &[u8] {
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
fn normalise_line_ends(bytes: &[u8]) -> Vec<u8> {
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

/// RFC 2045 quoted-printable of CRLF text, lines at most 76 characters. `=` is always
/// encoded, so `=_` (which every boundary we pick contains) never appears.
fn quoted_printable(crlf_text: &[u8]) -> String {
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
