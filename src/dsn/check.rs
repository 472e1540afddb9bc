//! The checks a DSN request passes before anything is built: the envelope recipient, the
//! reporting MTA, the Message-ID, each recipient's status and addresses. A request that
//! fails one gets a `DsnError` naming what is wrong.

use crate::address::ReversePath;

use super::encode::bare_address;

use super::{ADDRESS_LIMIT, Diagnostic, DsnError, DsnRecipient, DsnRequest, SHORT_LIMIT};

/// The DSN's envelope and `To:` recipient: the reverse-path without angle brackets and
/// without a source route (RFC 5321 §6.1).
pub(super) fn envelope_to(to: &ReversePath) -> Result<String, DsnError> {
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

pub(super) fn check_reporting_mta(name: &str) -> Result<(), DsnError> {
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
pub(super) fn from_address(req: &DsnRequest<'_>) -> Result<String, DsnError> {
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
pub(super) fn is_plain_address(addr: &str) -> bool {
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

pub(super) fn check_message_id(id: &str) -> Result<(), DsnError> {
    if is_msg_id_inner(id) {
        Ok(())
    } else {
        Err(DsnError::BadMessageId(escaped(id)))
    }
}

/// `left@right` of a msg-id: printable ASCII, no spaces or angle brackets, one `@`.
pub(super) fn is_msg_id_inner(id: &str) -> bool {
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

pub(super) fn check_recipient(rcpt: &DsnRecipient) -> Result<(), DsnError> {
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
pub(super) fn is_valid_status(status: &str) -> bool {
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

/// Untrusted text made safe to print in an error message.
pub(super) fn escaped(s: &str) -> String {
    s.escape_debug().to_string()
}
