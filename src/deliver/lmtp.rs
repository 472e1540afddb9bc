//! Delivery to an LMTP server (RFC 2033), such as Dovecot's `lmtp` service, over TCP or a
//! unix socket: our own client on top of `wire` (bytes, replies) and `reply`.
//!
//! One transaction per message (`transaction`, shared with SMTP): one reply per accepted
//! recipient after the final dot. The connection is kept for the next message; before
//! reusing it we send `RSET`, which both clears the state and proves the server is still
//! there (Dovecot drops idle clients after 5 minutes with a 421). A server that went away
//! between messages is reconnected to without loss.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::target::split_host_port;
use super::transaction::{self, Protocol, Session};
use super::wire::{self, Capabilities, ClientOptions, Conn};
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

/// A delivery store reached over LMTP.
#[derive(Debug)]
pub struct LmtpStore {
    target: LmtpTarget,
    options: ClientOptions,
    session: Option<Session>,
    connections: u64,
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
        let greeting = conn.greeting().map_err(|e| self.unavailable(&e))?;
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
        if let Some(refused) = transaction::refuse_sender(Protocol::Lmtp, delivery, recipients) {
            return Ok(refused);
        }
        let session = self.ready_session()?;
        let (outcomes, session) =
            transaction::deliver(session, Protocol::Lmtp, delivery, recipients);
        self.session = session;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests;
