//! Writing DSNs to the outbox folder, for another tool (or `spoolreplay ingest`) to send:
//! `dsn-<id>.eml` plus a `dsn-<id>.json` envelope (`sender` "" = `<>`, `recipients`,
//! `arrival`). Each file is written to a temporary name, synced and renamed, so the outbox
//! never holds a partial DSN; names are fixed per DSN, so writing again after a crash
//! replaces the same file instead of adding a second DSN.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::exit::{Exit, Failure};
use crate::ledger::{DsnFilter, Ledger};

/// Checks that DSNs can be written to `dir` before a run delivers anything: creates it,
/// writes and syncs a probe file, removes it. An unwritable outbox found only after every
/// delivery would leave the DSNs owed with no summary; found first, nothing has happened.
pub fn check_writable(dir: &Path) -> Result<()> {
    let cant = |what: String, e: std::io::Error| {
        anyhow::Error::new(e).context(Failure::new(Exit::CantCreate, what).with_hint(
            "fix the folder (or pass another --outbox DIR) and run again: nothing was delivered",
        ))
    };
    fs::create_dir_all(dir)
        .map_err(|e| cant(format!("cannot create outbox `{}`", dir.display()), e))?;
    let probe = dir.join(format!(".spoolreplay-probe-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&probe)?;
        f.write_all(b"probe\n")?;
        f.sync_all()?;
        fs::remove_file(&probe)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&probe);
        return Err(cant(
            format!("cannot write to outbox `{}`", dir.display()),
            e,
        ));
    }
    Ok(())
}

/// Writes every DSN the ledger has not yet written; returns how many.
pub fn write_pending(ledger: &mut Ledger, dir: &Path) -> Result<u64> {
    fs::create_dir_all(dir).map_err(|e| {
        anyhow::Error::new(e).context(Failure::new(
            Exit::CantCreate,
            format!("cannot create outbox `{}`", dir.display()),
        ))
    })?;
    let mut written = 0;
    for row in ledger.dsns(DsnFilter::Unwritten)? {
        let content = ledger
            .dsn_content(row.id)?
            .with_context(|| format!("DSN {} vanished from the ledger", row.id))?;
        let eml = dir.join(format!("dsn-{}.eml", row.id));
        let envelope = serde_json::json!({
            "sender": "",
            "recipients": [row.envelope_to],
            "arrival": row.created_at,
        });
        let mut sidecar = serde_json::to_vec_pretty(&envelope)?;
        sidecar.push(b'\n');
        // The envelope first: a reader that sees the .eml always finds its envelope.
        write_atomically(&dir.join(format!("dsn-{}.json", row.id)), &sidecar)?;
        write_atomically(&eml, &content)?;
        sync_dir(dir)?;
        crate::crash_hook::at("after-outbox-write");
        ledger.write(|tx| tx.mark_dsn_written(row.id, &eml))?;
        written += 1;
    }
    Ok(written)
}

/// The DSN files hold strangers' mail: written exclusively (a planted symlink is never
/// followed), mode 0600, synced, renamed into place (`durable::replace`).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::replace(path, bytes).map_err(|e| {
        anyhow::Error::new(e.source).context(Failure::new(
            Exit::CantCreate,
            format!("cannot write `{}`", path.display()),
        ))
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::durable::sync_dir(dir).with_context(|| format!("cannot sync outbox `{}`", dir.display()))
}
