//! Part 2 of a DSN: `message/delivery-status` (RFC 3464), or
//! `message/global-delivery-status` (RFC 6533) for an SMTPUTF8 original.

use std::fmt::Write as _;

use super::encode::{
    ascii_text, bare_address, global_typed_address, one_line, truncated_octets, typed_address,
};
use super::{Action, DIAGNOSTIC_LIMIT, DsnRecipient, DsnRequest, SHORT_LIMIT, rfc5322_date};

pub(super) fn delivery_status_part(req: &DsnRequest<'_>) -> Vec<u8> {
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
