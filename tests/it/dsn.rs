//! Integration tests: dsn. Built DSNs are read back by independent parsers: Sisimai (the
//! bounce parser mail operators use, package libsisimai-perl) and Python's `email`.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, FixedOffset};
use serde_json::Value;
use spoolreplay::address::ReturnContent;
use spoolreplay::dsn::{self, Action, Diagnostic, DsnRecipient, DsnRequest};

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
}

impl Case {
    fn new(name: &'static str, recipients: Vec<DsnRecipient>) -> Case {
        Case {
            name,
            original: ORIGINAL.as_bytes().to_vec(),
            envid: None,
            ret: None,
            recipients,
        }
    }

    fn build(&self) -> Vec<u8> {
        let message_id = format!("dsn.{}@mx.example.net", self.name);
        let req = DsnRequest {
            reporting_mta: "mx.example.net",
            incident: "store-outage-2025-06",
            explanation: "The mail store was out of service; mail was kept and retried.",
            to: "alice@example.org",
            original: &self.original,
            envid: self.envid.as_deref(),
            ret: self.ret,
            return_limit: 50_000,
            arrival: at("2025-06-02T08:15:00+02:00"),
            queue_id: "1749000000.M1P2.spool",
            recipients: &self.recipients,
            date: at("2025-06-07T09:00:00+02:00"),
            message_id: &message_id,
        };
        dsn::build(&req).unwrap_or_else(|e| panic!("case {}: {e}", self.name))
    }
}

fn cases() -> Vec<Case> {
    let expired = || {
        recipient(
            "Bob@example.com",
            Action::Failed,
            "4.4.7",
            smtp("451 4.3.0 mailbox store not reachable"),
        )
    };
    let unknown = || {
        recipient(
            "carol@example.com",
            Action::Failed,
            "5.1.1",
            Diagnostic::Local("mailbox does not exist in the restored store".into()),
        )
    };
    let full = || {
        recipient(
            "dave@example.com",
            Action::Failed,
            "5.2.2",
            smtp("552 5.2.2 mailbox full"),
        )
    };
    let ascii_original = ORIGINAL
        .replace("utf-8", "us-ascii")
        .replace("8bit", "7bit")
        .replace("Grüße", "Regards");
    let mut all = vec![
        Case::new("expired", vec![expired()]),
        Case::new("user_unknown", vec![unknown()]),
        Case::new("mailbox_full", vec![full()]),
        Case::new(
            "delayed",
            vec![DsnRecipient {
                will_retry_until: Some(at("2025-06-09T08:15:00+02:00")),
                ..recipient(
                    "Bob@example.com",
                    Action::Delayed,
                    "4.2.2",
                    smtp("452 4.2.2 mailbox full"),
                )
            }],
        ),
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
    multi.envid = Some(dsn::xtext_decode("QQ+2B1"));
    multi.ret = Some(ReturnContent::Headers);
    all.push(multi);
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
        _ => None,
    }
}

const INSTALL_HINT: &str = "install libsisimai-perl (apt-get install libsisimai-perl); \
    the DSN interop test needs perl with the Sisimai module";

/// Runs `Sisimai->dump` on a file and returns its JSON array.
fn sisimai_dump(path: &Path) -> Vec<Value> {
    let output = Command::new("perl")
        .args(["-MSisimai", "-e", r#"print Sisimai->dump($ARGV[0]), "\n""#])
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
