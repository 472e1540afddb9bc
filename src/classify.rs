//! Deciding what happens to each message: its arrival window on the incident timeline and
//! its disposition. Pure: `now` is passed in.

use chrono::{DateTime, FixedOffset};

use crate::address::ReversePath;
use crate::incident::{Incident, LifetimeFrom, WindowAction};

/// What will happen to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Disposition {
    /// Deliver to the restored store.
    Deliver,
    /// Its queue lifetime ran out before `now`: bounce it as expired (4.4.7), do not deliver.
    Expire,
    /// Its window's action is bounce.
    Bounce,
    /// Keep it back (window action hold, or outside every window by default).
    Hold,
    /// It would be bounced, but the sender is null: no DSN, only a ledger record.
    Drop,
}

pub const ALL_DISPOSITIONS: [Disposition; 5] = [
    Disposition::Deliver,
    Disposition::Expire,
    Disposition::Bounce,
    Disposition::Hold,
    Disposition::Drop,
];

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Deliver => "deliver",
            Disposition::Expire => "expire",
            Disposition::Bounce => "bounce",
            Disposition::Hold => "hold",
            Disposition::Drop => "drop",
        }
    }
}

/// Name used for messages outside every window.
pub const OUTSIDE: &str = "outside";

#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Index into `incident.windows`, or `None` when outside every window.
    pub window: Option<usize>,
    pub disposition: Disposition,
    /// When the message's queue lifetime ends.
    pub deadline: DateTime<FixedOffset>,
    /// Why, in words (for the ledger and the DSN).
    pub reason: String,
}

impl Classification {
    pub fn window_name<'a>(&self, incident: &'a Incident) -> &'a str {
        self.window
            .map(|i| incident.windows[i].name.as_str())
            .unwrap_or(OUTSIDE)
    }
}

/// Index of the window holding `arrival` (windows are sorted and disjoint).
pub fn window_of(incident: &Incident, arrival: DateTime<FixedOffset>) -> Option<usize> {
    incident
        .windows
        .iter()
        .position(|w| w.start <= arrival && arrival < w.end)
}

/// When a message arriving at `arrival` expires.
pub fn deadline(incident: &Incident, arrival: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let from = match incident.lifetime_from {
        LifetimeFrom::Arrival => arrival,
        LifetimeFrom::Restored => incident.restored_at,
    };
    from + incident.queue_lifetime
}

/// The facts about a message that classification looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub arrival: DateTime<FixedOffset>,
    pub sender: &'a ReversePath,
    /// The MTA itself was holding it (Postfix `hold/`, Exim frozen).
    pub mta_hold: bool,
}

/// Classifies one message. A message expires when `now` has reached its deadline; expiry only
/// applies to mail that would be delivered (held mail waits for the operator). Mail the MTA
/// was holding stays held unless the incident says `release_mta_held = true`.
pub fn classify(
    incident: &Incident,
    facts: Facts<'_>,
    now: DateTime<FixedOffset>,
) -> Classification {
    let Facts {
        arrival,
        sender,
        mta_hold,
    } = facts;
    let window = window_of(incident, arrival);
    let (action, window_label) = match window {
        Some(i) => (
            incident.windows[i].action,
            format!("window `{}`", incident.windows[i].name),
        ),
        None => (incident.outside, "outside every window".to_string()),
    };
    let deadline = deadline(incident, arrival);
    if mta_hold && !incident.release_mta_held {
        return Classification {
            window,
            disposition: Disposition::Hold,
            deadline,
            reason: format!("held: the MTA was holding it (arrived {window_label})"),
        };
    }
    let (disposition, reason) = match action {
        WindowAction::Hold => (Disposition::Hold, format!("held: arrived {window_label}")),
        WindowAction::Bounce => (
            Disposition::Bounce,
            format!("bounced by the incident policy: arrived {window_label}"),
        ),
        WindowAction::Deliver if now >= deadline => (
            Disposition::Expire,
            format!(
                "queue lifetime expired at {} (arrived {window_label})",
                deadline.to_rfc3339()
            ),
        ),
        WindowAction::Deliver => (
            Disposition::Deliver,
            format!("deliver: arrived {window_label}"),
        ),
    };
    let (disposition, reason) = match disposition {
        Disposition::Expire | Disposition::Bounce if sender.is_null() => (
            Disposition::Drop,
            format!("{reason}; null sender, so no DSN (RFC 5321 6.1)"),
        ),
        other => (other, reason),
    };
    Classification {
        window,
        disposition,
        deadline,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::parse;

    fn incident() -> Incident {
        parse(
            r#"
name = "t"
reporting_mta = "mx.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "5d"
[[window]]
name = "queued"
start = "2023-01-22T20:00:00+01:00"
end = "2023-01-23T16:00:00+01:00"
action = "deliver"
[[window]]
name = "stopped"
start = "2023-01-23T16:00:00+01:00"
end = "2023-01-24T10:00:00+01:00"
action = "hold"
[[window]]
name = "rejected"
start = "2023-01-24T10:00:00+01:00"
end = "2023-01-25T12:00:00+01:00"
action = "bounce"
"#,
        )
        .unwrap()
    }

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn sender() -> ReversePath {
        ReversePath::Address("a@remote.example".into())
    }

    #[track_caller]
    fn check(
        arrival: &str,
        sender: &ReversePath,
        now: &str,
        window: Option<&str>,
        expected: Disposition,
    ) {
        let inc = incident();
        let facts = Facts {
            arrival: t(arrival),
            sender,
            mta_hold: false,
        };
        let c = classify(&inc, facts, t(now));
        assert_eq!(c.disposition, expected, "{}", c.reason);
        assert_eq!(c.window.map(|i| inc.windows[i].name.as_str()), window);
    }

    #[test]
    fn windows_are_half_open() {
        let now = "2023-01-27T00:00:00+01:00";
        check(
            "2023-01-22T20:00:00+01:00",
            &sender(),
            now,
            Some("queued"),
            Disposition::Deliver,
        );
        check(
            "2023-01-23T16:00:00+01:00",
            &sender(),
            now,
            Some("stopped"),
            Disposition::Hold,
        );
        check(
            "2023-01-23T15:59:59+01:00",
            &sender(),
            now,
            Some("queued"),
            Disposition::Deliver,
        );
        // The same instant written in another offset is the same instant.
        check(
            "2023-01-23T15:00:00+00:00",
            &sender(),
            now,
            Some("stopped"),
            Disposition::Hold,
        );
    }

    #[test]
    fn outside_is_held_by_default() {
        check(
            "2023-01-20T00:00:00+01:00",
            &sender(),
            "2023-01-21T00:00:00+01:00",
            None,
            Disposition::Hold,
        );
    }

    #[test]
    fn expiry_at_the_deadline() {
        let arrival = "2023-01-22T21:00:00+01:00";
        check(
            arrival,
            &sender(),
            "2023-01-27T20:59:59+01:00",
            Some("queued"),
            Disposition::Deliver,
        );
        check(
            arrival,
            &sender(),
            "2023-01-27T21:00:00+01:00",
            Some("queued"),
            Disposition::Expire,
        );
    }

    #[test]
    fn null_sender_is_dropped_not_bounced() {
        let now = "2023-02-10T00:00:00+01:00";
        check(
            "2023-01-22T21:00:00+01:00",
            &ReversePath::Null,
            now,
            Some("queued"),
            Disposition::Drop,
        );
        check(
            "2023-01-24T11:00:00+01:00",
            &ReversePath::Null,
            now,
            Some("rejected"),
            Disposition::Drop,
        );
        check(
            "2023-01-24T11:00:00+01:00",
            &sender(),
            now,
            Some("rejected"),
            Disposition::Bounce,
        );
        // Held mail of a null sender is just held.
        check(
            "2023-01-23T17:00:00+01:00",
            &ReversePath::Null,
            now,
            Some("stopped"),
            Disposition::Hold,
        );
    }

    #[test]
    fn mta_held_mail_stays_held_unless_released() {
        let mut inc = incident();
        let s = sender();
        let facts = Facts {
            arrival: t("2023-01-22T21:00:00+01:00"),
            sender: &s,
            mta_hold: true,
        };
        let now = t("2023-01-23T00:00:00+01:00");
        assert_eq!(classify(&inc, facts, now).disposition, Disposition::Hold);
        inc.release_mta_held = true;
        assert_eq!(classify(&inc, facts, now).disposition, Disposition::Deliver);
    }

    #[test]
    fn lifetime_from_restored() {
        let mut inc = incident();
        inc.lifetime_from = LifetimeFrom::Restored;
        let arrival = t("2023-01-22T21:00:00+01:00");
        assert_eq!(deadline(&inc, arrival), t("2023-01-31T13:00:00+01:00"));
        let s = sender();
        let facts = Facts {
            arrival,
            sender: &s,
            mta_hold: false,
        };
        let c = classify(&inc, facts, t("2023-01-30T00:00:00+01:00"));
        assert_eq!(c.disposition, Disposition::Deliver);
    }
}
