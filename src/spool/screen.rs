//! The checks every reader's messages pass before they reach the ledger, whatever the
//! format: a sender that can be a return path, an arrival time that can be real.
//!
//! A message that fails is quarantined with the reason, like any unreadable item, and the
//! rest of the spool goes on. Checking here rather than at `run` time is what keeps one bad
//! message from blocking others later: a sender no DSN can be addressed to (CR/LF, an
//! escape, `<@>`, `MAILER-DAEMON`, 900 bytes) or an arrival in year -1199 (a Postfix `T`
//! record of `-99999999999`) would otherwise stop every DSN run or every report.

use chrono::{DateTime, FixedOffset, TimeDelta, TimeZone, Utc};

use super::{Quarantined, QueuedMessage, SpoolItem};

/// The earliest arrival taken as real: before it, the time is damage, not history.
pub fn earliest_arrival() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How far after its file's modification time a message may say it arrived (clocks of
/// two hosts disagree a little; a day more is no clock skew).
const FUTURE_SLACK: TimeDelta = TimeDelta::days(1);

/// Passes a message on, or quarantines it with the reason it cannot be ingested.
pub fn screen(item: SpoolItem) -> SpoolItem {
    let SpoolItem::Message(message) = item else {
        return item;
    };
    match check(&message, message.file_time) {
        Ok(()) => SpoolItem::Message(message),
        Err(reason) => SpoolItem::Quarantined(Quarantined {
            source: message.source,
            reason,
        }),
    }
}

/// `Err` is the quarantine reason. `file_time` is the modification time of the file
/// holding the message, when known.
pub fn check(
    message: &QueuedMessage,
    file_time: Option<DateTime<FixedOffset>>,
) -> Result<(), String> {
    message.envelope.sender.check()?;
    check_arrival(message.envelope.arrival, file_time)
}

fn check_arrival(
    arrival: DateTime<FixedOffset>,
    file_time: Option<DateTime<FixedOffset>>,
) -> Result<(), String> {
    let earliest = earliest_arrival();
    if arrival < earliest {
        return Err(format!(
            "arrival time {} is before {}: not a real arrival (damaged envelope?)",
            arrival.to_rfc3339(),
            earliest.format("%Y")
        ));
    }
    if let Some(file_time) = file_time
        && arrival - file_time > FUTURE_SLACK
    {
        return Err(format!(
            "arrival time {} is more than a day after the file was last written ({}): not a \
             real arrival (damaged envelope?)",
            arrival.to_rfc3339(),
            file_time.to_rfc3339()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn arrivals_outside_the_sane_range_are_refused() {
        let written = Some(at("2023-01-23T12:00:00Z"));
        assert_eq!(
            check_arrival(at("2023-01-23T10:00:00+01:00"), written),
            Ok(())
        );
        assert_eq!(check_arrival(at("1990-01-01T00:00:00Z"), written), Ok(()));
        assert_eq!(check_arrival(at("2023-01-24T11:59:00Z"), written), Ok(()));
        assert_eq!(check_arrival(at("2099-01-01T00:00:00Z"), None), Ok(()));
        let old = check_arrival(at("1989-12-31T23:59:59Z"), written).unwrap_err();
        assert!(old.contains("before 1990"), "{old}");
        let year_minus_1199 = DateTime::from_timestamp(-99_999_999_999, 0)
            .unwrap()
            .fixed_offset();
        let ancient = check_arrival(year_minus_1199, written).unwrap_err();
        assert!(ancient.starts_with("arrival time -1199-"), "{ancient}");
        let future = check_arrival(at("2023-01-24T12:00:01Z"), written).unwrap_err();
        assert!(future.contains("more than a day after"), "{future}");
    }
}
