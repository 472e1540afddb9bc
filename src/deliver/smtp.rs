//! Delivery to an SMTP server through lettre's low-level client (`SmtpConnection`), with
//! per-recipient outcomes: `smtp://`, `smtp+starttls://` and `smtps://` targets.
//!
//! lettre's `SmtpTransport::send` is all-or-nothing (one refused RCPT fails the message for
//! everyone), so we drive the commands ourselves: MAIL, one RCPT per recipient (a refused
//! recipient gets its own outcome, the others still get the message), DATA, the body, and
//! one final reply that settles every accepted recipient (RFC 5321 has one reply per
//! message, unlike LMTP).
//!
//! Where lettre does not reach:
//! - Its `ServerInfo` keeps only 8BITMIME, SMTPUTF8, STARTTLS and AUTH; DSN is dropped. We
//!   send EHLO once more ourselves (RFC 5321 4.1.4 allows it; it also resets the state) and
//!   read the keywords from that reply with `wire::Capabilities`.
//! - Its errors keep the reply code and the joined text, not the lines; `Reply::from_lines`
//!   rebuilds the enhanced status from them.
//! - Its `message` adds CRLF before the final dot and dot-stuffs, but keeps bare LFs: we
//!   hand it the message with line ends normalized and one trailing CRLF taken off, so the
//!   server receives exactly the spooled bytes (in CRLF form).
//!
//! Credentials never come from the command line: `SmtpCredentials::from_env` reads
//! `SPOOLREPLAY_SMTP_USER`/`SPOOLREPLAY_SMTP_PASSWORD`, or a `user:password` file named by
//! `SPOOLREPLAY_SMTP_CREDENTIALS`. They are refused over a connection without TLS.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{
    ClientId, MailBodyParameter, MailParameter, RcptParameter,
};
use lettre::transport::smtp::response::Response;

use super::lmtp::split_host_port;
use super::reply::Reply;
use super::wire::{self, Capabilities, ClientOptions, Timeouts};
use super::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::address::ReversePath;
use crate::sanitize;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: no TLS.
    Plain,
    /// `smtp+starttls://`: STARTTLS is required; a server without it is refused.
    StartTls,
    /// `smtps://`: TLS from the first byte (RFC 8314).
    Tls,
}

/// `smtp://host[:port]` (25), `smtp+starttls://host[:port]` (25), `smtps://host[:port]` (465).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub security: Security,
    pub host: String,
    pub port: u16,
}

impl FromStr for SmtpTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<SmtpTarget, String> {
        let (security, authority, default) = if let Some(a) = s.strip_prefix("smtp://") {
            (Security::Plain, a, 25)
        } else if let Some(a) = s.strip_prefix("smtp+starttls://") {
            (Security::StartTls, a, 25)
        } else if let Some(a) = s.strip_prefix("smtps://") {
            (Security::Tls, a, 465)
        } else {
            return Err(format!(
                "`{s}` is not an SMTP target (smtp://, smtp+starttls:// or smtps://host[:port])"
            ));
        };
        let (host, port) = split_host_port(authority, default)
            .map_err(|e| format!("bad SMTP target `{s}`: {e}"))?;
        Ok(SmtpTarget {
            security,
            host,
            port,
        })
    }
}

impl fmt::Display for SmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.security {
            Security::Plain => "smtp",
            Security::StartTls => "smtp+starttls",
            Security::Tls => "smtps",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A user name and password for SMTP AUTH (PLAIN or LOGIN).
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SmtpCredentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// Environment variables the credentials are read from.
pub const ENV_USER: &str = "SPOOLREPLAY_SMTP_USER";
pub const ENV_PASSWORD: &str = "SPOOLREPLAY_SMTP_PASSWORD";
pub const ENV_FILE: &str = "SPOOLREPLAY_SMTP_CREDENTIALS";

impl SmtpCredentials {
    /// From the process environment; `Ok(None)` when none are set.
    pub fn from_env() -> Result<Option<SmtpCredentials>, String> {
        SmtpCredentials::from_vars(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass their own). The file wins over the pair.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<SmtpCredentials>, String> {
        if let Some(path) = var(ENV_FILE).filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read SMTP credentials file `{path}`: {e}"))?;
            let line = text.lines().next().unwrap_or("");
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!(
                    "SMTP credentials file `{path}` must hold `user:password` on its first line"
                ));
            };
            return Ok(Some(SmtpCredentials {
                user: user.to_string(),
                password: password.to_string(),
            }));
        }
        match (var(ENV_USER), var(ENV_PASSWORD)) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => Ok(Some(SmtpCredentials { user, password })),
            _ => Err(format!(
                "set both {ENV_USER} and {ENV_PASSWORD}, or neither (or use {ENV_FILE})"
            )),
        }
    }
}

/// Everything an SMTP store is opened with.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    pub client: ClientOptions,
    pub credentials: Option<SmtpCredentials>,
    /// Accept any certificate and host name: only for a test server or a private network
    /// the operator trusts. Also allows AUTH without TLS.
    pub insecure: bool,
}

/// A delivery store reached over SMTP.
pub struct SmtpStore {
    target: SmtpTarget,
    options: SmtpOptions,
    session: Option<Session>,
    connections: u64,
}

impl fmt::Debug for SmtpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpStore")
            .field("target", &self.target)
            .field("connected", &self.session.is_some())
            .finish()
    }
}

struct Session {
    conn: SmtpConnection,
    server: String,
    caps: Capabilities,
    used: bool,
}

impl SmtpStore {
    /// Connects, says EHLO (and STARTTLS, AUTH as configured), so a wrong target or
    /// refused credentials are found before any mail is touched.
    pub fn connect(target: SmtpTarget, options: SmtpOptions) -> Result<SmtpStore, StoreError> {
        let mut store = SmtpStore {
            target,
            options,
            session: None,
            connections: 0,
        };
        let session = store.open()?;
        store.session = Some(session);
        Ok(store)
    }

    /// How many connections were opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections
    }

    /// Says QUIT, if a connection is open.
    pub fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = s.conn.command(Quit);
            s.conn.abort();
        }
    }

    fn open(&mut self) -> Result<Session, StoreError> {
        let t = self.options.client.timeouts;
        let hello = ClientId::Domain(self.options.client.hello_name.clone());
        let tls = match self.target.security {
            Security::Plain => None,
            Security::StartTls | Security::Tls => Some(self.tls_parameters()?),
        };
        let wrapped = match self.target.security {
            Security::Tls => tls.as_ref(),
            _ => None,
        };
        let mut conn = SmtpConnection::connect(
            (self.target.host.as_str(), self.target.port),
            Some(t.connect),
            &hello,
            wrapped,
            None,
        )
        .map_err(|e| self.unavailable(&format!("cannot open a session: {e}")))?;
        self.connections += 1;
        conn.set_timeout(Some(t.command))
            .map_err(|e| self.unavailable(&format!("cannot set timeouts: {e}")))?;
        if let (Security::StartTls, Some(tls)) = (self.target.security, &tls) {
            if !conn.can_starttls() {
                conn.abort();
                return Err(self.unavailable("the server does not offer STARTTLS"));
            }
            conn.starttls(tls, &hello)
                .map_err(|e| self.unavailable(&format!("STARTTLS failed: {e}")))?;
        }
        // lettre forgets the keywords it does not know (DSN): ask once more and keep all.
        let ehlo = conn
            .command(Ehlo::new(hello))
            .map_err(|e| self.unavailable(&format!("EHLO failed: {e}")))?;
        let ehlo = reply_of_response(&ehlo);
        if let Some(credentials) = &self.options.credentials {
            self.authenticate(&mut conn, credentials)?;
        }
        Ok(Session {
            server: wire::server_name(&ehlo).unwrap_or_else(|| self.target.host.clone()),
            caps: Capabilities::from_reply(&ehlo),
            conn,
            used: false,
        })
    }

    fn tls_parameters(&self) -> Result<TlsParameters, StoreError> {
        TlsParameters::builder(self.target.host.clone())
            .dangerous_accept_invalid_certs(self.options.insecure)
            .dangerous_accept_invalid_hostnames(self.options.insecure)
            .build_rustls()
            .map_err(|e| self.unavailable(&format!("cannot set up TLS: {e}")))
    }

    fn authenticate(
        &self,
        conn: &mut SmtpConnection,
        credentials: &SmtpCredentials,
    ) -> Result<(), StoreError> {
        if !conn.is_encrypted() && !self.options.insecure {
            conn.abort();
            return Err(self.unavailable(
                "refusing to send the SMTP password over a connection without TLS \
                 (use smtps:// or smtp+starttls://)",
            ));
        }
        let creds = Credentials::new(credentials.user.clone(), credentials.password.clone());
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
            .map(|_| ())
            .map_err(|e| {
                self.unavailable(&format!(
                    "authentication as `{}` failed: {e}",
                    credentials.user
                ))
            })
    }

    /// The open session if it still answers RSET, else a new one.
    fn ready_session(&mut self) -> Result<Session, StoreError> {
        if let Some(mut s) = self.session.take() {
            if !s.used {
                return Ok(s);
            }
            match s.conn.command(Rset) {
                Ok(_) => return Ok(s),
                Err(_) => s.conn.abort(),
            }
        }
        self.open()
    }

    fn unavailable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "SMTP server {}: {}",
            self.target,
            sanitize::for_terminal(what)
        ))
    }
}

impl Drop for SmtpStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Deliverer for SmtpStore {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        let sender = match sender_address(delivery.sender) {
            Ok(s) => s,
            Err(why) => {
                let reply = format!("sender cannot be sent over SMTP: {why}");
                return Ok(vec![
                    wire::refused_locally(reply, "5.1.7");
                    recipients.len()
                ]);
            }
        };
        let mut session = self.ready_session()?;
        let smtputf8 = wire::needs_smtputf8(delivery, recipients);
        if smtputf8 && !session.caps.smtputf8 {
            let reply = format!(
                "the envelope has non-ASCII addresses and the SMTP server {} does not offer \
                 SMTPUTF8 (RFC 6531)",
                session.server
            );
            self.session = Some(session);
            return Ok(vec![
                wire::refused_locally(reply, "5.6.7");
                recipients.len()
            ]);
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; recipients.len()];
        let keep = transaction(
            &mut session,
            delivery,
            sender,
            recipients,
            smtputf8,
            self.options.client.timeouts,
            &mut outcomes,
        );
        session.used = true;
        if keep {
            self.session = Some(session);
        } else {
            session.conn.abort();
        }
        let server = session_name(&self.session, &self.target);
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Deferred {
                    reply: "internal error: no outcome recorded".to_string(),
                    remote: Some(server.clone()),
                })
            })
            .collect())
    }
}

fn session_name(session: &Option<Session>, target: &SmtpTarget) -> String {
    session
        .as_ref()
        .map_or_else(|| target.host.clone(), |s| s.server.clone())
}

/// What a failed lettre call means: a server reply, or a broken connection.
enum Failure {
    Reply(Reply),
    Broken(String),
}

fn failure(e: &lettre::transport::smtp::Error) -> Failure {
    match e.status() {
        Some(code) => {
            let text = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            Failure::Reply(Reply::from_lines(u16::from(code), vec![text]))
        }
        None => Failure::Broken(e.to_string()),
    }
}

/// Runs one transaction; true when the connection can be used again.
fn transaction(
    session: &mut Session,
    delivery: &Delivery<'_>,
    sender: Option<Address>,
    recipients: &[RecipientSpec<'_>],
    smtputf8: bool,
    timeouts: Timeouts,
    outcomes: &mut [Option<Outcome>],
) -> bool {
    let server = session.server.clone();
    let settle_rest = |outcomes: &mut [Option<Outcome>], o: &dyn Fn() -> Outcome| {
        for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(o());
        }
    };
    let params = mail_parameters(delivery, &session.caps, smtputf8);
    if let Err(e) = session.conn.command(Mail::new(sender, params)) {
        return match failure(&e) {
            Failure::Reply(r) => {
                settle_rest(outcomes, &|| wire::outcome_of(&r, &server));
                r.code != 421 && session.conn.command(Rset).is_ok()
            }
            Failure::Broken(why) => {
                settle_rest(outcomes, &|| lost(&why, "at MAIL FROM"));
                false
            }
        };
    }
    let mut accepted = Vec::new();
    for (i, spec) in recipients.iter().enumerate() {
        let address = match recipient_address(spec.address) {
            Ok(a) => a,
            Err(why) => {
                let reply = format!(
                    "recipient `{}` cannot be sent over SMTP: {why}",
                    sanitize::for_terminal(spec.address)
                );
                outcomes[i] = Some(wire::refused_locally(reply, "5.1.3"));
                continue;
            }
        };
        let params = rcpt_parameters(spec, &session.caps);
        match session.conn.command(Rcpt::new(address, params)) {
            Ok(_) => accepted.push(i),
            Err(e) => match failure(&e) {
                Failure::Reply(r) if r.code == 421 => {
                    settle_rest(outcomes, &|| wire::outcome_of(&r, &server));
                    return false;
                }
                Failure::Reply(r) => outcomes[i] = Some(wire::outcome_of(&r, &server)),
                Failure::Broken(why) => {
                    settle_rest(outcomes, &|| lost(&why, "at RCPT TO"));
                    return false;
                }
            },
        }
    }
    if accepted.is_empty() {
        return session.conn.command(Rset).is_ok();
    }
    if let Err(e) = session.conn.command(Data) {
        return match failure(&e) {
            Failure::Reply(r) => {
                settle_rest(outcomes, &|| wire::outcome_of(&r, &server));
                r.code != 421 && session.conn.command(Rset).is_ok()
            }
            Failure::Broken(why) => {
                settle_rest(outcomes, &|| lost(&why, "at DATA"));
                false
            }
        };
    }
    let (result, body_sent) = send_body(session, delivery.content, timeouts.data_end);
    let keep = match result {
        Ok(response) => {
            let r = reply_of_response(&response);
            settle_rest(outcomes, &|| wire::outcome_of(&r, &server));
            true
        }
        Err(Failure::Reply(r)) => {
            settle_rest(outcomes, &|| wire::outcome_of(&r, &server));
            r.code != 421
        }
        Err(Failure::Broken(why)) if body_sent => {
            settle_rest(outcomes, &|| Outcome::Uncertain {
                reply: format!(
                    "no reply after the final dot ({}): the server may have delivered it",
                    sanitize::for_terminal(&why)
                ),
                remote: Some(server.clone()),
            });
            false
        }
        Err(Failure::Broken(why)) => {
            settle_rest(outcomes, &|| lost(&why, "while sending the message"));
            false
        }
    };
    keep && session.conn.set_timeout(Some(timeouts.command)).is_ok()
}

/// Sends the message with the final-dot timeout. The flag says the whole body went out
/// before the result, so a broken connection from there on is "uncertain", not "not
/// delivered".
fn send_body(
    session: &mut Session,
    content: &[u8],
    wait: Duration,
) -> (Result<Response, Failure>, bool) {
    if let Err(e) = session.conn.set_timeout(Some(wait)) {
        return (
            Err(Failure::Broken(format!("cannot set a timeout: {e}"))),
            false,
        );
    }
    // lettre writes the terminator in a write of its own, which Nagle holds back until the
    // server acknowledges the body: up to 40 ms per message (measured: 24 msg/s). lettre
    // gives no access to its socket to set TCP_NODELAY, so a UTF-8 (or ASCII) message goes
    // out dot-stuffed, terminator included, in one command write. Its result cannot tell a
    // write from a read failure, so a broken connection there counts as uncertain: the
    // safe side.
    let mut stuffed = wire::data_body(content);
    stuffed.extend_from_slice(wire::DATA_END);
    if let Ok(whole) = String::from_utf8(stuffed) {
        let result = session
            .conn
            .command(RawData(whole))
            .map_err(|e| failure(&e));
        return (result, true);
    }
    let normalized = wire::normalize_line_ends(content);
    // lettre writes the CRLF before the final dot itself.
    let body = normalized.strip_suffix(b"\r\n").unwrap_or(&normalized);
    let sent = Cell::new(false);
    let parts = std::iter::once(body).chain(std::iter::from_fn(|| {
        sent.set(true);
        None
    }));
    let result = session.conn.message_iter(parts).map_err(|e| failure(&e));
    (result, sent.get())
}

/// A message already dot-stuffed and terminated, written as one "command".
struct RawData(String);

impl std::fmt::Display for RawData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn lost(why: &str, step: &str) -> Outcome {
    Outcome::Deferred {
        reply: format!("connection lost {step}: {}", sanitize::for_terminal(why)),
        remote: None,
    }
}

fn reply_of_response(r: &Response) -> Reply {
    Reply::from_lines(u16::from(r.code()), r.message().map(String::from).collect())
}

fn sender_address(sender: &ReversePath) -> Result<Option<Address>, String> {
    match sender {
        ReversePath::Null => Ok(None),
        ReversePath::Address(a) => {
            wire::check_wire_address(a)?;
            a.parse::<Address>().map(Some).map_err(|e| {
                format!(
                    "`{}` is not an address lettre can send: {e}",
                    sanitize::for_terminal(a)
                )
            })
        }
    }
}

fn recipient_address(address: &str) -> Result<Address, String> {
    wire::check_wire_address(address)?;
    address
        .parse::<Address>()
        .map_err(|e| format!("not an address lettre can send: {e}"))
}

fn mail_parameters(
    delivery: &Delivery<'_>,
    caps: &Capabilities,
    smtputf8: bool,
) -> Vec<MailParameter> {
    wire::mail_params(delivery, caps, smtputf8)
        .into_iter()
        .map(|(keyword, value)| match (keyword, value.as_deref()) {
            ("BODY", Some("8BITMIME")) => MailParameter::Body(MailBodyParameter::EightBitMime),
            ("SMTPUTF8", None) => MailParameter::SmtpUtfEight,
            // lettre xtext-encodes the value.
            (keyword, _) => MailParameter::Other {
                keyword: keyword.to_string(),
                value,
            },
        })
        .collect()
}

fn rcpt_parameters(spec: &RecipientSpec<'_>, caps: &Capabilities) -> Vec<RcptParameter> {
    wire::rcpt_params(spec, caps)
        .into_iter()
        .map(|(keyword, value)| RcptParameter::Other {
            keyword: keyword.to_string(),
            value,
        })
        .collect()
}

#[cfg(test)]
mod tests;
