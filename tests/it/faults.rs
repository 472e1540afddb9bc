//! Fault drills (issue 7): a store that fills up, a ledger that is newer, corrupted or in
//! use, hostile spools at volume, and `kill -9` at random moments of `ingest`. Seeded and
//! bounded in time; each leaves nothing behind (mounts are undone in `Drop`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::incident::TestIncident;
use crate::support::postfix_queue::record;
use crate::support::{
    Cli, Outcome, Rng, check, clean_outcome, drill_trials, ingested, ledger_messages,
    ledger_recipients, list_files, read_ledger, sample_spool, sha256_file,
};

const SIGKILL: i32 = 9;

// ---------------------------------------------------------------------------------------
// Disk full

/// A size-limited tmpfs mounted on a folder for the length of a test (needs root: the test
/// fails, never skips, where it cannot mount, so CI cannot silently lose the drill).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    #[track_caller]
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "the disk-full drill needs a small filesystem: `mount -t tmpfs -o size={size} tmpfs {}` \
             failed (run the tests as root, or in a container allowed to mount): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a killed child): detach it so the temp dir can go.
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Fills the filesystem holding `dir` so that about `free` bytes stay free; returns the
/// filler's path (delete it to free the space again).
fn fill_leaving(dir: &Path, free: usize) -> PathBuf {
    let reserve = dir.join("reserve.fill");
    std::fs::write(&reserve, vec![0u8; free]).expect("write the reserve");
    let filler = dir.join("filler.fill");
    let mut f = std::fs::File::create(&filler).expect("create the filler");
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: full
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    // Single pages may still fit: take them too.
    let page = [0u8; 4096];
    while f.write(&page).is_ok_and(|n| n > 0) {}
    drop(f);
    std::fs::remove_file(&reserve).expect("remove the reserve");
    filler
}

/// Checks every `delivered` recipient against the store: the file its outcome names
/// exists under the store, in `new/`, and is complete (as long as the message it holds).
#[track_caller]
fn assert_delivered_are_on_disk(cli: &Cli) -> usize {
    let store = std::fs::canonicalize(cli.store()).expect("store path");
    let mut delivered = 0;
    for r in ledger_recipients(&cli.ledger) {
        if r.state != "delivered" {
            continue;
        }
        delivered += 1;
        let detail = r.reply.as_deref().unwrap_or_default();
        let path = Path::new(detail.rsplit(": ").next().unwrap_or(detail));
        assert!(
            path.starts_with(&store),
            "{} is delivered but its outcome names no file in the store: {detail:?}",
            r.address
        );
        let meta = std::fs::metadata(path).unwrap_or_else(|e| {
            panic!(
                "{} is delivered but {} is missing: {e}",
                r.address,
                path.display()
            )
        });
        // The stored copy is the delivery headers and the spooled `.eml` with LF ends.
        let spooled = std::fs::read(&r.source_path).expect("read the spooled message");
        let header = format!("Return-Path: <{}>\nDelivered-To: {}\n", r.sender, r.address);
        let size = (header.len() + crate::support::lf_normalized(&spooled).len()) as u64;
        assert_eq!(
            meta.len(),
            size,
            "{} is delivered but {} is incomplete",
            r.address,
            path.display()
        );
    }
    delivered
}

/// No half-written copy is left in any `tmp/` of the store.
#[track_caller]
fn assert_no_tmp_leftovers(store: &Path) {
    let left: Vec<String> = list_files(store)
        .into_iter()
        .filter(|f| f.contains("/Maildir/tmp/"))
        .collect();
    assert!(left.is_empty(), "leftovers in tmp/: {left:?}");
}

#[test]
fn disk_full_stops_cleanly_and_resumes_after_space_is_freed() {
    let clean = clean_outcome();
    let cli = ingested();
    // Declared after `cli`, so it is unmounted before the temp dir is removed.
    let mount = Tmpfs::mount(&cli.store(), "8m");
    let filler = fill_leaving(&mount.at, 192 << 10);

    let out = cli.run(&cli.run_args(&["--batch-size", "20"]));
    check(&out, 75);
    let summary = out.event("run_summary");
    assert_eq!(summary["exit"], 75, "{summary}");
    let stopped = summary["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains("No space left on device") && stopped.contains("free space"),
        "no clear reason for the stop: {summary}"
    );
    let delivered = assert_delivered_are_on_disk(&cli);
    assert!(
        delivered > 0 && delivered < clean.store.len(),
        "the store should fill up part-way: {delivered} of {} delivered",
        clean.store.len()
    );
    assert_no_tmp_leftovers(&cli.store());
    let status = cli.status();
    assert_eq!(status["states"]["in_flight"], 0, "{status}");

    // Run again while still full: the same clean stop, said in words without --json.
    let args: Vec<String> = cli.run_args(&[]).into_iter().skip(1).collect();
    let again = cli.run(&args);
    check(&again, 75);
    assert!(
        again.stdout.contains("Stopped early") && again.stdout.contains("No space left"),
        "{}",
        again.stdout
    );
    assert_eq!(assert_delivered_are_on_disk(&cli), delivered);

    std::fs::remove_file(&filler).expect("free the space");
    let resumed = cli.run(&cli.run_args(&[]));
    check(&resumed, 0);
    assert_delivered_are_on_disk(&cli);
    assert_no_tmp_leftovers(&cli.store());
    assert_eq!(&Outcome::of(&cli), clean);
    drop(mount);
}

// ---------------------------------------------------------------------------------------
// Ledger trouble

/// Every command that opens the ledger (arguments after `--ledger`).
fn ledger_commands(cli: &Cli) -> Vec<Vec<String>> {
    let incident = crate::support::incident().display().to_string();
    vec![
        vec!["status".into()],
        vec!["bounces".into()],
        vec![
            "report".into(),
            "--incident".into(),
            incident,
            "--now".into(),
            crate::support::NOW.into(),
        ],
        vec!["ingest".into(), sample_spool().display().to_string()],
        cli.run_args(&[]),
        vec!["control".into(), "pause".into()],
    ]
}

/// Every command, reader or writer (issue 13.13: readers check the whole file too, so
/// `status` cannot print plausible counts from a damaged ledger), fails with `code` and a
/// message containing `says`, and leaves the ledger as it was: the file byte for byte, and
/// no committed change waiting in a `-wal` file.
#[track_caller]
fn refused_without_damage(cli: &Cli, code: i32, says: &str) {
    let before = sha256_file(&cli.ledger);
    let wal = PathBuf::from(format!("{}-wal", cli.ledger.display()));
    let mut wrong = Vec::new();
    for args in ledger_commands(cli) {
        let out = cli.run(&args);
        let shown = format!("`{}`", args.join(" "));
        assert!(!out.stderr.contains("panicked"), "{shown}: {}", out.stderr);
        if out.code != Some(code) || !out.stderr.contains(says) {
            wrong.push(format!(
                "{shown}: exit {:?} (want {code}), stderr (want {says:?}):\n{}",
                out.code, out.stderr
            ));
        }
        assert_eq!(
            sha256_file(&cli.ledger),
            before,
            "{shown} changed the ledger file"
        );
        let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert_eq!(wal_len, 0, "{shown} left changes in {}", wal.display());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        list_files(&cli.store()).is_empty(),
        "a refused run wrote to the store"
    );
}

#[test]
fn ledger_from_a_newer_version_is_refused_by_every_command() {
    let cli = ingested();
    {
        // Raw SQL on purpose: this forges a ledger no spoolreplay writes (a newer schema),
        // which `Ledger`'s own API would refuse to open.
        let conn = rusqlite::Connection::open(&cli.ledger).expect("open ledger");
        conn.pragma_update(None, "user_version", 999)
            .expect("set user_version");
    }
    refused_without_damage(&cli, 65, "schema version 999");
}

/// A copy of the ingested sample ledger with `damage` applied to its bytes.
fn damaged_ledger(damage: impl FnOnce(&mut Vec<u8>)) -> Cli {
    let cli = ingested();
    let mut bytes = std::fs::read(&cli.ledger).expect("read ledger");
    assert!(
        bytes.len() > 64 << 10,
        "the sample ledger is too small to damage"
    );
    damage(&mut bytes);
    std::fs::write(&cli.ledger, bytes).expect("write ledger");
    cli
}

#[test]
fn truncated_ledger_gives_a_clear_error_and_no_further_damage() {
    let cli = damaged_ledger(|b| {
        let half = b.len() / 2 / 4096 * 4096 + 1000; // cut inside a page
        b.truncate(half);
    });
    refused_without_damage(&cli, 65, "corrupted");
}

#[test]
fn ledger_with_flipped_bytes_gives_a_clear_error_and_no_further_damage() {
    let mut rng = Rng::new(7);
    for trial in 0..3 {
        let cli = damaged_ledger(|b| {
            // Scramble a run of bytes in one page of the middle half, header included.
            let pages = b.len() / 4096;
            let page = pages / 4 + rng.below((pages / 2) as u64) as usize;
            for byte in &mut b[page * 4096..page * 4096 + 512] {
                *byte ^= 0xA5;
            }
            eprintln!("trial {trial}: scrambled page {page} of {pages}");
        });
        refused_without_damage(&cli, 65, "corrupted");
    }
}

#[test]
fn second_writer_is_refused_while_a_run_holds_the_ledger() {
    let cli = ingested();
    let mut first = cli.spawn(&cli.run_args(&["--rate", "5/s", "--batch-size", "2"]));
    let lock = PathBuf::from(format!("{}.lock", cli.ledger.display()));
    let started = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |s| s.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = cli.run(&["ingest".to_string(), sample_spool().display().to_string()]);
    let still_running = first.try_wait().expect("try_wait").is_none();
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        still_running,
        "the first run ended before the second started"
    );
    check(&second, 75);
    assert!(
        second.stderr.contains("in use by") && second.stderr.contains("run"),
        "the refusal does not name the holder:\n{}",
        second.stderr
    );
    assert!(second.stdout.is_empty(), "{}", second.stdout);
}

// ---------------------------------------------------------------------------------------
// Hostile input at volume

/// A complete queue file; `header` lines are added before the body.
fn queue_file(id: u64, recipients: &[&[u8]], header: &[Vec<u8>]) -> Vec<u8> {
    let mut f = record(
        b'C',
        format!("{:>15} {:>15} {:>15}", 0, 0, recipients.len()).as_bytes(),
    );
    f.extend(record(b'T', format!("{} 0", 1_674_450_000 + id).as_bytes()));
    f.extend(record(b'S', format!("sender{id}@example.org").as_bytes()));
    for r in recipients {
        f.extend(record(b'R', r));
    }
    f.extend(record(b'M', b""));
    f.extend(record(
        b'N',
        format!("Message-ID: <{id}@example.org>").as_bytes(),
    ));
    f.extend(record(b'N', format!("Subject: message {id}").as_bytes()));
    for line in header {
        f.extend(record(b'N', line));
    }
    f.extend(record(b'N', b""));
    f.extend(record(b'N', format!("body of {id}").as_bytes()));
    f.extend(record(b'X', b""));
    f.extend(record(b'E', b""));
    f
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("queue folder");
    }
    std::fs::write(path, bytes).expect("write queue file");
}

/// The peak resident memory of a command, by polling `/proc/PID/status` (VmHWM only
/// grows, so the last reading before exit is the peak within one poll interval).
fn run_measured(mut cmd: Command) -> (crate::support::Output, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status_path = format!("/proc/{}/status", child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = read_all(Box::new(stdout.expect("stdout")));
    let err_t = read_all(Box::new(stderr.expect("stderr")));
    let mut peak_kb = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    let out = crate::support::Output {
        code: status.code(),
        signal: status.signal(),
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    };
    (out, peak_kb * 1024)
}

/// Peak RSS allowed for ingesting a hostile spool whose largest file is 100 MB.
const HOSTILE_RSS_LIMIT: u64 = 200 << 20;

/// What went into the hostile spool, by file name prefix.
struct HostileSpool {
    /// Files that must be quarantined, with a reason expected to contain the text.
    bad: BTreeMap<String, &'static str>,
    good: usize,
}

/// A Postfix queue (`deferred/`) with thousands of malformed files among good ones.
fn hostile_postfix_spool(root: &Path, seed: u64) -> HostileSpool {
    let mut rng = Rng::new(seed);
    let mut bad = BTreeMap::new();
    let q = root.join("deferred");
    let mut good = 0;
    for i in 0..500u64 {
        let rcpt = format!("user{i}@example.net");
        write_file(
            &q.join(format!("G{i:05}")),
            &queue_file(i, &[rcpt.as_bytes()], &[]),
        );
        good += 1;
    }
    for i in 0..1500u64 {
        let whole = queue_file(10_000 + i, &[b"victim@example.net"], &[]);
        let cut = 1 + rng.below(whole.len() as u64 - 2) as usize;
        let name = format!("T{i:05}");
        write_file(&q.join(&name), &whole[..cut]);
        bad.insert(name, "");
    }
    for i in 0..1500u64 {
        let len = 1 + rng.below(4000) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        // A third start like a queue file, so the record parser itself meets the junk.
        if i % 3 == 0 {
            junk[0] = b'C';
        }
        let name = format!("B{i:05}");
        write_file(&q.join(&name), &junk);
        bad.insert(name, "");
    }
    // A length prefix that claims far more than the file holds.
    let mut huge_len = b"C\xff\xff\xff\xff\x0f".to_vec();
    huge_len.extend_from_slice(b"short");
    write_file(&q.join("L00000"), &huge_len);
    bad.insert("L00000".into(), "");
    // Hostile recipients: taken in (they are what the MTA had) but never a path.
    write_file(
        &q.join("H00000"),
        &queue_file(
            20_000,
            &[
                b"../../../etc/passwd@example.net",
                b"a/../../b@example.net",
                b"nul\0byte@example.net",
                b"crlf\r\nRCPT TO:<x@evil.test>@example.net",
                b"ok@example.net",
            ],
            &[],
        ),
    );
    // 10,000 recipients on one message.
    let many: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("r{i}@many.example.net").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    write_file(&q.join("M00000"), &queue_file(20_001, &refs, &[]));
    // A 100 MB header block: 100,000 header lines of 1 KB.
    let line = format!("X-Padding: {}", "p".repeat(1012)).into_bytes();
    let header = vec![line; 100_000];
    write_file(
        &q.join("P00000"),
        &queue_file(20_002, &[b"big@example.net"], &header),
    );
    HostileSpool {
        bad,
        good: good + 3,
    }
}

/// Ingests the hostile spool `made` in `cli`'s `spool/` as `format`: every good message is
/// taken, every bad file is quarantined on its own with a reason, and the peak RSS stays
/// under `HOSTILE_RSS_LIMIT`. Returns the ingest summary.
#[track_caller]
fn quarantined_item_by_item_in_flat_memory(
    cli: &Cli,
    format: &str,
    made: &HostileSpool,
) -> serde_json::Value {
    let mut cmd = cli.command(&["--json", "ingest", "--format", format]);
    cmd.arg(cli.at("spool"));
    let started = Instant::now();
    let (out, peak) = run_measured(cmd);
    check(&out, 0);
    let summary = out.event("ingest_summary");
    assert_eq!(summary["messages"], made.good as u64, "{summary}");
    let reasons: BTreeMap<String, String> = out
        .events("quarantined")
        .into_iter()
        .map(|q| {
            let path = q["path"].as_str().unwrap_or_default().to_string();
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            (name, q["reason"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    for name in made.bad.keys() {
        let reason = reasons
            .get(name)
            .unwrap_or_else(|| panic!("{name} was not quarantined"));
        assert!(reason.len() > 5, "{name}: no real reason: {reason:?}");
    }
    assert_eq!(reasons.len(), made.bad.len(), "unexpected quarantines");
    eprintln!(
        "hostile {format} spool: {} items in {:?}, peak RSS {} MB",
        made.good + made.bad.len(),
        started.elapsed(),
        peak >> 20
    );
    assert!(
        peak < HOSTILE_RSS_LIMIT,
        "peak RSS {} MB (limit {} MB)",
        peak >> 20,
        HOSTILE_RSS_LIMIT >> 20
    );
    summary
}

#[test]
fn hostile_postfix_spool_at_volume_is_quarantined_item_by_item_in_flat_memory() {
    let cli = Cli::new();
    let spool = cli.at("spool");
    let made = hostile_postfix_spool(&spool, 20230122);
    let summary = quarantined_item_by_item_in_flat_memory(&cli, "postfix", &made);
    assert_eq!(summary["quarantined"], made.bad.len() as u64, "{summary}");
    let rows = ledger_recipients(&cli.ledger);
    assert_eq!(
        rows.iter().filter(|r| r.queue_id == "M00000").count(),
        10_000
    );
}

#[test]
fn hostile_recipients_never_become_paths() {
    let cli = Cli::new();
    let spool = cli.at("spool");
    let q = spool.join("deferred");
    write_file(
        &q.join("H00000"),
        &queue_file(
            1,
            &[
                b"../../../etc/passwd@example.net",
                b"a/../../b@example.net",
                b"nul\0byte@example.net",
                b"crlf\r\nRCPT TO:<x@evil.test>@example.net",
                b"ok@example.net",
            ],
            &[],
        ),
    );
    let mut ingest = cli.command(&["--json", "ingest", "--format", "postfix"]);
    ingest.arg(&spool);
    let out = ingest.output().expect("ingest");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let incident = TestIncident::new()
        .reporting_mta("mx.test")
        .restored_at("2023-01-24T00:00:00Z")
        .lifetime("3650d")
        .outside("deliver")
        .write(cli.path());
    let store = cli.store();
    let run = cli.run(&cli.run_args_with(&incident, "2023-01-24T00:00:00Z", &[]));
    check(&run, 0);
    let outcomes: BTreeMap<String, String> = run
        .events("outcome")
        .into_iter()
        .map(|o| {
            (
                o["recipient"].as_str().unwrap_or_default().to_string(),
                o["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    for (rcpt, state) in &outcomes {
        let expected = if rcpt == "ok@example.net" {
            "delivered"
        } else {
            "failed"
        };
        assert_eq!(state, expected, "{rcpt:?}");
    }
    let files = list_files(&store);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("example.net/ok/Maildir/new/")),
        "{files:?}"
    );
    // Nothing appeared beside the store either.
    let mut beside: Vec<String> = std::fs::read_dir(cli.path())
        .expect("list temp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("ledger.db"))
        .collect();
    beside.sort();
    assert_eq!(beside, ["incident.toml", "outbox", "spool", "store"]);
}

/// An eml spool with thousands of malformed items among good ones; the 100 MB header block
/// goes through the header parser here (a Postfix queue file never does).
fn hostile_eml_spool(root: &Path, seed: u64) -> HostileSpool {
    let mut rng = Rng::new(seed);
    let mut bad = BTreeMap::new();
    let sidecar = |rcpts: &[String]| {
        serde_json::json!({"sender": "s@example.org", "recipients": rcpts,
            "arrival": "2023-01-23T10:00:00+01:00"})
        .to_string()
    };
    let eml = |i: u64, extra: &str| {
        format!("Message-ID: <{i}@example.org>\nSubject: m{i}\n{extra}\nbody {i}\n")
    };
    let mut good = 0;
    for i in 0..400u64 {
        write_file(&root.join(format!("g{i:05}.eml")), eml(i, "").as_bytes());
        write_file(
            &root.join(format!("g{i:05}.json")),
            sidecar(&[format!("u{i}@example.net")]).as_bytes(),
        );
        good += 1;
    }
    for i in 0..800u64 {
        let len = 1 + rng.below(3000) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        junk[0] = 0x01; // never a header line
        write_file(&root.join(format!("b{i:05}.eml")), &junk);
        bad.insert(format!("b{i:05}.eml"), "");
    }
    for i in 0..700u64 {
        let whole = sidecar(&[format!("t{i}@example.net")]);
        let cut = 1 + rng.below(whole.len() as u64 - 2) as usize;
        write_file(&root.join(format!("t{i:05}.eml")), eml(i, "").as_bytes());
        write_file(
            &root.join(format!("t{i:05}.json")),
            &whole.as_bytes()[..cut],
        );
        bad.insert(format!("t{i:05}.eml"), "");
    }
    for i in 0..300u64 {
        write_file(&root.join(format!("e{i:05}.eml")), b"");
        bad.insert(format!("e{i:05}.eml"), "");
    }
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("r{i}@many.example.net"))
        .collect();
    write_file(&root.join("m00000.eml"), eml(1, "").as_bytes());
    write_file(&root.join("m00000.json"), sidecar(&many).as_bytes());
    good += 1;
    // 100 MB of header lines before the body.
    let line = format!("X-Padding: {}\n", "p".repeat(1012));
    let mut big = line.repeat(100_000);
    big.push_str(&eml(2, ""));
    write_file(&root.join("p00000.eml"), big.as_bytes());
    write_file(
        &root.join("p00000.json"),
        sidecar(&["big@example.net".into()]).as_bytes(),
    );
    good += 1;
    HostileSpool { bad, good }
}

#[test]
fn hostile_eml_spool_at_volume_is_quarantined_item_by_item_in_flat_memory() {
    let cli = Cli::new();
    let spool = cli.at("spool");
    let made = hostile_eml_spool(&spool, 19991231);
    quarantined_item_by_item_in_flat_memory(&cli, "eml", &made);
}

// ---------------------------------------------------------------------------------------
// kill -9 during ingest

/// A Postfix spool of small messages (plus a few malformed files), made per test (a few
/// hundred milliseconds) rather than kept in a static: a static is never dropped, so its
/// temp dir would outlive the suite.
fn ingest_drill_spool() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = dir.path().join("deferred");
    let mut rng = Rng::new(4242);
    for i in 0..1200u64 {
        let n = 1 + rng.below(3);
        let rcpts: Vec<Vec<u8>> = (0..n)
            .map(|k| format!("u{}@d{}.example", i * 7 + k, k).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = rcpts.iter().map(Vec::as_slice).collect();
        let lines = vec![b"X-Filler: some header text".to_vec(); rng.below(40) as usize];
        write_file(
            &q.join(format!("{:X}/{i:08X}", i % 16)),
            &queue_file(i, &refs, &lines),
        );
    }
    for i in 0..30u64 {
        write_file(&q.join(format!("Z/junk{i}")), b"not a queue file");
    }
    dir
}

/// The ledger's content without its timestamps: messages, recipients with state, the
/// number of audit events per recipient, and the open quarantine.
fn ledger_content(ledger: &Path) -> Vec<String> {
    let read = read_ledger(ledger);
    let mut messages = ledger_messages(ledger);
    messages.sort_by(|a, b| a.message.source.path.cmp(&b.message.source.path));
    let mut rows = Vec::new();
    for w in &messages {
        let m = &w.message;
        rows.push(format!(
            "m|{}|{}|{}|{}|{}|{}|{}",
            m.content_hash,
            m.source.path.display(),
            m.source.offset,
            m.queue_id,
            m.size,
            m.sender.as_str(),
            m.arrival.to_rfc3339()
        ));
    }
    for w in &messages {
        let mut recipients: Vec<_> = w.recipients.iter().collect();
        recipients.sort_by(|a, b| a.address.cmp(&b.address));
        for r in recipients {
            let events = read.events_of(r.id).expect("events").len();
            rows.push(format!(
                "r|{}|{}|{}|{events}",
                w.message.source.path.display(),
                r.address,
                r.state.as_str()
            ));
        }
    }
    let (_, mut quarantined) = read.quarantined(usize::MAX).expect("quarantine");
    quarantined.sort_by(|a, b| a.source_path.cmp(&b.source_path));
    for q in quarantined {
        rows.push(format!("q|{}|{}", q.source_path, q.reason));
    }
    rows
}

#[test]
fn kill_9_during_ingest_then_ingest_again_gives_the_clean_ledger() {
    let spool_dir = ingest_drill_spool();
    let spool = spool_dir.path();
    let reference = Cli::new();
    let started = Instant::now();
    let out = reference.run_env(
        &["ingest".as_ref(), spool.as_os_str()],
        &[("SPOOLREPLAY_TEST_COMMIT_ITEMS", "100")],
    );
    check(&out, 0);
    let clean_time = started.elapsed();
    let clean = ledger_content(&reference.ledger);
    assert!(clean.len() > 2400, "{} rows", clean.len());

    let mut rng = Rng::new(19700101);
    let mut killed_mid_way = 0;
    let window = clean_time.as_millis() as u64 + 1;
    let trials = drill_trials(20);
    for trial in 0..trials {
        let cli = Cli::new();
        let delay = rng.below(window);
        // Commits of 100 items: the kills land between commits as well as inside them.
        let mut child = cli
            .command(&["ingest".as_ref(), spool.as_os_str()])
            .env("SPOOLREPLAY_TEST_COMMIT_ITEMS", "100")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ingest");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(SIGKILL) {
            killed_mid_way += 1;
        } else {
            assert_eq!(status.code(), Some(0), "trial {trial}: {status:?}");
        }
        let again = cli.run(&["ingest".as_ref(), spool.as_os_str()]);
        check(&again, 0);
        let content = ledger_content(&cli.ledger);
        assert_eq!(
            content.len(),
            clean.len(),
            "trial {trial} ({delay} ms): row count"
        );
        for (got, want) in content.iter().zip(&clean) {
            assert_eq!(got, want, "trial {trial}: killed after {delay} ms");
        }
    }
    assert!(
        killed_mid_way >= trials / 2,
        "only {killed_mid_way} of {trials} kills landed before ingest finished ({clean_time:?})"
    );
}

/// SIGTERM and SIGHUP (stderr closed first, as when an ssh session drops) at seeded
/// moments of `ingest`: it commits what it read, prints its summary, exits 143 / 129; the
/// ledger then holds exactly the messages the summary counts, and ingesting again gives
/// the clean ledger.
#[test]
fn sigterm_or_sighup_during_ingest_commits_what_was_read() {
    use crate::support::{Stderr, parse_json_lines, signal_after};
    let spool_dir = ingest_drill_spool();
    let spool = spool_dir.path();
    let reference = Cli::new();
    let started = Instant::now();
    let out = reference.run_env(
        &["ingest".as_ref(), spool.as_os_str()],
        &[("SPOOLREPLAY_TEST_COMMIT_ITEMS", "100")],
    );
    check(&out, 0);
    let window = started.elapsed().as_millis() as u64 + 1;
    let clean = ledger_content(&reference.ledger);

    let mut rng = Rng::new(1_4301);
    let trials = drill_trials(10);
    let mut stopped_mid_way = 0;
    for trial in 0..trials {
        let (signal, code, stderr) = if trial.is_multiple_of(2) {
            ("TERM", 143, Stderr::Kept)
        } else {
            ("HUP", 129, Stderr::Gone)
        };
        // Within the first half of a clean ingest's time, counted from the `reading` line
        // (after start-up): most signals land mid-way, some in the last commits.
        let delay = Duration::from_millis(rng.below(window / 2 + 1));
        let what = format!("trial {trial} (SIG{signal} after {delay:?})");
        let cli = Cli::new();
        let mut cmd = cli.command(&["--json".as_ref(), "ingest".as_ref(), spool.as_os_str()]);
        cmd.env("SPOOLREPLAY_TEST_COMMIT_ITEMS", "100");
        let out = signal_after(
            cmd,
            &cli.at("ingest.stdout"),
            "reading",
            delay,
            signal,
            stderr,
        );
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        let summary = parse_json_lines(&out.stdout)
            .into_iter()
            .find(|v| v["type"] == "ingest_summary")
            .unwrap_or_else(|| panic!("{what}: no ingest_summary: {out:?}"));
        assert_eq!(
            Some(summary["exit"].as_i64().unwrap_or(-1) as i32),
            out.code
        );
        match out.code {
            Some(c) if c == code => {
                stopped_mid_way += 1;
                assert!(
                    summary["stopped"]
                        .as_str()
                        .is_some_and(|s| s.contains(&format!("SIG{signal}"))),
                    "{what}: {summary}"
                );
                let messages = ledger_content(&cli.ledger)
                    .iter()
                    .filter(|r| r.starts_with("m|"))
                    .count() as u64;
                assert_eq!(summary["new"], messages, "{what}: committed = counted");
            }
            // The signal came after the last commit: nothing was left to stop.
            Some(0) => assert!(summary["stopped"].is_null(), "{what}: {summary}"),
            other => panic!("{what}: exit {other:?}: {out:?}"),
        }
        let again = cli.run(&["ingest".as_ref(), spool.as_os_str()]);
        check(&again, 0);
        assert_eq!(ledger_content(&cli.ledger), clean, "{what}");
    }
    assert!(
        stopped_mid_way >= trials / 2,
        "only {stopped_mid_way} of {trials} signals landed before ingest finished"
    );
}
