//! README's "JSON events" table and `Event` agree: every variant is a row, every row a
//! variant, and every field an event has is named in its row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::cluster::MemberStatus;

/// Each variant's number. A new variant fails to compile here until it gets the next
/// number (and `VARIANTS` grows), and `every_variant_has_a_sample` fails until it has a
/// sample below.
fn ordinal(e: &Event<'_>) -> usize {
    match e {
        Event::Quarantined { .. } => 0,
        Event::IngestSummary { .. } => 1,
        Event::Plan { .. } => 2,
        Event::Domain { .. } => 3,
        Event::Arrivals { .. } => 4,
        Event::Age { .. } => 5,
        Event::Anomaly { .. } => 6,
        Event::BouncePolicy { .. } => 7,
        Event::DsnSenderDomain { .. } => 8,
        Event::Projection { .. } => 9,
        Event::Ledger { .. } => 10,
        Event::ReportSummary { .. } => 11,
        Event::Mailbox { .. } => 12,
        Event::SenderDomain { .. } => 13,
        Event::Audit { .. } => 14,
        Event::Outcome { .. } => 15,
        Event::DsnMade { .. } => 16,
        Event::MassBounce { .. } => 17,
        Event::Notice { .. } => 18,
        Event::Warning { .. } => 19,
        Event::Steered { .. } => 20,
        Event::ControlRequest { .. } => 21,
        Event::RunSummary { .. } => 22,
        Event::Status { .. } => 23,
        Event::Message { .. } => 24,
        Event::Dsn { .. } => 25,
        Event::DsnOwed { .. } => 26,
        Event::DsnSent { .. } => 27,
        Event::SendSummary { .. } => 28,
        Event::SendDomain { .. } => 29,
        Event::Pace { .. } => 30,
        Event::DsnsWritten { .. } => 31,
        Event::ClusterStatus(_) => 32,
        Event::Order { .. } => 33,
    }
}

const VARIANTS: usize = 34;

fn mass_bounce<'a>() -> Event<'a> {
    Event::MassBounce {
        open_messages: 10,
        expire: 8,
        bounce: 1,
        drop: 0,
        percent: 90,
        max_bounce_share: 50,
        rule: "expire = 5d",
        now: "2023-01-28T06:00:00+01:00".into(),
        fixed_clock: true,
    }
}

/// One of each variant, every optional field set, so each field is serialized.
fn samples<'a>(cluster: &'a ClusterStatus, ages: Ages<'a>) -> Vec<Event<'a>> {
    let some = Some("x");
    vec![
        Event::Quarantined {
            format: "mbox",
            path: "/spool/mbox".into(),
            offset: 12,
            reason: "no From line",
            first_seen: some,
        },
        Event::IngestSummary {
            spool: "/spool".into(),
            format: "postfix",
            ledger: "/l.db".into(),
            messages: 1,
            new: 1,
            known: 0,
            recipients: 2,
            quarantined: 0,
            new_quarantined: 0,
            shard: Some("2/4".into()),
            other_shards: 3,
            stopped: Some("SIGINT"),
            exit: 0,
        },
        Event::Plan {
            window: "queued".into(),
            action: "deliver",
            disposition: "deliver",
            messages: 1,
            recipients: 1,
            bytes: 10,
        },
        Event::Domain {
            domain: "example.net",
            recipients: 1,
            deliver: 1,
            bounce: 0,
            hold: 0,
            drop: 0,
        },
        Event::Arrivals {
            hour: "2023-01-22T20:00:00+01:00".into(),
            window: "queued".into(),
            messages: 6,
        },
        Event::Age {
            domain: "TOTAL",
            total: 1,
            ages,
        },
        Event::Anomaly {
            kind: "outside",
            window: some,
            messages: 1,
            examples: "A1 B2".into(),
        },
        Event::BouncePolicy {
            window: "rejected-550".into(),
            dsns: 1,
            suppressed_unauthenticated: 1,
            suppressed_spam: 1,
        },
        Event::DsnSenderDomain {
            sender_domain: "example.org",
            dsns: 1,
            suppressed_unauthenticated: 1,
            suppressed_spam: 1,
        },
        Event::Projection {
            rate: Some("50/s".into()),
            selected: "yes",
            messages: 1,
            seconds: Some(Duration::from_millis(1500)),
        },
        Event::Order {
            order: "arrival",
            milestone: "window",
            window: Some("night".into()),
            from_messages: 0,
            messages: 1,
            starts_seconds: Some(Duration::ZERO),
            done_seconds: Some(Duration::from_millis(1500)),
        },
        Event::Ledger {
            ledger: "/l.db",
            shard: "shard 2/4",
            messages: 1,
        },
        Event::ReportSummary {
            incident: "outage",
            now: "2023-01-28T06:00:00+01:00".into(),
            messages: 1,
            dispositions: BTreeMap::from([("deliver", 1)]),
            states: BTreeMap::from([("pending", 1)]),
            deliveries: 1,
            dsns: 0,
            dsn_senders: 0,
            dsns_suppressed_unauthenticated: 0,
            dsns_suppressed_spam: 0,
            projected_seconds: Some(1.5),
            order: "arrival",
            oldest: Some("2023-01-22T20:00:00+01:00".into()),
            newest: Some("2023-01-22T20:00:00+01:00".into()),
            quarantined: 0,
            outside: 0,
            unexpected: 0,
            duplicates: 0,
            mass_bounce: Some(Box::new(mass_bounce())),
            ledgers: Some(vec!["/a.db", "/b.db"]),
        },
        Event::Mailbox {
            mailbox: "a@example.net",
            messages: 1,
            delivered_late: 1,
            worst_delay_seconds: Some(60),
            bounced: 0,
            dropped: 0,
            held: 0,
            pending: 0,
            uncertain: 0,
            over_quota: 0,
        },
        Event::SenderDomain {
            sender_domain: "example.org",
            dsns: 1,
            senders: 1,
            recipients: 1,
        },
        Event::Audit {
            recipient_id: 1,
            message_id: 1,
            queue_id: "A1",
            sender: "s@example.org",
            recipient: "a@example.net",
            arrival: "2023-01-22T20:00:00+01:00",
            window: some,
            disposition: some,
            state: "bounced",
            status: some,
            reply: some,
            dsn_id: Some(1),
            events: vec![StateChange {
                at: "2023-01-28T05:00:00.120Z",
                from: None,
                to: "pending",
                detail: some,
                dsn_id: None,
            }],
        },
        Event::Outcome {
            queue_id: "A1",
            recipient: "a@example.net",
            state: "delivered",
            detail: "250 ok",
        },
        Event::DsnMade {
            id: 1,
            queue_id: "A1",
            to: "s@example.org",
            recipients: 1,
        },
        mass_bounce(),
        Event::Notice { text: "x" },
        Event::Warning { text: "x" },
        Event::Steered { text: "paused" },
        Event::ControlRequest {
            id: 1,
            request: "pause",
        },
        Event::RunSummary {
            delivered: 1,
            already_there: 0,
            recovered_in_flight: 0,
            deferred: 0,
            failed: 0,
            held: 0,
            released: 0,
            dropped: 0,
            dsns_made: 0,
            delay_warnings: 0,
            dsns_written: 0,
            dsns_unwritten: 0,
            spool_changed: 0,
            spool_changed_examples: &[],
            remaining: 0,
            uncertain: 0,
            verified_in_store: 0,
            verified_missing_redelivered: 0,
            verify_impossible: 0,
            messages: 1,
            seconds: 0.5,
            stopped: Some("x".into()),
            exit: 0,
        },
        Event::Status {
            ledger: "/l.db".into(),
            messages: 1,
            states: BTreeMap::from([("pending", 1)]),
            windows: BTreeMap::from([("queued", BTreeMap::from([("pending", 1)]))]),
            quarantined: 0,
            dsns: 0,
            dsns_unwritten: 0,
            dsns_unsent: 0,
            spool_changed: 0,
            replies: vec![ReplyLine {
                code: 452,
                status: Some("4.2.2"),
                state: "deferred",
                recipients: 1,
            }],
            remaining: 1,
            next: Some("spoolreplay run"),
        },
        Event::Message {
            queue_id: "A1",
            queue_name: some,
            source: "/spool/A1".into(),
            format: "postfix",
            sender: "s@example.org",
            arrival: "2023-01-22T20:00:00+01:00".into(),
            size: 10,
            mta_hold: false,
            window: some,
            disposition: some,
            envelope_from: EnvelopeFrom {
                sender: "envelope",
                recipients: "envelope",
                arrival: "envelope",
            },
            recipients: vec![RecipientLine {
                address: "a@example.net",
                state: "pending",
                status: some,
                reply: some,
                remote: some,
                attempts: 0,
                last_attempt: some,
            }],
        },
        Event::Dsn {
            id: 1,
            kind: "failure",
            queue_id: "A1",
            to: "s@example.org",
            message_id: "<x@y>",
            recipients: 1,
            created_at: "2023-01-28T05:00:00Z",
            written_path: some,
            send_state: "sent",
            sent_at: some,
            send_reply: some,
        },
        Event::DsnOwed {
            queue_id: "A1",
            to: "s@example.org",
            recipients: 1,
        },
        Event::DsnSent {
            id: 1,
            to: "s@example.org",
            state: "sent",
            reply: "250 ok",
        },
        Event::SendSummary {
            sent: 1,
            deferred: 0,
            failed: 0,
            uncertain: 0,
            recovered_uncertain: 0,
            unsent: 0,
            stopped: some,
            exit: 0,
        },
        Event::SendDomain {
            domain: "example.org",
            sent: 1,
            deferred: 0,
            refused: 0,
            uncertain: 0,
        },
        Event::Pace {
            rate: Some(5.0),
            reason: "store answered 421",
        },
        Event::DsnsWritten {
            written: 1,
            outbox: Path::new("/outbox"),
        },
        Event::ClusterStatus(cluster),
    ]
}

fn cluster() -> ClusterStatus {
    ClusterStatus {
        cluster: "redis://127.0.0.1/recovery".into(),
        paused: false,
        pace: Some(50.0),
        pace_reason: Some("store answered 421".into()),
        pace_member: Some("mx1".into()),
        members: vec![MemberStatus {
            id: "mx1".into(),
            ledger: "/l.db".into(),
            state: "running".into(),
            handled: 1,
            pace: "50/s".into(),
            counts: BTreeMap::from([("delivered".into(), 1)]),
            heartbeat_age: 1,
            stale: false,
            connections: 1,
            eta_seconds: Some(60),
            paused_by: None,
            last_refusal: Some("451 4.3.0 <…> try later".into()),
            last_refusal_at: Some("2023-01-28T06:00:00+01:00".into()),
        }],
        handled: 1,
        counts: BTreeMap::from([("delivered".into(), 1)]),
        connections: 1,
        eta_seconds: Some(60),
    }
}

/// An event as the object it is written as.
fn object(e: &Event<'_>) -> serde_json::Map<String, serde_json::Value> {
    let mut line = Vec::new();
    e.write_line(&mut line).unwrap();
    assert!(line.ends_with(b"\n"));
    match serde_json::from_slice(&line).unwrap() {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The words in backticks in `text`.
fn backticked(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A heading's anchor as GitHub makes it.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text of README's section with that anchor, up to the next heading.
fn section<'r>(readme: &'r str, anchor: &str) -> &'r str {
    let mut at = 0;
    let mut start = None;
    for line in readme.split_inclusive('\n') {
        at += line.len();
        if start.is_some() && line.starts_with('#') {
            return &readme[start.unwrap_or(0)..at - line.len()];
        }
        if start.is_none()
            && line.starts_with('#')
            && slug(line.trim_start_matches('#').trim()) == anchor
        {
            start = Some(at);
        }
    }
    match start {
        Some(s) => &readme[s..],
        None => panic!("README has no section #{anchor}"),
    }
}

/// README's "JSON events" table: each type and the field names its row gives (those of
/// a linked section too, where the row says "see").
fn readme_table(readme: &str) -> BTreeMap<String, BTreeSet<String>> {
    let table = section(readme, "json-events---json");
    let mut rows = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        assert_eq!(
            cells.len(),
            3,
            "README row `{line}` is not `| type | from | fields |`"
        );
        let kind = backticked(cells[0]);
        assert_eq!(kind.len(), 1, "README row `{line}` names no one type");
        let mut fields = backticked(cells[2]);
        for link in cells[2].split("](#").skip(1) {
            let anchor = link.split(')').next().unwrap();
            fields.extend(backticked(section(readme, anchor)));
        }
        let kind = kind.into_iter().next().unwrap();
        assert!(
            rows.insert(kind.clone(), fields).is_none(),
            "two README rows for `{kind}`"
        );
    }
    assert!(
        rows.len() > 20,
        "README's table was not found: {} rows",
        rows.len()
    );
    rows
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn every_variant_has_a_sample() {
    let (cluster, labels) = (cluster(), crate::plan::age_labels());
    let ages = Ages {
        labels: &labels,
        counts: vec![0; labels.len()],
    };
    let covered: BTreeSet<usize> = samples(&cluster, ages).iter().map(ordinal).collect();
    assert_eq!(covered, (0..VARIANTS).collect());
}

#[test]
fn readme_names_every_event_and_every_field() {
    let readme = readme();
    let rows = readme_table(&readme);
    let (cluster, labels) = (cluster(), crate::plan::age_labels());
    let ages = Ages {
        labels: &labels,
        counts: vec![0; labels.len()],
    };
    let mut seen = BTreeSet::new();
    for e in samples(&cluster, ages) {
        let obj = object(&e);
        let kind = obj["type"].as_str().unwrap().to_string();
        let Some(documented) = rows.get(&kind) else {
            panic!("event `{kind}` has no row in README's \"JSON events\" table");
        };
        let undocumented: Vec<&String> = obj
            .keys()
            .filter(|k| *k != "type" && !documented.contains(*k))
            .collect();
        assert!(
            undocumented.is_empty(),
            "README's row for `{kind}` does not name {undocumented:?}"
        );
        seen.insert(kind);
    }
    let extra: Vec<&String> = rows.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "README lists events that do not exist: {extra:?}"
    );
}

#[test]
fn the_check_finds_an_undocumented_field_and_an_unknown_row() {
    let readme = "## JSON events (`--json`)\n\n| type | from | fields |\n|---|---|---|\n"
        .to_string()
        + &(0..21)
            .map(|i| format!("| `t{i}` | x | `a`, `b` (`c`), see [X](#x-y) |\n"))
            .collect::<String>()
        + "\n## X: `y`\n\n`d` and `e`\n\n## Next\n\n`f`\n";
    let rows = readme_table(&readme);
    assert_eq!(
        rows["t3"],
        ["a", "b", "c", "d", "e"].map(String::from).into()
    );
    assert!(!rows["t3"].contains("f"));
}

#[test]
fn keys_are_sorted_and_null_differs_from_absent() {
    let e = Event::Quarantined {
        format: "mbox",
        path: "/m".into(),
        offset: 3,
        reason: "r",
        first_seen: None,
    };
    let mut line = Vec::new();
    e.write_line(&mut line).unwrap();
    assert_eq!(
        String::from_utf8(line).unwrap(),
        "{\"format\":\"mbox\",\"offset\":3,\"path\":\"/m\",\"reason\":\"r\",\"type\":\"quarantined\"}\n"
    );
    let e = Event::Anomaly {
        kind: "duplicate",
        window: None,
        messages: 2,
        examples: "A B".into(),
    };
    assert_eq!(object(&e)["window"], serde_json::Value::Null);
}
