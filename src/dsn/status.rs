//! RFC 3463 enhanced status codes for a DSN's `Status:` field: from a store's SMTP/LMTP
//! reply, from a local reason, and at queue expiry.
//!
//! The mapping is deliberately small. A server that sends an enhanced code knows more
//! about its own failure than any guess of ours, so a valid one is kept. Without one, only
//! the few basic codes that say one thing are translated; everything else is reported with
//! its class only (`4.0.0` / `5.0.0`), as RFC 3461 §6.3(g) asks when nothing specific is
//! known.

use super::is_valid_status;
use crate::deliver::reply::Reply;

/// A failure spoolreplay decided itself, with no server reply behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFailure {
    /// The queue lifetime ran out (`4.4.7`).
    Expired,
    /// No store or route for the recipient's domain (`5.4.4`).
    NoRoute,
    /// The address cannot be used as a mailbox, e.g. it would escape the store (`5.1.3`).
    BadAddress,
    /// The restored store has no such mailbox (`5.1.1`).
    UnknownMailbox,
}

/// The status for a local failure.
pub fn status_for_local(kind: LocalFailure) -> &'static str {
    match kind {
        LocalFailure::Expired => "4.4.7",
        LocalFailure::NoRoute => "5.4.4",
        LocalFailure::BadAddress => "5.1.3",
        LocalFailure::UnknownMailbox => "5.1.1",
    }
}

/// Reply texts (lowercased) that mean "no such mailbox". Only used for 550/551/553, whose
/// RFC 5321 meanings also cover policy refusals, so the text must say it.
const UNKNOWN_MAILBOX_PHRASES: [&str; 9] = [
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "unknown mailbox",
    "mailbox unknown",
    "recipient unknown",
    "unknown recipient",
    "does not exist",
];

/// The status for a reply to one recipient: `code` is the basic reply code, `enhanced`
/// the RFC 2034 code the server put after it (if any), `text` the rest of the reply.
///
/// * A syntactically valid enhanced code whose class matches the reply code's first digit
///   is kept as it is (so `554 5.7.1` stays `5.7.1`). A mismatched or malformed one is
///   ignored: the basic code is the one SMTP clients act on.
/// * Otherwise: 550/551/553 whose text says the user or mailbox is unknown → `5.1.1`;
///   552 (exceeded storage allocation) → `5.2.2`; 452 → `4.2.2` (what stores send for an
///   over-quota mailbox, though RFC 5321 words it "insufficient system storage").
/// * Anything else keeps its class only: 2xx → `2.0.0`, 4xx → `4.0.0`, 5xx → `5.0.0`.
///   A code outside 2xx/4xx/5xx is not a final reply at all; it gets `4.0.0`, so it is
///   reported as "unknown, transient" rather than as a definite refusal.
pub fn status_for_reply(code: u16, enhanced: Option<&str>, text: &str) -> String {
    let class = reply_class(code);
    if let Some(status) = enhanced.map(str::trim)
        && is_valid_status(status)
        && Some(status.as_bytes()[0]) == class
    {
        return status.to_string();
    }
    let derived = match code {
        550 | 551 | 553 if says_unknown_mailbox(text) => "5.1.1",
        552 => "5.2.2",
        452 => "4.2.2",
        _ => match class {
            Some(b'2') => "2.0.0",
            Some(b'5') => "5.0.0",
            _ => "4.0.0",
        },
    };
    derived.to_string()
}

/// [`status_for_reply`] of a parsed reply.
pub fn status_for(reply: &Reply) -> String {
    status_for_reply(
        reply.code,
        reply.enhanced_status().as_deref(),
        &reply.text(),
    )
}

/// Words stores use for an over-quota mailbox (Dovecot `Quota exceeded (mailbox for user
/// is full)`, Postfix/Cyrus `Over quota`, RFC 5321's 552 text).
const OVER_QUOTA_PHRASES: [&str; 5] = [
    "quota",
    "mailbox full",
    "mailbox is full",
    "mailbox for user is full",
    "exceeded storage allocation",
];

/// Whether a reply says the recipient's mailbox is full: 452 or 552 with `x.2.2`, or with
/// over-quota words and no enhanced code saying something else. Such a mailbox is retried
/// within the queue lifetime even after a 552 (a week of mail landing at once fills it;
/// the user makes room, the operator raises the quota), never bounced at once.
pub fn is_over_quota(reply: &str) -> bool {
    let reply = reply.trim_start();
    let code = reply.get(..3);
    if !matches!(code, Some("452" | "552")) {
        return false;
    }
    let rest = reply[3..].trim_start_matches(['-', ' ']);
    let enhanced = rest
        .split_whitespace()
        .next()
        .filter(|w| is_valid_status(w));
    match enhanced {
        Some(status) => {
            status.get(1..) == Some(".2.2") && status.get(..1) == code.and_then(|c| c.get(..1))
        }
        None => {
            let lower = rest.to_ascii_lowercase();
            OVER_QUOTA_PHRASES.iter().any(|p| lower.contains(p))
        }
    }
}

/// [`is_over_quota`] of a parsed reply, read in its one-line form (`452 4.2.2 text`).
pub fn reply_is_over_quota(reply: &Reply) -> bool {
    is_over_quota(&reply.to_string())
}

/// The status of a recipient that expired, given the status of the last transient reply
/// the store gave for it (if any).
///
/// RFC 3463 asks for "the code for the actual problem" rather than X.4.7 when possible.
/// A mailbox-level condition (`4.2.x`: mailbox full, disabled) is such a problem and tells
/// the sender what to do, so it is kept (`failed` + `4.2.2`). Everything else a down store
/// says (`4.3.x`, `4.4.x`, `4.0.0`) is about the outage, not the recipient: the DSN
/// reports `4.4.7` and keeps the reply in its Diagnostic-Code.
pub fn status_at_expiry(last_status: Option<&str>) -> String {
    match last_status.map(str::trim) {
        Some(status) if is_valid_status(status) && status.starts_with("4.2.") => status.to_string(),
        // A full mailbox that said so with a 552 was retried like a 452 (`is_over_quota`):
        // what the sender must hear is still that the mailbox was full.
        Some("5.2.2") => "5.2.2".to_string(),
        _ => status_for_local(LocalFailure::Expired).to_string(),
    }
}

/// The first digit of a 2xx/4xx/5xx reply code, as the byte the enhanced class uses.
fn reply_class(code: u16) -> Option<u8> {
    match code {
        200..=299 => Some(b'2'),
        400..=499 => Some(b'4'),
        500..=599 => Some(b'5'),
        _ => None,
    }
}

fn says_unknown_mailbox(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    UNKNOWN_MAILBOX_PHRASES.iter().any(|p| lower.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(code: u16, enhanced: Option<&str>, text: &str, expected: &str) {
        assert_eq!(status_for_reply(code, enhanced, text), expected);
    }

    #[test]
    fn valid_enhanced_codes_are_kept() {
        check(554, Some("5.7.1"), "rejected by policy", "5.7.1");
        check(550, Some("5.1.1"), "whatever", "5.1.1");
        check(451, Some("4.3.0"), "store not reachable", "4.3.0");
        check(452, Some("4.2.2"), "quota", "4.2.2");
        check(550, Some("5.7.26"), "DMARC", "5.7.26");
        check(250, Some("2.1.5"), "ok", "2.1.5");
    }

    #[test]
    fn malformed_or_mismatched_enhanced_codes_are_ignored() {
        check(550, Some("5.01.1"), "no such user", "5.1.1");
        check(550, Some("4.2.2"), "over quota", "5.0.0");
        check(451, Some("5.7.1"), "try later", "4.0.0");
        check(554, Some("x.y.z"), "refused", "5.0.0");
        check(552, Some(""), "too much", "5.2.2");
    }

    #[test]
    fn basic_codes_map_only_when_they_say_one_thing() {
        check(550, None, "<bob@x>: User unknown", "5.1.1");
        check(551, None, "no such mailbox here", "5.1.1");
        check(553, None, "Recipient address does not exist", "5.1.1");
        check(550, None, "mailbox unavailable", "5.0.0");
        check(550, None, "rejected by policy", "5.0.0");
        check(554, None, "transaction failed", "5.0.0");
        check(552, None, "exceeded storage allocation", "5.2.2");
        check(452, None, "quota exceeded", "4.2.2");
        check(421, None, "closing", "4.0.0");
        check(451, None, "local error", "4.0.0");
        check(250, None, "ok", "2.0.0");
        check(354, None, "go ahead", "4.0.0");
        check(0, None, "", "4.0.0");
        // 5.1.1 is for 550/551/553 only: a 450 "user unknown" is a transient answer.
        check(450, None, "user unknown", "4.0.0");
    }

    #[test]
    fn local_failures_have_fixed_codes() {
        assert_eq!(status_for_local(LocalFailure::Expired), "4.4.7");
        assert_eq!(status_for_local(LocalFailure::NoRoute), "5.4.4");
        assert_eq!(status_for_local(LocalFailure::BadAddress), "5.1.3");
        assert_eq!(status_for_local(LocalFailure::UnknownMailbox), "5.1.1");
    }

    #[test]
    fn over_quota_replies() {
        assert!(is_over_quota("452 4.2.2 <a@b> Quota exceeded"));
        assert!(is_over_quota(
            "552 5.2.2 <bob@example.net> Quota exceeded (mailbox for user is full)"
        ));
        assert!(is_over_quota("552-5.2.2 mailbox full\r\n552 5.2.2 sorry"));
        assert!(is_over_quota(
            "552 Requested mail action aborted: exceeded storage allocation"
        ));
        assert!(is_over_quota("452 Over quota"));
        assert!(!is_over_quota("452 4.3.1 Insufficient system storage"));
        assert!(!is_over_quota("552 5.3.4 Message size exceeds fixed limit"));
        assert!(!is_over_quota("550 5.2.2 mailbox full"));
        assert!(!is_over_quota("451 4.2.2 quota"));
        assert!(!is_over_quota("452 4.3.1 quota of the system disk"));
    }

    #[test]
    fn expiry_keeps_mailbox_conditions_and_otherwise_says_447() {
        assert_eq!(status_at_expiry(Some("4.2.2")), "4.2.2");
        assert_eq!(status_at_expiry(Some("4.2.1")), "4.2.1");
        assert_eq!(status_at_expiry(Some("4.3.0")), "4.4.7");
        assert_eq!(status_at_expiry(Some("4.0.0")), "4.4.7");
        assert_eq!(status_at_expiry(Some("4.4.1")), "4.4.7");
        assert_eq!(status_at_expiry(Some("5.2.2")), "5.2.2");
        assert_eq!(status_at_expiry(Some("5.2.1")), "4.4.7");
        assert_eq!(status_at_expiry(Some("4.2.02")), "4.4.7");
        assert_eq!(status_at_expiry(None), "4.4.7");
    }
}
