//! Integration tests: dsn. Built DSNs are read back by independent parsers: Sisimai (the
//! bounce parser mail operators use, package libsisimai-perl) and Python's `email`.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, FixedOffset};
use serde_json::Value;
use spoolreplay::address::{Notify, ReturnContent, ReversePath};
use spoolreplay::deliver::reply::Reply;
use spoolreplay::dsn::{self, Action, Diagnostic, DsnRecipient, DsnRequest, LocalFailure};

const ORIGINAL: &str = "From: Alice <alice@example.org>\r\n\
To: Bob <Bob@example.com>\r\n\
Subject: Quarterly numbers\r\n\
Date: Mon, 2 Jun 2025 08:14:00 +0200\r\n\
Message-ID: <q2.numbers@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Hi Bob,\r\n\
\r\n\
the numbers are in the shared folder. Grüße, Alice\r\n";

fn at(rfc3339: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(rfc3339).expect("test dates are valid")
}

fn recipient(addr: &str, action: Action, status: &str, diag: Diagnostic) -> DsnRecipient {
    DsnRecipient {
        final_recipient: addr.to_string(),
        original_recipient: None,
        action,
        status: status.to_string(),
        diagnostic: Some(diag),
        remote_mta: None,
        last_attempt: Some(at("2025-06-07T08:45:00+02:00")),
        will_retry_until: None,
    }
}

fn smtp(text: &str) -> Diagnostic {
    Diagnostic::Smtp(text.to_string())
}

/// One DSN to build and read back.
struct Case {
    name: &'static str,
    original: Vec<u8>,
    envid: Option<String>,
    ret: Option<ReturnContent>,
    recipients: Vec<DsnRecipient>,
    smtputf8: bool,
    to: &'static str,
    from: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, recipients: Vec<DsnRecipient>) -> Case {
        Case {
            name,
            original: ORIGINAL.as_bytes().to_vec(),
            envid: None,
            ret: None,
            recipients,
            smtputf8: false,
            to: "alice@example.org",
            from: None,
        }
    }

    fn build(&self) -> Vec<u8> {
        let message_id = format!("dsn.{}@mx.example.net", self.name);
        let req = DsnRequest {
            reporting_mta: "mx.example.net",
            incident: "store-outage-2025-06",
            explanation: "The mail store was out of service; mail was kept and retried.",
            to: &ReversePath::parse(self.to),
            original: &self.original,
            envid: self.envid.as_deref(),
            ret: self.ret,
            return_limit: 50_000,
            arrival: at("2025-06-02T08:15:00+02:00"),
            queue_id: "1749000000.M1P2.spool",
            recipients: &self.recipients,
            date: at("2025-06-07T09:00:00+02:00"),
            message_id: &message_id,
            smtputf8: self.smtputf8,
            from: self.from,
        };
        dsn::build(&req).unwrap_or_else(|e| panic!("case {}: {e}", self.name))
    }
}

/// A reply from the store (`Remote-MTA` names it), status mapped from the reply.
fn store_reply(addr: &str, action: Action, status: &str, reply: &str) -> DsnRecipient {
    DsnRecipient {
        remote_mta: Some("store1.example.net".into()),
        ..recipient(addr, action, status, smtp(reply))
    }
}

fn mapped(reply: &str) -> String {
    let (parsed, _) = Reply::parse(format!("{reply}\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("{reply}: {e}"))
        .unwrap_or_else(|| panic!("{reply}: not a complete reply"));
    dsn::status_for(&parsed)
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
    let expired = || {
        let reply = "451 4.3.0 mailbox store not reachable";
        let status = dsn::status_at_expiry(Some(&mapped(reply)));
        store_reply("Bob@example.com", Action::Failed, &status, reply)
    };
    let unknown = || {
        recipient(
            "carol@example.com",
            Action::Failed,
            dsn::status_for_local(LocalFailure::UnknownMailbox),
            Diagnostic::Local("mailbox does not exist in the restored store".into()),
        )
    };
    let unknown_smtp = || {
        let reply = "550 <erin@example.com>: User unknown in local recipient table";
        store_reply("erin@example.com", Action::Failed, &mapped(reply), reply)
    };
    let full = || {
        let reply = "552 Requested mail action aborted: exceeded storage allocation";
        store_reply("dave@example.com", Action::Failed, &mapped(reply), reply)
    };
    let full_at_expiry = || {
        let reply = "452 4.2.2 mailbox full";
        let status = dsn::status_at_expiry(Some(&mapped(reply)));
        store_reply("frank@example.com", Action::Failed, &status, reply)
    };
    let delivered = |addr: &str| {
        let reply = format!("250 2.0.0 <{addr}> Saved");
        store_reply(addr, Action::Delivered, &mapped(&reply), &reply)
    };
    let ascii_original = ORIGINAL
        .replace("utf-8", "us-ascii")
        .replace("8bit", "7bit")
        .replace("Grüße", "Regards");
    let mut all = vec![
        Case::new("expired", vec![expired()]),
        Case::new("user_unknown", vec![unknown()]),
        Case::new("user_unknown_smtp", vec![unknown_smtp()]),
        Case::new("mailbox_full", vec![full()]),
        Case::new("mailbox_full_at_expiry", vec![full_at_expiry()]),
        Case::new(
            "delayed",
            vec![DsnRecipient {
                will_retry_until: Some(at("2025-06-09T08:15:00+02:00")),
                ..store_reply(
                    "Bob@example.com",
                    Action::Delayed,
                    "4.2.2",
                    "452 4.2.2 mailbox full",
                )
            }],
        ),
        Case::new("delivered", vec![delivered("Bob@example.com")]),
    ];
    let mut multi = Case::new(
        "multi",
        vec![
            DsnRecipient {
                original_recipient: Some("rfc822;Bob@Example.COM".into()),
                ..expired()
            },
            unknown(),
            full(),
        ],
    );
    multi.envid = Some(spoolreplay::rfc3461::xtext_decode("QQ+2B1"));
    multi.ret = Some(ReturnContent::Headers);
    all.push(multi);
    // Mixed outcomes for one message: the DSN lists only what NOTIFY says is owed.
    let fates = [
        (None, delivered("gina@example.com")),
        (None, unknown_smtp()),
        (notify(true, false, false), full_at_expiry()),
        (notify(false, true, true), full()),
        (notify(true, false, false), delivered("hank@example.com")),
    ];
    let owed = fates
        .into_iter()
        .filter(|(n, r)| dsn::dsn_owed(*n, r.action))
        .map(|(_, r)| r)
        .collect();
    let mut mixed = Case::new("mixed_outcomes", owed);
    mixed.from = Some("postmaster@example.net");
    all.push(mixed);
    let mut full_return = Case::new("full_return", vec![expired(), unknown()]);
    full_return.original = ascii_original.into_bytes();
    all.push(full_return);
    all
}

/// What Sisimai's generic engine must conclude for each status we use.
fn expected_reason(status: &str) -> Option<&'static str> {
    match status {
        "4.4.7" => Some("expired"),
        "5.1.1" => Some("userunknown"),
        "4.2.2" | "5.2.2" => Some("mailboxfull"),
        "2.0.0" => Some("delivered"),
        _ => None,
    }
}

const INSTALL_HINT: &str = "install libsisimai-perl (apt-get install libsisimai-perl); \
    the DSN interop test needs perl with the Sisimai module";

/// Runs `Sisimai->dump` on a file (or a folder of messages) and returns its JSON array.
pub fn sisimai_dump(path: &Path) -> Vec<Value> {
    let output = Command::new("perl")
        .args([
            "-MSisimai",
            "-e",
            r#"print Sisimai->dump($ARGV[0], delivered => 1), "\n""#,
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run perl ({e}): {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("Can't locate Sisimai.pm"),
        "Sisimai is missing: {INSTALL_HINT}"
    );
    assert!(output.status.success(), "Sisimai failed: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "Sisimai printed no JSON for {} ({e}): {stdout}",
            path.display()
        )
    });
    match parsed {
        Value::Array(items) => items,
        other => panic!("Sisimai printed {other} for {}", path.display()),
    }
}

fn field<'v>(item: &'v Value, name: &str) -> &'v str {
    item.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn sisimai_reads_every_dsn_through_its_rfc3464_engine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = cases();
    assert!(!cases.is_empty());
    let mixed = cases.iter().find(|c| c.name == "mixed_outcomes");
    let mixed: Vec<&str> = mixed
        .map(|c| {
            c.recipients
                .iter()
                .map(|r| r.final_recipient.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(mixed, ["erin@example.com", "frank@example.com"]);
    for case in &cases {
        let path = dir.path().join(format!("{}.eml", case.name));
        std::fs::write(&path, case.build()).expect("write DSN");
        let results = sisimai_dump(&path);
        assert_eq!(
            results.len(),
            case.recipients.len(),
            "case {}: one result per recipient: {results:?}",
            case.name
        );
        for rcpt in &case.recipients {
            let found = results
                .iter()
                .find(|r| field(r, "recipient") == rcpt.final_recipient)
                .unwrap_or_else(|| {
                    panic!("case {}: no result for {}", case.name, rcpt.final_recipient)
                });
            let what = format!("case {} recipient {}", case.name, rcpt.final_recipient);
            assert_eq!(field(found, "smtpagent"), "RFC3464", "{what}");
            assert_eq!(field(found, "deliverystatus"), rcpt.status, "{what}");
            assert_eq!(field(found, "action"), rcpt.action.as_str(), "{what}");
            if let Some(reason) = expected_reason(&rcpt.status) {
                assert_eq!(field(found, "reason"), reason, "{what}");
            }
            if let Some(Diagnostic::Smtp(text) | Diagnostic::Local(text)) = &rcpt.diagnostic {
                assert_eq!(field(found, "diagnosticcode"), text, "{what}");
            }
        }
    }
}

const PYTHON_CHECK: &str = r#"
import sys, email, email.policy
with open(sys.argv[1], 'rb') as f:
    m = email.message_from_binary_file(f, policy=email.policy.default)
print(m.get_content_type())
print(m.get_param('report-type'))
print(' '.join(p.get_content_type() for p in m.iter_parts()))
print(sum(len(p.defects) for p in m.walk()))
"#;

#[test]
fn python_email_parses_every_dsn_as_a_multipart_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let path = dir.path().join(format!("{}.eml", case.name));
        std::fs::write(&path, case.build()).expect("write DSN");
        let output = Command::new("python3")
            .args(["-c", PYTHON_CHECK])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install python3"));
        assert!(
            output.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        let third = if case.name == "full_return" {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        };
        let parts = format!("text/plain message/delivery-status {third}");
        assert_eq!(
            lines,
            ["multipart/report", "delivery-status", parts.as_str(), "0"],
            "case {}",
            case.name
        );
    }
}

/// Reads a DSN with Python's `email` and prints JSON: top type, report-type, `To:`, part
/// types, defects, the part-2 groups (per-message first) and the returned Subject. Python
/// parses `message/global-delivery-status` like an embedded message (its first group as
/// the header), so the recipient groups are read from that message's body.
const PYTHON_GLOBAL_CHECK: &str = r#"
import sys, json, email, email.policy
from email.parser import BytesHeaderParser
with open(sys.argv[1], 'rb') as f:
    m = email.message_from_binary_file(f, policy=email.policy.default)
parts = list(m.iter_parts())
inner = parts[1].get_payload()[0]
groups = [dict((k, str(v)) for k, v in inner.items())]
for block in inner.get_payload(decode=True).replace(b'\r\n', b'\n').split(b'\n\n'):
    if block.strip():
        h = BytesHeaderParser(policy=email.policy.default).parsebytes(block)
        groups.append(dict((k, str(v)) for k, v in h.items()))
returned = parts[2].get_payload()[0]
print(json.dumps({
    'type': m.get_content_type(),
    'report_type': m.get_param('report-type'),
    'to': str(m['To']),
    'parts': [p.get_content_type() for p in parts],
    'defects': sum(len(p.defects) for p in m.walk()),
    'groups': groups,
    'returned_subject': str(returned['Subject']),
}, ensure_ascii=False))
"#;

fn python_json(script: &str, path: &Path) -> Value {
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install python3"));
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}"))
}

const UTF8_ORIGINAL: &str = "From: Renée <renée@exemple.fr>\r\n\
To: Jörg <jörg@bücher.example>\r\n\
Subject: Grüße aus Köln\r\n\
Message-ID: <utf8.gruesse@exemple.fr>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Liebe Grüße, Renée\r\n";

#[test]
fn python_email_reads_the_smtputf8_dsn_with_global_parts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unknown = "550 5.1.1 <jörg@bücher.example>: Postfach unbekannt";
    let mut full = Case::new(
        "smtputf8",
        vec![
            DsnRecipient {
                original_recipient: Some("utf-8;j\\x{F6}rg@b\\x{FC}cher.example".into()),
                ..recipient(
                    "jörg@bücher.example",
                    Action::Failed,
                    &mapped(unknown),
                    smtp(unknown),
                )
            },
            recipient(
                "anna@example.com",
                Action::Failed,
                "4.4.7",
                smtp("451 4.3.0 mailbox store not reachable"),
            ),
        ],
    );
    full.original = UTF8_ORIGINAL.as_bytes().to_vec();
    full.smtputf8 = true;
    full.to = "renée@exemple.fr";
    let mut headers_only = Case::new("smtputf8_hdrs", full.recipients.clone());
    headers_only.original = full.original.clone();
    headers_only.smtputf8 = true;
    headers_only.to = full.to;
    headers_only.ret = Some(ReturnContent::Headers);

    for (case, third) in [
        (&full, "message/global"),
        (&headers_only, "message/global-headers"),
    ] {
        let path = dir.path().join(format!("{}.eml", case.name));
        std::fs::write(&path, case.build()).expect("write DSN");
        let got = python_json(PYTHON_GLOBAL_CHECK, &path);
        let what = format!("case {}: {got}", case.name);
        assert_eq!(got["type"], "multipart/report", "{what}");
        assert_eq!(got["report_type"], "delivery-status", "{what}");
        assert_eq!(got["to"], "renée@exemple.fr", "{what}");
        assert_eq!(
            got["parts"],
            serde_json::json!(["text/plain", "message/global-delivery-status", third]),
            "{what}"
        );
        assert_eq!(got["defects"], 0, "{what}");
        let groups = got["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), 3, "{what}");
        assert_eq!(groups[0]["Reporting-MTA"], "dns; mx.example.net", "{what}");
        let jorg = &groups[1];
        assert_eq!(
            jorg["Final-Recipient"], "utf-8; jörg@bücher.example",
            "{what}"
        );
        assert_eq!(
            jorg["Original-Recipient"], "utf-8; jörg@bücher.example",
            "{what}"
        );
        assert_eq!(jorg["Action"], "failed", "{what}");
        assert_eq!(jorg["Status"], "5.1.1", "{what}");
        assert_eq!(
            jorg["Diagnostic-Code"],
            format!("smtp; {unknown}"),
            "{what}"
        );
        assert_eq!(
            groups[2]["Final-Recipient"], "rfc822; anna@example.com",
            "{what}"
        );
        assert_eq!(groups[2]["Status"], "4.4.7", "{what}");
        assert_eq!(got["returned_subject"], "Grüße aus Köln", "{what}");
    }
}
