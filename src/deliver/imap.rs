//! Delivery into an IMAP store (RFC 9051/3501 APPEND): `imap://`, `imap+starttls://` and
//! `imaps://` targets, each mailbox opened with one administrative identity (a Dovecot
//! master user, a Cyrus admin) through SASL PLAIN with the recipient as the authorization
//! identity (RFC 4616).
//!
//! Decisions a reader should know:
//! - Our own minimal client on `wire::Conn`, not a crate: we send five commands
//!   (CAPABILITY, STARTTLS, AUTHENTICATE, APPEND, EXAMINE/UID SEARCH/UID FETCH) and act on
//!   tagged status responses, their response codes and two untagged responses. `imap-codec`
//!   is well kept but its decoder works on complete fragments and would still need our
//!   bounded, deadline-per-command reader around it, plus some 20 crates; `imap-proto`
//!   parses responses only and is barely maintained. Every response line is bounded
//!   (`MAX_LINE_OCTETS`), a command's untagged responses are bounded in number, and all of a
//!   command's responses must arrive within one deadline (`--reply-timeout`; the APPEND's
//!   final answer within the final-dot timeout).
//! - The APPEND date-time is the message's arrival, so the store's INTERNALDATE (what mail
//!   clients sort by) is when the MX received it, not when we replayed it. No flags: unread.
//! - Each copy starts with `Return-Path:`, `Delivered-To:` and a `Received:` field whose
//!   `id` is `SR` + `maildir::name_hash` (content hash, canonical mailbox): the same for a
//!   copy in every run, so a copy is found again with `UID SEARCH HEADER Received <id>`
//!   and its size checked (`RFC822.SIZE`). Its date is the arrival, so the copy's bytes,
//!   and so its size, are the same in every run. This is what makes the store
//!   `verifiable`: recipients left in flight by a crash, and with `--uncertain verify`
//!   uncertain ones, are looked up before anything is appended.
//! - Refused authentication for a mailbox is ambiguous: unknown mailbox, or wrong
//!   administrator credentials. It is a permanent failure (5.1.1) only once the credentials
//!   have opened some mailbox in this run (`Proven`, shared by the workers); before that it
//!   defers, so a wrong password defers the mail instead of bouncing all of it.
//! - One connection per mailbox for that mailbox's run of messages: the connection is kept
//!   while the next message goes to the same mailbox, and logged out when it changes.
//! - A connection lost before the whole message was sent is the store going away; lost
//!   after it, before the tagged answer, the copy is `Uncertain`. Recipients of the same
//!   message already appended keep their `Delivered` outcome (never appended twice).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::maildir::name_hash;
use super::target::split_host_port;
use super::wire::{ClientOptions, Conn, WireError};
use super::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::address::{Mailbox, ReversePath};
use crate::{line_ends, sanitize};

/// Longest response line we read (a CAPABILITY line of a big server is ~1 KB).
const MAX_LINE_OCTETS: usize = 64 * 1024;
/// Most untagged responses one command may bring (a hostile server could stream them).
const MAX_UNTAGGED: usize = 10_000;
/// Largest literal inside a response we accept (we never fetch message content).
const MAX_LITERAL_OCTETS: usize = 64 * 1024;

/// Why an `imap://` store that is not on loopback is refused (no password in clear).
const PLAINTEXT_REFUSED: &str = "refusing to send the administrator's password without TLS to a \
     host that is not loopback (use imaps:// or imap+starttls://, or --insecure-tls)";

/// Environment variables the administrative credentials are read from.
pub const ENV_USER: &str = "SPOOLREPLAY_IMAP_USER";
pub const ENV_PASSWORD: &str = "SPOOLREPLAY_IMAP_PASSWORD";
pub const ENV_FILE: &str = "SPOOLREPLAY_IMAP_CREDENTIALS";

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `imap://`: no TLS (a loopback or private store).
    Plain,
    /// `imap+starttls://`: STARTTLS is required.
    StartTls,
    /// `imaps://`: TLS from the first byte.
    Tls,
}

/// `imap://host[:port]` (143), `imap+starttls://host[:port]` (143), `imaps://host[:port]` (993).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapTarget {
    pub security: Security,
    pub host: String,
    pub port: u16,
}

impl FromStr for ImapTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<ImapTarget, String> {
        let (security, authority, default) = if let Some(a) = s.strip_prefix("imap://") {
            (Security::Plain, a, 143)
        } else if let Some(a) = s.strip_prefix("imap+starttls://") {
            (Security::StartTls, a, 143)
        } else if let Some(a) = s.strip_prefix("imaps://") {
            (Security::Tls, a, 993)
        } else {
            return Err(format!(
                "`{s}` is not an IMAP target (imap://, imap+starttls:// or imaps://host[:port])"
            ));
        };
        let (host, port) = split_host_port(authority, default)
            .map_err(|e| format!("bad IMAP target `{s}`: {e}"))?;
        Ok(ImapTarget {
            security,
            host,
            port,
        })
    }
}

impl fmt::Display for ImapTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.security {
            Security::Plain => "imap",
            Security::StartTls => "imap+starttls",
            Security::Tls => "imaps",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The store's administrative identity (a Dovecot master user, a Cyrus admin).
#[derive(Clone, PartialEq, Eq)]
pub struct ImapCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for ImapCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ImapCredentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl ImapCredentials {
    /// From the process environment; `Ok(None)` when none are set.
    pub fn from_env() -> Result<Option<ImapCredentials>, String> {
        ImapCredentials::from_vars(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass their own). The file wins over the pair.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ImapCredentials>, String> {
        if let Some(path) = var(ENV_FILE).filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read IMAP credentials file `{path}`: {e}"))?;
            let line = text.lines().next().unwrap_or("");
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!(
                    "IMAP credentials file `{path}` must hold `user:password` on its first line"
                ));
            };
            return Ok(Some(ImapCredentials {
                user: user.to_string(),
                password: password.to_string(),
            }));
        }
        match (var(ENV_USER), var(ENV_PASSWORD)) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => Ok(Some(ImapCredentials { user, password })),
            _ => Err(format!(
                "set both {ENV_USER} and {ENV_PASSWORD}, or neither (or use {ENV_FILE})"
            )),
        }
    }
}

/// Everything an IMAP store is opened with.
#[derive(Debug, Clone)]
pub struct ImapOptions {
    pub client: ClientOptions,
    pub credentials: ImapCredentials,
    /// Accept any certificate and host name (`--insecure-tls`).
    pub insecure: bool,
    /// Set once the credentials opened a mailbox; shared by every worker of a run.
    pub proven: Proven,
}

/// "The administrative credentials work": after that, a refused mailbox is unknown.
#[derive(Debug, Clone, Default)]
pub struct Proven(Arc<AtomicBool>);

impl Proven {
    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One connection, authenticated as one mailbox.
#[derive(Debug)]
struct Session {
    conn: Conn,
    /// The canonical mailbox this connection is authorized as.
    mailbox: String,
    literal_plus: bool,
    tag: u32,
    /// The server's name (for `Remote-MTA` and events).
    server: String,
}

/// A server's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tagged {
    /// `OK`, `NO` or `BAD`.
    status: String,
    /// The response code's name, upper-cased (`OVERQUOTA`, `APPENDUID`), if any.
    code: Option<String>,
    /// The text after the status (code included), for the ledger and DSNs.
    text: String,
}

impl Tagged {
    fn ok(&self) -> bool {
        self.status == "OK"
    }

    fn line(&self) -> String {
        sanitize::for_terminal(&format!("{} {}", self.status, self.text)).into_owned()
    }
}

/// How one step of the conversation failed.
#[derive(Debug)]
enum Broken {
    /// The connection is unusable (closed, timed out, BYE, nonsense).
    Lost(String),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Lost(why) => f.write_str(why),
        }
    }
}

fn lost(e: &WireError, waited: Duration) -> Broken {
    Broken::Lost(match e {
        WireError::Timeout(_) => format!(
            "no answer within {} (--reply-timeout)",
            crate::throttle::format_duration(waited)
        ),
        other => other.to_string(),
    })
}

impl Session {
    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("R{}", self.tag)
    }

    /// Sends `line` and reads responses until its tagged answer, all by one deadline;
    /// `untagged` sees each untagged response.
    fn command(
        &mut self,
        line: &str,
        wait: Duration,
        untagged: &mut dyn FnMut(&str),
    ) -> Result<Tagged, Broken> {
        let tag = self.next_tag();
        self.conn
            .write_all(format!("{tag} {line}\r\n").as_bytes())
            .map_err(|e| lost(&e, wait))?;
        read_tagged(&mut self.conn, &tag, Instant::now() + wait, wait, untagged)
    }
}

/// Reads responses until the one tagged `tag`. A `BYE` is the server going away.
fn read_tagged(
    conn: &mut Conn,
    tag: &str,
    deadline: Instant,
    wait: Duration,
    untagged: &mut dyn FnMut(&str),
) -> Result<Tagged, Broken> {
    for _ in 0..MAX_UNTAGGED {
        let line = read_response(conn, deadline, wait)?;
        if let Some(rest) = line.strip_prefix("* ") {
            if word(rest, 0).eq_ignore_ascii_case("BYE") {
                return Err(Broken::Lost(format!(
                    "the server said `{}`",
                    sanitize::for_terminal(&line)
                )));
            }
            untagged(rest);
            continue;
        }
        if line.starts_with('+') {
            return Err(Broken::Lost(
                "the server asked for more than the command".into(),
            ));
        }
        if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
            return Ok(parse_status(rest));
        }
        return Err(Broken::Lost(format!(
            "unexpected response `{}`",
            sanitize::for_terminal(&line)
        )));
    }
    Err(Broken::Lost(format!(
        "more than {MAX_UNTAGGED} untagged responses to one command"
    )))
}

/// One response: a line, with any literals (`{n}` at a line's end) read and replaced by
/// a placeholder, so the text stays one line. Bounded by `MAX_LINE_OCTETS` per line and
/// `MAX_LITERAL_OCTETS` per literal.
fn read_response(conn: &mut Conn, deadline: Instant, wait: Duration) -> Result<String, Broken> {
    let mut text = String::new();
    loop {
        let line = conn
            .read_line(deadline, MAX_LINE_OCTETS)
            .map_err(|e| lost(&e, wait))?;
        let line = String::from_utf8_lossy(&line).into_owned();
        match literal_size(&line) {
            Some(n) if n > MAX_LITERAL_OCTETS => {
                return Err(Broken::Lost(format!(
                    "a literal of {n} octets in a response (at most {MAX_LITERAL_OCTETS})"
                )));
            }
            Some(n) => {
                conn.read_exact(n, deadline).map_err(|e| lost(&e, wait))?;
                text.push_str(&line);
                if text.len() > MAX_LINE_OCTETS {
                    return Err(Broken::Lost("a response of too many literals".into()));
                }
            }
            None => {
                text.push_str(&line);
                return Ok(text);
            }
        }
    }
}

/// `{123}` at the end of a line: a literal of 123 octets follows.
fn literal_size(line: &str) -> Option<usize> {
    let open = line.strip_suffix('}')?.rfind('{')?;
    line[open + 1..line.len() - 1].parse().ok()
}

/// `OK [CODE args] text` → status, code, text.
fn parse_status(rest: &str) -> Tagged {
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let code = text
        .strip_prefix('[')
        .and_then(|t| t.split([']', ' ']).next())
        .map(str::to_ascii_uppercase);
    Tagged {
        status: status.to_ascii_uppercase(),
        code,
        text: text.to_string(),
    }
}

/// The `n`th space-separated word (empty if there is none).
fn word(s: &str, n: usize) -> &str {
    s.split(' ').nth(n).unwrap_or("")
}

/// Capabilities from a `CAPABILITY …` untagged response or `[CAPABILITY …]` code.
fn capabilities(text: &str) -> Vec<String> {
    let text = text.trim_start_matches('[');
    let body = text
        .strip_prefix("CAPABILITY ")
        .or_else(|| text.strip_prefix("capability "))
        .unwrap_or("");
    body.split([' ', ']'])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The IMAP date-time of `arrival` (`date-time` of RFC 3501: `" 1-Feb-2023 09:00:00 +0100"`).
pub fn imap_date(arrival: chrono::DateTime<chrono::FixedOffset>) -> String {
    arrival.format("%e-%b-%Y %H:%M:%S %z").to_string()
}

/// The trace id of the copy of `message_key` for `mailbox` (canonical).
pub fn trace_id(message_key: &str, mailbox: &str) -> String {
    format!("SR{}", name_hash(message_key, mailbox))
}

/// Our `Received:` field for the copy of `delivery` for `mailbox` (canonical), CRLF-ended:
/// its `id` is [`trace_id`], its date the arrival, so the same copy gets the same bytes in
/// every run. `with` is the protocol it is handed over with (`IMAP`, `LMTP`, `ESMTP`).
pub fn trace_field(
    delivery: &Delivery<'_>,
    rcpt: &str,
    mailbox: &str,
    host: &str,
    with: &str,
) -> String {
    let id = trace_id(delivery.message_key, mailbox);
    let date = delivery.arrival.to_rfc2822();
    format!("Received: by {host} (spoolreplay) with {with} id {id}\r\n\tfor <{rcpt}>; {date}\r\n")
}

/// The copy as appended: our three delivery headers, then the message, CRLF line ends.
pub fn appended_bytes(delivery: &Delivery<'_>, rcpt: &str, mailbox: &str, host: &str) -> Vec<u8> {
    let sender = match delivery.sender {
        ReversePath::Null => String::new(),
        other => other.as_str().to_string(),
    };
    let header = format!(
        "Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n{}",
        trace_field(delivery, rcpt, mailbox, host, "IMAP")
    );
    let body = line_ends::to_crlf(delivery.content);
    let mut out = Vec::with_capacity(header.len() + body.len() + 2);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A delivery store reached over IMAP.
pub struct ImapStore {
    target: ImapTarget,
    options: ImapOptions,
    session: Option<Session>,
    connections: u64,
}

impl fmt::Debug for ImapStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapStore")
            .field("target", &self.target)
            .field("connected", &self.session.is_some())
            .finish()
    }
}

/// What opening a mailbox gave.
enum Opened {
    Ready(Session),
    /// This mailbox cannot be opened; the outcome says why (failed or deferred).
    Refused(Outcome),
}

impl ImapStore {
    /// Checks that the store answers (greeting, capabilities), so a wrong target is found
    /// before any mail is touched; mailboxes are opened per recipient.
    pub fn connect(target: ImapTarget, options: ImapOptions) -> Result<ImapStore, StoreError> {
        let mut store = ImapStore {
            target,
            options,
            session: None,
            connections: 0,
        };
        if store.target.security == Security::Plain
            && !store.options.insecure
            && !is_loopback(&store.target.host)
        {
            return Err(store.unavailable(PLAINTEXT_REFUSED));
        }
        let (mut conn, _, _, _) = store.dial()?;
        let _ = conn.write_all(b"R0 LOGOUT\r\n");
        conn.abandon();
        Ok(store)
    }

    /// How many connections were opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections
    }

    /// Logs out, if a connection is open.
    pub fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            let wait = self.options.client.timeouts.command;
            let _ = s.command("LOGOUT", wait, &mut |_| {});
            s.conn.abandon();
        }
    }

    fn unavailable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "IMAP server {}: {}",
            self.target,
            sanitize::for_terminal(what)
        ))
    }

    /// Connects, TLS as configured, reads the greeting; returns the connection, the
    /// server's name, its capabilities and the last tag used (tags stay unique per
    /// connection).
    fn dial(&mut self) -> Result<(Conn, String, Vec<String>, u32), StoreError> {
        let timeouts = self.options.client.timeouts;
        let wait = timeouts.command;
        let mut conn = Conn::tcp(&self.target.host, self.target.port, timeouts)
            .map_err(|e| self.unavailable(&e))?;
        self.connections += 1;
        if self.target.security == Security::Tls {
            conn = conn
                .start_tls(&self.target.host, self.options.insecure)
                .map_err(|e| self.unavailable(&e))?;
        }
        let greeting = read_response(&mut conn, Instant::now() + wait, wait)
            .map_err(|e| self.unavailable(&format!("no greeting: {e}")))?;
        let Some(rest) = greeting.strip_prefix("* ") else {
            conn.abandon();
            return Err(self.unavailable(&format!("greeted with `{greeting}`")));
        };
        if !word(rest, 0).eq_ignore_ascii_case("OK") {
            conn.abandon();
            return Err(self.unavailable(&format!("greeted with `{greeting}`")));
        }
        let server = self.target.host.clone();
        let mut caps = capabilities(rest.split_once(' ').map_or("", |(_, t)| t));
        let mut session = Session {
            conn,
            mailbox: String::new(),
            literal_plus: false,
            tag: 0,
            server,
        };
        if caps.is_empty() || self.target.security == Security::StartTls {
            caps = self.ask_capabilities(&mut session)?;
        }
        if self.target.security == Security::StartTls {
            if !caps.iter().any(|c| c == "STARTTLS") {
                session.conn.abandon();
                return Err(self.unavailable("the server does not offer STARTTLS"));
            }
            let answer = session
                .command("STARTTLS", wait, &mut |_| {})
                .map_err(|e| self.unavailable(&format!("no answer to STARTTLS: {e}")))?;
            if !answer.ok() {
                session.conn.abandon();
                return Err(self.unavailable(&format!("STARTTLS answered `{}`", answer.line())));
            }
            session.conn = session
                .conn
                .start_tls(&self.target.host, self.options.insecure)
                .map_err(|e| self.unavailable(&e))?;
            // RFC 9051 6.2.1: what was said before TLS is forgotten; ask again.
            caps = self.ask_capabilities(&mut session)?;
        }
        Ok((session.conn, session.server, caps, session.tag))
    }

    fn ask_capabilities(&self, session: &mut Session) -> Result<Vec<String>, StoreError> {
        let wait = self.options.client.timeouts.command;
        let mut caps = Vec::new();
        let answer = session
            .command("CAPABILITY", wait, &mut |u| {
                if word(u, 0).eq_ignore_ascii_case("CAPABILITY") {
                    caps = capabilities(u);
                }
            })
            .map_err(|e| self.unavailable(&format!("no answer to CAPABILITY: {e}")))?;
        if !answer.ok() {
            return Err(self.unavailable(&format!("CAPABILITY answered `{}`", answer.line())));
        }
        Ok(caps)
    }

    /// A session authorized as `mailbox`: the open one if it is that mailbox's, else a
    /// new connection opened with AUTHENTICATE PLAIN (authzid = the mailbox).
    fn open_mailbox(&mut self, mailbox: &str) -> Result<Opened, StoreError> {
        if let Some(s) = self.session.take() {
            if s.mailbox == mailbox && !s.conn.has_buffered() {
                return Ok(Opened::Ready(s));
            }
            self.session = Some(s);
            self.close();
        }
        if self.target.security == Security::Plain
            && !self.options.insecure
            && !is_loopback(&self.target.host)
        {
            return Err(self.unavailable(PLAINTEXT_REFUSED));
        }
        let (conn, server, caps, tag) = self.dial()?;
        let wait = self.options.client.timeouts.command;
        let mut session = Session {
            conn,
            mailbox: mailbox.to_string(),
            literal_plus: caps.iter().any(|c| c == "LITERAL+"),
            tag,
            server,
        };
        let creds = &self.options.credentials;
        let plain = BASE64.encode(format!("{mailbox}\0{}\0{}", creds.user, creds.password));
        let sasl_ir = caps.iter().any(|c| c == "SASL-IR");
        let answer = if sasl_ir {
            session.command(&format!("AUTHENTICATE PLAIN {plain}"), wait, &mut |_| {})
        } else {
            authenticate_in_two_steps(&mut session, &plain, wait)
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return Err(self.unavailable(&format!("no answer to AUTHENTICATE: {e}"))),
        };
        if answer.ok() {
            self.options.proven.set();
            // Capabilities may change after authentication; LITERAL+ is what we use.
            if let Some(code) = &answer.code
                && code == "CAPABILITY"
            {
                session.literal_plus = capabilities(&answer.text).iter().any(|c| c == "LITERAL+");
            }
            return Ok(Opened::Ready(session));
        }
        session.conn.abandon();
        let reply = format!(
            "the IMAP store refused to open mailbox {} for {}: {}",
            sanitize::for_terminal(mailbox),
            sanitize::for_terminal(&creds.user),
            answer.line()
        );
        let temporary = matches!(
            answer.code.as_deref(),
            Some("UNAVAILABLE" | "SERVERBUG" | "INUSE" | "LIMIT")
        );
        Ok(Opened::Refused(
            if temporary || !self.options.proven.get() {
                Outcome::Deferred {
                    reply: Answer::Local(if temporary {
                        reply
                    } else {
                        format!(
                            "{reply} (the administrator credentials have not opened any mailbox \
                         yet in this run: check {ENV_USER}/{ENV_PASSWORD} if this persists)"
                        )
                    }),
                    remote: Some(self.target.host.clone()),
                }
            } else {
                Outcome::Failed {
                    reply: Answer::Local(format!("{reply} (no such mailbox in the store)")),
                    status: "5.1.1".to_string(),
                    remote: Some(self.target.host.clone()),
                }
            },
        ))
    }

    /// Looks in `rcpt`'s INBOX for the copy of `delivery` by its trace id (and its size,
    /// when known: a copy delivered over LMTP has the server's own headers too). `Ok(None)`:
    /// not there (or no such mailbox); `Err`: the store could not be asked.
    pub fn look_for(
        &mut self,
        delivery: &Delivery<'_>,
        rcpt: &str,
        size: Option<usize>,
    ) -> Result<Option<String>, String> {
        let Some(mailbox) = checked_mailbox(rcpt) else {
            return Ok(None);
        };
        let mut session = match self.open_mailbox(&mailbox).map_err(|e| e.to_string())? {
            Opened::Ready(s) => s,
            // Known to be no such mailbox: nothing can be there.
            Opened::Refused(Outcome::Failed { .. }) => return Ok(None),
            Opened::Refused(Outcome::Deferred { reply, .. }) => return Err(reply.to_string()),
            Opened::Refused(_) => return Err("the mailbox could not be opened".into()),
        };
        match self.find_copy(&mut session, delivery, &mailbox, size) {
            Ok(found) => {
                self.session = Some(session);
                Ok(found)
            }
            Err(Broken::Lost(why)) => {
                session.conn.abandon();
                Err(why)
            }
        }
    }

    /// One recipient's copy: looked for first when `recovering`, else appended.
    fn deliver_one(
        &mut self,
        delivery: &Delivery<'_>,
        rcpt: &str,
        mailbox: &str,
    ) -> Result<Outcome, StoreError> {
        let mut session = match self.open_mailbox(mailbox) {
            Ok(Opened::Ready(s)) => s,
            // Refused for now (credentials not proven, a busy server): a copy from before
            // cannot be ruled out, and a deferral would append it later without looking.
            Ok(Opened::Refused(Outcome::Deferred { reply, remote })) if delivery.recovering => {
                return Ok(Outcome::Uncertain {
                    reply: Answer::Local(format!("could not look for an earlier copy: {reply}")),
                    remote,
                });
            }
            Ok(Opened::Refused(outcome)) => return Ok(outcome),
            // A copy may be there from before: without looking, it stays uncertain (a
            // deferral would append it later without looking).
            Err(e) if delivery.recovering => {
                return Ok(Outcome::Uncertain {
                    reply: Answer::Local(format!(
                        "could not look in mailbox {} for an earlier copy: {e}",
                        sanitize::for_terminal(mailbox)
                    )),
                    remote: None,
                });
            }
            Err(e) => return Err(e),
        };
        let bytes = appended_bytes(delivery, rcpt, mailbox, &self.options.client.hello_name);
        let remote = Some(session.server.clone());
        if delivery.recovering {
            match self.find_copy(&mut session, delivery, mailbox, Some(bytes.len())) {
                Ok(Some(detail)) => {
                    self.session = Some(session);
                    return Ok(Outcome::AlreadyThere { detail });
                }
                Ok(None) => {}
                Err(Broken::Lost(why)) => {
                    session.conn.abandon();
                    // Appending now could make a second copy: leave it uncertain.
                    return Ok(Outcome::Uncertain {
                        reply: Answer::Local(format!(
                            "could not look in mailbox {} for an earlier copy: {why}",
                            sanitize::for_terminal(mailbox)
                        )),
                        remote,
                    });
                }
            }
        }
        let outcome = self.append(&mut session, delivery, &bytes);
        match outcome {
            Appended::Answer(tagged) => {
                self.session = Some(session);
                Ok(append_outcome(&tagged, mailbox, remote))
            }
            Appended::LostBefore(why) => {
                session.conn.abandon();
                Err(self.unavailable(&why))
            }
            Appended::LostAfter(why) => {
                session.conn.abandon();
                Ok(Outcome::Uncertain {
                    reply: Answer::Local(format!(
                        "the connection broke after the message was sent, before the \
                         server's answer: {why}"
                    )),
                    remote,
                })
            }
        }
    }

    fn append(&self, session: &mut Session, delivery: &Delivery<'_>, bytes: &[u8]) -> Appended {
        let timeouts = self.options.client.timeouts;
        let tag = session.next_tag();
        let date = imap_date(delivery.arrival);
        let plus = if session.literal_plus { "+" } else { "" };
        let line = format!(
            "{tag} APPEND INBOX () \"{date}\" {{{}{plus}}}\r\n",
            bytes.len()
        );
        if let Err(e) = session.conn.write_all(line.as_bytes()) {
            return Appended::LostBefore(lost(&e, timeouts.command).to_string());
        }
        if !session.literal_plus {
            // Wait for the continuation; a tagged answer instead refuses the APPEND.
            let wait = timeouts.command;
            let deadline = Instant::now() + wait;
            loop {
                match read_response(&mut session.conn, deadline, wait) {
                    Ok(l) if l.starts_with('+') => break,
                    Ok(l) if l.starts_with("* ") => {
                        if word(&l, 1).eq_ignore_ascii_case("BYE") {
                            return Appended::LostBefore(format!("the server said `{l}`"));
                        }
                    }
                    Ok(l) => {
                        if let Some(rest) = l.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
                            return Appended::Answer(parse_status(rest));
                        }
                        return Appended::LostBefore(format!("unexpected response `{l}`"));
                    }
                    Err(e) => return Appended::LostBefore(e.to_string()),
                }
            }
        }
        if let Err(e) = session.conn.write_all(bytes) {
            return Appended::LostBefore(lost(&e, timeouts.command).to_string());
        }
        if let Err(e) = session.conn.write_all(b"\r\n") {
            // Every byte of the message is out; only the command's end is missing. The
            // server cannot have stored it without the CRLF, but be careful anyway.
            return Appended::LostAfter(lost(&e, timeouts.command).to_string());
        }
        let wait = timeouts.data_end;
        match read_tagged(
            &mut session.conn,
            &tag,
            Instant::now() + wait,
            wait,
            &mut |_| {},
        ) {
            Ok(t) => Appended::Answer(t),
            Err(e) => Appended::LostAfter(e.to_string()),
        }
    }

    /// Looks for our copy (its trace id in a `Received:` field, then its size).
    fn find_copy(
        &self,
        session: &mut Session,
        delivery: &Delivery<'_>,
        mailbox: &str,
        size: Option<usize>,
    ) -> Result<Option<String>, Broken> {
        let wait = self.options.client.timeouts.command;
        let examined = session.command("EXAMINE INBOX", wait, &mut |_| {})?;
        if !examined.ok() {
            // No INBOX yet: no copy in it.
            return Ok(None);
        }
        let id = trace_id(delivery.message_key, mailbox);
        let mut uids = Vec::new();
        let searched = session.command(
            &format!("UID SEARCH HEADER Received \"{id}\""),
            wait,
            &mut |u| {
                if word(u, 0).eq_ignore_ascii_case("SEARCH") {
                    uids.extend(u.split(' ').skip(1).filter_map(|w| w.parse::<u32>().ok()));
                }
            },
        )?;
        if !searched.ok() {
            return Err(Broken::Lost(format!(
                "SEARCH answered `{}`",
                searched.line()
            )));
        }
        let mut found = None;
        for uid in uids {
            let mut got = None;
            let fetched =
                session.command(&format!("UID FETCH {uid} RFC822.SIZE"), wait, &mut |u| {
                    let upper = u.to_ascii_uppercase();
                    if let Some(at) = upper.find("RFC822.SIZE ") {
                        got = u[at + 12..]
                            .split([' ', ')'])
                            .next()
                            .and_then(|n| n.parse::<usize>().ok());
                    }
                })?;
            if fetched.ok() && got.is_some() && (size.is_none() || got == size) {
                found = Some(uid);
                break;
            }
        }
        // Leave the mailbox selected state: APPEND works in either state.
        let _ = session.command("UNSELECT", wait, &mut |_| {});
        Ok(found.map(|uid| {
            format!(
                "verified in the store: mailbox {} INBOX has this copy already (UID {uid}, \
                 trace id {id})",
                sanitize::for_terminal(mailbox)
            )
        }))
    }
}

/// How an APPEND ended.
enum Appended {
    Answer(Tagged),
    /// Nothing or not all of the message reached the server.
    LostBefore(String),
    /// All of it did; the answer did not come.
    LostAfter(String),
}

/// The outcome of a tagged answer to APPEND.
fn append_outcome(tagged: &Tagged, mailbox: &str, remote: Option<String>) -> Outcome {
    let reply = tagged.line();
    if tagged.ok() {
        return Outcome::Delivered {
            detail: format!(
                "appended to {} INBOX: {reply}",
                sanitize::for_terminal(mailbox)
            ),
            remote,
        };
    }
    match tagged.code.as_deref() {
        // RFC 5530: over quota, or a per-user limit: later may work.
        Some("OVERQUOTA" | "LIMIT" | "UNAVAILABLE" | "INUSE" | "SERVERBUG") => Outcome::Deferred {
            reply: Answer::Local(reply),
            remote,
        },
        // No INBOX: the mailbox does not exist as a place to deliver to.
        Some("TRYCREATE" | "NONEXISTENT") => Outcome::Failed {
            reply: Answer::Local(format!(
                "{reply} (mailbox {} has no INBOX)",
                sanitize::for_terminal(mailbox)
            )),
            status: "5.1.1".to_string(),
            remote,
        },
        _ if tagged.status == "BAD" => Outcome::Failed {
            reply: Answer::Local(reply),
            status: "5.6.0".to_string(),
            remote,
        },
        _ => Outcome::Deferred {
            reply: Answer::Local(reply),
            remote,
        },
    }
}

fn authenticate_in_two_steps(
    session: &mut Session,
    plain: &str,
    wait: Duration,
) -> Result<Tagged, Broken> {
    let tag = session.next_tag();
    session
        .conn
        .write_all(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes())
        .map_err(|e| lost(&e, wait))?;
    let deadline = Instant::now() + wait;
    let line = read_response(&mut session.conn, deadline, wait)?;
    if let Some(rest) = line.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
        return Ok(parse_status(rest));
    }
    if !line.starts_with('+') {
        return Err(Broken::Lost(format!(
            "unexpected response `{}`",
            sanitize::for_terminal(&line)
        )));
    }
    session
        .conn
        .write_all(format!("{plain}\r\n").as_bytes())
        .map_err(|e| lost(&e, wait))?;
    read_tagged(&mut session.conn, &tag, deadline, wait, &mut |_| {})
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Drop for ImapStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Deliverer for ImapStore {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    /// Copies carry a deterministic trace id: the store can be searched for them.
    fn verifiable(&self) -> bool {
        true
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(recipients.len());
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, spec) in recipients.iter().enumerate() {
            let Some(mailbox) = checked_mailbox(spec.address) else {
                outcomes.push(Outcome::Failed {
                    reply: Answer::Local(format!(
                        "`{}` cannot name a mailbox in the store",
                        sanitize::for_terminal(spec.address)
                    )),
                    status: "5.1.3".to_string(),
                    remote: None,
                });
                continue;
            };
            if let Some(&(_, first)) = seen.iter().find(|(m, _)| *m == mailbox) {
                // One copy per mailbox: the repeat reports what the first got.
                outcomes.push(outcomes[first].clone());
                continue;
            }
            seen.push((mailbox.clone(), i));
            match self.deliver_one(delivery, spec.address, &mailbox) {
                Ok(o) => outcomes.push(o),
                // Nothing of this message appended yet: the store's failure stops it all.
                Err(e) if !outcomes.iter().any(appended) => return Err(e),
                // Some copies are in: keep them; the rest wait for the store to be back.
                Err(e) => {
                    let reply = e.to_string();
                    while outcomes.len() < recipients.len() {
                        outcomes.push(Outcome::Deferred {
                            reply: Answer::Local(reply.clone()),
                            remote: None,
                        });
                    }
                    return Ok(outcomes);
                }
            }
        }
        Ok(outcomes)
    }
}

fn appended(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Delivered { .. } | Outcome::AlreadyThere { .. } | Outcome::Uncertain { .. }
    )
}

/// The canonical mailbox of `raw`, if it is safe to put in an AUTHENTICATE line and a
/// header (no control characters, no line ends, no angle brackets or NUL).
fn checked_mailbox(raw: &str) -> Option<String> {
    if raw
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
    {
        return None;
    }
    Mailbox::parse(raw).ok().map(|m| m.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip() {
        let t: ImapTarget = "imaps://store.example.net".parse().expect("target");
        assert_eq!(t.port, 993);
        assert_eq!(t.to_string(), "imaps://store.example.net:993");
        let t: ImapTarget = "imap+starttls://[::1]:1143".parse().expect("target");
        assert_eq!(t.security, Security::StartTls);
        assert_eq!(t.to_string(), "imap+starttls://[::1]:1143");
        assert!("imap://".parse::<ImapTarget>().is_err());
        assert!("lmtp://x".parse::<ImapTarget>().is_err());
    }

    #[test]
    fn dates_are_imap_date_times() {
        let at = chrono::DateTime::parse_from_rfc3339("2023-01-03T09:05:07+01:00").expect("date");
        assert_eq!(imap_date(at), " 3-Jan-2023 09:05:07 +0100");
    }

    #[test]
    fn status_codes_decide_outcomes() {
        let over = parse_status("NO [OVERQUOTA] Quota exceeded (mailbox for user is full)");
        assert_eq!(over.code.as_deref(), Some("OVERQUOTA"));
        assert!(matches!(
            append_outcome(&over, "a@x.test", None),
            Outcome::Deferred { .. }
        ));
        let limit = parse_status("NO [LIMIT] too many");
        assert!(matches!(
            append_outcome(&limit, "a@x.test", None),
            Outcome::Deferred { .. }
        ));
        let none = parse_status("NO [TRYCREATE] Mailbox doesn't exist: INBOX");
        assert!(matches!(
            append_outcome(&none, "a@x.test", None),
            Outcome::Failed { ref status, .. } if status == "5.1.1"
        ));
        let ok = parse_status("OK [APPENDUID 1700000000 7] Append completed.");
        assert!(matches!(
            append_outcome(&ok, "a@x.test", None),
            Outcome::Delivered { .. }
        ));
    }

    #[test]
    fn capabilities_and_literals_are_read() {
        let caps = capabilities("[CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready.");
        assert!(caps.contains(&"LITERAL+".to_string()));
        assert!(caps.contains(&"SASL-IR".to_string()));
        assert_eq!(literal_size("* 1 FETCH (BODY[] {42}"), Some(42));
        assert_eq!(literal_size("* OK no literal"), None);
    }

    #[test]
    fn trace_ids_depend_on_content_and_canonical_mailbox() {
        assert_eq!(
            trace_id("abc", "bob@example.net"),
            trace_id("abc", &Mailbox::canonical_key("Bob@EXAMPLE.net"))
        );
        assert_ne!(
            trace_id("abc", "bob@example.net"),
            trace_id("abd", "bob@example.net")
        );
    }

    use super::super::testpeer::{Peer, Step};
    use crate::deliver::wire::Timeouts;

    const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready\n";

    fn store(peer: &Peer) -> Result<ImapStore, StoreError> {
        store_with(peer, Security::Plain, false)
    }

    fn store_with(
        peer: &Peer,
        security: Security,
        insecure: bool,
    ) -> Result<ImapStore, StoreError> {
        let options = ImapOptions {
            client: ClientOptions {
                hello_name: "replay.test".into(),
                timeouts: Timeouts {
                    connect: Duration::from_secs(5),
                    command: Duration::from_secs(3),
                    data_end: Duration::from_secs(3),
                },
            },
            credentials: ImapCredentials {
                user: "replay".into(),
                password: "pw".into(),
            },
            insecure,
            proven: Proven::default(),
        };
        let target = ImapTarget {
            security,
            host: "127.0.0.1".into(),
            port: peer.port,
        };
        ImapStore::connect(target, options)
    }

    fn delivery(sender: &ReversePath) -> Delivery<'_> {
        Delivery {
            message_key: "0123abcd",
            sender,
            content: b"Subject: x\r\n\r\nbody\r\n",
            arrival: chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
            recovering: false,
            envid: None,
            ret: None,
        }
    }

    /// The APPEND line and the 8 lines of the literal (our 4 header lines, the message's
    /// 3, the CRLF that ends the command).
    fn append_steps() -> Vec<Step> {
        let mut steps = vec![Step::Expect(
            "R2 APPEND INBOX () \"23-Jan-2023 10:00:00 +0100\" {",
        )];
        steps.extend(std::iter::repeat_n(Step::Expect(""), 8));
        steps
    }

    #[test]
    fn a_connection_lost_after_the_message_is_uncertain_and_before_it_unavailable() {
        let mut after = vec![
            Step::Send(GREETING),
            Step::Expect("R1 AUTHENTICATE PLAIN "),
            Step::Send("R1 OK Logged in\n"),
        ];
        after.extend(append_steps());
        let peer = Peer::spawn(vec![
            vec![Step::Send(GREETING)],
            after,
            vec![Step::Send(GREETING), Step::Expect("R1 AUTHENTICATE")],
        ]);
        let mut s = store(&peer).unwrap();
        let sender = ReversePath::Address("s@x.test".into());
        let d = delivery(&sender);
        let out = s
            .deliver(&d, &[RecipientSpec::plain("bob@example.test")])
            .unwrap();
        assert!(matches!(out[0], Outcome::Uncertain { .. }), "{out:?}");
        // The next mailbox: the store drops the connection during AUTHENTICATE.
        let err = s.deliver(&d, &[RecipientSpec::plain("carol@example.test")]);
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        let transcript = peer.transcript().join("\n");
        // The copy carried its date and our trace field.
        assert!(transcript.contains("Received: by replay.test (spoolreplay) with IMAP id SR"));
        assert!(transcript.contains("Delivered-To: bob@example.test"));
    }

    #[test]
    fn a_refused_mailbox_defers_until_the_credentials_proved_good_then_fails_5_1_1() {
        let open = |n: &'static str| {
            vec![
                Step::Send(GREETING),
                Step::Expect("R1 AUTHENTICATE PLAIN "),
                Step::Send(n),
            ]
        };
        let mut alice = open("R1 OK Logged in\n");
        alice.extend(append_steps());
        alice.push(Step::Send("R2 OK [APPENDUID 1 1] Append completed.\n"));
        alice.push(Step::Expect("R3 LOGOUT"));
        let peer = Peer::spawn(vec![
            vec![Step::Send(GREETING)],
            open("R1 NO [AUTHENTICATIONFAILED] Authentication failed.\n"),
            alice,
            open("R1 NO [AUTHENTICATIONFAILED] Authentication failed.\n"),
        ]);
        let mut s = store(&peer).unwrap();
        let sender = ReversePath::Address("s@x.test".into());
        let d = delivery(&sender);
        let ghost = [RecipientSpec::plain("ghost@example.test")];
        let first = s.deliver(&d, &ghost).unwrap();
        assert!(matches!(first[0], Outcome::Deferred { .. }), "{first:?}");
        let ok = s
            .deliver(&d, &[RecipientSpec::plain("alice@example.test")])
            .unwrap();
        assert!(matches!(ok[0], Outcome::Delivered { .. }), "{ok:?}");
        let again = s.deliver(&d, &ghost).unwrap();
        assert!(
            matches!(&again[0], Outcome::Failed { status, .. } if status == "5.1.1"),
            "{again:?}"
        );
        drop(s);
        peer.transcript();
    }

    #[test]
    fn starttls_and_imaps_are_used_and_certificates_checked() {
        // imap+starttls: CAPABILITY, STARTTLS, TLS, CAPABILITY again (what came before TLS
        // is forgotten), then AUTHENTICATE over TLS.
        let starttls = |then: Vec<Step>| {
            let mut s = vec![
                Step::Send("* OK ready\n"),
                Step::Expect("R1 CAPABILITY"),
                Step::Send("* CAPABILITY IMAP4rev1 STARTTLS\nR1 OK done\n"),
                Step::Expect("R2 STARTTLS"),
                Step::Send("R2 OK Begin TLS negotiation now.\n"),
                Step::StartTls,
                Step::Expect("R3 CAPABILITY"),
                Step::Send("* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN\nR3 OK done\n"),
            ];
            s.extend(then);
            s
        };
        let mut deliver = starttls(vec![Step::Expect("R4 AUTHENTICATE PLAIN ")]);
        deliver.push(Step::Send("R4 OK Logged in\n"));
        deliver.push(Step::Expect("R5 APPEND INBOX () "));
        deliver.extend(std::iter::repeat_n(Step::Expect(""), 8));
        deliver.push(Step::Send("R5 OK [APPENDUID 1 1] Append completed.\n"));
        deliver.push(Step::Expect("R6 LOGOUT"));
        let peer = Peer::spawn(vec![starttls(vec![]), deliver]);
        let mut s = store_with(&peer, Security::StartTls, true).unwrap();
        let sender = ReversePath::Address("s@x.test".into());
        let out = s
            .deliver(
                &delivery(&sender),
                &[RecipientSpec::plain("bob@example.test")],
            )
            .unwrap();
        assert!(matches!(out[0], Outcome::Delivered { .. }), "{out:?}");
        drop(s);
        peer.transcript();
        // imaps without --insecure-tls: the self-signed test certificate is refused.
        let peer = Peer::spawn(vec![vec![
            Step::StartTls,
            Step::Send(GREETING),
            Step::AwaitClose,
        ]]);
        match store_with(&peer, Security::Tls, false) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("certificate"), "{m}"),
            other => panic!("{other:?}"),
        }
        drop(peer);
    }

    #[test]
    fn an_endless_greeting_is_refused_after_a_bounded_read() {
        let peer = Peer::spawn(vec![vec![Step::Endless]]);
        let err = store(&peer).unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
        let transcript = peer.transcript();
        let sent: usize = transcript
            .iter()
            .find_map(|l| l.strip_prefix("ENDLESS:"))
            .and_then(|n| n.parse().ok())
            .expect("endless count");
        assert!(sent < 64 * 1024 * 1024, "the client read it all: {sent}");
    }

    #[test]
    fn no_password_in_clear_to_a_host_that_is_not_loopback() {
        let options = ImapOptions {
            client: ClientOptions::default(),
            credentials: ImapCredentials {
                user: "replay".into(),
                password: "pw".into(),
            },
            insecure: false,
            proven: Proven::default(),
        };
        let target: ImapTarget = "imap://192.0.2.1".parse().unwrap();
        match ImapStore::connect(target, options) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("without TLS"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses_that_could_inject_are_refused() {
        assert_eq!(checked_mailbox("a@x.test"), Some("a@x.test".to_string()));
        assert_eq!(checked_mailbox("a\r\n@x.test"), None);
        assert_eq!(checked_mailbox("a\0b@x.test"), None);
    }
}
