//! The reference for the Maildir benchmark: the plainest durable Maildir delivery loop
//! there is, with nothing but the standard library. For each (file, recipient) line of a
//! manifest: read the file, write `tmp/NAME` with the same two delivery headers
//! spoolreplay adds, fsync it, rename it into `new/`, fsync `new/` (and fsync the parent of
//! each folder it creates, as a durable delivery must). No ledger, no hashing, no checks:
//! the ceiling of the disk for this workload.
//!
//! A cargo example, so CI compiles and lints it with the crate (it uses none of it).
//! Build: cargo build --release --example durable_loop (`target/release/examples/`)
//! Usage: durable_loop MANIFEST STORE_DIR [THREADS]
//! MANIFEST lines: `PATH<TAB>SENDER<TAB>RECIPIENT` (one per delivered copy).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and missing parents), fsyncing the parent of each folder it makes.
fn ensure_dir(dir: &Path, made: &Mutex<HashSet<PathBuf>>) -> io::Result<()> {
    if made.lock().unwrap().contains(dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.exists()
    {
        ensure_dir(parent, made)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("/")))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    made.lock().unwrap().insert(dir.to_path_buf());
    Ok(())
}

fn deliver(
    store: &Path,
    n: usize,
    path: &str,
    sender: &str,
    rcpt: &str,
    made: &Mutex<HashSet<PathBuf>>,
) -> io::Result<u64> {
    let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, "nodomain"));
    let maildir = store
        .join(domain.to_ascii_lowercase())
        .join(local.to_ascii_lowercase())
        .join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        ensure_dir(&maildir.join(sub), made)?;
    }
    let content = fs::read(path)?;
    let mut bytes = format!("Return-Path: <{sender}>\nDelivered-To: {rcpt}\n").into_bytes();
    bytes.extend_from_slice(&content);
    let name = format!("{n}.ref,S={}", bytes.len());
    let tmp = maildir.join("tmp").join(&name);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, maildir.join("new").join(&name))?;
    sync_dir(&maildir.join("new"))?;
    Ok(bytes.len() as u64)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: durable_loop MANIFEST STORE_DIR [THREADS]");
        std::process::exit(64);
    }
    let lines: Vec<String> = io::BufReader::new(File::open(&args[1])?)
        .lines()
        .collect::<io::Result<_>>()?;
    let store = PathBuf::from(&args[2]);
    fs::create_dir_all(&store)?;
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let made = Arc::new(Mutex::new(HashSet::new()));
    let next = Arc::new(Mutex::new(0usize));
    let lines = Arc::new(lines);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (made, next, lines, store) =
                (made.clone(), next.clone(), lines.clone(), store.clone());
            std::thread::spawn(move || -> io::Result<(u64, u64)> {
                let (mut copies, mut bytes) = (0, 0);
                loop {
                    let n = {
                        let mut g = next.lock().unwrap();
                        *g += 1;
                        *g - 1
                    };
                    let Some(line) = lines.get(n) else {
                        return Ok((copies, bytes));
                    };
                    let mut parts = line.splitn(3, '\t');
                    let (Some(path), Some(sender), Some(rcpt)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(io::Error::other(format!("bad manifest line {n}")));
                    };
                    bytes += deliver(&store, n, path, sender, rcpt, &made)?;
                    copies += 1;
                }
            })
        })
        .collect();
    let (mut copies, mut bytes) = (0, 0);
    for h in handles {
        let (c, b) = h.join().expect("worker panicked")?;
        copies += c;
        bytes += b;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{copies} copies, {bytes} bytes in {secs:.3} s: {:.1} copies/s",
        copies as f64 / secs
    );
    Ok(())
}
