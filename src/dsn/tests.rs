//! Tests for DSN building: byte-exact goldens in `fixtures/dsn/`, a structural re-parse of
//! every DSN with mail-parser, and the validation and encoding rules one by one.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "../../tests/it/support/golden.rs"]
mod golden;

use chrono::{DateTime, FixedOffset};
use mail_parser::{MessageParser, MimeHeaders};

use super::check::{escaped, is_plain_address};
use super::encode::{
    global_typed_address, quoted_printable, truncated_octets, typed_address, utf8_addr_xtext_decode,
};
use super::human::wrap;
use super::returned::normalise_line_ends;
use super::*;
use crate::address::{Notify, ReversePath};
use crate::deliver::reply::Reply;
use crate::rfc3461::xtext_decode;

const MTA: &str = "mx.example.net";
const QUEUE_ID: &str = "1749000000.M1P2.spool";

fn at(rfc3339: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(rfc3339).expect("test dates are valid")
}

fn arrival() -> DateTime<FixedOffset> {
    at("2025-06-02T08:15:00+02:00")
}

fn dsn_date() -> DateTime<FixedOffset> {
    at("2025-06-07T09:00:00+02:00")
}

fn last_attempt() -> DateTime<FixedOffset> {
    at("2025-06-07T08:45:00+02:00")
}

const SIMPLE: &str = "From: Alice <alice@example.org>\r\n\
To: Bob <Bob@example.com>\r\n\
Subject: Quarterly numbers\r\n\
Date: Mon, 2 Jun 2025 08:14:00 +0200\r\n\
Message-ID: <q2.numbers@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Hi Bob,\r\n\
\r\n\
the numbers are in the shared folder.\r\n";

const EIGHT_BIT: &str = "From: Juergen <juergen@example.org>\r\n\
To: anna@example.com\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
Date: Mon, 2 Jun 2025 08:14:00 +0200\r\n\
Message-ID: <gruesse@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Grüße aus Köln!\r\n";

/// One golden case; owns what a `DsnRequest` borrows.
struct Case {
    name: &'static str,
    to: ReversePath,
    original: Vec<u8>,
    envid: Option<String>,
    ret: Option<ReturnContent>,
    return_limit: usize,
    recipients: Vec<DsnRecipient>,
    smtputf8: bool,
    from: Option<String>,
    explanation: String,
}

/// The explanation of most cases (the expiry cases use `explain::expired`, as `run` does).
const EXPLANATION: &str = "The mail store was out of service from 2 June 08:00 to 7 June 08:30 \
    (+0200). Mail that arrived meanwhile was kept and retried once the store was \
    back.\nThis report covers what could still not be delivered.";

/// The explanation `run` writes for an expired message of the cases (arrived `arrival()`,
/// kept 5 days), with the storage back at `restored`.
fn expiry_explanation(restored: &str, tried: bool, dsn_text: Option<&str>) -> String {
    let text = super::explain::expired(&super::explain::Expiry {
        arrival: arrival(),
        lifetime: chrono::TimeDelta::days(5),
        deadline: arrival() + chrono::TimeDelta::days(5),
        restored_at: at(restored),
        tried,
    });
    super::explain::with_operator_text(text, dsn_text)
}

impl Case {
    fn new(name: &'static str, original: &[u8]) -> Case {
        Case {
            explanation: EXPLANATION.to_string(),
            name,
            to: ReversePath::parse("alice@example.org"),
            original: original.to_vec(),
            envid: None,
            ret: None,
            return_limit: 50_000,
            recipients: Vec::new(),
            smtputf8: false,
            from: None,
        }
    }

    fn message_id(&self) -> String {
        format!("dsn.{}.1749279600@{MTA}", self.name)
    }

    fn request<'a>(&'a self, message_id: &'a str) -> DsnRequest<'a> {
        DsnRequest {
            reporting_mta: MTA,
            incident: "store-outage-2025-06",
            explanation: &self.explanation,
            to: &self.to,
            original: &self.original,
            envid: self.envid.as_deref(),
            ret: self.ret,
            return_limit: self.return_limit,
            arrival: arrival(),
            queue_id: QUEUE_ID,
            recipients: &self.recipients,
            date: dsn_date(),
            message_id,
            smtputf8: self.smtputf8,
            from: self.from.as_deref(),
        }
    }

    fn build(&self) -> Result<Vec<u8>, DsnError> {
        let id = self.message_id();
        build(&self.request(&id))
    }
}

fn recipient(addr: &str, action: Action, status: &str) -> DsnRecipient {
    DsnRecipient {
        final_recipient: addr.to_string(),
        original_recipient: None,
        action,
        status: status.to_string(),
        diagnostic: None,
        remote_mta: None,
        last_attempt: None,
        will_retry_until: None,
    }
}

const STORE: &str = "store1.example.net";

/// The status a reply maps to, read from the parsed reply as the replay does.
fn status_of(reply: &str) -> String {
    let (parsed, _) = Reply::parse(format!("{reply}\r\n").as_bytes())
        .expect("test replies are well formed")
        .expect("test replies are complete");
    status_for(&parsed)
}

/// Expired while the store kept answering 451: `failed` + 4.4.7 (`status_at_expiry`),
/// with the store's last reply as the diagnostic.
fn expired(addr: &str) -> DsnRecipient {
    let reply = "451 4.3.0 mailbox store not reachable";
    let last = Some(status_of(reply));
    DsnRecipient {
        diagnostic: Some(Diagnostic::Smtp(reply.into())),
        remote_mta: Some(STORE.into()),
        last_attempt: Some(last_attempt()),
        ..recipient(addr, Action::Failed, &status_at_expiry(last.as_deref()))
    }
}

/// A recipient the store refused with `reply`, status mapped from it.
fn refused(addr: &str, reply: &str) -> DsnRecipient {
    let status = status_of(reply);
    DsnRecipient {
        diagnostic: Some(Diagnostic::Smtp(reply.into())),
        remote_mta: Some(STORE.into()),
        last_attempt: Some(last_attempt()),
        ..recipient(addr, Action::Failed, &status)
    }
}

/// Still over quota when the queue lifetime ran out: `failed` + 4.2.2.
fn full_at_expiry(addr: &str) -> DsnRecipient {
    let reply = "452 4.2.2 mailbox full";
    let last = Some(status_of(reply));
    DsnRecipient {
        diagnostic: Some(Diagnostic::Smtp(reply.into())),
        remote_mta: Some(STORE.into()),
        last_attempt: Some(last_attempt()),
        ..recipient(addr, Action::Failed, &status_at_expiry(last.as_deref()))
    }
}

/// An original sent with SMTPUTF8: UTF-8 in its header and body (RFC 6532).
const UTF8_ORIGINAL: &str = "From: Renée <renée@exemple.fr>\r\n\
To: Jörg <jörg@bücher.example>\r\n\
Subject: Grüße aus Köln\r\n\
Date: Mon, 2 Jun 2025 08:14:00 +0200\r\n\
Message-ID: <utf8.gruesse@exemple.fr>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Liebe Grüße, Renée\r\n";

fn smtputf8_case(name: &'static str) -> Case {
    let mut c = Case::new(name, UTF8_ORIGINAL.as_bytes());
    c.smtputf8 = true;
    c.to = ReversePath::parse("renée@exemple.fr");
    c.recipients.push(DsnRecipient {
        original_recipient: Some("utf-8;j\\x{F6}rg@b\\x{FC}cher.example".into()),
        ..refused(
            "jörg@bücher.example",
            "550 5.1.1 <jörg@bücher.example>: Postfach unbekannt",
        )
    });
    c.recipients.push(expired("anna@example.com"));
    c
}

/// One recipient's fate in a delivery run, for choosing whom a DSN reports.
struct Fate {
    notify: Option<Notify>,
    rcpt: DsnRecipient,
}

fn notify(failure: bool, delay: bool, success: bool) -> Option<Notify> {
    Some(Notify {
        failure,
        delay,
        success,
        ..Notify::default()
    })
}

fn cases() -> Vec<Case> {
    let mut all = Vec::new();

    let mut c = Case::new("expired_single", SIMPLE.as_bytes());
    c.recipients.push(expired("Bob@example.com"));
    // The store came back after the five days had run out; the operator adds a sentence.
    c.explanation = expiry_explanation(
        "2025-06-07T08:30:00+02:00",
        true,
        Some("We are sorry: please send your message again if it is still needed."),
    );
    all.push(c);

    let mut c = Case::new("multi_orcpt_envid", SIMPLE.as_bytes());
    c.envid = Some(xtext_decode("QQ+2B1"));
    c.ret = Some(ReturnContent::Full);
    c.recipients.push(DsnRecipient {
        original_recipient: Some("rfc822;Bob@Example.COM".into()),
        ..expired("Bob@example.com")
    });
    c.recipients.push(DsnRecipient {
        original_recipient: Some("rfc822;carol+news@example.com".into()),
        remote_mta: Some("store1.example.net".into()),
        diagnostic: Some(Diagnostic::Smtp(
            "550 5.1.1 <carol@example.com>: no such user".into(),
        )),
        last_attempt: Some(last_attempt()),
        ..recipient("carol@example.com", Action::Failed, "5.1.1")
    });
    c.recipients.push(DsnRecipient {
        remote_mta: Some("store1.example.net".into()),
        diagnostic: Some(Diagnostic::Smtp(
            "452-4.2.2 mailbox full\r\n452 4.2.2 quota is 1 GB".into(),
        )),
        last_attempt: Some(last_attempt()),
        ..recipient("dave@example.com", Action::Failed, "4.2.2")
    });
    all.push(c);

    let mut c = Case::new("ret_hdrs", SIMPLE.as_bytes());
    c.ret = Some(ReturnContent::Headers);
    c.envid = Some("order-4711".into());
    c.recipients.push(expired("Bob@example.com"));
    all.push(c);

    let mut big = SIMPLE.as_bytes().to_vec();
    for i in 0..400 {
        big.extend_from_slice(format!("line {i:04} of a long report body\r\n").as_bytes());
    }
    let mut c = Case::new("large_over_limit", &big);
    c.return_limit = 4_000;
    c.recipients.push(expired("Bob@example.com"));
    all.push(c);

    let mut c = Case::new("eight_bit", EIGHT_BIT.as_bytes());
    c.recipients.push(expired("anna@example.com"));
    all.push(c);

    let mut c = Case::new("local_vs_smtp", SIMPLE.as_bytes());
    c.recipients.push(DsnRecipient {
        diagnostic: Some(Diagnostic::Local(
            "mailbox Bob@example.com does not exist in the restored store".into(),
        )),
        last_attempt: Some(last_attempt()),
        ..recipient("Bob@example.com", Action::Failed, "5.1.1")
    });
    c.recipients.push(expired("erin@example.com"));
    all.push(c);

    let mut c = Case::new("delayed_only", SIMPLE.as_bytes());
    c.ret = Some(ReturnContent::Full);
    c.recipients.push(DsnRecipient {
        diagnostic: Some(Diagnostic::Local("mail store not reachable".into())),
        last_attempt: Some(last_attempt()),
        will_retry_until: Some(at("2025-06-09T08:15:00+02:00")),
        ..recipient("Bob@example.com", Action::Delayed, "4.3.2")
    });
    all.push(c);

    let mut c = Case::new("user_unknown", SIMPLE.as_bytes());
    c.recipients.push(refused(
        "Bob@example.com",
        "550 5.1.1 <Bob@example.com>: no such user",
    ));
    all.push(c);

    let mut c = Case::new("mailbox_full_expired", SIMPLE.as_bytes());
    c.recipients.push(full_at_expiry("Bob@example.com"));
    // The store was back in time, but the mailbox stayed full.
    c.explanation = expiry_explanation("2025-06-04T12:00:00+02:00", true, None);
    all.push(c);

    let mut c = Case::new("multi_mixed", SIMPLE.as_bytes());
    c.recipients = mixed_fates()
        .into_iter()
        .filter(|f| dsn_owed(f.notify, f.rcpt.action))
        .map(|f| f.rcpt)
        .collect();
    all.push(c);

    all.push(smtputf8_case("smtputf8"));
    let mut c = smtputf8_case("smtputf8_hdrs");
    c.ret = Some(ReturnContent::Headers);
    all.push(c);

    let mut c = Case::new("delivered_success", SIMPLE.as_bytes());
    c.recipients.push(delivered("Bob@example.com"));
    all.push(c);

    all.push(hostile_case());
    all
}

fn delivered(addr: &str) -> DsnRecipient {
    DsnRecipient {
        diagnostic: Some(Diagnostic::Smtp(format!("250 2.0.0 <{addr}> Saved"))),
        remote_mta: Some(STORE.into()),
        last_attempt: Some(last_attempt()),
        ..recipient(addr, Action::Delivered, "2.0.0")
    }
}

/// Mixed outcomes for one message: only the failures whose NOTIFY allows it are owed.
fn mixed_fates() -> Vec<Fate> {
    vec![
        Fate {
            notify: None,
            rcpt: delivered("Bob@example.com"),
        },
        Fate {
            notify: None,
            rcpt: refused(
                "carol@example.com",
                "550 5.1.1 <carol@example.com>: no such user",
            ),
        },
        Fate {
            notify: notify(true, true, false),
            rcpt: full_at_expiry("dave@example.com"),
        },
        Fate {
            notify: notify(true, false, false),
            rcpt: delivered("erin@example.com"),
        },
        Fate {
            notify: Some(Notify {
                never: true,
                ..Notify::default()
            }),
            rcpt: expired("frank@example.com"),
        },
        Fate {
            notify: notify(false, true, true),
            rcpt: refused("gina@example.com", "554 5.7.1 rejected by policy"),
        },
    ]
}

/// Hostile input everywhere: CRLF in an address, ENVID, ORCPT and Remote-MTA, a
/// diagnostic that plants our own boundary and a fake part, a non-ASCII address, an overlong
/// reply, and an original with bare LF line ends.
fn hostile_case() -> Case {
    let mut c = Case::new(
        "hostile",
        SIMPLE
            .replace("\r\n", "\n")
            .replace("Hi Bob", "Hi\rBob")
            .as_bytes(),
    );
    let id = c.message_id();
    let planted = base_boundary(&c.request(&id));
    c.envid = Some("id\r\nX-Injected: envid".into());
    c.recipients.push(DsnRecipient {
        original_recipient: Some("rfc822;evil@example.com\r\nX-Injected: orcpt".into()),
        remote_mta: Some("mx\r\nX-Injected: remote.example.com".into()),
        diagnostic: Some(Diagnostic::Smtp(format!(
            "550 5.7.1 rejected\r\n--{planted}\r\nContent-Type: text/html\r\n\r\n\
             <b>gotcha</b>\r\n--{planted}--\r\n{}",
            "padding ".repeat(150)
        ))),
        ..recipient(
            "evil@example.com\r\nBcc: victim@example.org",
            Action::Failed,
            "5.7.1",
        )
    });
    c.recipients.push(DsnRecipient {
        diagnostic: Some(Diagnostic::Local("Postfach „jörg“ unbekannt".into())),
        ..recipient("jörg@bücher.example", Action::Failed, "5.1.1")
    });
    c
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dsn")
}

/// Byte-exact comparison with `fixtures/dsn/<case>.expected.eml` (the suite's one
/// golden helper, shared with the integration tests).
#[track_caller]
fn check_golden(case: &str, actual: &[u8]) {
    golden::check_golden_file(&golden_dir().join(format!("{case}.expected.eml")), actual);
}

#[test]
fn goldens_match_byte_for_byte() {
    let cases = cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let dsn = case.build().expect("case builds");
        check_golden(case.name, &dsn);
    }
    // Every golden belongs to a case, so a renamed case leaves no stale file behind.
    let names: BTreeSet<String> = cases.iter().map(|c| c.name.to_string()).collect();
    let mut goldens = 0;
    for entry in fs::read_dir(golden_dir()).expect("fixtures/dsn exists") {
        let file = entry.expect("readable dir").file_name();
        let file = file.to_string_lossy();
        if let Some(stem) = file.strip_suffix(".expected.eml") {
            goldens += 1;
            assert!(names.contains(stem), "golden {file} has no case");
        }
    }
    assert_eq!(goldens, cases.len());
}

// ---------------------------------------------------------------------------------------
// Structural re-parse

/// Fields of part 2: the per-message group, then one group per recipient.
type Groups = Vec<Vec<(String, String)>>;

fn status_groups(content: &[u8]) -> Groups {
    let text = std::str::from_utf8(content).expect("part 2 is ASCII");
    text.split("\r\n\r\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            header_fields(g.as_bytes())
                .into_iter()
                .map(|(n, v)| (n, v.trim().to_string()))
                .collect()
        })
        .collect()
}

fn values<'g>(group: &'g [(String, String)], name: &str) -> Vec<&'g str> {
    group
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[track_caller]
fn one<'g>(group: &'g [(String, String)], name: &str) -> &'g str {
    let found = values(group, name);
    assert_eq!(found.len(), 1, "exactly one {name} in {group:?}");
    found[0]
}

/// Wire form: CRLF only, and no line over 998 octets.
#[track_caller]
fn check_wire_form(dsn: &[u8]) {
    for (i, &b) in dsn.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    for line in dsn.split(|&b| b == b'\n') {
        assert!(line.len() <= LINE_LIMIT + 1, "line over 998 octets");
    }
}

/// Parses the DSN back and checks it against the request, field by field; returns the
/// part-2 groups for case-specific checks.
#[track_caller]
fn check_structure(req: &DsnRequest<'_>, dsn: &[u8]) -> Groups {
    check_wire_form(dsn);
    let msg = MessageParser::default().parse(dsn).expect("DSN parses");

    let top_header = header_section(dsn);
    let fields = header_fields(top_header);
    let auto: Vec<_> = values(&fields, "Auto-Submitted");
    assert_eq!(auto, [" auto-replied"]);
    assert_eq!(values(&fields, "MIME-Version"), [" 1.0"]);
    assert_eq!(
        values(&fields, "To"),
        [format!(" <{}>", envelope_to(req.to).expect("valid to"))]
    );
    assert_eq!(
        values(&fields, "Message-ID"),
        [format!(" <{}>", req.message_id)]
    );

    let ct = msg.content_type().expect("top-level content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let boundary = ct.attribute("boundary").expect("boundary").to_string();
    // The boundary shows up in the header parameter and in the delimiter lines only.
    let ids = msg.root_part().sub_parts().expect("multipart").to_vec();
    let occurrences = dsn
        .windows(boundary.len())
        .filter(|w| *w == boundary.as_bytes())
        .count();
    assert_eq!(occurrences, 1 + ids.len() + 1, "boundary occurs in content");

    assert!(ids.len() == 2 || ids.len() == 3, "2 or 3 parts");
    let part = |i: usize| &msg.parts[ids[i] as usize];
    let text = part(0);
    assert_eq!(text.content_type().map(|c| c.ctype()), Some("text"));
    assert_eq!(text.content_type().and_then(|c| c.subtype()), Some("plain"));

    let status = part(1);
    if req.smtputf8 {
        assert!(status.is_content_type("message", "global-delivery-status"));
        let cte = if status.contents().is_ascii() {
            "7bit"
        } else {
            "8bit"
        };
        assert_eq!(status.content_transfer_encoding(), Some(cte));
    } else {
        assert!(status.is_content_type("message", "delivery-status"));
        assert_eq!(status.content_transfer_encoding(), Some("7bit"));
        assert!(status.contents().is_ascii(), "part 2 is US-ASCII");
    }
    let groups = status_groups(status.contents());
    check_status_fields(req, &groups);

    if ids.len() == 3 {
        check_returned(req, part(2));
    }
    groups
}

#[track_caller]
fn check_status_fields(req: &DsnRequest<'_>, groups: &Groups) {
    assert_eq!(groups.len(), 1 + req.recipients.len());
    let per_message = &groups[0];
    assert_eq!(one(per_message, "Reporting-MTA"), format!("dns; {MTA}"));
    assert_eq!(one(per_message, "Arrival-Date"), rfc5322_date(&req.arrival));
    assert_eq!(one(per_message, "X-Spoolreplay-Queue-ID"), req.queue_id);
    assert_eq!(
        values(per_message, "Original-Envelope-Id").len(),
        usize::from(req.envid.is_some())
    );
    assert!(values(per_message, "DSN-Gateway").is_empty());
    assert!(values(per_message, "Final-Recipient").is_empty());

    for (rcpt, group) in req.recipients.iter().zip(&groups[1..]) {
        let final_recipient = one(group, "Final-Recipient");
        let clean = rcpt
            .final_recipient
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
        if clean {
            assert_eq!(final_recipient, format!("rfc822; {}", rcpt.final_recipient));
        } else {
            assert!(final_recipient.starts_with("utf-8; "), "{final_recipient}");
        }
        assert_eq!(one(group, "Action"), rcpt.action.as_str());
        assert_eq!(one(group, "Status"), rcpt.status);
        assert!(is_valid_status(one(group, "Status")));
        let count = |name: &str| values(group, name).len();
        assert_eq!(
            count("Original-Recipient"),
            usize::from(rcpt.original_recipient.is_some())
        );
        assert_eq!(count("Remote-MTA"), usize::from(rcpt.remote_mta.is_some()));
        assert_eq!(
            count("Last-Attempt-Date"),
            usize::from(rcpt.last_attempt.is_some())
        );
        assert_eq!(one(group, "Final-Log-ID"), req.queue_id);
        assert_eq!(
            count("Will-Retry-Until"),
            usize::from(rcpt.action == Action::Delayed && rcpt.will_retry_until.is_some())
        );
        match &rcpt.diagnostic {
            Some(Diagnostic::Smtp(_)) => {
                assert!(one(group, "Diagnostic-Code").starts_with("smtp; "))
            }
            Some(Diagnostic::Local(_)) => {
                assert!(one(group, "Diagnostic-Code").starts_with("X-Spoolreplay; "))
            }
            None => assert_eq!(count("Diagnostic-Code"), 0),
        }
    }
}

#[track_caller]
fn check_returned(req: &DsnRequest<'_>, part: &mail_parser::MessagePart<'_>) {
    let any_failed = req.recipients.iter().any(|r| r.action == Action::Failed);
    let (full, headers) = if req.smtputf8 {
        (("message", "global"), ("message", "global-headers"))
    } else {
        (("message", "rfc822"), ("text", "rfc822-headers"))
    };
    if part.is_content_type(full.0, full.1) {
        assert!(any_failed, "full message only in a failure DSN");
        assert_ne!(req.ret, Some(ReturnContent::Headers));
        assert!(req.original.len() <= req.return_limit);
        assert_eq!(part.contents(), normalise_line_ends(req.original));
    } else {
        assert!(part.is_content_type(headers.0, headers.1));
        let mut header = normalise_line_ends(header_section(req.original));
        if !header.ends_with(b"\r\n") {
            header.extend_from_slice(b"\r\n");
        }
        assert_eq!(part.contents(), header);
    }
}

#[test]
fn every_case_passes_the_structural_checks() {
    let cases = cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let id = case.message_id();
        let req = case.request(&id);
        let dsn = build(&req).expect("case builds");
        check_structure(&req, &dsn);
    }
}

fn built(case: &Case) -> (Vec<u8>, Groups) {
    let id = case.message_id();
    let req = case.request(&id);
    let dsn = build(&req).expect("case builds");
    let groups = check_structure(&req, &dsn);
    (dsn, groups)
}

fn part_types(dsn: &[u8]) -> Vec<String> {
    let msg = MessageParser::default().parse(dsn).expect("DSN parses");
    let ids = msg.root_part().sub_parts().expect("multipart").to_vec();
    ids.iter()
        .map(|&i| {
            let ct = msg.parts[i as usize].content_type().expect("part type");
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect()
}

fn case(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .expect("case exists")
}

#[test]
fn expired_case_reads_as_failed_447_with_the_full_message() {
    let (dsn, groups) = built(&case("expired_single"));
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("\r\nSubject: Undelivered mail: returned to sender\r\n"));
    assert!(text.contains("\r\nIn-Reply-To: <q2.numbers@example.org>\r\n"));
    assert!(text.contains("\r\nReferences: <q2.numbers@example.org>\r\n"));
    assert!(text.contains("\r\nDate: Sat, 7 Jun 2025 09:00:00 +0200\r\n"));
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "smtp; 451 4.3.0 mailbox store not reachable"
    );
    assert_eq!(
        one(&groups[0], "Arrival-Date"),
        "Mon, 2 Jun 2025 08:15:00 +0200"
    );
    assert_eq!(
        part_types(&dsn),
        ["text/plain", "message/delivery-status", "message/rfc822"]
    );
}

#[test]
fn envid_and_orcpt_are_reported_decoded_and_typed() {
    let (_, groups) = built(&case("multi_orcpt_envid"));
    assert_eq!(one(&groups[0], "Original-Envelope-Id"), "QQ+1");
    assert_eq!(
        one(&groups[1], "Original-Recipient"),
        "rfc822; Bob@Example.COM"
    );
    assert_eq!(
        one(&groups[2], "Original-Recipient"),
        "rfc822; carol+news@example.com"
    );
    assert!(values(&groups[3], "Original-Recipient").is_empty());
    assert_eq!(one(&groups[2], "Remote-MTA"), "dns; store1.example.net");
    // A multi-line reply is joined into one line.
    assert_eq!(
        one(&groups[3], "Diagnostic-Code"),
        "smtp; 452-4.2.2 mailbox full 452 4.2.2 quota is 1 GB"
    );
}

#[test]
fn ret_hdrs_large_and_eight_bit_originals_return_headers_only() {
    for name in ["ret_hdrs", "large_over_limit", "eight_bit"] {
        let (dsn, _) = built(&case(name));
        assert_eq!(
            part_types(&dsn),
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ],
            "{name}"
        );
        assert!(dsn.is_ascii(), "{name}: the DSN stays 7-bit");
    }
}

#[test]
fn delayed_only_dsn_has_retry_date_and_headers_only() {
    let (dsn, groups) = built(&case("delayed_only"));
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("\r\nSubject: Delayed mail (still being retried)\r\n"));
    assert_eq!(
        one(&groups[1], "Will-Retry-Until"),
        "Mon, 9 Jun 2025 08:15:00 +0200"
    );
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "X-Spoolreplay; mail store not reachable"
    );
    assert_eq!(part_types(&dsn)[2], "text/rfc822-headers");
}

#[test]
fn local_and_smtp_diagnostics_get_their_own_types() {
    let (_, groups) = built(&case("local_vs_smtp"));
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "X-Spoolreplay; mailbox Bob@example.com does not exist in the restored store"
    );
    assert!(one(&groups[2], "Diagnostic-Code").starts_with("smtp; 451 "));
}

#[test]
fn hostile_input_cannot_inject_headers_or_parts() {
    let hostile = case("hostile");
    let id = hostile.message_id();
    let planted = base_boundary(&hostile.request(&id));
    let (dsn, groups) = built(&hostile);
    let text = String::from_utf8_lossy(&dsn);
    for line in text.split("\r\n") {
        assert!(!line.starts_with("Bcc:"), "{line}");
        assert!(!line.starts_with("X-Injected"), "{line}");
        assert!(!line.starts_with("Content-Type: text/html"), "{line}");
    }
    let msg = MessageParser::default().parse(&dsn).expect("DSN parses");
    let boundary = msg
        .content_type()
        .and_then(|c| c.attribute("boundary"))
        .expect("boundary");
    assert_eq!(
        boundary,
        format!("{planted}.1"),
        "planted boundary is re-picked"
    );

    assert_eq!(
        one(&groups[0], "Original-Envelope-Id"),
        "id X-Injected: envid"
    );
    let evil = &groups[1];
    assert_eq!(
        one(evil, "Final-Recipient"),
        "utf-8; evil@example.com\\x{D}\\x{A}Bcc:\\x{20}victim@example.org"
    );
    assert_eq!(
        one(evil, "Original-Recipient"),
        "utf-8; evil@example.com\\x{D}\\x{A}X-Injected:\\x{20}orcpt"
    );
    assert_eq!(
        one(evil, "Remote-MTA"),
        "dns; mx X-Injected: remote.example.com"
    );
    let diag = one(evil, "Diagnostic-Code");
    assert_eq!(diag.len(), "smtp; ".len() + DIAGNOSTIC_LIMIT);
    assert!(diag.ends_with("..."));
    assert_eq!(
        one(&groups[2], "Final-Recipient"),
        "utf-8; j\\x{F6}rg@b\\x{FC}cher.example"
    );
    assert_eq!(
        one(&groups[2], "Diagnostic-Code"),
        "X-Spoolreplay; Postfach ?j?rg? unbekannt"
    );
    // Part 1 shows the real text, so it is UTF-8 and quoted-printable.
    let human = &msg.parts[msg.root_part().sub_parts().expect("multipart")[0] as usize];
    assert_eq!(human.content_transfer_encoding(), Some("quoted-printable"));
    let human = human.text_contents().expect("text");
    assert!(human.contains("<jörg@bücher.example>"), "{human}");
    assert!(
        human.contains("<evil@example.com\\r\\nBcc: victim@example.org>"),
        "{human}"
    );
}

// ---------------------------------------------------------------------------------------
// Validation

fn with_recipient(rcpt: DsnRecipient) -> Case {
    let mut c = Case::new("validation", SIMPLE.as_bytes());
    c.recipients.push(rcpt);
    c
}

#[test]
fn null_sender_and_no_recipients_are_refused() {
    for to in ["", "<>", " < > "] {
        let mut c = with_recipient(expired("bob@example.com"));
        c.to = ReversePath::parse(to);
        assert_eq!(c.build(), Err(DsnError::NullSender), "to = {to:?}");
    }
    let c = Case::new("validation", SIMPLE.as_bytes());
    assert_eq!(c.build(), Err(DsnError::NoRecipients));
}

#[test]
fn status_syntax_follows_rfc_3463() {
    for good in ["2.0.0", "4.4.7", "5.1.10", "5.999.999", "4.0.0"] {
        assert!(is_valid_status(good), "{good}");
    }
    for bad in [
        "", "5.01.1", "5.1.01", "6.1.1", "3.1.1", "5.1", "5.1.1.1", " 5.1.1", "5.1.1 ", "5.1000.1",
        "5..1", "5.1.a", "05.1.1", "5.+1.1",
    ] {
        assert!(!is_valid_status(bad), "{bad}");
    }
    let c = with_recipient(recipient("bob@example.com", Action::Failed, "5.01.1"));
    assert_eq!(
        c.build(),
        Err(DsnError::BadStatus {
            recipient: "bob@example.com".into(),
            status: "5.01.1".into()
        })
    );
}

#[test]
fn action_and_status_class_must_agree() {
    let mismatched = [
        (Action::Delayed, "5.1.1"),
        (Action::Delayed, "2.0.0"),
        (Action::Failed, "2.0.0"),
        (Action::Delivered, "4.4.7"),
        (Action::Delivered, "5.0.0"),
    ];
    for (action, status) in mismatched {
        let c = with_recipient(recipient("bob@example.com", action, status));
        assert!(
            matches!(c.build(), Err(DsnError::ActionStatusMismatch { .. })),
            "{action:?} {status}"
        );
    }
    let agreeing = [
        (Action::Failed, "4.4.7"),
        (Action::Failed, "5.1.1"),
        (Action::Delayed, "4.2.2"),
        (Action::Delivered, "2.0.0"),
    ];
    for (action, status) in agreeing {
        let c = with_recipient(recipient("bob@example.com", action, status));
        assert!(c.build().is_ok(), "{action:?} {status}");
    }
}

#[test]
fn bad_sender_mta_and_message_id_are_refused_with_escaped_text() {
    let mut c = with_recipient(expired("bob@example.com"));
    c.to = ReversePath::parse("alice@example.org\r\nBcc: x@y");
    let err = c
        .build()
        .expect_err("control characters in the return address");
    assert_eq!(
        err,
        DsnError::BadSender("alice@example.org\\r\\nBcc: x@y".into())
    );
    assert!(!err.to_string().contains('\r'));

    let c = with_recipient(expired("bob@example.com"));
    let mut req = c.request("id@host");
    req.reporting_mta = "mx example";
    assert!(matches!(build(&req), Err(DsnError::BadReportingMta(_))));
    for id in ["no-at", "<a@b>", "a b@c", "a@b@c", "@b", "a@"] {
        let req = c.request(id);
        assert!(
            matches!(build(&req), Err(DsnError::BadMessageId(_))),
            "{id}"
        );
    }
    let c = with_recipient(expired("<>"));
    assert_eq!(c.build(), Err(DsnError::EmptyRecipient));
}

// ---------------------------------------------------------------------------------------
// Encoding rules

#[test]
fn source_route_is_stripped_from_the_return_address() {
    let mut c = with_recipient(expired("bob@example.com"));
    c.to = ReversePath::parse("<@relay1.example,@relay2.example:alice@example.org>");
    let dsn = c.build().expect("builds");
    assert!(String::from_utf8_lossy(&dsn).contains("\r\nTo: <alice@example.org>\r\n"));
}

#[test]
fn will_retry_until_is_only_written_for_delayed() {
    let c = with_recipient(DsnRecipient {
        will_retry_until: Some(dsn_date()),
        ..expired("bob@example.com")
    });
    let dsn = c.build().expect("builds");
    assert!(!String::from_utf8_lossy(&dsn).contains("Will-Retry-Until"));
}

#[test]
fn only_one_well_formed_original_message_id_is_referenced() {
    for header in [
        "Message-ID: not-an-id\r\n",
        "Message-ID: <a b@example.org>\r\n",
        "Message-ID: <a@example.org>\r\nMessage-ID: <b@example.org>\r\n",
        "",
    ] {
        let original = format!("From: a@example.org\r\n{header}Subject: x\r\n\r\nbody\r\n");
        let mut c = with_recipient(expired("bob@example.com"));
        c.original = original.into_bytes();
        let dsn = c.build().expect("builds");
        let text = String::from_utf8_lossy(&dsn);
        assert!(!text.contains("In-Reply-To:"), "{header:?}");
        assert!(!text.contains("References:"), "{header:?}");
    }
    let mut c = with_recipient(expired("bob@example.com"));
    c.original = b"Message-Id:\r\n <folded@example.org>\r\n\r\nbody\r\n".to_vec();
    let dsn = c.build().expect("builds");
    assert!(String::from_utf8_lossy(&dsn).contains("\r\nIn-Reply-To: <folded@example.org>\r\n"));
}

#[test]
fn eight_bit_header_is_returned_quoted_printable() {
    let long = "x".repeat(1200);
    let mut c = with_recipient(expired("bob@example.com"));
    c.original =
        format!("From: Jürgen <j@example.org>\r\nX-Long: {long}\r\n\r\nGrüße\r\n").into_bytes();
    let id = c.message_id();
    let req = c.request(&id);
    let dsn = build(&req).expect("builds");
    check_structure(&req, &dsn);
    assert!(dsn.is_ascii());
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains(
        "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    ));
    assert!(text.contains("From: J=C3=BCrgen <j@example.org>\r\n"));
    assert!(
        text.split("\r\n")
            .all(|l| l.len() <= TEXT_WIDTH || !l.starts_with("xxx"))
    );
}

#[test]
fn line_ends_are_normalised_to_crlf() {
    // The one rule (`line_ends`): a bare CR is a byte of its line, or a line end in
    // classic-Mac mail (whose first line end is a bare CR); never two line ends.
    assert_eq!(normalise_line_ends(b"a\nb\rc\r\nd"), b"a\r\nb\rc\r\nd");
    assert_eq!(normalise_line_ends(b"a\r\nb\r\r\n"), b"a\r\nb\r\r\n");
    assert_eq!(normalise_line_ends(b"a\rb\r\rc"), b"a\r\nb\r\n\r\nc");
    assert_eq!(normalise_line_ends(b"\r\r\n\n"), b"\r\r\n\r\n");
    let mut c = with_recipient(expired("bob@example.com"));
    c.original = b"Subject: lf only\nMessage-ID: <lf@example.org>\n\nbody\n".to_vec();
    let id = c.message_id();
    let req = c.request(&id);
    let dsn = build(&req).expect("builds");
    check_structure(&req, &dsn);
    assert!(contains(
        &dsn,
        b"Subject: lf only\r\nMessage-ID: <lf@example.org>\r\n\r\nbody\r\n"
    ));
}

#[test]
fn header_larger_than_the_limit_is_not_returned() {
    let mut c = with_recipient(expired("bob@example.com"));
    c.return_limit = 20;
    let dsn = c.build().expect("builds");
    assert_eq!(part_types(&dsn), ["text/plain", "message/delivery-status"]);
}

#[test]
fn boundary_is_deterministic_and_depends_on_the_message_id() {
    let c = case("expired_single");
    assert_eq!(c.build(), c.build());
    let a = base_boundary(&c.request("one@example.net"));
    let b = base_boundary(&c.request("two@example.net"));
    assert_ne!(a, b);
    assert!(a.starts_with("spoolreplay=_"));
    let parts = vec![format!("x{a}y").into_bytes(), format!("{a}.1").into_bytes()];
    assert_eq!(pick_boundary(&a, &parts), format!("{a}.2"));
}

#[test]
fn utf8_orcpt_is_not_escaped_twice() {
    assert_eq!(
        typed_address("utf-8", "j\\x{F6}rg@example.de"),
        "utf-8; j\\x{F6}rg@example.de"
    );
    assert_eq!(
        typed_address("UTF-8", "jörg@example.de"),
        "utf-8; j\\x{F6}rg@example.de"
    );
    assert_eq!(
        typed_address("rfc822", "a+b@example.de"),
        "rfc822; a+b@example.de"
    );
    assert_eq!(typed_address("x-weird type", "a@b"), "utf-8; a@b");
    assert_eq!(utf8_addr_xtext_decode("a\\x{zz}b\\x{41}"), "a\\x{zz}bA");
}

#[test]
fn quoted_printable_keeps_lines_short_and_never_writes_a_literal_equals() {
    let input = format!("{}=ü \r\nnext\t\r\n", "a".repeat(200));
    let qp = quoted_printable(input.as_bytes());
    assert!(qp.split("\r\n").all(|l| l.len() <= TEXT_WIDTH), "{qp}");
    assert!(qp.contains("=3D=C3=BC=20\r\n"), "{qp}");
    assert!(qp.ends_with("next=09\r\n"), "{qp}");
    assert!(!qp.contains("=_"));
}

#[test]
fn long_words_are_split_when_wrapping() {
    let lines = wrap(&format!("short {}", "w".repeat(100)), "  ", 20);
    assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
    assert_eq!(lines[0], "  short");
    assert_eq!(wrap("", "  ", 20), ["  "]);
}

// ---------------------------------------------------------------------------------------
// Outcomes, NOTIFY and the newer request fields

#[test]
fn unknown_user_and_mailbox_full_get_their_own_status() {
    let (_, groups) = built(&case("user_unknown"));
    assert_eq!(one(&groups[1], "Action"), "failed");
    assert_eq!(one(&groups[1], "Status"), "5.1.1");
    assert_eq!(one(&groups[1], "Remote-MTA"), "dns; store1.example.net");
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "smtp; 550 5.1.1 <Bob@example.com>: no such user"
    );

    let (_, groups) = built(&case("mailbox_full_expired"));
    assert_eq!(one(&groups[1], "Action"), "failed");
    assert_eq!(one(&groups[1], "Status"), "4.2.2");
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "smtp; 452 4.2.2 mailbox full"
    );
}

#[test]
fn expired_recipient_names_the_store_that_answered() {
    let (_, groups) = built(&case("expired_single"));
    assert_eq!(one(&groups[1], "Status"), "4.4.7");
    assert_eq!(one(&groups[1], "Remote-MTA"), "dns; store1.example.net");
    assert_eq!(one(&groups[1], "Final-Log-ID"), QUEUE_ID);
    assert!(values(&groups[1], "Will-Retry-Until").is_empty());
}

#[test]
fn mixed_outcomes_report_only_the_owed_failures() {
    let fates = mixed_fates();
    assert_eq!(fates.len(), 6);
    let (dsn, groups) = built(&case("multi_mixed"));
    let reported: Vec<&str> = groups[1..]
        .iter()
        .map(|g| one(g, "Final-Recipient"))
        .collect();
    assert_eq!(
        reported,
        ["rfc822; carol@example.com", "rfc822; dave@example.com"]
    );
    assert!(groups[1..].iter().all(|g| one(g, "Action") == "failed"));
    let text = String::from_utf8_lossy(&dsn);
    for absent in ["Bob@", "erin@", "frank@", "gina@"] {
        assert!(
            !text.contains(&format!("Final-Recipient: rfc822; {absent}")),
            "{absent}"
        );
        assert!(!text.contains(&format!("  <{absent}")), "{absent}");
    }
}

#[test]
fn success_dsn_is_delivered_2xx_with_headers_only() {
    let mut c = case("delivered_success");
    c.ret = Some(ReturnContent::Full);
    let (dsn, groups) = built(&c);
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("\r\nSubject: Delivery report: mail delivered\r\n"));
    assert!(text.contains("\r\nAuto-Submitted: auto-replied\r\n"));
    assert_eq!(one(&groups[1], "Action"), "delivered");
    assert_eq!(one(&groups[1], "Status"), "2.0.0");
    assert_eq!(
        part_types(&dsn),
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
}

#[test]
fn smtputf8_dsn_uses_the_global_types_and_native_utf8() {
    let (dsn, groups) = built(&case("smtputf8"));
    assert_eq!(
        part_types(&dsn),
        [
            "text/plain",
            "message/global-delivery-status",
            "message/global"
        ]
    );
    let top = header_fields(header_section(&dsn));
    assert_eq!(values(&top, "Content-Transfer-Encoding"), [" 8bit"]);
    assert_eq!(values(&top, "To"), [" <renée@exemple.fr>"]);
    let ct = values(&top, "Content-Type").join("");
    assert!(ct.contains("report-type=delivery-status;"), "{ct}");
    assert_eq!(
        one(&groups[1], "Final-Recipient"),
        "utf-8; jörg@bücher.example"
    );
    assert_eq!(
        one(&groups[1], "Original-Recipient"),
        "utf-8; jörg@bücher.example"
    );
    assert_eq!(
        one(&groups[1], "Diagnostic-Code"),
        "smtp; 550 5.1.1 <jörg@bücher.example>: Postfach unbekannt"
    );
    // An ASCII address keeps its rfc822 type, as Postfix writes it.
    assert_eq!(
        one(&groups[2], "Final-Recipient"),
        "rfc822; anna@example.com"
    );
    // The 8-bit original goes back whole: the path takes UTF-8.
    assert!(contains(&dsn, UTF8_ORIGINAL.as_bytes()));

    let (dsn, _) = built(&case("smtputf8_hdrs"));
    assert_eq!(part_types(&dsn)[2], "message/global-headers");
    assert!(contains(&dsn, header_section(UTF8_ORIGINAL.as_bytes())));
    assert!(!contains(&dsn, "Liebe Grüße".as_bytes()));
}

#[test]
fn smtputf8_fields_escape_controls_and_cut_at_octets() {
    assert_eq!(
        global_typed_address("rfc822", "jörg@b.example\r\nBcc: x@y"),
        "utf-8; jörg@b.example\\x{D}\\x{A}Bcc:\\x{20}x@y"
    );
    assert_eq!(
        global_typed_address("utf-8", "j\\x{F6}rg@b.example"),
        "utf-8; jörg@b.example"
    );
    assert_eq!(
        global_typed_address("rfc822", "a+b@example.de"),
        "rfc822; a+b@example.de"
    );
    assert_eq!(truncated_octets("äöü", 5), "ä...");
    assert_eq!(truncated_octets("abcäöü", 8), "abcä...");
    // Never inside a character: 4 octets would split the ä.
    assert_eq!(truncated_octets("abcäöü", 7), "abc...");
    assert_eq!(truncated_octets("äöü", 6), "äöü");

    let mut c = smtputf8_case("validation");
    c.recipients[0].diagnostic = Some(Diagnostic::Smtp(format!("550 {}", "ü".repeat(2000))));
    let id = c.message_id();
    let req = c.request(&id);
    let dsn = build(&req).expect("builds");
    let groups = check_structure(&req, &dsn);
    let diag = one(&groups[1], "Diagnostic-Code");
    assert!(
        diag.len() <= "smtp; ".len() + DIAGNOSTIC_LIMIT,
        "{}",
        diag.len()
    );
    assert!(diag.ends_with("ü..."));
}

#[test]
fn smtputf8_original_with_an_overlong_line_returns_headers_only() {
    let mut c = smtputf8_case("validation");
    c.original = format!("{UTF8_ORIGINAL}{}\r\n", "ä".repeat(600)).into_bytes();
    let (dsn, _) = built(&c);
    assert_eq!(part_types(&dsn)[2], "message/global-headers");
}

#[test]
fn seven_bit_dsn_has_no_top_level_transfer_encoding() {
    for name in ["expired_single", "eight_bit", "hostile"] {
        let (dsn, _) = built(&case(name));
        assert!(dsn.is_ascii(), "{name}");
        let top = header_fields(header_section(&dsn));
        assert!(
            values(&top, "Content-Transfer-Encoding").is_empty(),
            "{name}"
        );
    }
}

#[test]
fn from_can_be_configured_and_is_checked() {
    let mut c = with_recipient(expired("bob@example.com"));
    c.from = Some("<postmaster@example.net>".into());
    let dsn = c.build().expect("builds");
    assert!(dsn.starts_with(b"From: Mail Delivery System <postmaster@example.net>\r\n"));
    for good in [
        "mailer-daemon@mx1.example.net",
        "bounce+dsn@example.net",
        "a.b@c",
    ] {
        assert!(is_plain_address(good), "{good}");
    }
    for bad in [
        "postmaster",
        "Postmaster <postmaster@example.net>",
        "a b@example.net",
        "a@example.net\r\nBcc: x@y",
        "a..b@example.net",
        ".a@example.net",
        "a@-example.net",
        "a@exa_mple.net",
        "\"q\"@example.net",
        "a@[192.0.2.1]",
        "jörg@example.net",
        "@example.net",
        "a@",
        "",
    ] {
        let mut c = with_recipient(expired("bob@example.com"));
        c.from = Some(bad.into());
        let err = c.build().expect_err(bad);
        assert_eq!(err, DsnError::BadFrom(escaped(bad)), "{bad:?}");
        assert!(!err.to_string().contains('\r'));
    }
}

#[test]
fn remote_mta_needs_an_smtp_reply() {
    let local = with_recipient(DsnRecipient {
        diagnostic: Some(Diagnostic::Local("disk full".into())),
        ..expired("bob@example.com")
    });
    assert_eq!(
        local.build(),
        Err(DsnError::RemoteMtaWithoutReply("bob@example.com".into()))
    );
    let none = with_recipient(DsnRecipient {
        diagnostic: None,
        ..expired("bob@example.com")
    });
    assert!(matches!(
        none.build(),
        Err(DsnError::RemoteMtaWithoutReply(_))
    ));
    let no_remote = with_recipient(DsnRecipient {
        remote_mta: None,
        diagnostic: Some(Diagnostic::Local("disk full".into())),
        ..expired("bob@example.com")
    });
    let (_, groups) = built(&no_remote);
    assert!(values(&groups[1], "Remote-MTA").is_empty());
}
