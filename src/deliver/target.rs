//! Where `run` delivers: the `--store` target (`maildir:DIR`, `lmtp://…`, `lmtp:/SOCKET`,
//! `smtp://…`, `imap://…`) parsed once; what the network targets share: the `host[:port]`
//! syntax, the three schemes of a protocol (`Security`, `Schemes`), and credentials read
//! from the environment (`Credentials`).

use std::fmt;
use std::path::PathBuf;

use super::imap::ImapTarget;
use super::lmtp::LmtpTarget;
use super::smtp::SmtpTarget;

/// Where `run` delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Maildir(PathBuf),
    Lmtp(LmtpTarget),
    Smtp(SmtpTarget),
    Imap(ImapTarget),
}

impl StoreTarget {
    pub fn parse(s: &str) -> Result<StoreTarget, String> {
        if let Some(dir) = s.strip_prefix("maildir:") {
            if dir.is_empty() {
                return Err("`maildir:` needs a folder, e.g. maildir:/srv/restored".into());
            }
            return Ok(StoreTarget::Maildir(PathBuf::from(dir)));
        }
        let scheme = s.split(':').next().unwrap_or("");
        match scheme {
            "lmtp" => s.parse().map(StoreTarget::Lmtp),
            "smtp" | "smtps" | "smtp+starttls" => s.parse().map(StoreTarget::Smtp),
            "imap" | "imaps" | "imap+starttls" => s.parse().map(StoreTarget::Imap),
            _ => Err(format!(
                "`{s}` is not a store target; expected maildir:DIR, lmtp://HOST[:PORT], \
                 lmtp:/SOCKET, smtp://HOST[:PORT], smtp+starttls://…, smtps://…, \
                 imap://HOST[:PORT], imap+starttls://… or imaps://…"
            )),
        }
    }
}

impl std::fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreTarget::Maildir(dir) => write!(f, "maildir:{}", dir.display()),
            StoreTarget::Lmtp(t) => write!(f, "{t}"),
            StoreTarget::Smtp(t) => write!(f, "{t}"),
            StoreTarget::Imap(t) => write!(f, "{t}"),
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (nothing after: no path, user or query).
pub(super) fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
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

/// How a network store's connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`, `imap://`: no TLS.
    Plain,
    /// `smtp+starttls://`, `imap+starttls://`: STARTTLS is required; a server without it
    /// is refused.
    StartTls,
    /// `smtps://`, `imaps://`: TLS from the first byte (RFC 8314).
    Tls,
}

/// The three schemes of one protocol's targets and their default ports.
pub(super) struct Schemes {
    /// `SMTP`, `IMAP`: for messages.
    pub(super) protocol: &'static str,
    /// `smtp`: the scheme without TLS; `{plain}+starttls` and `tls` are the others.
    pub(super) plain: &'static str,
    pub(super) tls: &'static str,
    /// The port without TLS (and with STARTTLS), and with TLS.
    pub(super) port: u16,
    pub(super) tls_port: u16,
}

impl Schemes {
    /// `SCHEME://host[:port]` → security, host, port.
    pub(super) fn parse(&self, s: &str) -> Result<(Security, String, u16), String> {
        let after = |scheme: &str| s.strip_prefix(scheme)?.strip_prefix("://");
        let starttls = format!("{}+starttls", self.plain);
        let (security, authority, default) = if let Some(a) = after(self.plain) {
            (Security::Plain, a, self.port)
        } else if let Some(a) = after(&starttls) {
            (Security::StartTls, a, self.port)
        } else if let Some(a) = after(self.tls) {
            (Security::Tls, a, self.tls_port)
        } else {
            return Err(format!(
                "`{s}` is not an {} target ({}://, {starttls}:// or {}://host[:port])",
                self.protocol, self.plain, self.tls
            ));
        };
        let (host, port) = split_host_port(authority, default)
            .map_err(|e| format!("bad {} target `{s}`: {e}", self.protocol))?;
        Ok((security, host, port))
    }

    /// The target as it parses again (`[…]` around an IPv6 host).
    pub(super) fn show(
        &self,
        f: &mut fmt::Formatter<'_>,
        security: Security,
        host: &str,
        port: u16,
    ) -> fmt::Result {
        match security {
            Security::Plain => write!(f, "{}://", self.plain)?,
            Security::StartTls => write!(f, "{}+starttls://", self.plain)?,
            Security::Tls => write!(f, "{}://", self.tls)?,
        }
        show_host_port(f, host, port)
    }
}

fn show_host_port(f: &mut fmt::Formatter<'_>, host: &str, port: u16) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]:{port}")
    } else {
        write!(f, "{host}:{port}")
    }
}

/// A user name and password for a store (SMTP AUTH, an IMAP master user); the password
/// is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// The environment variables one protocol's credentials are read from.
#[derive(Debug, Clone, Copy)]
pub struct CredentialVars {
    /// `SMTP`, `IMAP`: for messages.
    pub protocol: &'static str,
    pub user: &'static str,
    pub password: &'static str,
    /// Names a file whose first line is `user:password`; wins over the pair.
    pub file: &'static str,
}

impl Credentials {
    /// From the process environment; `Ok(None)` when none are set.
    pub fn from_env(vars: &CredentialVars) -> Result<Option<Credentials>, String> {
        Credentials::from_vars(vars, |k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass their own). The file wins over the pair.
    pub fn from_vars(
        vars: &CredentialVars,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, String> {
        let CredentialVars {
            protocol,
            user,
            password,
            file,
        } = *vars;
        if let Some(path) = var(file).filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {protocol} credentials file `{path}`: {e}"))?;
            let line = text.lines().next().unwrap_or("");
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!(
                    "{protocol} credentials file `{path}` must hold `user:password` on its \
                     first line"
                ));
            };
            return Ok(Some(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }));
        }
        match (var(user), var(password)) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => Ok(Some(Credentials { user, password })),
            _ => Err(format!(
                "set both {user} and {password}, or neither (or use {file})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_targets() {
        assert_eq!(
            StoreTarget::parse("maildir:/srv/x"),
            Ok(StoreTarget::Maildir("/srv/x".into()))
        );
        assert!(StoreTarget::parse("maildir:").is_err());
        assert!(matches!(
            StoreTarget::parse("lmtp://127.0.0.1:24"),
            Ok(StoreTarget::Lmtp(_))
        ));
        assert!(matches!(
            StoreTarget::parse("lmtp:/run/dovecot/lmtp"),
            Ok(StoreTarget::Lmtp(_))
        ));
        assert!(matches!(
            StoreTarget::parse("smtp+starttls://mx.example.net"),
            Ok(StoreTarget::Smtp(_))
        ));
        assert!(StoreTarget::parse("ftp://x").is_err());
        assert!(StoreTarget::parse("/srv/x").is_err());
    }
}
