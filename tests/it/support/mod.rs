//! Shared helpers for the integration tests: run the real binary in a temp dir, read its
//! JSON Lines, list files, snapshot the sample spool, and peek into the ledger.

#![allow(dead_code)] // each test module uses a different part

pub mod dovecot;
pub mod golden;
pub mod incident;
pub mod mailhost;
pub mod minispool;
pub mod postfix_queue;
pub mod prometheus;
pub mod redis;
pub mod sink;
pub mod smtp_peer;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use serde_json::Value;
use sha2::{Digest, Sha256};
use spoolreplay::ledger::{Ledger, MessageWork};

/// The fixed clock every classifying test uses (after the last arrival, so expiry applies).
pub const NOW: &str = "2023-01-28T06:00:00+01:00";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn sample_spool() -> PathBuf {
    fixtures().join("sample-spool")
}

pub fn incident() -> PathBuf {
    fixtures().join("incident.toml")
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Output {
    /// `None` when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every stdout line as JSON; fails the test on a line that is not.
    #[track_caller]
    pub fn json(&self) -> Vec<Value> {
        parse_json_lines(&self.stdout)
    }

    /// The JSON events of one `type`.
    #[track_caller]
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// The single JSON event of one `type`.
    #[track_caller]
    pub fn event(&self, kind: &str) -> Value {
        let mut all = self.events(kind);
        assert_eq!(
            all.len(),
            1,
            "expected one `{kind}` event\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        all.remove(0)
    }
}

#[track_caller]
pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Asserts the exit code, and that nothing panicked; shows the output on failure.
#[track_caller]
pub fn check(out: &Output, code: i32) {
    assert_eq!(
        out.code,
        Some(code),
        "exit code (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        out.signal,
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the binary panicked:\n{}",
        out.stderr
    );
}

/// The binary, run in a temp dir with its ledger there.
pub struct Cli {
    pub dir: tempfile::TempDir,
    pub ledger: PathBuf,
}

impl Cli {
    pub fn new() -> Cli {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = dir.path().join("ledger.db");
        Cli { dir, ledger }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/rel`.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for the binary with `--ledger` set, run in the temp dir.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spoolreplay"));
        cmd.current_dir(self.dir.path())
            .arg("--ledger")
            .arg(&self.ledger)
            .args(args)
            .env_remove("SPOOLREPLAY_CRASH_AT")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Output::from(cmd.output().expect("run spoolreplay"))
    }

    /// Starts the binary in the background with piped output; it is killed if the test
    /// ends (passes or fails) before waiting for it.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> ChildGuard {
        ChildGuard(Some(
            self.command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn spoolreplay"),
        ))
    }

    /// `--json ingest` of the sample spool, expected to succeed.
    #[track_caller]
    pub fn ingest_sample(&self) -> Output {
        let out = self.run(&[
            "--json".as_ref(),
            "ingest".as_ref(),
            sample_spool().as_os_str(),
        ]);
        check(&out, 0);
        out
    }

    /// The arguments of a `run` of the sample incident at `NOW` into `store/` and
    /// `outbox/` in the temp dir.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        self.run_args_with(&incident(), NOW, extra)
    }

    /// The arguments of a `--json run` of `incident` at `now` into `store/` (a Maildir)
    /// and `outbox/` in the temp dir, then `extra`.
    pub fn run_args_with(&self, incident: &Path, now: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--json".to_string(),
            "run".into(),
            "--incident".into(),
            incident.display().to_string(),
            "--store".into(),
            format!("maildir:{}", self.store().display()),
            "--outbox".into(),
            self.outbox().display().to_string(),
            "--now".into(),
            now.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub fn store(&self) -> PathBuf {
        self.at("store")
    }

    pub fn outbox(&self) -> PathBuf {
        self.at("outbox")
    }

    /// `--json status`, expected to succeed.
    #[track_caller]
    pub fn status(&self) -> Value {
        let out = self.run(&["--json", "status"]);
        check(&out, 0);
        out.event("status")
    }
}

/// Every file below `dir`, as paths relative to it (empty when `dir` is missing).
pub fn list_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("below root");
            out.insert(rel.to_string_lossy().into_owned());
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_hex(&bytes)
}

/// Path, size, mtime and SHA-256 of every file of a folder: equal snapshots prove that
/// nothing touched it.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime, String)> {
    let files = list_files(dir);
    assert!(
        !files.is_empty(),
        "nothing to snapshot in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let meta = std::fs::metadata(&path).expect("metadata");
            let mtime = meta.modified().expect("mtime");
            (rel, (meta.len(), mtime, sha256_file(&path)))
        })
        .collect()
}

/// One recipient as the ledger holds it, with what the tests ask of its message.
#[derive(Debug, Clone)]
pub struct LedgerRecipient {
    pub queue_id: String,
    pub source_path: String,
    pub sender: String,
    pub address: String,
    pub state: String,
    pub status: Option<String>,
    pub reply: Option<String>,
    /// The window of the last classification.
    pub window: Option<String>,
}

/// The ledger, opened the way `status` and `report` open it: read-only, no lock (a run may
/// hold it meanwhile), checked for damage. Tests read it through `Ledger`'s own read API,
/// never with SQL of their own, so a schema change touches the ledger module only.
#[track_caller]
pub fn read_ledger(ledger: &Path) -> Ledger {
    Ledger::open_read(ledger).expect("open ledger")
}

/// Every message in the ledger with all its recipients, in id order.
#[track_caller]
pub fn ledger_messages(ledger: &Path) -> Vec<MessageWork> {
    let mut out = Vec::new();
    read_ledger(ledger)
        .for_each_message(|message, recipients| {
            out.push(MessageWork {
                message: message.clone(),
                recipients: recipients.to_vec(),
            });
            Ok(())
        })
        .expect("read ledger");
    out
}

/// Every recipient in the ledger, in message order (read-only).
#[track_caller]
pub fn ledger_recipients(ledger: &Path) -> Vec<LedgerRecipient> {
    ledger_messages(ledger)
        .into_iter()
        .flat_map(|work| {
            let m = work.message;
            work.recipients.into_iter().map(move |r| LedgerRecipient {
                queue_id: m.queue_id.clone(),
                source_path: m.source.path.display().to_string(),
                sender: m.sender.as_str().to_string(),
                address: r.address,
                state: r.state.as_str().to_string(),
                status: r.status,
                reply: r.reply,
                window: m.window.clone(),
            })
        })
        .collect()
}

/// The message as the Maildir store writes it: CRLF turned into LF.
pub fn lf_normalized(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = bytes.iter().peekable();
    while let Some(&b) = it.next() {
        if b == b'\r' && it.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

/// A small deterministic PRNG (xorshift64*) for seeded delays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// How many seeded trials a kill drill runs: `ci` by default (what CI runs, at least 20
/// per command), or `SPOOLREPLAY_DRILL_TRIALS` for a slow, more thorough pass
/// (README, "Fault drills").
pub fn drill_trials(ci: usize) -> usize {
    match std::env::var("SPOOLREPLAY_DRILL_TRIALS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("SPOOLREPLAY_DRILL_TRIALS={v:?} is not a number")),
        Err(_) => ci,
    }
}

/// Lets `child` run for `delay`, then `kill -9`s it; asserts that it was still running
/// (a drill whose kill came after the end tests nothing). `what` names the trial.
#[track_caller]
pub fn kill_9_after(mut child: ChildGuard, delay: std::time::Duration, what: &str) {
    std::thread::sleep(delay);
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{what}: the process ended before the kill after {delay:?}"
    );
}

/// Runs `trial(0..n)` on `parallel` threads. The drills are paced runs that mostly wait on
/// the clock, so a few at a time keep the suite short without starving anyone; each trial
/// has its own ledger, store and seed (derived from its number, so a failure names a trial
/// that can be run alone). A panic in any trial fails the drill.
pub fn run_trials(n: usize, parallel: usize, trial: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let t = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if t >= n {
                            return;
                        }
                        trial(t);
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// Asserts that `status --json` shows no open work: every recipient delivered, bounced,
/// dropped or held, and every DSN written.
#[track_caller]
pub fn assert_settled(status: &Value) {
    for state in ["pending", "in_flight", "deferred", "failed"] {
        assert_eq!(status["states"][state], 0, "{state}: {status}");
    }
    assert_eq!(status["remaining"], 0, "{status}");
    assert_eq!(status["dsns_unwritten"], 0, "{status}");
}

/// What a finished run leaves behind, to compare an interrupted-and-resumed run with an
/// uninterrupted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every file of the Maildir store (names are deterministic).
    pub store: BTreeSet<String>,
    /// Every file of the outbox.
    pub outbox: BTreeSet<String>,
    /// Per DSN: queue id, envelope recipient, number of failed recipients.
    pub dsns: BTreeSet<(String, String, u64)>,
    /// `status --json` recipient counts per state.
    pub states: Value,
}

impl Outcome {
    #[track_caller]
    pub fn of(cli: &Cli) -> Outcome {
        let status = cli.status();
        assert_settled(&status);
        let bounces = cli.run(&["--json", "bounces"]);
        check(&bounces, 0);
        let dsns = bounces
            .events("dsn")
            .iter()
            .map(|d| {
                (
                    d["queue_id"].as_str().unwrap_or_default().to_string(),
                    d["to"].as_str().unwrap_or_default().to_string(),
                    d["recipients"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        Outcome {
            store: list_files(&cli.store()),
            outbox: list_files(&cli.outbox()),
            dsns,
            states: status["states"].clone(),
        }
    }
}

/// The outcome of one clean, uninterrupted run of the sample spool (computed once).
pub fn clean_outcome() -> &'static Outcome {
    static CLEAN: std::sync::OnceLock<Outcome> = std::sync::OnceLock::new();
    CLEAN.get_or_init(|| {
        let cli = Cli::new();
        cli.ingest_sample();
        let out = cli.run(&cli.run_args(&[]));
        check(&out, 0);
        let outcome = Outcome::of(&cli);
        assert!(outcome.store.len() > 250 && outcome.outbox.len() > 100);
        outcome
    })
}

/// A fresh temp dir whose ledger already holds the ingested sample spool (copied from one
/// ingest, so tests that need many ledgers do not ingest many times).
pub fn ingested() -> Cli {
    static LEDGER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let bytes = LEDGER.get_or_init(|| {
        let cli = Cli::new();
        cli.ingest_sample();
        assert!(
            !cli.at("ledger.db-wal").exists()
                || std::fs::metadata(cli.at("ledger.db-wal")).map_or(0, |m| m.len()) == 0,
            "the ingested ledger was not checkpointed"
        );
        std::fs::read(&cli.ledger).expect("read ledger")
    });
    let cli = Cli::new();
    std::fs::write(&cli.ledger, bytes).expect("write ledger");
    cli
}

/// A child process stopped (SIGKILL) and reaped when the guard goes, so a failing test
/// leaves nothing running.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// `Child::wait_with_output`, taking the child out of the guard.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0
            .take()
            .expect("the child was already waited for")
            .wait_with_output()
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("the child was already waited for")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child was already waited for")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (`"TERM"`, `"HUP"`, `"INT"`) to `pid` with kill(1).
#[track_caller]
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// How the stderr of a signalled command is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Read to the end.
    Kept,
    /// Closed by the test just before the signal, so every later write there fails
    /// (EPIPE), as when an ssh session drops and SIGHUP follows.
    Gone,
}

/// Starts `cmd` with stdout into `stdout_file`, waits until its stderr shows `ready` (a
/// line the command prints once its signal handlers are in place), lets it run for
/// `delay`, then sends `signal`; returns what it did. The child is stopped if the test
/// fails on the way.
#[track_caller]
pub fn signal_after(
    mut cmd: Command,
    stdout_file: &Path,
    ready: &str,
    delay: std::time::Duration,
    signal: &str,
    stderr: Stderr,
) -> Output {
    use std::io::{BufRead, Read};
    let out = std::fs::File::create(stdout_file).expect("stdout file");
    let mut guard = ChildGuard(Some(
        cmd.stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spoolreplay"),
    ));
    let child = guard.0.as_mut().expect("child");
    let pid = child.id();
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut seen = String::new();
    while !seen.contains(ready) {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "the command ended before printing `{ready}`: {seen}");
        seen.push_str(&line);
    }
    let rest = match stderr {
        Stderr::Gone => {
            drop(err);
            None
        }
        Stderr::Kept => Some(std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        })),
    };
    std::thread::sleep(delay);
    send_signal(pid, signal);
    let status = guard.wait().expect("wait for the command");
    if let Some(rest) = rest {
        seen.push_str(&rest.join().expect("stderr reader"));
    }
    Output {
        code: status.code(),
        signal: status.signal(),
        stdout: std::fs::read_to_string(stdout_file).expect("read stdout file"),
        stderr: seen,
    }
}

/// Processes whose command line or working directory is under `dir` (`pid: command`):
/// what a test's peers left running there. Read from /proc.
pub fn processes_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cwd = std::fs::read_link(e.path().join("cwd"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            (cmdline.contains(&dir) || cwd.starts_with(&dir)).then(|| {
                format!(
                    "{}: {} (in {cwd})",
                    e.file_name().to_string_lossy(),
                    cmdline.trim()
                )
            })
        })
        .collect()
}
