//! Whether a DSN is owed at all: RFC 3461 NOTIFY per recipient, and the header signs
//! that a message was bulk mail, for which delay warnings are not sent.

use super::{Action, header_fields, header_section};
use crate::address::Notify;

/// Whether the sender gets a DSN with `action` for a recipient whose RCPT carried
/// `notify` (`None`: no NOTIFY parameter).
///
/// * NEVER: nothing, ever.
/// * `failed`: when NOTIFY is absent (RFC 3461 §5.2.6c MUST) or has FAILURE.
/// * `delayed`: when NOTIFY has DELAY, or is absent. RFC 3461 §5.2.5b lets an absent
///   NOTIFY mean FAILURE,DELAY, and Exim and Postfix (once `delay_warning_time` is set)
///   both warn in that case. Whether warnings are made at all is the caller's setting, off
///   unless the operator sets a threshold, as in Postfix.
/// * `delivered`: only when NOTIFY has SUCCESS (RFC 3461 §5.2.3c).
///
/// A NOTIFY with no keyword at all is malformed; it is read as absent rather than as
/// "notify about nothing", so the sender still hears about a failure.
pub fn dsn_owed(notify: Option<Notify>, action: Action) -> bool {
    let notify = notify.filter(|n| n.never || n.success || n.failure || n.delay);
    match notify {
        Some(n) if n.never => false,
        Some(n) => match action {
            Action::Failed => n.failure,
            Action::Delayed => n.delay,
            Action::Delivered => n.success,
        },
        None => matches!(action, Action::Failed | Action::Delayed),
    }
}

/// Whether a failure DSN is owed for a recipient with this NOTIFY (`None`: absent, which
/// means FAILURE, RFC 3461 5.2.6). Shared by the DSN step of `run`, its preview in
/// `bounces` and the plan of `report`, so all settle a recipient the same way.
pub fn failure_dsn_owed(notify: Option<Notify>) -> bool {
    dsn_owed(notify, Action::Failed)
}

/// `Precedence:` values that mark mass mail.
const BULK_PRECEDENCE: [&str; 3] = ["bulk", "list", "junk"];

/// Whether delay warnings for this message should be left out: it carries
/// `Precedence: bulk|list|junk` or any `List-*` header (RFC 2369/2919), so it is list or
/// bulk mail whose sender does not want to hear that delivery is slow. Only the header
/// section of `message` is read. Failure DSNs are never suppressed by this: a list owner
/// needs them to prune dead addresses.
pub fn warn_suppressed(message: &[u8]) -> bool {
    header_fields(header_section(message))
        .iter()
        .any(|(name, value)| {
            let is_list_header = name
                .get(..5)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("list-"));
            is_list_header || (name.eq_ignore_ascii_case("precedence") && is_bulk_precedence(value))
        })
}

/// The first word of the value, before any comment, compared case-insensitively.
fn is_bulk_precedence(value: &str) -> bool {
    let word = value
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    BULK_PRECEDENCE
        .iter()
        .any(|bulk| word.eq_ignore_ascii_case(bulk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(keywords: &str) -> Option<Notify> {
        let mut n = Notify::default();
        for k in keywords.split(',').filter(|k| !k.is_empty()) {
            match k {
                "NEVER" => n.never = true,
                "SUCCESS" => n.success = true,
                "FAILURE" => n.failure = true,
                "DELAY" => n.delay = true,
                other => panic!("test keyword {other}"),
            }
        }
        Some(n)
    }

    #[track_caller]
    fn check(notify: Option<Notify>, expected: [bool; 3]) {
        let got = [Action::Failed, Action::Delayed, Action::Delivered]
            .map(|action| dsn_owed(notify, action));
        assert_eq!(got, expected, "[failed, delayed, delivered] for {notify:?}");
    }

    #[test]
    fn notify_decides_which_dsns_are_owed() {
        check(None, [true, true, false]);
        check(notify("NEVER"), [false, false, false]);
        check(notify("FAILURE"), [true, false, false]);
        check(notify("DELAY"), [false, true, false]);
        check(notify("SUCCESS"), [false, false, true]);
        check(notify("SUCCESS,DELAY"), [false, true, true]);
        check(notify("FAILURE,DELAY"), [true, true, false]);
        check(notify("SUCCESS,FAILURE,DELAY"), [true, true, true]);
        // Empty: malformed, read as absent.
        check(notify(""), [true, true, false]);
        // NEVER wins even if a malformed set also names others.
        check(notify("NEVER,FAILURE"), [false, false, false]);
    }

    #[test]
    fn bulk_and_list_mail_gets_no_delay_warning() {
        let suppressed = [
            "Precedence: bulk\r\n",
            "Precedence: LIST\r\n",
            "Precedence:  junk (spam)\r\n",
            "Precedence:\r\n bulk\r\n",
            "List-Id: <news.example.org>\r\n",
            "list-unsubscribe: <mailto:leave@example.org>\r\n",
            "List-Post: NO\r\n",
        ];
        for header in suppressed {
            let message = format!("From: a@example.org\r\n{header}Subject: x\r\n\r\nbody\r\n");
            assert!(warn_suppressed(message.as_bytes()), "{header:?}");
        }
        let kept = [
            "Precedence: first-class\r\n",
            "Precedence: bulky\r\n",
            "X-List-Id: not a list header\r\n",
            "Listing: no\r\n",
            "",
        ];
        for header in kept {
            let message = format!("From: a@example.org\r\n{header}Subject: x\r\n\r\nbody\r\n");
            assert!(!warn_suppressed(message.as_bytes()), "{header:?}");
        }
        // Only the header counts, not a body line that looks like a field.
        assert!(!warn_suppressed(
            b"From: a@example.org\r\n\r\nPrecedence: bulk\r\nList-Id: <x>\r\n"
        ));
    }
}
