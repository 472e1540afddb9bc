//! Delivery to an LMTP server (RFC 2033), such as Dovecot's `lmtp` service, over TCP or a
//! unix socket: our own client on top of `wire` (bytes, replies) and `reply`.
//!
//! One transaction per message: `MAIL FROM`, one `RCPT TO` per recipient, `DATA`, then one
//! reply per accepted recipient, in RCPT order (RFC 2033 4.2). The connection is kept for
//! the next message; before reusing it we send `RSET`, which both clears the state and
//! proves the server is still there (Dovecot drops idle clients after 5 minutes with a
//! 421). A server that went away between messages is reconnected to without loss.
//!
//! What each failure means for the recipients of the current message:
//! - before the final dot (MAIL, RCPT, DATA, the body): nothing was delivered, so the
//!   recipients not yet settled are `Deferred`;
//! - after the final dot, a missing reply (closed, timed out): `Uncertain` for that
//!   recipient and every later one; recipients whose reply arrived keep it;
//! - a 421 at any step: the server is closing; we drop the connection and reconnect on the
//!   next message.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::reply::Reply;
use super::wire::{self, Capabilities, ClientOptions, Conn, WireError};
use super::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::sanitize;

/// The LMTP port (RFC 2033 has none; 24 is the IANA "any private mail system" port that
/// Dovecot and Postfix use).
pub const DEFAULT_PORT: u16 = 24;

/// Where the LMTP server listens: `lmtp://host[:port]` or `lmtp:/path/to/socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl FromStr for LmtpTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<LmtpTarget, String> {
        let Some(rest) = s.strip_prefix("lmtp:") else {
            return Err(format!(
                "`{s}` is not an LMTP target (lmtp://host[:port] or lmtp:/socket)"
            ));
        };
        if let Some(authority) = rest.strip_prefix("//") {
            let (host, port) = split_host_port(authority, DEFAULT_PORT)
                .map_err(|e| format!("bad LMTP target `{s}`: {e}"))?;
            return Ok(LmtpTarget::Tcp { host, port });
        }
        if rest.starts_with('/') {
            return Ok(LmtpTarget::Unix(PathBuf::from(rest)));
        }
        Err(format!(
            "bad LMTP target `{s}`: expected lmtp://host[:port] or lmtp:/path/to/socket"
        ))
    }
}

impl fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LmtpTarget::Tcp { host, port } if host.contains(':') => {
                write!(f, "lmtp://[{host}]:{port}")
            }
            LmtpTarget::Tcp { host, port } => write!(f, "lmtp://{host}:{port}"),
            LmtpTarget::Unix(path) => write!(f, "lmtp:{}", path.display()),
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (nothing after: no path, user or query).
pub(crate) fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    if authority.is_empty() {
        return Err("no host".to_string());
    }
    if authority.contains(['/', '@', '?', '#']) {
        return Err("only host[:port] may follow `//`".to_string());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in the host".to_string())?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("unexpected `{p}` after the host"))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    Ok((host.to_string(), port))
}

/// A delivery store reached over LMTP.
#[derive(Debug)]
pub struct LmtpStore {
    target: LmtpTarget,
    options: ClientOptions,
    session: Option<Session>,
    connections: u64,
}

/// One open, greeted connection.
#[derive(Debug)]
struct Session {
    conn: Conn,
    /// From the greeting (Dovecot: `mx.example.test`), else the target's host.
    server: String,
    caps: Capabilities,
    /// A transaction ran on it: `RSET` before the next.
    used: bool,
}

impl LmtpStore {
    /// Connects, reads the greeting and sends LHLO, so a wrong target is found before any
    /// mail is touched.
    pub fn connect(target: LmtpTarget, options: ClientOptions) -> Result<LmtpStore, StoreError> {
        let mut store = LmtpStore {
            target,
            options,
            session: None,
            connections: 0,
        };
        let session = store.open()?;
        store.session = Some(session);
        Ok(store)
    }

    /// How many connections were opened so far (reuse shows as 1 for many messages).
    pub fn connections_opened(&self) -> u64 {
        self.connections
    }

    /// Closes the connection politely (QUIT), if one is open.
    pub fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = s.conn.command("QUIT");
            s.conn.abandon();
        }
    }

    fn open(&mut self) -> Result<Session, StoreError> {
        let timeouts = self.options.timeouts;
        let mut conn = match &self.target {
            LmtpTarget::Tcp { host, port } => Conn::tcp(host, *port, timeouts),
            LmtpTarget::Unix(path) => Conn::unix(path, timeouts),
        }
        .map_err(|e| self.unavailable(&e))?;
        self.connections += 1;
        let greeting = conn
            .read_reply(timeouts.command)
            .map_err(|e| self.unavailable(&format!("no greeting: {e}")))?;
        if greeting.code != 220 {
            conn.abandon();
            return Err(self.unavailable(&format!("greeted with `{greeting}`")));
        }
        let server = wire::server_name(&greeting).unwrap_or_else(|| self.host_name());
        let lhlo = format!("LHLO {}", self.options.hello_name);
        let reply = conn
            .command(&lhlo)
            .map_err(|e| self.unavailable(&format!("no answer to LHLO: {e}")))?;
        if reply.code != 250 {
            conn.abandon();
            return Err(self.unavailable(&format!("LHLO answered `{reply}`")));
        }
        Ok(Session {
            conn,
            server,
            caps: Capabilities::from_reply(&reply),
            used: false,
        })
    }

    /// A session ready for MAIL: the open one if it answers RSET, else a new one.
    fn ready_session(&mut self) -> Result<Session, StoreError> {
        if let Some(mut s) = self.session.take() {
            if !s.used {
                return Ok(s);
            }
            match s.conn.command("RSET") {
                Ok(r) if r.code == 250 => return Ok(s),
                // Closed, 421 or confused: this connection is done; nothing was in flight.
                _ => s.conn.abandon(),
            }
        }
        self.open()
    }

    fn host_name(&self) -> String {
        match &self.target {
            LmtpTarget::Tcp { host, .. } => host.clone(),
            LmtpTarget::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    fn unavailable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "LMTP server {}: {}",
            self.target,
            sanitize::for_terminal(what)
        ))
    }
}

impl Drop for LmtpStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Deliverer for LmtpStore {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        if let Err(why) = wire::check_wire_address(delivery.sender.as_str()) {
            let reply = format!("sender cannot be sent over LMTP: {why}");
            return Ok(vec![
                wire::refused_locally(reply, "5.1.7");
                recipients.len()
            ]);
        }
        let mut session = self.ready_session()?;
        let smtputf8 = wire::needs_smtputf8(delivery, recipients);
        if smtputf8 && !session.caps.smtputf8 {
            let reply = format!(
                "the envelope has non-ASCII addresses and the LMTP server {} does not offer \
                 SMTPUTF8 (RFC 6531)",
                session.server
            );
            self.session = Some(session);
            return Ok(vec![
                wire::refused_locally(reply, "5.6.7");
                recipients.len()
            ]);
        }
        let mut tx = Transaction::new(&mut session, recipients.len());
        let keep = tx.run(delivery, recipients, smtputf8);
        let outcomes = tx.finish();
        session.used = true;
        if keep {
            self.session = Some(session);
        } else {
            session.conn.abandon();
        }
        Ok(outcomes)
    }
}

/// One message's conversation; fills one outcome slot per recipient.
struct Transaction<'s> {
    session: &'s mut Session,
    outcomes: Vec<Option<Outcome>>,
}

/// What to do after a step: go on, or stop and keep (or drop) the connection.
enum Flow {
    Next,
    Stop { keep: bool },
}

impl<'s> Transaction<'s> {
    fn new(session: &'s mut Session, recipients: usize) -> Transaction<'s> {
        Transaction {
            session,
            outcomes: vec![None; recipients],
        }
    }

    /// Runs the transaction; true when the connection can be used again.
    fn run(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
        smtputf8: bool,
    ) -> bool {
        if let Flow::Stop { keep } = self.mail(delivery, smtputf8) {
            return keep;
        }
        let accepted = match self.rcpts(recipients) {
            Ok(accepted) => accepted,
            Err(keep) => return keep,
        };
        if accepted.is_empty() {
            return self.reset();
        }
        if let Flow::Stop { keep } = self.data(delivery, &accepted) {
            return keep;
        }
        self.final_replies(&accepted)
    }

    fn mail(&mut self, delivery: &Delivery<'_>, smtputf8: bool) -> Flow {
        let params = wire::mail_params(delivery, &self.session.caps, smtputf8);
        let line = format!(
            "MAIL FROM:{}{}",
            delivery.sender,
            wire::format_params(&params)
        );
        match self.session.conn.command(&line) {
            Ok(r) if r.code == 250 => Flow::Next,
            Ok(r) => self.refuse_all(&r, "MAIL FROM"),
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at MAIL FROM"));
                Flow::Stop { keep: false }
            }
        }
    }

    /// RCPT for each recipient; `Ok(indexes accepted)`, or `Err(keep)` when the session ended.
    fn rcpts(&mut self, recipients: &[RecipientSpec<'_>]) -> Result<Vec<usize>, bool> {
        let mut accepted = Vec::new();
        for (i, spec) in recipients.iter().enumerate() {
            if let Err(why) = wire::check_wire_address(spec.address) {
                let reply = format!(
                    "recipient `{}` cannot be sent over LMTP: {why}",
                    sanitize::for_terminal(spec.address)
                );
                self.outcomes[i] = Some(wire::refused_locally(reply, "5.1.3"));
                continue;
            }
            let params = wire::rcpt_params(spec, &self.session.caps);
            let line = format!("RCPT TO:<{}>{}", spec.address, wire::format_params(&params));
            match self.session.conn.command(&line) {
                Ok(r) if r.code == 250 || r.code == 251 => accepted.push(i),
                Ok(r) if r.code == 421 => {
                    self.settle_rest(|server| wire::outcome_of(&r, server));
                    return Err(false);
                }
                Ok(r) if r.is_positive() => {
                    self.outcomes[i] = Some(wire::unexpected(&r, "RCPT TO", &self.session.server));
                }
                Ok(r) => self.outcomes[i] = Some(wire::outcome_of(&r, &self.session.server)),
                Err(e) => {
                    self.settle_rest(|_| lost(&e, "at RCPT TO"));
                    return Err(false);
                }
            }
        }
        Ok(accepted)
    }

    fn data(&mut self, delivery: &Delivery<'_>, accepted: &[usize]) -> Flow {
        match self.session.conn.command("DATA") {
            Ok(r) if r.code == 354 => {}
            Ok(r) => return self.refuse_all(&r, "DATA"),
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at DATA"));
                return Flow::Stop { keep: false };
            }
        }
        let body = wire::data_body(delivery.content);
        if let Err(e) = self.session.conn.write_all(&body) {
            // The final dot was never sent: the server cannot have delivered it.
            self.settle_rest(|_| lost(&e, "while sending the message"));
            return Flow::Stop { keep: false };
        }
        if let Err(e) = self.session.conn.write_all(wire::DATA_END) {
            self.uncertain_from(accepted, 0, &e);
            return Flow::Stop { keep: false };
        }
        Flow::Next
    }

    /// One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
    fn final_replies(&mut self, accepted: &[usize]) -> bool {
        let wait = self.session.conn.timeouts().data_end;
        let mut keep = true;
        for (n, &i) in accepted.iter().enumerate() {
            match self.session.conn.read_reply(wait) {
                Ok(r) => {
                    keep &= r.code != 421;
                    self.outcomes[i] = Some(match r.code {
                        300..400 => wire::unexpected(&r, "the final dot", &self.session.server),
                        _ => wire::outcome_of(&r, &self.session.server),
                    });
                }
                Err(e) => {
                    self.uncertain_from(accepted, n, &e);
                    return false;
                }
            }
        }
        keep
    }

    /// A refusal of the whole transaction (MAIL or DATA): every unsettled recipient gets it.
    fn refuse_all(&mut self, reply: &Reply, step: &str) -> Flow {
        if reply.is_positive() {
            self.settle_rest(|server| wire::unexpected(reply, step, server));
        } else {
            self.settle_rest(|server| wire::outcome_of(reply, server));
        }
        if reply.code == 421 {
            Flow::Stop { keep: false }
        } else {
            Flow::Stop { keep: self.reset() }
        }
    }

    /// RSET after an aborted transaction; true when the server took it.
    fn reset(&mut self) -> bool {
        matches!(self.session.conn.command("RSET"), Ok(r) if r.code == 250)
    }

    fn settle_rest(&mut self, outcome: impl Fn(&str) -> Outcome) {
        for slot in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(outcome(&self.session.server));
        }
    }

    /// The final dot went out, the replies from `accepted[from]` on did not come back.
    fn uncertain_from(&mut self, accepted: &[usize], from: usize, e: &WireError) {
        for &i in &accepted[from..] {
            self.outcomes[i] = Some(Outcome::Uncertain {
                reply: format!(
                    "no reply after the final dot ({e}): the server may have delivered it"
                ),
                remote: Some(self.session.server.clone()),
            });
        }
    }

    fn finish(self) -> Vec<Outcome> {
        let server = self.session.server.clone();
        self.outcomes
            .into_iter()
            .map(|o| {
                // Every path settles every slot; should one be missed, retrying is safe
                // because no final dot was sent for it.
                o.unwrap_or_else(|| Outcome::Deferred {
                    reply: "internal error: no outcome recorded".to_string(),
                    remote: Some(server.clone()),
                })
            })
            .collect()
    }
}

/// The connection broke before the final dot: nothing was delivered, try again later.
fn lost(e: &WireError, step: &str) -> Outcome {
    Outcome::Deferred {
        reply: format!("connection lost {step}: {e}"),
        remote: None,
    }
}

#[cfg(test)]
mod tests;
