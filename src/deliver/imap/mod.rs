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

mod codec;
mod session;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::target::{CredentialVars, Credentials, Schemes};
use super::wire::{ClientOptions, Conn};
use super::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::sanitize;
use codec::{append_outcome, capabilities, checked_mailbox, word};
pub use codec::{appended_bytes, imap_date, trace_field, trace_id};
use session::{Appended, Broken, Session, authenticate_in_two_steps, read_response};

/// Why an `imap://` store that is not on loopback is refused (no password in clear).
const PLAINTEXT_REFUSED: &str = "refusing to send the administrator's password without TLS to a \
     host that is not loopback (use imaps:// or imap+starttls://, or --insecure-tls)";

/// Environment variables the administrative credentials are read from.
pub const ENV_USER: &str = "SPOOLREPLAY_IMAP_USER";
pub const ENV_PASSWORD: &str = "SPOOLREPLAY_IMAP_PASSWORD";
pub const ENV_FILE: &str = "SPOOLREPLAY_IMAP_CREDENTIALS";
/// The three, for `Credentials::from_env`.
pub const CREDENTIAL_VARS: CredentialVars = CredentialVars {
    protocol: "IMAP",
    user: ENV_USER,
    password: ENV_PASSWORD,
    file: ENV_FILE,
};

pub use super::target::Security;

/// `imap://host[:port]` (143), `imap+starttls://host[:port]` (143), `imaps://host[:port]` (993).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapTarget {
    pub security: Security,
    pub host: String,
    pub port: u16,
}

const SCHEMES: Schemes = Schemes {
    protocol: "IMAP",
    plain: "imap",
    tls: "imaps",
    port: 143,
    tls_port: 993,
};

impl FromStr for ImapTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<ImapTarget, String> {
        let (security, host, port) = SCHEMES.parse(s)?;
        Ok(ImapTarget {
            security,
            host,
            port,
        })
    }
}

impl fmt::Display for ImapTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SCHEMES.show(f, self.security, &self.host, self.port)
    }
}

/// The store's administrative identity (a Dovecot master user, a Cyrus admin).
pub type ImapCredentials = Credentials;

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
        match session.find_copy(
            &trace_id(delivery.message_key, &mailbox),
            &mailbox,
            size,
            self.options.client.timeouts.command,
        ) {
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
            match session.find_copy(
                &trace_id(delivery.message_key, mailbox),
                mailbox,
                Some(bytes.len()),
                self.options.client.timeouts.command,
            ) {
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
        let outcome = session.append(delivery.arrival, &bytes, self.options.client.timeouts);
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
                Err(e) => return super::rest_deferred(outcomes, recipients.len(), e),
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests;
