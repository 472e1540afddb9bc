//! A throw-away Dovecot (LMTP on a loopback port and a unix socket) for the LMTP tests,
//! configured in its own temp folder. `.ci/run` installs Dovecot's packages; a test that
//! finds none fails with the reason and the command that installs them: it never skips.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spoolreplay::deliver::lmtp::LmtpTarget;

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

pub struct Dovecot {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pub port: u16,
    /// IMAP on a loopback port, with master user `MASTER_USER` (`start_imap_with`).
    pub imap_port: Option<u16>,
    /// In this instance's greetings (`login_greeting`), so `wait_ready` knows that what
    /// answers on the ports is this instance and not another that holds them.
    token: String,
    /// The master process, run in the foreground (`-F`) as our child: it stays in the
    /// suite's process group, so even a Ctrl-C of the whole suite, which skips `Drop`,
    /// stops it; a daemonized master would be left running.
    master: Mutex<Option<Child>>,
}

impl Dovecot {
    /// Starts a Dovecot with users alice, bob, carol and `full` (20K quota, tempfail).
    #[track_caller]
    pub fn start() -> Dovecot {
        Dovecot::start_with(&[
            User::new("alice@example.test"),
            User::new("bob@example.test"),
            User::new("carol@example.test"),
            User::with_quota("full@example.test", "20K"),
        ])
    }

    /// Starts a Dovecot knowing `users`, with `quota_full_tempfail = yes` so a full
    /// mailbox answers 452 4.2.2.
    #[track_caller]
    pub fn start_with(users: &[User]) -> Dovecot {
        Dovecot::start_inner(users, false, true)
    }

    /// Starts a Dovecot knowing `users` with Dovecot's default `quota_full_tempfail = no`:
    /// a full mailbox answers `552 5.2.2 … Quota exceeded (mailbox for user is full)`.
    #[track_caller]
    pub fn start_hard_quota(users: &[User]) -> Dovecot {
        Dovecot::start_inner(users, false, false)
    }

    /// As `start_with`, plus IMAP on another loopback port with a master user
    /// (`MASTER_USER`/`MASTER_PASSWORD`, separator `*`), as an IMAP store is set up.
    #[track_caller]
    pub fn start_imap_with(users: &[User]) -> Dovecot {
        Dovecot::start_inner(users, true, true)
    }

    #[track_caller]
    fn start_inner(users: &[User], imap: bool, tempfail: bool) -> Dovecot {
        Dovecot::start_on(users, imap, tempfail, None)
    }

    /// As `start_inner`; the first attempt on `ports` (LMTP, IMAP) when given, as a test
    /// of a taken port asks. A port picked free can be taken by another process before
    /// Dovecot binds it (another test's Dovecot, a client's source port): Dovecot then
    /// dies a little later, and meanwhile the port answers with the other process's
    /// greeting. So the instance is ready only when both ports greet with this instance's
    /// token; otherwise it starts again on other ports.
    #[track_caller]
    fn start_on(
        users: &[User],
        imap: bool,
        tempfail: bool,
        mut ports: Option<(u16, Option<u16>)>,
    ) -> Dovecot {
        ensure_installed();
        let dir = tempfile::tempdir().expect("temp dir for dovecot");
        // Dovecot's processes run as other users: they must reach the folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let root = dir.path();
        let mail = root.join("mail");
        std::fs::create_dir(&mail).expect("mail folder");
        std::os::unix::fs::chown(&mail, Some(MAIL_UID), Some(MAIL_UID)).expect("chown mail folder");
        std::fs::write(root.join("users"), users_file(users)).expect("users file");
        std::fs::write(
            root.join("masters"),
            format!("{MASTER_USER}:{{PLAIN}}{MASTER_PASSWORD}::::::\n"),
        )
        .expect("masters file");
        let conf = root.join("dovecot.conf");
        let token = root
            .file_name()
            .expect("temp dir name")
            .to_string_lossy()
            .trim_start_matches('.')
            .to_string();
        let mut d = Dovecot {
            dir,
            conf,
            port: 0,
            imap_port: None,
            token,
            master: Mutex::new(None),
        };
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let (port, imap_port) = ports
                .take()
                .unwrap_or_else(|| (free_port(), imap.then(free_port)));
            d.port = port;
            d.imap_port = imap_port;
            let mut text = config(d.root(), port, imap_port, &d.token);
            if !tempfail {
                text = text.replace("quota_full_tempfail = yes", "quota_full_tempfail = no");
            }
            std::fs::write(&d.conf, text).expect("dovecot.conf");
            match d.launch() {
                Ok(()) => return d,
                Err(why) => {
                    d.shut_down();
                    taken.push(why);
                }
            }
        }
        panic!("dovecot found its ports taken {START_ATTEMPTS} times: {taken:?}");
    }

    /// Starts the master with this instance's config and waits until it answers on its
    /// ports; `Err` when another process holds one of them.
    #[track_caller]
    fn launch(&self) -> Result<(), String> {
        let root = self.root();
        let stderr = std::fs::File::create(root.join("dovecot.stderr")).expect("stderr file");
        let stdout = stderr.try_clone().expect("stderr file");
        // Dovecot's log child keeps stdout/stderr open: never a pipe.
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("run dovecot");
        *self.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
    }

    /// Asks the master to stop and waits until it has (`kill -9` after 10 s).
    fn shut_down(&self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let Some(mut child) = self.master.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let until = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the daemon (the store goes away); `restart` brings it back on the same port,
    /// with the same mailboxes.
    #[track_caller]
    pub fn stop(&self) {
        self.shut_down();
        // Until nothing listens any more.
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < until, "dovecot still listens after stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Comes back on the same ports (a test of a store that goes away and comes back
    /// needs them); one taken meanwhile fails the test, with the reason.
    #[track_caller]
    pub fn restart(&self) {
        if let Err(why) = self.launch() {
            panic!("dovecot cannot come back on its ports: {why}");
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn tcp_target(&self) -> LmtpTarget {
        LmtpTarget::Tcp {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    pub fn socket_target(&self) -> LmtpTarget {
        LmtpTarget::Unix(self.root().join("run").join("lmtp"))
    }

    /// `mail/<domain>/<user>/Maildir/new`.
    pub fn new_dir(&self, address: &str) -> PathBuf {
        let (user, domain) = address.split_once('@').expect("user@domain");
        self.root()
            .join("mail")
            .join(domain)
            .join(user)
            .join("Maildir")
            .join("new")
    }

    /// The files delivered to `address` (in `new/`), sorted by name.
    pub fn delivered(&self, address: &str) -> Vec<Vec<u8>> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(self.new_dir(address)) {
            Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
            Err(_) => Vec::new(),
        };
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("read delivered file"))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("dovecot.log")).unwrap_or_default()
    }

    /// The log once it holds `what` at least `n` times (Dovecot's log process writes a
    /// little after the event), or as it is after 10 s.
    pub fn log_when(&self, what: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches(what).count() >= n || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn diagnostics(&self) -> String {
        let stderr =
            std::fs::read_to_string(self.root().join("dovecot.stderr")).unwrap_or_default();
        format!("stderr: {stderr}\nlog: {}", self.log())
    }

    /// Until LMTP (and IMAP, if configured) greet on their ports with this instance's
    /// token (a fresh start takes well under a second). `Err` when a port is another
    /// process's: it greets without our token, or our master died of a taken port.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.imap_port).collect();
        let mut ready = vec![false; ports.len()];
        while Instant::now() < deadline {
            if let Some(child) = self
                .master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let diagnostics = self.diagnostics();
                if diagnostics.contains("Address already in use") {
                    return Err(format!("a port of {ports:?} was in use: {diagnostics}"));
                }
                panic!("dovecot exited ({status}): {diagnostics}");
            }
            for (port, ready) in ports.iter().zip(ready.iter_mut()) {
                if *ready {
                    continue;
                }
                let Some(greeting) = greeting(*port) else {
                    continue;
                };
                if !greeting.contains(&self.token) {
                    return Err(format!(
                        "port {port} answers for another process: {greeting:?}"
                    ));
                }
                *ready = true;
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "dovecot did not answer on {ports:?} within 10 s: {}",
            self.diagnostics()
        );
    }
}

/// How many times a Dovecot is started on fresh ports when it finds one taken.
const START_ATTEMPTS: usize = 5;

/// The first line a server on `port` sends, if one answers.
fn greeting(port: u16) -> Option<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.shut_down();
    }
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

/// The IMAP master user (`start_imap_with`).
pub const MASTER_USER: &str = "replay";
pub const MASTER_PASSWORD: &str = "masterpw";

fn config(root: &Path, port: u16, imap_port: Option<u16>, token: &str) -> String {
    let r = root.display();
    let imap = match imap_port {
        None => String::new(),
        // The master passdb first; `pass = yes` makes the user's own passdb confirm the
        // user exists, so an unknown mailbox is refused.
        Some(p) => format!(
            "protocols = $protocols imap
disable_plaintext_auth = no
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {r}/masters
  pass = yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"
        ),
    };
    format!(
        "protocols = lmtp
{imap}base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
login_greeting = Dovecot ready ({token}).
info_log_path = {r}/dovecot.log
ssl = no
listen = 127.0.0.1
hostname = {HOSTNAME}
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = quota
# Test mail need not survive a power cut; fsync per delivery only slows the tests.
mail_fsync = never
quota_full_tempfail = yes
recipient_delimiter = +
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

/// Fails the test, naming the packages, if `dovecot` is not on PATH: installing system
/// packages is `.ci/run`'s job, not a test's.
#[track_caller]
fn ensure_installed() {
    assert!(
        has_dovecot(),
        "dovecot is not installed: run `.ci/run`, or `apt-get install -y dovecot-core \
         dovecot-lmtpd dovecot-imapd`"
    );
}

fn has_dovecot() -> bool {
    Command::new("dovecot")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Dovecot whose port is held by another Dovecot must not take that one's greeting for
/// its own (the other's mailboxes would get its mail: a drill once counted every copy
/// twice that way): it starts again on free ports and answers there itself.
#[test]
fn a_dovecot_whose_port_is_taken_starts_on_other_ports() {
    let first = Dovecot::start_imap_with(&[User::new("alice@example.test")]);
    let first_imap = first.imap_port.expect("imap port");
    for ports in [
        (first.port, Some(free_port())),
        (free_port(), Some(first_imap)),
    ] {
        let second = Dovecot::start_on(&[User::new("bob@example.test")], true, true, Some(ports));
        let second_imap = second.imap_port.expect("imap port");
        assert_ne!(second.port, first.port, "{ports:?}");
        assert_ne!(second_imap, first_imap, "{ports:?}");
        for port in [second.port, second_imap] {
            let hello = greeting(port).expect("a greeting");
            assert!(hello.contains(&second.token), "{port}: {hello}");
        }
        // The first still answers for itself.
        assert!(greeting(first.port).is_some_and(|g| g.contains(&first.token)));
    }
}
