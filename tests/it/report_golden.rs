//! Golden files of `report` (the plan, and `--affected`) and of `audit`, in every format,
//! on the sample spool with the fixed clock. `UPDATE_GOLDEN=1` rewrites them.
//!
//! What varies between machines and runs is redacted: the checkout path of the spool, the
//! temp dir of the store, and the ledger's own wall-clock stamps (`…T…:…:….mmmZ`). For the
//! delivery-delay columns the run's event times are pinned to the fixed clock in the test's
//! copy of the ledger, so a delay is exactly "NOW − arrival".

use std::path::{Path, PathBuf};

use crate::support::{Cli, NOW, check, fixtures, incident, ingested};

/// `NOW` in UTC, as the ledger writes its stamps.
const NOW_UTC: &str = "2023-01-28T05:00:00.000Z";

fn golden_dir() -> PathBuf {
    fixtures().join("report")
}

/// Compares `actual` with `fixtures/report/<name>` (see `support::golden`).
#[track_caller]
pub fn check_golden(name: &str, actual: &str) {
    crate::support::golden::check_golden_file(&golden_dir().join(name), actual.as_bytes());
}

/// Replaces the ledger's wall-clock stamps (`2026-11-28T00:22:11.046Z`) with a placeholder
/// of the same width, so padded tables keep their alignment.
pub fn redact_stamps(text: &str) -> String {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                other => other == b,
            });
        if fits {
            out.push_str("YYYY-MM-DDThh:mm:ss.sssZ");
            i += shape.len();
        } else {
            let c = text[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn redact(text: &str, tmp: &Path) -> String {
    let text = text.replace(&fixtures().display().to_string(), "$FIXTURES");
    let text = text.replace(&tmp.display().to_string(), "$TMP");
    redact_stamps(&text)
}

fn extension(format: &str) -> &'static str {
    match format {
        "json" => "jsonl",
        "csv" => "csv",
        _ => "txt",
    }
}

/// The sample spool ingested, run into a Maildir with the fixed clock, and the run's event
/// times pinned to that clock (in this test's copy of the ledger only).
pub fn settled_sample() -> Cli {
    let cli = ingested();
    let out = cli.run(&cli.run_args(&[]));
    check(&out, 0);
    // Raw SQL on purpose: it forges the events' wall-clock times (`--now` does not set
    // them) so the goldens stay byte-exact.
    let conn = rusqlite::Connection::open(&cli.ledger).expect("open ledger");
    let pinned = conn
        .execute(
            "UPDATE events SET at = ?1 WHERE from_state IS NOT NULL",
            [NOW_UTC],
        )
        .expect("pin event times");
    assert!(pinned > 395, "only {pinned} events pinned");
    drop(conn);
    cli
}

#[test]
fn plan_in_every_format_matches_its_golden() {
    let cli = ingested();
    for format in ["table", "json", "csv"] {
        let out = cli.run(&[
            "report",
            "--incident",
            &incident().display().to_string(),
            "--now",
            NOW,
            "--rate",
            "500/s",
            "--top",
            "5",
            "--format",
            format,
        ]);
        check(&out, 0);
        check_golden(
            &format!("plan.expected.{}", extension(format)),
            &redact(&out.stdout, cli.path()),
        );
    }
}

#[test]
fn json_flag_is_an_alias_of_format_json() {
    let cli = ingested();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "report".to_string(),
            "--incident".into(),
            incident().display().to_string(),
            "--now".into(),
            NOW.into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let by_flag = cli.run(&[vec!["--json".to_string()], args(&[])].concat());
    let by_format = cli.run(&args(&["--format", "json"]));
    check(&by_flag, 0);
    check(&by_format, 0);
    assert_eq!(
        redact_stamps(&by_flag.stdout),
        redact_stamps(&by_format.stdout)
    );
    let summary = by_flag.event("report_summary");
    assert_eq!(summary["unexpected"], 6, "{summary}");
    assert_eq!(summary["outside"], 11, "{summary}");
    assert_eq!(summary["duplicates"], 3, "{summary}");

    let clash = cli.run(&[vec!["--json".to_string()], args(&["--format", "csv"])].concat());
    check(&clash, 64);
    assert!(clash.stderr.contains("--format"), "{}", clash.stderr);
    let unknown = cli.run(&args(&["--format", "xml"]));
    check(&unknown, 64);
    assert!(unknown.stderr.contains("xml"), "{}", unknown.stderr);
}

#[test]
fn affected_mailboxes_in_every_format_match_their_goldens() {
    let cli = settled_sample();
    for format in ["table", "json", "csv"] {
        // No incident file needed for the list of affected mailboxes.
        let out = cli.run(&["report", "--affected", "--format", format]);
        check(&out, 0);
        check_golden(
            &format!("affected.expected.{}", extension(format)),
            &redact(&out.stdout, cli.path()),
        );
    }
    let out = cli.run(&["report", "--affected", "--format", "json"]);
    let anna: Vec<_> = out
        .events("mailbox")
        .into_iter()
        .filter(|m| m["mailbox"] == "anna.schmidt@example.net")
        .collect();
    assert_eq!(
        anna.len(),
        1,
        "one row for Anna.Schmidt@Example.NET and anna.schmidt@…"
    );
    // 0005 (Anna.Schmidt@Example.NET) is outside every window: held, not late.
    assert_eq!(anna[0]["held"], 1, "{}", anna[0]);
    let worst = anna[0]["worst_delay_seconds"].as_i64().unwrap_or(0);
    assert!(worst > 2 * 86_400 && worst < 6 * 86_400, "{}", anna[0]);
    let senders = out.events("sender_domain");
    let dsns: u64 = senders
        .iter()
        .map(|s| s["dsns"].as_u64().unwrap_or(0))
        .sum();
    let made = cli.run(&["--json", "bounces"]);
    check(&made, 0);
    assert_eq!(dsns, made.events("dsn").len() as u64);
}

#[test]
fn audit_of_one_window_matches_its_golden() {
    let cli = settled_sample();
    let out = cli.run(&["audit", "--window", "rejected-550"]);
    check(&out, 0);
    assert_eq!(
        out.json().len(),
        56,
        "rejected-550: 56 entries; the duplicate 0173 is settled at ingest, never classified"
    );
    check_golden(
        "audit-rejected-550.expected.jsonl",
        &redact(&out.stdout, cli.path()),
    );
}
