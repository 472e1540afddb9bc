//! Pure: whether a failure DSN goes to a message's sender, judged from the verdicts our own
//! MX wrote into the message (RFC 8601 `Authentication-Results:`, SpamAssassin and rspamd
//! spam fields), so forged senders of spam get no backscatter (RFC 5321 §6.2).
//!
//! Which fields are trusted (RFC 8601 §5): only those standing above the topmost
//! `Received:` field. The spool is our MX's own queue, so the topmost `Received:` is the
//! one our MX added when it accepted the message; what our MX wrote after that (milters,
//! content filters) stands above it, and everything below came from the sender's side,
//! where anyone can write any authserv-id. Of those, `Authentication-Results:` count only
//! with our `authserv_id`. A message without any `Received:` has no field we can trust.

use std::fmt;

use crate::line_ends;

/// `require` in `[bounces]`: the evidence a sender needs to be bounced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    /// Every sender (the behaviour without a policy).
    Any,
    /// SPF or DKIM passed, whatever the domain.
    SpfOrDkimPass,
    /// DMARC passed, or SPF or DKIM passed for a domain aligned (RFC 7489 relaxed) with the
    /// envelope sender's.
    DmarcOrAlignedPass,
}

impl Require {
    pub fn parse(s: &str) -> Option<Require> {
        match s {
            "any" => Some(Require::Any),
            "spf-or-dkim-pass" => Some(Require::SpfOrDkimPass),
            "dmarc-or-aligned-pass" => Some(Require::DmarcOrAlignedPass),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Require::Any => "any",
            Require::SpfOrDkimPass => "spf-or-dkim-pass",
            Require::DmarcOrAlignedPass => "dmarc-or-aligned-pass",
        }
    }
}

/// `spam` in `[bounces]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spam {
    Bounce,
    Suppress,
}

/// The `[bounces]` section of the incident file. The default is today's behaviour: every
/// sender gets its DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncePolicy {
    /// Our MX's authserv-id; `None` only with `require = "any"`.
    pub authserv_id: Option<String>,
    pub require: Require,
    pub spam: Spam,
}

impl Default for BouncePolicy {
    fn default() -> BouncePolicy {
        BouncePolicy {
            authserv_id: None,
            require: Require::Any,
            spam: Spam::Bounce,
        }
    }
}

impl BouncePolicy {
    /// Whether the policy can suppress anything (so the original must be read).
    pub fn is_active(&self) -> bool {
        self.require != Require::Any || self.spam == Spam::Suppress
    }
}

/// What the policy decided for one message's DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The DSN goes out; `rule` says why (for `bounces preview`).
    Bounce { rule: String },
    /// No DSN: our MX did not authenticate the sender as the policy requires.
    Unauthenticated { why: String },
    /// No DSN: our MX marked the message as spam.
    Spam { why: String },
}

impl Verdict {
    pub fn bounces(&self) -> bool {
        matches!(self, Verdict::Bounce { .. })
    }

    /// The reason a suppressed recipient is dropped with (rule and verdict).
    pub fn reason(&self) -> String {
        match self {
            Verdict::Bounce { rule } => format!("DSN sent: {rule}"),
            Verdict::Unauthenticated { why } => {
                format!("dropped without a DSN by the bounce policy: unauthenticated sender: {why}")
            }
            Verdict::Spam { why } => {
                format!("dropped without a DSN by the bounce policy: spam: {why}")
            }
        }
    }

    /// A short label for counts: `bounce`, `unauthenticated`, `spam`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Bounce { .. } => "bounce",
            Verdict::Unauthenticated { .. } => "unauthenticated",
            Verdict::Spam { .. } => "spam",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// One `method=result` of an `Authentication-Results:` field, with its properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodResult {
    /// Lowercased: `spf`, `dkim`, `dmarc`, …
    pub method: String,
    /// Lowercased: `pass`, `fail`, `softfail`, …
    pub result: String,
    /// `ptype.property=value` pairs, property names lowercased (`smtp.mailfrom`,
    /// `header.d`, `header.from`, `header.i`).
    pub props: Vec<(String, String)>,
}

impl MethodResult {
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One parsed `Authentication-Results:` field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthResults {
    pub authserv_id: String,
    pub results: Vec<MethodResult>,
}

/// The evidence of one message: the trusted fields, and what was ignored (for preview).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evidence {
    /// `Authentication-Results:` with our authserv-id above the topmost `Received:`.
    pub trusted: Vec<AuthResults>,
    /// Fields with our authserv-id found below the topmost `Received:` (forged or relayed).
    pub below_received: usize,
    /// Fields above it with another authserv-id.
    pub other_authserv: usize,
    /// The spam verdict our MX wrote above the topmost `Received:`, if it said spam.
    pub spam: Option<String>,
}

/// Reads the evidence from a message's header section.
pub fn evidence(message: &[u8], authserv_id: Option<&str>) -> Evidence {
    let mut ev = Evidence::default();
    let mut above = true;
    for (name, value) in header_fields(message) {
        if name.eq_ignore_ascii_case("received") {
            above = false;
            continue;
        }
        if name.eq_ignore_ascii_case("authentication-results") {
            let Some(ar) = parse_auth_results(&value) else {
                continue;
            };
            let ours = authserv_id.is_some_and(|id| ar.authserv_id.eq_ignore_ascii_case(id));
            match (ours, above) {
                (true, true) => ev.trusted.push(ar),
                (true, false) => ev.below_received += 1,
                (false, _) => ev.other_authserv += 1,
            }
        } else if above && ev.spam.is_none() {
            ev.spam = spam_verdict(&name, &value);
        }
    }
    if above {
        // No `Received:` at all: the message never came through our MX by SMTP, so no
        // field in it can be told from one its author wrote.
        ev.below_received += ev.trusted.len();
        ev.trusted.clear();
        ev.spam = None;
    }
    ev
}

/// The verdict for a DSN to `sender` (the envelope sender) about `original` (its bytes;
/// `None` when the spool no longer has them: no evidence, so only `require = "any"`
/// bounces). The one entry point of `run`, `report` and `bounces preview`.
pub fn judge(policy: &BouncePolicy, sender: &str, original: Option<&[u8]>) -> Verdict {
    let domain = domain_of(sender);
    match original {
        Some(bytes) => decide(
            policy,
            domain,
            &evidence(bytes, policy.authserv_id.as_deref()),
        ),
        None => match decide(policy, domain, &Evidence::default()) {
            Verdict::Unauthenticated { why } => Verdict::Unauthenticated {
                why: format!("the original could not be read from the spool, {why}"),
            },
            other => other,
        },
    }
}

/// Decides one message's DSN to `sender_domain` (the envelope sender's domain).
pub fn decide(policy: &BouncePolicy, sender_domain: &str, ev: &Evidence) -> Verdict {
    if policy.spam == Spam::Suppress
        && let Some(spam) = &ev.spam
    {
        return Verdict::Spam {
            why: format!("our MX marked it as spam ({spam})"),
        };
    }
    let id = policy.authserv_id.as_deref().unwrap_or_default();
    let passed = |method: &'static str| passes(ev, method);
    match policy.require {
        Require::Any => Verdict::Bounce {
            rule: "require = any".into(),
        },
        Require::SpfOrDkimPass => {
            if let Some(r) = passed("spf").chain(passed("dkim")).next() {
                return Verdict::Bounce {
                    rule: format!("require = spf-or-dkim-pass: {}", describe(r, id)),
                };
            }
            Verdict::Unauthenticated {
                why: format!(
                    "require = spf-or-dkim-pass, {}",
                    what_was_found(ev, id, &["spf", "dkim"])
                ),
            }
        }
        Require::DmarcOrAlignedPass => {
            if let Some(r) = passed("dmarc").next() {
                return Verdict::Bounce {
                    rule: format!("require = dmarc-or-aligned-pass: {}", describe(r, id)),
                };
            }
            let sender_org = organizational_domain(sender_domain);
            let aligned = |r: &&MethodResult| {
                let domain = match r.method.as_str() {
                    "spf" => r.prop("smtp.mailfrom").map(domain_of),
                    _ => r.prop("header.d").or(r.prop("header.i").map(domain_of)),
                };
                domain.is_some_and(|d| organizational_domain(d) == sender_org)
            };
            if let Some(r) = passed("spf").chain(passed("dkim")).find(aligned) {
                return Verdict::Bounce {
                    rule: format!(
                        "require = dmarc-or-aligned-pass: {} aligned with {sender_domain}",
                        describe(r, id)
                    ),
                };
            }
            let unaligned = passed("spf").chain(passed("dkim")).next();
            let found = match unaligned {
                Some(r) => format!(
                    "{} is not aligned with the sender's domain {sender_domain}",
                    describe(r, id)
                ),
                None => what_was_found(ev, id, &["dmarc", "spf", "dkim"]),
            };
            Verdict::Unauthenticated {
                why: format!("require = dmarc-or-aligned-pass, {found}"),
            }
        }
    }
}

/// The trusted results of `method` that passed.
fn passes<'a>(ev: &'a Evidence, method: &'static str) -> impl Iterator<Item = &'a MethodResult> {
    ev.trusted
        .iter()
        .flat_map(|ar| ar.results.iter())
        .filter(move |r| r.method == method && r.result == "pass")
}

/// `spf=pass (smtp.mailfrom=example.org) by mx1.example.net`.
fn describe(r: &MethodResult, id: &str) -> String {
    let props: Vec<String> = r.props.iter().map(|(n, v)| format!("{n}={v}")).collect();
    if props.is_empty() {
        format!("{}={} by {id}", r.method, r.result)
    } else {
        format!("{}={} ({}) by {id}", r.method, r.result, props.join(" "))
    }
}

/// What the trusted fields said about `methods`, for the reason of a suppression.
fn what_was_found(ev: &Evidence, id: &str, methods: &[&str]) -> String {
    let said: Vec<String> = ev
        .trusted
        .iter()
        .flat_map(|ar| ar.results.iter())
        .filter(|r| methods.contains(&r.method.as_str()))
        .map(|r| format!("{}={}", r.method, r.result))
        .collect();
    let mut text = if said.is_empty() {
        format!("no Authentication-Results from {id} above our Received: says pass")
    } else {
        format!("{id} found {}", said.join(", "))
    };
    if ev.below_received > 0 {
        text.push_str(&format!(
            " ({} field(s) naming {id} below our Received: ignored as forged)",
            ev.below_received
        ));
    }
    text
}

/// The spam verdict in one field our MX wrote, when it says spam: SpamAssassin's
/// `X-Spam-Flag: YES` and `X-Spam-Status: Yes, score=…`, rspamd's
/// `X-Spamd-Result: default: True [...]` (and its `X-Spam: Yes`).
pub fn spam_verdict(name: &str, value: &str) -> Option<String> {
    let value = value.trim();
    let first_word = |v: &str| {
        v.split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_string()
    };
    if name.eq_ignore_ascii_case("x-spam-flag") && first_word(value).eq_ignore_ascii_case("yes") {
        return Some("X-Spam-Flag: YES".into());
    }
    if name.eq_ignore_ascii_case("x-spam") && first_word(value).eq_ignore_ascii_case("yes") {
        return Some("X-Spam: Yes".into());
    }
    if name.eq_ignore_ascii_case("x-spam-status") && first_word(value).eq_ignore_ascii_case("yes") {
        let score = value
            .split([',', ' ', '\t'])
            .find(|w| w.starts_with("score="))
            .map(|s| format!(", {s}"))
            .unwrap_or_default();
        return Some(format!("X-Spam-Status: Yes{score}"));
    }
    if name.eq_ignore_ascii_case("x-spamd-result") {
        let (scan, rest) = value.split_once(':')?;
        let is_true = first_word(rest.trim()).eq_ignore_ascii_case("true");
        if scan.trim().eq_ignore_ascii_case("default") && is_true {
            let score = rest
                .split_once('[')
                .and_then(|(_, s)| s.split_once(']'))
                .map(|(s, _)| format!(" [{}]", s.trim()))
                .unwrap_or_default();
            return Some(format!("X-Spamd-Result: default: True{score}"));
        }
    }
    None
}

/// Parses an RFC 8601 `Authentication-Results:` value: `authserv-id [version] ; resinfo
/// ; …` where resinfo is `method[/version]=result [reason=…] ptype.property=value …`.
/// Comments in parentheses are skipped; quoted strings are values. `None` when there is no
/// authserv-id.
pub fn parse_auth_results(value: &str) -> Option<AuthResults> {
    let tokens = tokenize(value);
    let mut parts = tokens.split(|t| *t == Token::Semi);
    let head = parts.next()?;
    let Some(Token::Word(id)) = head.first() else {
        return None;
    };
    let mut ar = AuthResults {
        authserv_id: id.clone(),
        results: Vec::new(),
    };
    for part in parts {
        let mut words = part.iter().filter_map(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            Token::Semi => None,
        });
        let Some(first) = words.next() else {
            continue;
        };
        let Some((method, result)) = first.split_once('=') else {
            // `none` (no results) or something we do not know.
            continue;
        };
        let method = method.split('/').next().unwrap_or_default();
        let mut mr = MethodResult {
            method: method.trim().to_ascii_lowercase(),
            result: result.trim().to_ascii_lowercase(),
            props: Vec::new(),
        };
        for w in words {
            if let Some((n, v)) = w.split_once('=') {
                let n = n.trim().to_ascii_lowercase();
                if n.contains('.') {
                    mr.props.push((n, v.trim().to_string()));
                }
            }
        }
        ar.results.push(mr);
    }
    Some(ar)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Semi,
}

/// Words (with `=` kept inside, so `spf=pass` and `smtp.mailfrom=a@b` are one word, even
/// written `spf = pass`), and `;`. Comments (nested) are dropped; a quoted string is part
/// of the word it stands in, unquoted.
fn tokenize(value: &str) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars().peekable();
    let mut pending_eq = false;
    let flush = |word: &mut String, out: &mut Vec<Token>, pending_eq: &mut bool| {
        if word.is_empty() {
            return;
        }
        // `a = b`: glue the parts together again.
        if (*pending_eq || word.starts_with('='))
            && let Some(Token::Word(last)) = out.last_mut()
        {
            last.push_str(word);
            word.clear();
            *pending_eq = last.ends_with('=');
            return;
        }
        *pending_eq = word.ends_with('=');
        out.push(Token::Word(std::mem::take(word)));
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut out, &mut pending_eq);
                let mut depth = 1;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(next) = chars.next() {
                                word.push(next);
                            }
                        }
                        '"' => break,
                        _ => word.push(c),
                    }
                }
            }
            ';' => {
                flush(&mut word, &mut out, &mut pending_eq);
                pending_eq = false;
                out.push(Token::Semi);
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, &mut pending_eq),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, &mut pending_eq);
    out
}

/// The domain of `local@domain` (or the value itself when it has no `@`), lowercased
/// without a trailing dot.
fn domain_of(v: &str) -> &str {
    v.rsplit_once('@').map_or(v, |(_, d)| d)
}

/// Second-level labels under which a country-code TLD registers names (`co.uk`,
/// `com.au`, `ac.jp`, …): the approximation of the public suffix list this module uses.
const SECOND_LEVEL: [&str; 12] = [
    "co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gob", "nic",
];

/// The RFC 7489 §3.2 organizational domain, approximated without the public suffix list:
/// the last two labels, or three when the last is a two-letter country code and the one
/// before it a common registration label (`example.co.uk`). Lowercased. Where it is wrong
/// (a private suffix such as `github.io`), two registrants under that suffix look aligned:
/// it only matters when SPF or DKIM already passed for one of them.
pub fn organizational_domain(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let keep = match labels.as_slice() {
        [.., second, tld] if tld.len() == 2 && SECOND_LEVEL.contains(second) => 3,
        _ => 2,
    };
    let start = labels.len().saturating_sub(keep);
    labels[start..].join(".")
}

/// The header section's fields in order, unfolded, as (name, value).
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (text, _end) in line_ends::lines(message) {
        if text.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(text);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        } else {
            // Not a header line: the header section ended without a blank line.
            break;
        }
    }
    fields
}

#[cfg(test)]
mod tests;
