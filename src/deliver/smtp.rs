//! Delivery to an SMTP server, with per-recipient outcomes: `smtp://`, `smtp+starttls://`
//! and `smtps://` targets. Our own client, on the same `wire::Conn` and `transaction` as
//! LMTP: EHLO instead of LHLO, one reply after the final dot for every accepted recipient
//! (RFC 5321 has one reply per message, unlike LMTP), STARTTLS and SMTPS through rustls
//! (`tls`), AUTH PLAIN or LOGIN.
//!
//! Why not lettre (used until December 2026): it reads a reply line to its end before
//! checking its length (a server streaming a line without CRLF grew `run` to 6 GB), its
//! timeout is per read, not per reply (one byte a second held a run forever), a reply that
//! is not UTF-8 became "connection lost" and the message was retried, its greeting wait
//! used the connect timeout, its `ServerInfo` dropped DSN, and its errors kept only the
//! joined text of a reply. Our reader bounds every reply in bytes, lines and time.
//!
//! Credentials never come from the command line: `Credentials::from_env(&CREDENTIAL_VARS)`
//! reads `SPOOLREPLAY_SMTP_USER`/`SPOOLREPLAY_SMTP_PASSWORD`, or a `user:password` file
//! named by `SPOOLREPLAY_SMTP_CREDENTIALS`. They are refused over a connection without TLS.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::StoreError;
use super::reply::Reply;
use super::target::{CredentialVars, Credentials, Schemes};
use super::transaction::{self, Link, Protocol, Session};
use super::wire::{self, Capabilities, ClientOptions, Conn};
use crate::sanitize;

pub use super::target::Security;

/// `smtp://host[:port]` (25), `smtp+starttls://host[:port]` (25), `smtps://host[:port]` (465).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub security: Security,
    pub host: String,
    pub port: u16,
}

const SCHEMES: Schemes = Schemes {
    protocol: "SMTP",
    plain: "smtp",
    tls: "smtps",
    port: 25,
    tls_port: 465,
};

impl FromStr for SmtpTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<SmtpTarget, String> {
        let (security, host, port) = SCHEMES.parse(s)?;
        Ok(SmtpTarget {
            security,
            host,
            port,
        })
    }
}

impl fmt::Display for SmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SCHEMES.show(f, self.security, &self.host, self.port)
    }
}

/// A user name and password for SMTP AUTH (PLAIN or LOGIN).
pub type SmtpCredentials = Credentials;

/// Environment variables the credentials are read from.
pub const ENV_USER: &str = "SPOOLREPLAY_SMTP_USER";
pub const ENV_PASSWORD: &str = "SPOOLREPLAY_SMTP_PASSWORD";
pub const ENV_FILE: &str = "SPOOLREPLAY_SMTP_CREDENTIALS";
/// The three, for `Credentials::from_env`.
pub const CREDENTIAL_VARS: CredentialVars = CredentialVars {
    protocol: "SMTP",
    user: ENV_USER,
    password: ENV_PASSWORD,
    file: ENV_FILE,
};

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
    link: Link,
}

impl fmt::Debug for SmtpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpStore")
            .field("target", &self.target)
            .field("connected", &self.link.session.is_some())
            .finish()
    }
}

impl SmtpStore {
    /// Connects, says EHLO (and STARTTLS, AUTH as configured), so a wrong target or
    /// refused credentials are found before any mail is touched.
    pub fn connect(target: SmtpTarget, options: SmtpOptions) -> Result<SmtpStore, StoreError> {
        let mut store = SmtpStore {
            target,
            options,
            link: Link::default(),
        };
        store.link.session = Some(store.open()?);
        Ok(store)
    }

    fn open(&mut self) -> Result<Session, StoreError> {
        let timeouts = self.options.client.timeouts;
        let mut conn = Conn::tcp(&self.target.host, self.target.port, timeouts)
            .map_err(|e| self.unavailable(&e))?;
        self.link.opened += 1;
        if self.target.security == Security::Tls {
            conn = conn
                .start_tls(&self.target.host, self.options.insecure)
                .map_err(|e| self.unavailable(&e))?;
        }
        let greeting = conn.greeting().map_err(|e| self.unavailable(&e))?;
        if greeting.code != 220 {
            conn.abandon();
            return Err(self.unavailable(&format!("greeted with `{greeting}`")));
        }
        let mut ehlo = self.ehlo(&mut conn)?;
        if self.target.security == Security::StartTls {
            if !Capabilities::from_reply(&ehlo).starttls {
                conn.abandon();
                return Err(self.unavailable("the server does not offer STARTTLS"));
            }
            match conn.command("STARTTLS") {
                Ok(r) if r.code == 220 => {}
                Ok(r) => {
                    conn.abandon();
                    return Err(self.unavailable(&format!("STARTTLS answered `{r}`")));
                }
                Err(e) => return Err(self.unavailable(&format!("no answer to STARTTLS: {e}"))),
            }
            conn = conn
                .start_tls(&self.target.host, self.options.insecure)
                .map_err(|e| self.unavailable(&e))?;
            // RFC 3207 4.2: forget what was said before TLS, and ask again.
            ehlo = self.ehlo(&mut conn)?;
        }
        if let Some(credentials) = &self.options.credentials {
            self.authenticate(&mut conn, &ehlo, credentials)?;
        }
        Ok(Session {
            server: wire::server_name(&greeting)
                .or_else(|| wire::server_name(&ehlo))
                .unwrap_or_else(|| self.target.host.clone()),
            caps: Capabilities::from_reply(&ehlo),
            conn,
            used: false,
        })
    }

    /// EHLO, and HELO for a server that does not know EHLO (RFC 5321 3.2).
    fn ehlo(&self, conn: &mut Conn) -> Result<Reply, StoreError> {
        let name = &self.options.client.hello_name;
        let reply = conn
            .command(&format!("EHLO {name}"))
            .map_err(|e| self.unavailable(&format!("no answer to EHLO: {e}")))?;
        if reply.code == 250 {
            return Ok(reply);
        }
        if matches!(reply.code, 500..=502 | 504 | 550) {
            let helo = conn
                .command(&format!("HELO {name}"))
                .map_err(|e| self.unavailable(&format!("no answer to HELO: {e}")))?;
            if helo.code == 250 {
                return Ok(helo);
            }
        }
        Err(self.unavailable(&format!("EHLO answered `{reply}`")))
    }

    /// AUTH PLAIN (RFC 4616), else LOGIN, as the server offers; only over TLS unless
    /// `--insecure-tls`. The password never appears in an error.
    fn authenticate(
        &self,
        conn: &mut Conn,
        ehlo: &Reply,
        credentials: &SmtpCredentials,
    ) -> Result<(), StoreError> {
        if !conn.is_encrypted() && !self.options.insecure {
            return Err(self.unavailable(
                "refusing to send the SMTP password over a connection without TLS \
                 (use smtps:// or smtp+starttls://)",
            ));
        }
        let user = sanitize::for_terminal(&credentials.user);
        let failed = |step: &str, what: String| {
            self.unavailable(&format!("authentication as `{user}` failed {step}: {what}"))
        };
        let mechanisms = auth_mechanisms(ehlo);
        let last = if mechanisms.iter().any(|m| m == "PLAIN") {
            let token = format!("\0{}\0{}", credentials.user, credentials.password);
            conn.command(&format!("AUTH PLAIN {}", BASE64.encode(token)))
                .map_err(|e| failed("at AUTH PLAIN", e.to_string()))?
        } else if mechanisms.iter().any(|m| m == "LOGIN") {
            let mut reply = conn
                .command("AUTH LOGIN")
                .map_err(|e| failed("at AUTH LOGIN", e.to_string()))?;
            for (what, secret) in [
                ("user name", &credentials.user),
                ("password", &credentials.password),
            ] {
                if reply.code != 334 {
                    break;
                }
                reply = conn
                    .command(&BASE64.encode(secret))
                    .map_err(|e| failed(&format!("after the {what}"), e.to_string()))?;
            }
            reply
        } else {
            return Err(self.unavailable(&format!(
                "the server offers no AUTH PLAIN or LOGIN (it offers: {})",
                if mechanisms.is_empty() {
                    "nothing".to_string()
                } else {
                    sanitize::for_terminal(&mechanisms.join(" ")).into_owned()
                }
            )));
        };
        if last.code == 235 {
            Ok(())
        } else {
            Err(failed("", format!("`{last}`")))
        }
    }

    fn unavailable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "SMTP server {}: {}",
            self.target,
            sanitize::for_terminal(what)
        ))
    }
}

/// The SASL mechanisms of an EHLO reply's `AUTH` line (and the old `AUTH=` form),
/// upper-cased.
fn auth_mechanisms(ehlo: &Reply) -> Vec<String> {
    ehlo.lines
        .iter()
        .skip(1)
        .filter_map(|line| {
            let upper = line.to_ascii_uppercase();
            let rest = upper
                .strip_prefix("AUTH ")
                .or_else(|| upper.strip_prefix("AUTH="))?
                .to_string();
            Some(rest)
        })
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

transaction::client_store!(SmtpStore, Protocol::Smtp);

#[cfg(test)]
mod tests;
