//! A throw-away Dovecot with a user list chosen by the test (the sample spool's mailboxes,
//! some left out, one with a tiny quota), for the run-level LMTP tests. `support::dovecot`
//! serves the backend tests with four fixed users; this one serves `spoolreplay run`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged owner of delivered mail.
const MAIL_UID: u32 = 5000;
/// The name Dovecot greets with (and so the DSNs' `Remote-MTA`).
pub const HOSTNAME: &str = "store.example.test";

/// One mailbox Dovecot knows.
#[derive(Debug, Clone)]
pub struct User {
    /// Lowercased `local@domain`.
    pub address: String,
    /// A Dovecot quota rule value (`1K`), or none.
    pub quota: Option<String>,
}

impl User {
    pub fn new(address: &str) -> User {
        User {
            address: address.to_ascii_lowercase(),
            quota: None,
        }
    }

    pub fn with_quota(address: &str, quota: &str) -> User {
        User {
            quota: Some(quota.to_string()),
            ..User::new(address)
        }
    }
}

pub struct MailHost {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pub port: u16,
}

impl MailHost {
    /// Starts Dovecot (LMTP on a loopback port and a unix socket) knowing `users`, with
    /// `quota_full_tempfail = yes` so a full mailbox answers 452 4.2.2.
    #[track_caller]
    pub fn start(users: &[User]) -> MailHost {
        assert!(
            has_dovecot(),
            "dovecot is not installed: apt-get install -y dovecot-core dovecot-lmtpd \
             (the run-level LMTP tests need a real Dovecot)"
        );
        let dir = tempfile::tempdir().expect("temp dir for dovecot");
        // Dovecot's processes run as other users: they must reach the folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let root = dir.path();
        let mail = root.join("mail");
        std::fs::create_dir(&mail).expect("mail folder");
        std::os::unix::fs::chown(&mail, Some(MAIL_UID), Some(MAIL_UID)).expect("chown mail folder");
        let port = free_port();
        std::fs::write(root.join("users"), users_file(users)).expect("users file");
        let conf = root.join("dovecot.conf");
        std::fs::write(&conf, config(root, port)).expect("dovecot.conf");
        let stderr = std::fs::File::create(root.join("dovecot.stderr")).expect("stderr file");
        let stdout = stderr.try_clone().expect("stderr file");
        // Dovecot's log child keeps stdout/stderr open: never a pipe.
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .expect("run dovecot");
        let host = MailHost { dir, conf, port };
        assert!(
            status.success(),
            "dovecot did not start: {}",
            host.diagnostics()
        );
        host.wait_ready();
        host
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `lmtp://127.0.0.1:PORT`.
    pub fn tcp_store(&self) -> String {
        format!("lmtp://127.0.0.1:{}", self.port)
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
        std::fs::read_to_string(self.root().join("dovecot.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let stderr =
            std::fs::read_to_string(self.root().join("dovecot.stderr")).unwrap_or_default();
        format!("stderr: {stderr}\nlog: {}", self.log())
    }

    /// Until LMTP greets on the TCP port.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "dovecot LMTP did not answer within 10 s: {}",
            self.diagnostics()
        );
    }
}

impl Drop for MailHost {
    fn drop(&mut self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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

fn users_file(users: &[User]) -> String {
    users
        .iter()
        .map(|u| match &u.quota {
            Some(q) => format!(
                "{}:{{PLAIN}}secret::::::userdb_quota_rule=*:storage={q}\n",
                u.address
            ),
            None => format!("{}:{{PLAIN}}secret::::::\n", u.address),
        })
        .collect()
}

fn config(root: &Path, port: u16) -> String {
    let r = root.display();
    format!(
        "protocols = lmtp
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
ssl = no
listen = 127.0.0.1
hostname = {HOSTNAME}
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = quota
mail_fsync = never
quota_full_tempfail = yes
passdb {{
  driver = passwd-file
  args = {r}/users
}}
userdb {{
  driver = passwd-file
  args = {r}/users
  default_fields = uid={MAIL_UID} gid={MAIL_UID} home={r}/mail/%d/%n
}}
plugin {{
  quota = count:User quota
  quota_vsizes = yes
}}
service lmtp {{
  process_min_avail = 1
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"
    )
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

fn has_dovecot() -> bool {
    Command::new("dovecot")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
