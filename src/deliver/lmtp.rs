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

use super::StoreError;
use super::target::split_host_port;
use super::transaction::{self, Link, Protocol, Session};
use super::wire::{self, Capabilities, ClientOptions, Conn};
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
    link: Link,
}

impl LmtpStore {
    /// Connects, reads the greeting and sends LHLO, so a wrong target is found before any
    /// mail is touched.
    pub fn connect(target: LmtpTarget, options: ClientOptions) -> Result<LmtpStore, StoreError> {
        let mut store = LmtpStore {
            target,
            options,
            link: Link::default(),
        };
        store.link.session = Some(store.open()?);
        Ok(store)
    }

    fn open(&mut self) -> Result<Session, StoreError> {
        let timeouts = self.options.timeouts;
        let mut conn = match &self.target {
            LmtpTarget::Tcp { host, port } => Conn::tcp(host, *port, timeouts),
            LmtpTarget::Unix(path) => Conn::unix(path, timeouts),
        }
        .map_err(|e| self.unavailable(&e))?;
        self.link.opened += 1;
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

transaction::client_store!(LmtpStore, Protocol::Lmtp);

#[cfg(test)]
mod tests;
