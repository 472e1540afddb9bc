//! The Dovecot of `support::dovecot` as the run-level LMTP tests use it: a user list
//! chosen by the test (the sample spool's mailboxes, some left out, one with a tiny
//! quota), store targets as `--store` strings, and helpers to compare stored mail.

use std::path::{Path, PathBuf};

use super::dovecot::Dovecot;
pub use super::dovecot::{HOSTNAME, User};

pub struct MailHost {
    dovecot: Dovecot,
}

impl MailHost {
    /// Starts Dovecot (LMTP on a loopback port and a unix socket) knowing `users`.
    #[track_caller]
    pub fn start(users: &[User]) -> MailHost {
        MailHost {
            dovecot: Dovecot::start_with(users),
        }
    }

    /// As `start`, plus IMAP with a master user (`imap_store`, `imap_env`).
    #[track_caller]
    pub fn start_imap(users: &[User]) -> MailHost {
        MailHost {
            dovecot: Dovecot::start_imap_with(users),
        }
    }

    pub fn root(&self) -> &Path {
        self.dovecot.root()
    }

    /// `imap://127.0.0.1:PORT` (only after `start_imap`).
    pub fn imap_store(&self) -> String {
        let port = self.dovecot.imap_port.expect("started with start_imap");
        format!("imap://127.0.0.1:{port}")
    }

    /// The environment giving `run` the master user's credentials.
    pub fn imap_env() -> [(&'static str, &'static str); 2] {
        [
            ("SPOOLREPLAY_IMAP_USER", super::dovecot::MASTER_USER),
            ("SPOOLREPLAY_IMAP_PASSWORD", super::dovecot::MASTER_PASSWORD),
        ]
    }

    pub fn imap_port(&self) -> u16 {
        self.dovecot.imap_port.expect("started with start_imap")
    }

    /// `lmtp://127.0.0.1:PORT`.
    pub fn tcp_store(&self) -> String {
        format!("lmtp://127.0.0.1:{}", self.dovecot.port)
    }

    /// `lmtp:/…/run/lmtp`.
    pub fn socket_store(&self) -> String {
        format!("lmtp:{}", self.root().join("run").join("lmtp").display())
    }

    /// Every file delivered to `address` (`new/` and `cur/`), sorted by path.
    pub fn delivered(&self, address: &str) -> Vec<Vec<u8>> {
        let lower = address.to_ascii_lowercase();
        let Some((user, domain)) = lower.split_once('@') else {
            return Vec::new();
        };
        let maildir = self
            .root()
            .join("mail")
            .join(domain)
            .join(user)
            .join("Maildir");
        let mut paths: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
            .flatten()
            .map(|e| e.expect("dir entry").path())
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("read delivered file"))
            .collect()
    }

    pub fn log(&self) -> String {
        self.dovecot.log()
    }

    /// The store goes away mid-run…
    pub fn stop(&self) {
        self.dovecot.stop();
    }

    /// …and comes back on the same port.
    pub fn restart(&self) {
        self.dovecot.restart();
    }
}

/// The message as stored, without the trace headers Dovecot's LMTP prepends: one
/// `Return-Path:`, one `Delivered-To:` (only when the transaction had one recipient: it
/// would disclose the others) and one `Received:` with its folded lines, in that order.
/// The original's own trace headers stay. `None` when they are not there.
pub fn without_trace(stored: &[u8]) -> Option<&[u8]> {
    let mut rest = stored;
    for name in ["Return-Path:", "Delivered-To:", "Received:"] {
        if !rest.starts_with(name.as_bytes()) {
            if name == "Delivered-To:" {
                continue;
            }
            return None;
        }
        loop {
            let end = rest.iter().position(|&b| b == b'\n')? + 1;
            rest = &rest[end..];
            if !rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                break;
            }
        }
    }
    Some(rest)
}

/// The original as Dovecot stores it: LF line ends, and a final line end if it had none.
pub fn as_stored(original: &[u8]) -> Vec<u8> {
    let mut out = super::lf_normalized(original);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}
