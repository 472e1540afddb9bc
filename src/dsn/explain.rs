//! The plain-words explanation of a failure DSN, from the incident's facts about one
//! message: when it arrived, when its queue lifetime ended, when the storage came back and
//! whether delivery was tried. Pure: every time is passed in. The sentences are in the
//! sender's terms (no "queue lifetime", no internal names), and each is true for the
//! message it is about.

use chrono::{DateTime, FixedOffset, TimeDelta};

/// The facts behind an expiry.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub arrival: DateTime<FixedOffset>,
    /// How long mail is kept and retried (the incident's `queue_lifetime`).
    pub lifetime: TimeDelta,
    /// When that time ran out for this message.
    pub deadline: DateTime<FixedOffset>,
    /// When the mail storage was usable again (`restored_at`).
    pub restored_at: DateTime<FixedOffset>,
    /// The storage answered a delivery attempt (its reply is in the recipient's report).
    pub tried: bool,
}

/// The sentence added to an expiry's explanation when the store said, to the end, that
/// the recipient's mailbox was full (x.2.2).
pub fn mailbox_full(text: String) -> String {
    format!(
        "{text} The recipient's mailbox was full (over its storage quota) each time \
         delivery was tried: the recipient needs to make room, or ask for a larger quota, \
         before the message is sent again."
    )
}

/// Why an expired message was not delivered, told from its own dates.
pub fn expired(e: &Expiry) -> String {
    let arrival = e.arrival.to_rfc2822();
    let deadline = e.deadline.to_rfc2822();
    let kept = format!(
        "Your message arrived here on {arrival}, while the mail storage of the recipients \
         below was out of service. It was kept, to be delivered for up to {}, that is until \
         {deadline}.",
        in_words(e.lifetime)
    );
    let why = if e.restored_at >= e.deadline {
        format!(
            " The storage was not back in service until {}, after that time, so the message \
             was not delivered.",
            e.restored_at.to_rfc2822()
        )
    } else if e.tried {
        format!(
            " The storage was back in service on {}, but it did not accept the message for \
             these recipients before that time (its last answer is shown below), so the \
             message was not delivered.",
            e.restored_at.to_rfc2822()
        )
    } else {
        format!(
            " The storage was back in service on {}, but the mail kept during the outage \
             had not yet been delivered to it by that time, so the message was not \
             delivered.",
            e.restored_at.to_rfc2822()
        )
    };
    format!("{kept}{why}")
}

/// A message bounced by the incident policy: when it arrived, and the window's note.
pub fn bounced(arrival: DateTime<FixedOffset>, note: Option<&str>) -> String {
    let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
    format!(
        "Your message arrived here on {}, during an outage of the mail storage of the \
         recipients below{note}. It could not be delivered to them.",
        arrival.to_rfc2822()
    )
}

/// The explanation, followed by the operator's own words (`dsn_text` in the incident file)
/// as a paragraph of their own.
pub fn with_operator_text(explanation: String, dsn_text: Option<&str>) -> String {
    match dsn_text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => format!("{explanation}\n{text}"),
        None => explanation,
    }
}

/// A duration as people say it: "5 days", "36 hours", "1 day and 12 hours", "90 minutes".
pub fn in_words(d: TimeDelta) -> String {
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    let minutes = d.num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours, mins) {
        (0, 0, m) => plural(m, "minute"),
        (0, h, 0) => plural(h, "hour"),
        (0, h, m) => format!("{} and {}", plural(h, "hour"), plural(m, "minute")),
        (d, 0, 0) => plural(d, "day"),
        (d, h, 0) if d < 2 => plural(d * 24 + h, "hour"),
        (d, h, _) => format!("{} and {}", plural(d, "day"), plural(h, "hour")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn expiry(restored: &str, tried: bool) -> Expiry {
        Expiry {
            arrival: t("2023-01-22T20:00:00+01:00"),
            lifetime: TimeDelta::days(5),
            deadline: t("2023-01-27T20:00:00+01:00"),
            restored_at: t(restored),
            tried,
        }
    }

    #[test]
    fn an_expiry_says_what_really_happened() {
        // The store came back before the deadline: it is not said that it did not.
        let text = expired(&expiry("2023-01-26T13:00:00+01:00", false));
        assert!(
            text.contains("arrived here on Sun, 22 Jan 2023 20:00:00 +0100"),
            "{text}"
        );
        assert!(
            text.contains("for up to 5 days, that is until Fri, 27 Jan 2023 20:00:00 +0100"),
            "{text}"
        );
        assert!(
            text.contains("back in service on Thu, 26 Jan 2023 13:00:00 +0100"),
            "{text}"
        );
        assert!(
            text.contains("had not yet been delivered to it by that time"),
            "{text}"
        );
        assert!(
            !text.contains("lifetime") && !text.contains("queue"),
            "jargon: {text}"
        );
        let text = expired(&expiry("2023-01-26T13:00:00+01:00", true));
        assert!(text.contains("did not accept the message"), "{text}");
        // The store came back too late.
        let text = expired(&expiry("2023-01-28T09:00:00+01:00", false));
        assert!(
            text.contains(
                "not back in service until Sat, 28 Jan 2023 09:00:00 +0100, after that time"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_operator_text_is_its_own_paragraph() {
        assert_eq!(
            with_operator_text("A.".into(), Some("  We are sorry.  ")),
            "A.\nWe are sorry."
        );
        assert_eq!(with_operator_text("A.".into(), Some(" ")), "A.");
        assert_eq!(with_operator_text("A.".into(), None), "A.");
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(in_words(TimeDelta::days(5)), "5 days");
        assert_eq!(in_words(TimeDelta::days(1)), "1 day");
        assert_eq!(in_words(TimeDelta::hours(36)), "36 hours");
        assert_eq!(in_words(TimeDelta::hours(24 * 3 + 5)), "3 days and 5 hours");
        assert_eq!(in_words(TimeDelta::minutes(90)), "1 hour and 30 minutes");
        assert_eq!(in_words(TimeDelta::minutes(45)), "45 minutes");
        assert_eq!(in_words(TimeDelta::hours(2)), "2 hours");
    }
}
