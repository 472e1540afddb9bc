//! What the SMTP and LMTP clients share: options and timeouts, DATA encoding, ESMTP
//! capabilities, envelope parameters and the mapping from a reply to a per-recipient
//! [`Outcome`]. The connection itself (the byte stream and its bounded reply reader,
//! bytes → [`Reply`]) is `wire/conn.rs`.
//!
//! Decisions a reader should know:
//! - Message bytes are sent as spooled except for line ends, which follow the one rule of
//!   `line_ends`: every line end goes out as CRLF (classic-Mac CRs included); a bare CR
//!   inside a line is left alone (the servers we target store it as it came), unless a `.`
//!   follows it (see `data_body`).
//! - Addresses come from strangers and go into command lines: anything that could end the
//!   command or the path early (control characters, `<`, `>`, an unquoted space) refuses
//!   that address before a byte is sent, so no spool can inject an SMTP command.
//! - DSN parameters (ENVID, RET, NOTIFY, ORCPT) are sent only to a server that advertises
//!   DSN: RFC 3461 4 forbids them otherwise, and Dovecot's LMTP answers them with 555.

use std::borrow::Cow;
use std::io::{self, ErrorKind};
use std::time::Duration;

use super::reply::{Reply, ReplyError};
use super::{Answer, Delivery, Outcome, RecipientSpec};
use crate::rfc3461::xtext_encode;
use crate::{line_ends, sanitize};

mod conn;
pub(crate) use conn::Conn;

/// How long to wait for the server at each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (per address tried).
    pub connect: Duration,
    /// The greeting and every command's reply, each within this as a whole (not per read);
    /// also every write.
    pub command: Duration,
    /// The reply (LMTP: each reply) after the final dot, when the server stores the message.
    pub data_end: Duration,
}

impl Default for Timeouts {
    /// 30 s to connect; RFC 5321 4.5.3.2 minimums for the rest: 5 minutes per command,
    /// 10 minutes for the final dot.
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(5 * 60),
            data_end: Duration::from_secs(10 * 60),
        }
    }
}

/// Options every client takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The name we give in LHLO/EHLO.
    pub hello_name: String,
    pub timeouts: Timeouts,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            hello_name: default_hello_name(),
            timeouts: Timeouts::default(),
        }
    }
}

/// This machine's host name when it is a plausible domain, else `localhost`.
pub fn default_hello_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|h| is_domain_like(h))
        .unwrap_or_else(|| "localhost".to_string())
}

fn is_domain_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.split('.').any(str::is_empty)
}

/// Why a conversation step failed below the reply level.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Malformed(ReplyError),
}

impl WireError {
    fn from_io(e: io::Error, waited: Duration) -> WireError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => WireError::Timeout(waited),
            ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted => WireError::Closed,
            _ => WireError::Io(e),
        }
    }
}

/// The message as it goes on the wire, before dot-stuffing: every line end CRLF by the
/// one rule (`line_ends`), and a bare CR that a `.` follows sent as a line end too:
/// `<CR>.<CR><LF>` is read as the end of DATA by some servers, and a spooled message must
/// never be able to end DATA early and smuggle commands after it. Borrowed when nothing
/// changes.
pub fn normalize_line_ends(content: &[u8]) -> Cow<'_, [u8]> {
    let crlf = line_ends::to_crlf(content);
    if !crlf.windows(2).any(|w| w == b"\r.") {
        return crlf;
    }
    let mut out = Vec::with_capacity(crlf.len() + 16);
    let mut bytes = crlf.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        out.push(b);
        if b == b'\r' && bytes.peek() == Some(&b'.') {
            out.push(b'\n');
        }
    }
    Cow::Owned(out)
}

/// The body of DATA as sent: [`normalize_line_ends`], every line that starts with `.`
/// given another `.` (RFC 5321 4.5.2), ending in CRLF. The `.` CRLF terminator is not
/// included. One pass over the lines (`line_ends::lines`), copying whole lines: every
/// message sent goes through here, and a byte-at-a-time loop was a tenth of a replay's CPU.
pub fn data_body(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 8);
    for (text, _end) in line_ends::lines(content) {
        // Inside a line only a bare CR can stand before a `.`: it ends the line on the
        // wire (see `normalize_line_ends`), and the `.` then starts a line of its own.
        let mut piece = 0;
        for cr in memchr::memchr_iter(b'\r', text) {
            if text.get(cr + 1) == Some(&b'.') {
                push_stuffed(&mut out, &text[piece..cr]);
                out.extend_from_slice(b"\r\n");
                piece = cr + 1;
            }
        }
        push_stuffed(&mut out, &text[piece..]);
        // Every line ends in CRLF on the wire, the last one too.
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One line of DATA: a leading `.` doubled (RFC 5321 4.5.2).
fn push_stuffed(out: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
}

/// The DATA terminator.
pub const DATA_END: &[u8] = b".\r\n";

/// The ESMTP/LMTP extensions we act on, from an EHLO/LHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
    /// RFC 2920: the envelope commands may go in one write, their replies read after.
    pub pipelining: bool,
}

impl Capabilities {
    /// Keywords are the first word of each line after the first (RFC 5321 4.1.1.1).
    pub fn from_reply(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let keyword = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match keyword.as_str() {
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                _ => {}
            }
        }
        caps
    }
}

/// The server's name: the first word of its greeting (or EHLO reply), if it looks like one.
pub fn server_name(reply: &Reply) -> Option<String> {
    reply
        .lines
        .first()
        .and_then(|l| l.split_whitespace().next())
        .map(|n| sanitize::for_terminal(n).into_owned())
        .filter(|n| !n.is_empty())
}

/// The envelope needs SMTPUTF8 (RFC 6531) when an address is not ASCII.
pub fn needs_smtputf8(delivery: &Delivery<'_>, recipients: &[RecipientSpec<'_>]) -> bool {
    !delivery.sender.as_str().is_ascii() || recipients.iter().any(|r| !r.address.is_ascii())
}

/// MAIL FROM parameters (keyword, value before xtext encoding), as the server allows.
pub fn mail_params(
    delivery: &Delivery<'_>,
    caps: &Capabilities,
    smtputf8: bool,
) -> Vec<(&'static str, Option<String>)> {
    let mut params = Vec::new();
    if !delivery.content.is_ascii() && caps.eight_bit_mime {
        params.push(("BODY", Some("8BITMIME".to_string())));
    }
    if smtputf8 && caps.smtputf8 {
        params.push(("SMTPUTF8", None));
    }
    if caps.dsn {
        if let Some(ret) = delivery.ret {
            params.push(("RET", Some(ret.to_string())));
        }
        if let Some(envid) = delivery.envid {
            params.push(("ENVID", Some(envid.to_string())));
        }
    }
    params
}

/// RCPT TO parameters (keyword, value before xtext encoding), only when DSN is offered.
pub fn rcpt_params(
    spec: &RecipientSpec<'_>,
    caps: &Capabilities,
) -> Vec<(&'static str, Option<String>)> {
    let mut params = Vec::new();
    if !caps.dsn {
        return params;
    }
    if let Some(notify) = spec.notify.filter(|n| !n.is_empty()) {
        params.push(("NOTIFY", Some(notify.to_string())));
    }
    if let Some(orcpt) = spec.orcpt {
        params.push(("ORCPT", Some(orcpt.to_string())));
    }
    params
}

/// ` KEY=xtext(value)` for each parameter.
pub fn format_params(params: &[(&'static str, Option<String>)]) -> String {
    params
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!(" {k}={}", xtext_encode(v)),
            None => format!(" {k}"),
        })
        .collect()
}

/// Refuses an address that could break out of `<…>` in a command line.
pub fn check_wire_address(address: &str) -> Result<(), String> {
    if let Some(c) = address.chars().find(|c| c.is_control()) {
        return Err(format!(
            "address contains the control character {}",
            sanitize::for_terminal(&c.to_string())
        ));
    }
    if let Some(c) = address.chars().find(|c| matches!(c, '<' | '>')) {
        return Err(format!("address contains `{c}`"));
    }
    // A space is legal only inside a quoted local part (`"john doe"@example.test`).
    let unquoted = match address.strip_prefix('"') {
        Some(rest) => rest
            .rsplit_once("\"@")
            .map_or(address, |(_, domain)| domain),
        None => address,
    };
    if unquoted.contains(' ') {
        return Err("address contains an unquoted space".to_string());
    }
    Ok(())
}

/// The outcome a server reply means for one recipient.
pub fn outcome_of(reply: &Reply, remote: &str) -> Outcome {
    let remote = Some(remote.to_string());
    if reply.is_permanent() {
        Outcome::Failed {
            reply: Answer::Reply(reply.clone()),
            status: reply.status(),
            remote,
        }
    } else if reply.is_transient() {
        Outcome::Deferred {
            reply: Answer::Reply(reply.clone()),
            remote,
        }
    } else {
        Outcome::Delivered {
            detail: reply.to_string(),
            remote,
        }
    }
}

/// A reply that does not fit the step (a 2xx/3xx where a refusal or another code was
/// due): not trusted as a delivery, so the recipient is retried.
pub fn unexpected(reply: &Reply, step: &str, remote: &str) -> Outcome {
    Outcome::Deferred {
        reply: Answer::Unexpected {
            step: step.to_string(),
            reply: reply.clone(),
        },
        remote: Some(remote.to_string()),
    }
}

/// Our own refusal, made before the server saw the recipient.
pub fn refused_locally(reply: String, status: &str) -> Outcome {
    Outcome::Failed {
        reply: Answer::Local(reply),
        status: status.to_string(),
        remote: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Notify, ReturnContent, ReversePath};

    fn delivery<'a>(sender: &'a ReversePath, content: &'a [u8]) -> Delivery<'a> {
        Delivery {
            envid: Some("id+1=x"),
            ret: Some(ReturnContent::Headers),
            ..Delivery::new(
                "k",
                sender,
                content,
                chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
            )
        }
    }

    /// `data_body` as it was written first, byte by byte from `normalize_line_ends`: the
    /// oracle the one-pass version must agree with.
    fn data_body_bytewise(content: &[u8]) -> Vec<u8> {
        let normalized = normalize_line_ends(content);
        let mut out = Vec::new();
        let mut at_line_start = true;
        for &b in normalized.iter() {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn data_body_agrees_with_the_bytewise_rule_on_every_short_input() {
        // Every string of up to 7 bytes over the alphabet that matters: 4^7 inputs, each
        // line-end and dot case next to every other (Mac mail included).
        let alphabet = [b'\r', b'\n', b'.', b'a'];
        let mut checked = 0;
        for len in 0..=7u32 {
            for mut n in 0..4usize.pow(len) {
                let mut input = Vec::new();
                for _ in 0..len {
                    input.push(alphabet[n % 4]);
                    n /= 4;
                }
                assert_eq!(
                    data_body(&input),
                    data_body_bytewise(&input),
                    "input {input:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, (0..=7).map(|l| 4usize.pow(l)).sum::<usize>());
    }

    #[test]
    fn data_is_dot_stuffed_and_ends_in_crlf() {
        assert_eq!(
            data_body(b".a\n..b\nc.\n.\n"),
            b"..a\r\n...b\r\nc.\r\n..\r\n"
        );
        assert_eq!(data_body(b"x\r\n.y"), b"x\r\n..y\r\n");
        assert_eq!(data_body(b"no end"), b"no end\r\n");
        assert_eq!(data_body(b""), b"");
    }

    #[test]
    fn data_line_ends_follow_the_one_rule() {
        assert_eq!(data_body(b"A: 1\n\nb\n"), b"A: 1\r\n\r\nb\r\n");
        assert_eq!(
            data_body(b"A: 1\rB: 2\r\r.b\r"),
            b"A: 1\r\nB: 2\r\n\r\n..b\r\n"
        );
        assert_eq!(
            data_body(b"A: 1\n\nx\r\r\ny\rz\n"),
            b"A: 1\r\n\r\nx\r\r\ny\rz\r\n",
            "a bare CR inside a line is a byte, never dropped"
        );
    }

    #[test]
    fn a_bare_cr_cannot_end_data_early() {
        let sent = data_body(b"A: 1\n\nhi\r.\r\nMAIL FROM:<x@y>\r\n");
        assert_eq!(sent, b"A: 1\r\n\r\nhi\r\n..\r\nMAIL FROM:<x@y>\r\n");
        for end in [
            &b"\r.\r\n"[..],
            b"\n.\r\n",
            b"\r\n.\r\n",
            b"\n.\n",
            b"\r.\r",
        ] {
            let mut content = b"A: 1\n\nx".to_vec();
            content.extend_from_slice(end);
            content.extend_from_slice(b"RSET\n");
            let body = data_body(&content);
            assert!(
                !body
                    .windows(3)
                    .any(|w| w == b"\r.\r" || w == b"\n.\r" || w == b"\n.\n"),
                "{content:?} sent as {body:?}"
            );
        }
    }

    #[test]
    fn capabilities_from_lhlo_and_ehlo() {
        let (dovecot, _) = Reply::parse(
            b"250-mx.example.test\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n",
        )
        .unwrap()
        .unwrap();
        let caps = Capabilities::from_reply(&dovecot);
        assert_eq!(
            caps,
            Capabilities {
                eight_bit_mime: true,
                pipelining: true,
                ..Capabilities::default()
            }
        );
        assert_eq!(server_name(&dovecot).as_deref(), Some("mx.example.test"));
        let (sink, _) = Reply::parse(b"250-sink\r\n250-dsn\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n")
            .unwrap()
            .unwrap();
        let caps = Capabilities::from_reply(&sink);
        assert!(caps.dsn && caps.smtputf8 && caps.starttls && !caps.eight_bit_mime);
        assert!(!caps.pipelining);
    }

    #[test]
    fn envelope_parameters_follow_the_capabilities() {
        let s = ReversePath::Address("s@x.test".into());
        let plain = Capabilities::default();
        let all = Capabilities {
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
            starttls: false,
            pipelining: true,
        };
        assert_eq!(
            format_params(&mail_params(&delivery(&s, b"ascii"), &plain, false)),
            ""
        );
        assert_eq!(
            format_params(&mail_params(&delivery(&s, "é".as_bytes()), &all, true)),
            " BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx"
        );
        let spec = RecipientSpec {
            address: "r@y.test",
            orcpt: Some("rfc822;R@y.test"),
            notify: Some(Notify {
                failure: true,
                delay: true,
                ..Notify::default()
            }),
        };
        assert_eq!(format_params(&rcpt_params(&spec, &plain)), "");
        assert_eq!(
            format_params(&rcpt_params(&spec, &all)),
            " NOTIFY=FAILURE,DELAY ORCPT=rfc822;R@y.test"
        );
        let never = RecipientSpec {
            notify: Some(Notify {
                never: true,
                ..Notify::default()
            }),
            ..RecipientSpec::plain("r@y.test")
        };
        assert_eq!(format_params(&rcpt_params(&never, &all)), " NOTIFY=NEVER");
        assert!(needs_smtputf8(
            &delivery(&s, b""),
            &[RecipientSpec::plain("jörg@y.test")]
        ));
        assert!(!needs_smtputf8(
            &delivery(&s, "é".as_bytes()),
            &[RecipientSpec::plain("r@y")]
        ));
    }

    #[test]
    fn addresses_that_could_inject_commands_are_refused() {
        for bad in [
            "a@b\r\nRSET",
            "a@b> NOTIFY=NEVER",
            "<a@b",
            "a b@c",
            "a@b c",
            "\"x\"@b c",
        ] {
            assert!(check_wire_address(bad).is_err(), "{bad:?}");
        }
        for good in [
            "a@b.test",
            "\"john doe\"@example.test",
            "Jörg@x.test",
            "a+b=c@x",
        ] {
            assert_eq!(check_wire_address(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn replies_become_outcomes() {
        let r = |s: &str| Reply::parse(s.as_bytes()).unwrap().unwrap().0;
        assert_eq!(
            outcome_of(&r("550 5.1.1 <x@y> User doesn't exist\r\n"), "mx"),
            Outcome::Failed {
                reply: Answer::Reply(r("550 5.1.1 <x@y> User doesn't exist\r\n")),
                status: "5.1.1".into(),
                remote: Some("mx".into())
            }
        );
        assert!(matches!(
            outcome_of(&r("452 4.2.2 full\r\n"), "mx"),
            Outcome::Deferred { .. }
        ));
        assert!(matches!(
            outcome_of(&r("250 2.0.0 ok\r\n"), "mx"),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            outcome_of(&r("554 no\r\n"), "mx"),
            Outcome::Failed { status, .. } if status == "5.0.0"
        ));
    }
}
