//! Where `run` delivers: the `--store` target (`maildir:DIR`, `lmtp://…`, `lmtp:/SOCKET`,
//! `smtp://…`, `imap://…`) parsed once, and the `host[:port]` syntax the network targets share.

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
