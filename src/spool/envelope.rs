//! Deriving an envelope from message headers when the spool carries none.
//!
//! The content stays the raw bytes; mail-parser only reads the header block. Each field
//! records where it came from (`FieldSource`), first source that gives it wins:
//!
//! * **sender**: sidecar `sender`, then the topmost `Return-Path:` (added by the final
//!   delivery agent, so the newest), then the sender of the mbox `From ` line
//!   (`MAILER-DAEMON` or `<>` there means the null sender). A `Return-Path:` with an empty
//!   value is ignored, `Return-Path: <>` is the null sender. With none of these the message
//!   is quarantined: a missing sender is *unknown*, not null, and `From:` is not the
//!   envelope, so an operator must add a sidecar.
//! * **recipients**: sidecar `recipients`, else the final delivery's own field: the
//!   topmost `X-Original-To:`, else the topmost `Delivered-To:`, else the topmost
//!   `Envelope-To:`, looking only **above the first `Received:`**. A delivery agent adds
//!   these above the hops it received the message through; the same fields further down
//!   were added by earlier deliveries (a mailing list, a forwarder) and name other people,
//!   so they never count. The value may be a comma-separated list; angle brackets are
//!   stripped. Every recipient must have a local part and a domain, otherwise the message
//!   is quarantined naming the header. Duplicates (local part exact, domain
//!   case-insensitive) are dropped, keeping the first.
//! * **arrival**: sidecar `arrival`, then the date of the topmost `Received:` header that
//!   has a usable date (the topmost is the newest hop), then the mbox `From ` line date,
//!   then `Date:`, then the file's modification time.
//!
//! A file that begins with a `From ` line outside an mbox (some Maildir converters leave
//! one) has it cut off by the reader as framing (`spool::file_item`): it is passed here as
//! `Hints::from_line`, like the mbox reader's separator, and is not part of the content.
//!
//! Headers are read by the one line-end rule (`line_ends`): classic-Mac mail (CR line ends
//! only) is read as lines, not as one long first header.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use mail_parser::{HeaderValue, MessageParser};

use super::mbox::FromLine;
use super::{Envelope, FieldSource, Recipient};
use crate::address::{Mailbox, ReturnContent, ReversePath};
use crate::line_ends;

/// Envelope fields given explicitly (by an `.eml` sidecar); each one beats the headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GivenEnvelope {
    pub sender: Option<ReversePath>,
    pub recipients: Option<Vec<Recipient>>,
    pub arrival: Option<DateTime<FixedOffset>>,
    pub envid: Option<String>,
    pub ret: Option<ReturnContent>,
}

/// Everything besides the headers that can contribute to an envelope.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    pub given: Option<GivenEnvelope>,
    pub from_line: Option<FromLine>,
    /// The message file's modification time, the last resort for the arrival.
    pub file_time: Option<DateTime<FixedOffset>>,
}

/// Builds the envelope of `content`, or says why it cannot (the quarantine reason).
pub fn derive(content: &[u8], hints: &Hints) -> Result<Envelope, String> {
    // mail-parser takes CRLF and LF line ends, not CR: Mac mail is read in its LF form.
    let content = if line_ends::is_mac(content) {
        line_ends::to_lf(content)
    } else {
        Cow::Borrowed(content)
    };
    let content = &*content;
    check_header_block(content)?;
    let from_line = hints.from_line.clone();
    let message = MessageParser::new()
        .parse_headers(content)
        .ok_or_else(|| "no header block: no `Name: value` header found".to_string())?;
    let fields = HeaderFields::collect(&message);
    let given = hints.given.clone().unwrap_or_default();

    let (sender, sender_from) = match given.sender {
        Some(s) => (s, FieldSource::Sidecar),
        None => pick_sender(&fields, from_line.as_ref())?,
    };
    let (recipients, recipients_from) = match given.recipients {
        Some(r) => (dedupe(r), FieldSource::Sidecar),
        None => pick_recipients(&fields)?,
    };
    let (arrival, arrival_from) = match given.arrival {
        Some(a) => (a, FieldSource::Sidecar),
        None => pick_arrival(&fields, from_line.as_ref(), hints.file_time)?,
    };
    Ok(Envelope {
        sender,
        sender_from,
        recipients,
        recipients_from,
        arrival,
        arrival_from,
        envid: given.envid,
        ret: given.ret,
    })
}

/// Refuses input that is not a message at all: the first line must be a header
/// (`Name: value`, the name printable ASCII without `:`).
pub fn check_header_block(content: &[u8]) -> Result<(), String> {
    if content.is_empty() {
        return Err("message is empty".into());
    }
    let first = first_line(content);
    if looks_like_header(first) {
        return Ok(());
    }
    if first.starts_with(b"From ") {
        return Err("no header block: the message starts with a second mbox `From ` line".into());
    }
    if first.is_empty() {
        Err("no header block: the message starts with an empty line".into())
    } else {
        Err("no header block: the first line does not look like `Name: value`".into())
    }
}

fn first_line(content: &[u8]) -> &[u8] {
    line_ends::lines(content)
        .next()
        .map_or(&[][..], |(text, _)| text)
}

fn looks_like_header(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b))
}

/// The envelope-relevant headers, top to bottom, as raw unfolded text (and dates). The
/// recipient fields are only those above the first `Received:` (the final delivery's).
#[derive(Debug, Default)]
struct HeaderFields {
    return_path: Vec<String>,
    x_original_to: Vec<String>,
    delivered_to: Vec<String>,
    envelope_to: Vec<String>,
    /// Recipient fields below the first `Received:`: earlier hops', only to say why
    /// none counted.
    earlier_hops: usize,
    received_dates: Vec<Option<DateTime<FixedOffset>>>,
    date: Option<DateTime<FixedOffset>>,
}

impl HeaderFields {
    fn collect(message: &mail_parser::Message<'_>) -> HeaderFields {
        let raw = message.raw_message();
        let mut fields = HeaderFields::default();
        for header in message.headers() {
            let name = header.name();
            let value = || raw_value(raw, header.offset_start(), header.offset_end());
            let recipient_list = if name.eq_ignore_ascii_case("X-Original-To") {
                Some(&mut fields.x_original_to)
            } else if name.eq_ignore_ascii_case("Delivered-To") {
                Some(&mut fields.delivered_to)
            } else if name.eq_ignore_ascii_case("Envelope-To") {
                Some(&mut fields.envelope_to)
            } else {
                None
            };
            if let Some(list) = recipient_list {
                if fields.received_dates.is_empty() {
                    list.push(value());
                } else {
                    fields.earlier_hops += 1;
                }
            } else if name.eq_ignore_ascii_case("Return-Path") {
                fields.return_path.push(value());
            } else if name.eq_ignore_ascii_case("Received") {
                let date = match header.value() {
                    HeaderValue::Received(r) => r.date().as_ref().and_then(to_chrono),
                    _ => None,
                };
                fields.received_dates.push(date);
            } else if name.eq_ignore_ascii_case("Date")
                && fields.date.is_none()
                && let HeaderValue::DateTime(d) = header.value()
            {
                fields.date = to_chrono(d);
            }
        }
        fields
    }
}

fn raw_value(raw: &[u8], start: u32, end: u32) -> String {
    let (start, end) = (start as usize, end as usize);
    let bytes = raw.get(start..end).unwrap_or_default();
    // Unfold: a folded value continues after CRLF + whitespace.
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    text.trim().to_string()
}

fn to_chrono(d: &mail_parser::DateTime) -> Option<DateTime<FixedOffset>> {
    if !d.is_valid() {
        return None;
    }
    let seconds = i32::from(d.tz_hour) * 3600 + i32::from(d.tz_minute) * 60;
    let offset = FixedOffset::east_opt(if d.tz_before_gmt { -seconds } else { seconds })?;
    let naive = NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))?
        .and_hms_opt(u32::from(d.hour), u32::from(d.minute), u32::from(d.second))?;
    offset.from_local_datetime(&naive).single()
}

fn pick_sender(
    fields: &HeaderFields,
    from_line: Option<&FromLine>,
) -> Result<(ReversePath, FieldSource), String> {
    if let Some(value) = fields.return_path.first().filter(|v| !v.is_empty()) {
        return Ok((
            ReversePath::parse(bracketed(value)),
            FieldSource::ReturnPath,
        ));
    }
    if let Some(sender) = from_line.and_then(|f| f.sender.clone()) {
        return Ok((sender, FieldSource::MboxFromLine));
    }
    Err(
        "no envelope sender: no sidecar, no Return-Path header and no mbox `From ` line \
         sender (add a sidecar)"
            .into(),
    )
}

/// The part inside the first `<…>`, or the whole value when it has none.
fn bracketed(value: &str) -> &str {
    let Some(open) = value.find('<') else {
        return value.trim();
    };
    match value[open..].find('>') {
        Some(close) => &value[open..=open + close],
        None => value.trim(),
    }
}

fn pick_recipients(fields: &HeaderFields) -> Result<(Vec<Recipient>, FieldSource), String> {
    let kinds = [
        (
            &fields.x_original_to,
            FieldSource::XOriginalTo,
            "X-Original-To",
        ),
        (
            &fields.delivered_to,
            FieldSource::DeliveredTo,
            "Delivered-To",
        ),
        (&fields.envelope_to, FieldSource::EnvelopeTo, "Envelope-To"),
    ];
    let Some((values, source, name)) = kinds.into_iter().find(|(v, _, _)| !v.is_empty()) else {
        if fields.earlier_hops > 0 {
            return Err("no envelope recipients: no sidecar, and no X-Original-To/\
                        Delivered-To/Envelope-To header above the first Received header \
                        (those below it name earlier hops' recipients; add a sidecar)"
                .into());
        }
        return Err("no envelope recipients: no sidecar and no \
                    X-Original-To/Delivered-To/Envelope-To header"
            .into());
    };
    // The topmost one: the final delivery agent's own field.
    let mut recipients = Vec::new();
    if let Some(value) = values.first() {
        for item in split_address_list(value) {
            let address = bracketed(&item).trim_matches(['<', '>']).trim().to_string();
            if address.is_empty() {
                continue;
            }
            Mailbox::parse(&address).map_err(|e| format!("bad recipient in {name} header: {e}"))?;
            recipients.push(Recipient::plain(address));
        }
    }
    if recipients.is_empty() {
        return Err(format!(
            "no envelope recipients: the {name} header is empty"
        ));
    }
    Ok((dedupe(recipients), source))
}

/// Splits at commas outside double quotes (a quoted local part may hold a comma).
fn split_address_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
}

/// Drops repeated recipients (the same mailbox by `Mailbox::canonical`), keeping the
/// first occurrence and its parameters. A set, not a list scan: 100k recipients in one
/// envelope cost 100k look-ups, not 5 billion comparisons.
pub fn dedupe(recipients: Vec<Recipient>) -> Vec<Recipient> {
    let mut seen = std::collections::HashSet::with_capacity(recipients.len());
    let mut out = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        if seen.insert(crate::address::Mailbox::canonical_key(&recipient.address)) {
            out.push(recipient);
        }
    }
    out
}

fn pick_arrival(
    fields: &HeaderFields,
    from_line: Option<&FromLine>,
    file_time: Option<DateTime<FixedOffset>>,
) -> Result<(DateTime<FixedOffset>, FieldSource), String> {
    if let Some(date) = fields.received_dates.iter().flatten().next() {
        return Ok((*date, FieldSource::Received));
    }
    if let Some(date) = from_line.and_then(|f| f.date) {
        return Ok((date, FieldSource::MboxFromLine));
    }
    if let Some(date) = fields.date {
        return Ok((date, FieldSource::DateHeader));
    }
    match file_time {
        Some(t) => Ok((t, FieldSource::FileTime)),
        None => Err("no arrival time: no Received or Date header and no file time".into()),
    }
}

/// A file's modification time as an arrival time (UTC), if the platform gives one.
pub fn file_time(metadata: &std::fs::Metadata) -> Option<DateTime<FixedOffset>> {
    let modified = metadata.modified().ok()?;
    Some(DateTime::<Utc>::from(modified).fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn hints() -> Hints {
        Hints {
            file_time: Some(dt("2020-01-01T00:00:00Z")),
            ..Hints::default()
        }
    }

    #[test]
    fn topmost_received_date_wins() {
        let msg = b"Return-Path: <s@x.test>\r\nDelivered-To: r@y.test\r\n\
Received: from b by c; Tue, 24 Jan 2023 11:00:00 +0100\r\n\
Received: from a by b; Mon, 23 Jan 2023 09:00:00 +0000\r\n\
Date: Sun, 22 Jan 2023 08:00:00 +0000\r\n\r\nbody\r\n";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.arrival, dt("2023-01-24T11:00:00+01:00"));
        assert_eq!(env.arrival_from, FieldSource::Received);
    }

    #[test]
    fn received_without_date_falls_through_to_next_then_date() {
        let msg = b"Return-Path: <s@x.test>\nDelivered-To: r@y.test\nReceived: from b by c\n\
Received: from a by b; Mon, 23 Jan 2023 09:00:00 -0200\n\nbody\n";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.arrival, dt("2023-01-23T09:00:00-02:00"));
        let msg = b"Return-Path: <s@x.test>\nDelivered-To: r@y.test\nReceived: from b by c\n\
Date: Sun, 22 Jan 2023 08:00:00 +0000\n\nbody\n";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.arrival, dt("2023-01-22T08:00:00Z"));
        assert_eq!(env.arrival_from, FieldSource::DateHeader);
    }

    #[test]
    fn from_line_date_beats_date_header_but_not_received() {
        let from_line =
            super::super::mbox::parse_from_line(b"From s@x.test Mon Jan 23 10:00:00 2023");
        let h = Hints {
            from_line: Some(from_line),
            ..hints()
        };
        let msg = b"Delivered-To: r@y.test\nDate: Sun, 22 Jan 2023 08:00:00 +0000\n\nbody\n";
        let env = derive(msg, &h).unwrap();
        assert_eq!(
            (env.arrival, env.arrival_from),
            (dt("2023-01-23T10:00:00Z"), FieldSource::MboxFromLine)
        );
        assert_eq!(
            (env.sender, env.sender_from),
            (
                ReversePath::Address("s@x.test".into()),
                FieldSource::MboxFromLine
            )
        );
    }

    #[test]
    fn file_time_is_last_resort() {
        let msg = b"Return-Path: <>\nX-Original-To: r@y.test\n\nbody\n";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.arrival_from, FieldSource::FileTime);
        assert_eq!(env.arrival, dt("2020-01-01T00:00:00Z"));
        assert_eq!(env.sender, ReversePath::Null);
        assert_eq!(env.sender_from, FieldSource::ReturnPath);
    }

    #[test]
    fn recipient_header_priority_and_lists() {
        let msg = b"Return-Path: <s@x.test>\nEnvelope-To: e@y.test\nDelivered-To: <d1@y.test>\n\
X-Original-To: o1@y.test, \"a,b\"@y.test\nDelivered-To: d2@y.test\nX-Original-To: <o2@y.test>\n\nb\n";
        let env = derive(msg, &hints()).unwrap();
        let addrs: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            addrs,
            ["o1@y.test", "\"a,b\"@y.test"],
            "the topmost one only"
        );
        assert_eq!(env.recipients_from, FieldSource::XOriginalTo);

        let msg = b"Return-Path: <s@x.test>\nEnvelope-To: e@y.test\nDelivered-To: <d1@y.test>\n\
Delivered-To: d2@y.test\n\nb\n";
        let env = derive(msg, &hints()).unwrap();
        let addrs: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["d1@y.test"]);
        assert_eq!(env.recipients_from, FieldSource::DeliveredTo);

        let msg = b"Return-Path: <s@x.test>\nEnvelope-to: e1@y.test,\n e2@y.test\n\nb\n";
        let env = derive(msg, &hints()).unwrap();
        let addrs: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["e1@y.test", "e2@y.test"]);
        assert_eq!(env.recipients_from, FieldSource::EnvelopeTo);
    }

    #[test]
    fn recipients_are_deduplicated_keeping_first() {
        let list = vec![
            Recipient::plain("Bob@Example.ORG"),
            Recipient::plain("Bob@example.org"),
            Recipient::plain("bob@example.org"),
            Recipient {
                address: "Bob@EXAMPLE.org".into(),
                orcpt: Some("rfc822;x@y".into()),
                notify: None,
                prior: None,
            },
        ];
        let mut list = list;
        list.push(Recipient::plain("\"carol\"@example.org"));
        list.push(Recipient::plain("Carol@EXAMPLE.org"));
        list.push(Recipient::plain("carol@example.net"));
        let out = dedupe(list);
        let addrs: Vec<&str> = out.iter().map(|r| r.address.as_str()).collect();
        // One mailbox per `Mailbox::canonical`: local part case and quoting do not count.
        assert_eq!(
            addrs,
            [
                "Bob@Example.ORG",
                "\"carol\"@example.org",
                "carol@example.net"
            ]
        );
    }

    #[test]
    fn missing_pieces_are_quarantine_reasons() {
        let no_rcpt = derive(b"Return-Path: <s@x.test>\n\nb\n", &hints()).unwrap_err();
        assert_eq!(
            no_rcpt,
            "no envelope recipients: no sidecar and no X-Original-To/Delivered-To/Envelope-To header"
        );
        let no_sender = derive(b"From: a@b.test\nDelivered-To: r@y.test\n\nb\n", &hints());
        assert!(no_sender.unwrap_err().starts_with("no envelope sender"));
        let bad = derive(b"Return-Path: <>\nDelivered-To: nobody\n\nb\n", &hints());
        assert_eq!(
            bad.unwrap_err(),
            "bad recipient in Delivered-To header: address `nobody` has no `@domain`"
        );
        let empty = derive(b"Return-Path: <>\nDelivered-To: \n\nb\n", &hints());
        assert_eq!(
            empty.unwrap_err(),
            "no envelope recipients: the Delivered-To header is empty"
        );
    }

    #[test]
    fn header_block_rule() {
        assert!(check_header_block(b"Subject: x\n\nbody").is_ok());
        assert!(check_header_block(b"Subject: x\rFrom: y\r\rbody").is_ok());
        assert_eq!(
            check_header_block(b"From a@b Mon Jan 23 10:00:00 2023\nSubject: x\n").unwrap_err(),
            "no header block: the message starts with a second mbox `From ` line",
            "the readers cut off the first as framing"
        );
        assert_eq!(check_header_block(b"").unwrap_err(), "message is empty");
        assert!(check_header_block(b"\x89PNG\r\n\x1a\n\0\0").is_err());
        assert!(check_header_block(b"hello world: not a header\n").is_err());
        assert!(check_header_block(b"\nSubject: x\n").is_err());
        assert!(check_header_block(b": x\n").is_err());
    }

    #[test]
    fn only_the_final_delivery_names_recipients() {
        // The reproduction of issue 11: a list's delivery fields further down.
        let msg = b"Return-Path: <alice@example.org>\nX-Original-To: bob@example.test\n\
Delivered-To: bob@example.test\nReceived: from mx.lists.example.org by mx.example.test; \
Mon, 23 Jan 2023 10:00:00 +0000\nX-Original-To: some-list@lists.example.org\n\
Delivered-To: some-list@lists.example.org\nSubject: x\n\nb\n";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.recipients, vec![Recipient::plain("bob@example.test")]);
        assert_eq!(env.recipients_from, FieldSource::XOriginalTo);

        let below_only = b"Return-Path: <a@x.test>\nReceived: from a by b; \
Mon, 23 Jan 2023 10:00:00 +0000\nDelivered-To: list@lists.example.org\n\nb\n";
        let reason = derive(below_only, &hints()).unwrap_err();
        assert!(
            reason.contains("above the first Received header") && reason.contains("earlier hops"),
            "{reason}"
        );
        // Envelope-To (Exim) above the hops, X-Original-To only below: Envelope-To counts.
        let exim = b"Envelope-To: e@y.test\nReturn-Path: <a@x.test>\nReceived: from a by b\n\
X-Original-To: old@y.test\n\nb\n";
        let env = derive(exim, &hints()).unwrap();
        assert_eq!(env.recipients, vec![Recipient::plain("e@y.test")]);
        assert_eq!(env.recipients_from, FieldSource::EnvelopeTo);
    }

    #[test]
    fn classic_mac_mail_is_read_as_lines() {
        let msg = b"Return-Path: <s@x.test>\rX-Original-To: r@y.test\r\
Date: Sun, 22 Jan 2023 08:00:00 +0000\r\rbody\r";
        let env = derive(msg, &hints()).unwrap();
        assert_eq!(env.recipients, vec![Recipient::plain("r@y.test")]);
        assert_eq!(env.sender, ReversePath::Address("s@x.test".into()));
        assert_eq!(env.arrival_from, FieldSource::DateHeader);
    }

    #[test]
    fn given_fields_win() {
        let given = GivenEnvelope {
            sender: Some(ReversePath::Null),
            recipients: Some(vec![
                Recipient::plain("g@y.test"),
                Recipient::plain("g@Y.TEST"),
            ]),
            arrival: None,
            envid: Some("id1".into()),
            ret: Some(ReturnContent::Headers),
        };
        let h = Hints {
            given: Some(given),
            ..hints()
        };
        let msg = b"Return-Path: <s@x.test>\nDelivered-To: nobody\nDate: Sun, 22 Jan 2023 08:00:00 +0000\n\nb\n";
        let env = derive(msg, &h).unwrap();
        assert_eq!(env.sender, ReversePath::Null);
        assert_eq!(env.sender_from, FieldSource::Sidecar);
        assert_eq!(env.recipients, vec![Recipient::plain("g@y.test")]);
        assert_eq!(env.recipients_from, FieldSource::Sidecar);
        assert_eq!(env.arrival_from, FieldSource::DateHeader);
        assert_eq!(env.envid.as_deref(), Some("id1"));
        assert_eq!(env.ret, Some(ReturnContent::Headers));
    }
}
