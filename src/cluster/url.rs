//! The cluster's address: `redis://[USER:PASSWORD@]HOST[:PORT][/NAME]` (`rediss://` for TLS).
//!
//! The path names the cluster, not a Redis database number (as it would for the `redis`
//! crate), so several clusters can share one Redis. The password may come from
//! `SPOOLREPLAY_REDIS_PASSWORD` instead, so it need not be on the command line.

use std::fmt;
use std::str::FromStr;

/// Where the coordinator is, and which cluster on it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    tls: bool,
    host: String,
    port: u16,
    name: String,
    username: Option<String>,
    password: Option<String>,
}

/// Why a cluster address could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster address `{input}`: {reason} (expected redis://HOST[:PORT][/NAME])")]
pub struct ClusterUrlError {
    input: String,
    reason: &'static str,
}

impl ClusterUrl {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the password (from the environment), overriding one in the address.
    pub fn with_password(mut self, password: Option<String>) -> ClusterUrl {
        if password.is_some() {
            self.password = password;
        }
        self
    }

    pub(super) fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut info: redis::ConnectionInfo =
            format!("{scheme}://{host}:{}/0", self.port).parse()?;
        info.redis.username = self.username.clone();
        info.redis.password = self.password.clone();
        Ok(info)
    }
}

impl FromStr for ClusterUrl {
    type Err = ClusterUrlError;

    fn from_str(s: &str) -> Result<ClusterUrl, ClusterUrlError> {
        let fail = |reason| ClusterUrlError {
            // Never echo a password back.
            input: redact(s),
            reason,
        };
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err(fail("the scheme must be `redis://` or `rediss://`"));
        };
        let (authority, name) = match rest.split_once('/') {
            Some((a, n)) => (a, n),
            None => (rest, ""),
        };
        let name = if name.is_empty() { "default" } else { name };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(fail(
                "the cluster name may hold only letters, digits, `-`, `_` and `.`",
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (
                    (!user.is_empty()).then(|| user.to_string()),
                    (!pw.is_empty()).then(|| pw.to_string()),
                ),
                None => (None, (!u.is_empty()).then(|| u.to_string())),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(fail("the host is missing"));
        }
        let port = match port {
            None => 6379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| fail("the port must be a number from 1 to 65535"))?,
        };
        Ok(ClusterUrl {
            tls,
            host: host.to_string(),
            port,
            name: name.to_string(),
            username,
            password,
        })
    }
}

/// The address with any password replaced by `***`.
fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &s[..start + 3], &s[at..]),
        _ => s.to_string(),
    }
}

/// Shown without the password, for messages and `cluster status`.
impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}/{}", self.port, self.name)
    }
}

impl fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_port_name_and_password() {
        let u: ClusterUrl = "redis://:s3cret@10.0.0.5:6380/mx-recovery".parse().unwrap();
        assert_eq!(u.to_string(), "redis://10.0.0.5:6380/mx-recovery");
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert!(!u.tls);
        let u: ClusterUrl = "rediss://redis.example.net".parse().unwrap();
        assert_eq!(u.to_string(), "rediss://redis.example.net:6379/default");
        assert!(u.tls);
    }

    #[test]
    fn environment_password_wins_and_is_never_shown() {
        let u: ClusterUrl = "redis://:old@h/c".parse().unwrap();
        let u = u.with_password(Some("new".into()));
        assert_eq!(u.password.as_deref(), Some("new"));
        assert!(!format!("{u} {u:?}").contains("new"));
    }

    #[test]
    fn refuses_bad_addresses_without_echoing_the_password() {
        for bad in [
            "http://h",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/a/b",
        ] {
            assert!(bad.parse::<ClusterUrl>().is_err(), "{bad}");
        }
        let e = "redis://:pw@h:x/c".parse::<ClusterUrl>().unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }
}
