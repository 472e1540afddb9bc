//! The incident file (TOML): the timeline of the outage and what to do with mail that
//! arrived in each window. Validated once here; errors name the key and the line.

use std::path::Path;

use chrono::{DateTime, FixedOffset, TimeDelta};
use serde::Deserialize;
use toml::Spanned;

use crate::bounce_policy::{BouncePolicy, Require, Spam};
use crate::exit::{Exit, Failure};

/// What to do with mail that arrived in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAction {
    Deliver,
    Bounce,
    Hold,
}

impl WindowAction {
    fn parse(s: &str) -> Option<WindowAction> {
        match s {
            "deliver" => Some(WindowAction::Deliver),
            "bounce" => Some(WindowAction::Bounce),
            "hold" => Some(WindowAction::Hold),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WindowAction::Deliver => "deliver",
            WindowAction::Bounce => "bounce",
            WindowAction::Hold => "hold",
        }
    }
}

/// When the queue lifetime starts counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeFrom {
    Arrival,
    Restored,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub name: String,
    /// Half-open: `start <= arrival < end`.
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    pub action: WindowAction,
    pub note: Option<String>,
    /// RFC 3463 status for DSNs of `bounce` windows.
    pub status: String,
    /// Diagnostic text for DSNs of `bounce` windows.
    pub reason: Option<String>,
    /// False for a phase in which nothing should have been accepted (SMTP stopped): mail
    /// found there is reported as an anomaly. Default true.
    pub expect_mail: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub name: String,
    pub reporting_mta: String,
    pub restored_at: DateTime<FixedOffset>,
    pub queue_lifetime: TimeDelta,
    pub lifetime_from: LifetimeFrom,
    /// Action for mail outside every window.
    pub outside: WindowAction,
    /// Deliver mail the MTA itself was holding (Postfix `hold/`, Exim frozen) like any
    /// other; by default it stays held for the operator.
    pub release_mta_held: bool,
    /// The `From:` of the DSNs (default `MAILER-DAEMON@<reporting_mta>`).
    pub dsn_from: Option<String>,
    /// The operator's own words for the senders, added to every failure DSN's explanation.
    pub dsn_text: Option<String>,
    /// Sorted by start, not overlapping.
    pub windows: Vec<Window>,
    /// `[bounces]`: which senders get failure DSNs (default: all).
    pub bounces: BouncePolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncident {
    name: Spanned<String>,
    reporting_mta: Spanned<String>,
    restored_at: Spanned<String>,
    queue_lifetime: Spanned<String>,
    #[serde(default)]
    lifetime_from: Option<Spanned<String>>,
    #[serde(default)]
    outside: Option<Spanned<String>>,
    #[serde(default)]
    release_mta_held: bool,
    #[serde(default)]
    dsn_from: Option<Spanned<String>>,
    #[serde(default)]
    dsn_text: Option<Spanned<String>>,
    #[serde(default, rename = "window")]
    windows: Vec<RawWindow>,
    #[serde(default)]
    bounces: Option<RawBounces>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounces {
    #[serde(default)]
    authserv_id: Option<Spanned<String>>,
    #[serde(default)]
    require: Option<Spanned<String>>,
    #[serde(default)]
    spam: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: Spanned<String>,
    start: Spanned<String>,
    end: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    status: Option<Spanned<String>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_mail: Option<bool>,
}

/// Reads and validates an incident file. Errors are `Failure`s with exit code 78 (66 when
/// the file is missing), naming the file, the key and the line.
pub fn load(path: &Path) -> anyhow::Result<Incident> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let exit = if e.kind() == std::io::ErrorKind::NotFound {
            Exit::NoInput
        } else {
            Exit::Config
        };
        anyhow::Error::new(e).context(Failure::new(
            exit,
            format!("cannot read incident file `{}`", path.display()),
        ))
    })?;
    parse(&text).map_err(|msg| {
        anyhow::Error::new(Failure::new(
            Exit::Config,
            format!("incident file `{}`: {msg}", path.display()),
        ))
    })
}

/// Parses incident TOML; the error is one line naming the key and line.
pub fn parse(text: &str) -> Result<Incident, String> {
    let raw: RawIncident = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let at = |span: std::ops::Range<usize>| line_of(text, span.start);
    let time = |key: &str, v: &Spanned<String>| -> Result<DateTime<FixedOffset>, String> {
        DateTime::parse_from_rfc3339(v.get_ref()).map_err(|e| {
            format!(
                "`{key}` on line {}: `{}` is not an RFC 3339 time with an offset ({e})",
                at(v.span()),
                v.get_ref()
            )
        })
    };
    let queue_lifetime = parse_lifetime(raw.queue_lifetime.get_ref()).map_err(|e| {
        format!(
            "`queue_lifetime` on line {}: {e}",
            at(raw.queue_lifetime.span())
        )
    })?;
    let lifetime_from = match raw.lifetime_from.as_ref() {
        None => LifetimeFrom::Arrival,
        Some(v) => match v.get_ref().as_str() {
            "arrival" => LifetimeFrom::Arrival,
            "restored" => LifetimeFrom::Restored,
            other => {
                return Err(format!(
                    "`lifetime_from` on line {}: `{other}` is not `arrival` or `restored`",
                    at(v.span())
                ));
            }
        },
    };
    let action = |key: &str, v: &Spanned<String>| {
        WindowAction::parse(v.get_ref()).ok_or_else(|| {
            format!(
                "`{key}` on line {}: `{}` is not one of deliver, bounce, hold",
                at(v.span()),
                v.get_ref()
            )
        })
    };
    let outside = match raw.outside.as_ref() {
        None => WindowAction::Hold,
        Some(v) => action("outside", v)?,
    };
    let reporting_mta = raw.reporting_mta.get_ref().trim().to_string();
    if !is_hostname(&reporting_mta) {
        return Err(format!(
            "`reporting_mta` on line {}: `{}` is not a host name",
            at(raw.reporting_mta.span()),
            reporting_mta
        ));
    }
    let mut windows = Vec::with_capacity(raw.windows.len());
    for w in &raw.windows {
        let start = time("start", &w.start)?;
        let end = time("end", &w.end)?;
        if end <= start {
            return Err(format!(
                "window `{}` on line {}: `end` is not after `start`",
                w.name.get_ref(),
                at(w.end.span())
            ));
        }
        let status = match &w.status {
            None => "5.0.0".to_string(),
            Some(s) if is_failure_status(s.get_ref()) => s.get_ref().clone(),
            Some(s) => {
                return Err(format!(
                    "`status` on line {}: `{}` is not an RFC 3463 failure code like 5.2.1",
                    at(s.span()),
                    s.get_ref()
                ));
            }
        };
        if windows
            .iter()
            .any(|(_, x): &(usize, Window)| x.name == *w.name.get_ref())
        {
            return Err(format!(
                "window name `{}` on line {} is used twice",
                w.name.get_ref(),
                at(w.name.span())
            ));
        }
        windows.push((
            at(w.start.span()),
            Window {
                name: w.name.get_ref().clone(),
                start,
                end,
                action: action("action", &w.action)?,
                note: w.note.clone(),
                status,
                reason: w.reason.clone(),
                expect_mail: w.expect_mail.unwrap_or(true),
            },
        ));
    }
    for pair in windows.windows(2) {
        let ((_, a), (line, b)) = (&pair[0], &pair[1]);
        if b.start < a.start {
            return Err(format!(
                "window `{}` on line {line} starts before the window `{}` above it: list windows in time order",
                b.name, a.name
            ));
        }
        if b.start < a.end {
            return Err(format!(
                "window `{}` on line {line} overlaps window `{}` (which ends {})",
                b.name, a.name, a.end
            ));
        }
    }
    Ok(Incident {
        name: raw.name.get_ref().clone(),
        reporting_mta,
        restored_at: time("restored_at", &raw.restored_at)?,
        queue_lifetime,
        lifetime_from,
        outside,
        release_mta_held: raw.release_mta_held,
        dsn_from: match &raw.dsn_from {
            None => None,
            Some(v) if is_plain_address(v.get_ref()) => Some(v.get_ref().clone()),
            Some(v) => {
                return Err(format!(
                    "`dsn_from` on line {}: `{}` is not a plain address like postmaster@example.net",
                    at(v.span()),
                    v.get_ref()
                ));
            }
        },
        dsn_text: match &raw.dsn_text {
            None => None,
            Some(v) => Some(
                dsn_text(v.get_ref())
                    .map_err(|why| format!("`dsn_text` on line {}: {why}", at(v.span())))?,
            ),
        },
        windows: windows.into_iter().map(|(_, w)| w).collect(),
        bounces: match &raw.bounces {
            None => BouncePolicy::default(),
            Some(b) => bounce_policy(b, &at)?,
        },
    })
}

/// `[bounces]`: an authserv-id is needed as soon as authentication is required, since
/// only our own MX's verdicts count.
fn bounce_policy(
    raw: &RawBounces,
    at: &dyn Fn(std::ops::Range<usize>) -> usize,
) -> Result<BouncePolicy, String> {
    let require = match &raw.require {
        None => Require::Any,
        Some(v) => Require::parse(v.get_ref()).ok_or_else(|| {
            format!(
                "`require` on line {}: `{}` is not one of any, spf-or-dkim-pass, dmarc-or-aligned-pass",
                at(v.span()),
                v.get_ref()
            )
        })?,
    };
    let spam = match &raw.spam {
        None => Spam::Bounce,
        Some(v) => match v.get_ref().as_str() {
            "bounce" => Spam::Bounce,
            "suppress" => Spam::Suppress,
            other => {
                return Err(format!(
                    "`spam` on line {}: `{other}` is not `bounce` or `suppress`",
                    at(v.span())
                ));
            }
        },
    };
    let authserv_id = match &raw.authserv_id {
        None => None,
        Some(v) if is_hostname(v.get_ref().trim()) || is_token(v.get_ref().trim()) => {
            Some(v.get_ref().trim().to_string())
        }
        Some(v) => {
            return Err(format!(
                "`authserv_id` on line {}: `{}` is not an authserv-id (a host name, as in the \
                 first word of your MX's Authentication-Results: fields)",
                at(v.span()),
                v.get_ref()
            ));
        }
    };
    if require != Require::Any && authserv_id.is_none() {
        let line = raw.require.as_ref().map_or(0, |v| at(v.span()));
        return Err(format!(
            "`require` on line {line}: `{}` needs `authserv_id` in `[bounces]` (the first word \
             of your MX's Authentication-Results: fields), or only forged results would be left to trust",
            require.as_str()
        ));
    }
    Ok(BouncePolicy {
        authserv_id,
        require,
        spam,
    })
}

/// An RFC 8601 authserv-id that is not a host name is an RFC 2045 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// The longest `dsn_text`: a few sentences, not a letter.
const DSN_TEXT_LIMIT: usize = 2000;

/// `dsn_text` goes into every DSN: plain text, paragraphs separated by line breaks.
fn dsn_text(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("is empty: leave the key out instead".into());
    }
    if s.chars().count() > DSN_TEXT_LIMIT {
        return Err(format!("is longer than {DSN_TEXT_LIMIT} characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err("has control characters (only line breaks are allowed)".into());
    }
    Ok(s.trim().to_string())
}

fn parse_lifetime(s: &str) -> Result<TimeDelta, String> {
    let d = crate::throttle::parse_duration(s)?;
    if d.is_zero() {
        return Err("a queue lifetime of zero would expire everything".into());
    }
    TimeDelta::from_std(d).map_err(|_| format!("`{s}` is too long"))
}

fn is_failure_status(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let number = |p: &str| {
        !p.is_empty()
            && p.len() <= 3
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p == "0" || !p.starts_with('0'))
    };
    matches!(class, "4" | "5") && number(subject) && number(detail)
}

fn is_plain_address(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"@".contains(&b))
                && is_hostname(domain)
        }
        None => false,
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// toml's own message spans several lines with a source excerpt; keep its first line and
/// say the line number ourselves.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("line {}: {message}", line_of(text, span.start)),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "outage"
reporting_mta = "mx1.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "5d"

[[window]]
name = "queued"
start = "2023-01-22T20:00:00+01:00"
end = "2023-01-23T16:00:00+01:00"
action = "deliver"

[[window]]
name = "rejected"
start = "2023-01-23T16:00:00+01:00"
end = "2023-01-24T16:00:00+01:00"
action = "bounce"
status = "5.2.1"
"#;

    #[track_caller]
    fn check_err(text: &str, expected: &str) {
        match parse(text) {
            Ok(_) => panic!("expected an error containing {expected:?}"),
            Err(e) => assert!(e.contains(expected), "error {e:?} lacks {expected:?}"),
        }
    }

    /// Each `(from, to, expected)`: `text` with `from` replaced by `to` is refused with an
    /// error containing `expected` (and `from` is there to replace, so the case is real).
    #[track_caller]
    fn check_edits(text: &str, edits: &[(&str, &str, &str)]) {
        for (from, to, expected) in edits {
            assert!(text.contains(from), "{from:?} is not in the text");
            check_err(&text.replace(from, to), expected);
        }
    }

    #[test]
    fn parses_the_example() {
        let inc = parse(GOOD).unwrap();
        assert_eq!(inc.windows.len(), 2);
        assert_eq!(inc.queue_lifetime, TimeDelta::days(5));
        assert_eq!(inc.lifetime_from, LifetimeFrom::Arrival);
        assert_eq!(inc.outside, WindowAction::Hold);
        assert_eq!(inc.windows[1].status, "5.2.1");
        assert_eq!(inc.windows[0].status, "5.0.0");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        check_err(
            &GOOD.replace("action = \"deliver\"", "acton = \"deliver\""),
            "line 11",
        );
        check_err(
            &GOOD.replace("action = \"deliver\"", "acton = \"deliver\""),
            "acton",
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        check_edits(
            GOOD,
            &[
                ("\"5d\"", "\"5 days\"", "`queue_lifetime` on line 5"),
                (
                    "2023-01-22T20:00:00+01:00",
                    "2023-01-22 20:00",
                    "`start` on line 9",
                ),
                ("\"bounce\"", "\"reject\"", "`action` on line 17"),
                ("\"5.2.1\"", "\"2.0.0\"", "`status` on line 18"),
            ],
        );
    }

    #[test]
    fn expect_mail_defaults_to_true() {
        let inc = parse(GOOD).unwrap();
        assert!(inc.windows.iter().all(|w| w.expect_mail));
        let stopped = GOOD.replace(
            "action = \"bounce\"",
            "action = \"bounce\"\nexpect_mail = false",
        );
        let inc = parse(&stopped).unwrap();
        assert!(inc.windows[0].expect_mail);
        assert!(!inc.windows[1].expect_mail);
        check_err(
            &GOOD.replace(
                "action = \"bounce\"",
                "action = \"bounce\"\nexpect_mail = \"no\"",
            ),
            "line 18",
        );
    }

    #[test]
    fn overlapping_and_unordered_windows_are_refused() {
        let overlap = GOOD.replace(
            "start = \"2023-01-23T16:00:00+01:00\"",
            "start = \"2023-01-23T15:00:00+01:00\"",
        );
        check_err(&overlap, "overlaps window `queued`");
        let unordered = GOOD.replace(
            "start = \"2023-01-23T16:00:00+01:00\"\nend = \"2023-01-24T16:00:00+01:00\"",
            "start = \"2023-01-20T16:00:00+01:00\"\nend = \"2023-01-21T16:00:00+01:00\"",
        );
        check_err(&unordered, "starts before the window `queued`");
    }

    #[test]
    fn bounces_section() {
        assert_eq!(parse(GOOD).unwrap().bounces, BouncePolicy::default());
        let with = format!(
            "{GOOD}\n[bounces]\nauthserv_id = \"mx1.example.net\"\nrequire = \"dmarc-or-aligned-pass\"\nspam = \"suppress\"\n"
        );
        let b = parse(&with).unwrap().bounces;
        assert_eq!(b.authserv_id.as_deref(), Some("mx1.example.net"));
        assert_eq!(b.require, Require::DmarcOrAlignedPass);
        assert_eq!(b.spam, Spam::Suppress);
        check_edits(
            &with,
            &[
                ("dmarc-or-aligned-pass", "dmarc", "`require` on line 22"),
                ("\"suppress\"", "\"drop\"", "`spam` on line 23"),
                (
                    "\"mx1.example.net\"\nrequire",
                    "\"mx1 example\"\nrequire",
                    "`authserv_id` on line 21",
                ),
                (
                    "authserv_id = \"mx1.example.net\"\n",
                    "",
                    "needs `authserv_id`",
                ),
                ("spam =", "spm =", "spm"),
            ],
        );
    }
}
