//! Opening a ledger: the writer lock, the connection's settings, the integrity check, and
//! the words for a damaged or missing file.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};

use super::{Ledger, lock, schema};
use crate::exit::{Exit, Failure, failure};

const CORRUPT_HINT: &str = "restore it from a backup, or pass --ledger NEW_PATH and ingest again";

/// Damage met in the middle of a command (a page no earlier check read) is bad data, not
/// I/O trouble: give it exit 65 and the same words as damage found at open.
pub fn explain_corruption(err: anyhow::Error) -> anyhow::Error {
    let corrupt = err.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
        })
    });
    let typed = err
        .downcast_ref::<Failure>()
        .is_some_and(|f| f.exit == Exit::DataErr);
    if !corrupt || typed {
        return err;
    }
    err.context(Failure::new(Exit::DataErr, "the ledger is corrupted").with_hint(CORRUPT_HINT))
}

/// The writer's page cache, as `PRAGMA cache_size` takes it (negative: KiB): 32 MB.
pub(super) const WRITER_CACHE_KIB: i64 = -32768;

/// The error of a command that needs a ledger where there is none.
fn no_ledger(path: &Path) -> anyhow::Error {
    anyhow::Error::new(
        Failure::new(Exit::NoInput, format!("no ledger at `{}`", path.display()))
            .with_hint("run `spoolreplay ingest SPOOL` first, or pass --ledger PATH"),
    )
}

impl Ledger {
    /// Opens an existing ledger for a command that writes (`run`, `bounces write|send`);
    /// only `ingest` creates one, so a typo in `--ledger` is refused (exit 66) and leaves
    /// no empty ledger or lock file behind.
    pub fn open_existing_for_write(path: &Path, command: &str) -> Result<Ledger> {
        if !path.exists() {
            return Err(no_ledger(path));
        }
        Ledger::open_for_write(path, command)
    }

    /// Opens (creating if needed) for a command that writes; takes the writer lock.
    pub fn open_for_write(path: &Path, command: &str) -> Result<Ledger> {
        let lock = lock::LedgerLock::acquire(path, command)?;
        let conn = Connection::open(path).map_err(|e| {
            anyhow::Error::new(e).context(Failure::new(
                Exit::CantCreate,
                format!("cannot open ledger `{}`", path.display()),
            ))
        })?;
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            _lock: Some(lock),
        };
        ledger.configure()?;
        ledger.check_integrity()?;
        ledger.migrate()?;
        ledger.ensure_lookup_indexes()?;
        Ok(ledger)
    }

    /// No command may build on, or report from, a damaged file: SQLite notices damage only
    /// on the pages a query happens to read, so check them all (`quick_check`: every page
    /// and index entry read once, a second or two per million messages).
    fn check_integrity(&self) -> Result<()> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| self.corrupt_or(e, "cannot check ledger"))?;
        if verdict == "ok" {
            return Ok(());
        }
        Err(anyhow::Error::new(
            Failure::new(
                Exit::DataErr,
                format!("ledger `{}` is corrupted: {verdict}", self.path.display()),
            )
            .with_hint(CORRUPT_HINT),
        ))
    }

    /// Opens an existing ledger to read it; no lock, no migration. Checked for damage like
    /// a writer's open: a reader that only met the pages its queries touch would print
    /// plausible counts from a damaged file (`status` did, exit 0).
    pub fn open_read(path: &Path) -> Result<Ledger> {
        Self::open_unlocked(path, OpenFlags::SQLITE_OPEN_READ_ONLY, "reads")
    }

    /// Opens a ledger a `run` may hold, to append a steering request: no writer lock
    /// (the run holds it), SQLite's own locking and busy timeout keep the one insert safe.
    /// A damaged ledger is not written to, not even one row.
    pub fn open_for_steering(path: &Path) -> Result<Ledger> {
        Self::open_unlocked(path, OpenFlags::SQLITE_OPEN_READ_WRITE, "writes")
    }

    /// An existing ledger of the current schema, without the writer lock, checked for
    /// damage. `verb` says what this spoolreplay does with the version it wants.
    fn open_unlocked(path: &Path, mode: OpenFlags, verb: &str) -> Result<Ledger> {
        if !path.exists() {
            return Err(no_ledger(path));
        }
        let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open ledger `{}`", path.display()))?;
        let ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            _lock: None,
        };
        ledger.set_busy_timeout()?;
        let version = ledger.user_version()?;
        if version != schema::latest_version() {
            return Err(failure(
                Exit::DataErr,
                format!(
                    "ledger `{}` has schema version {version}, this spoolreplay {verb} version {}",
                    path.display(),
                    schema::latest_version()
                ),
            ));
        }
        ledger.check_integrity()?;
        Ok(ledger)
    }

    fn set_busy_timeout(&self) -> Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .with_context(|| format!("cannot configure ledger `{}`", self.path.display()))
    }

    fn configure(&self) -> Result<()> {
        self.set_busy_timeout()?;
        // WAL: readers (report, status) work while a run writes; synchronous=FULL so a
        // committed checkpoint survives a power cut, not just a process crash. A 32 MB page
        // cache (SQLite's default is 2 MB) keeps the hash-keyed indexes of a big ledger in
        // memory: with 2 MB, ingest slows down as the ledger grows (measured: 2.2x at 100k).
        self.conn
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA cache_size = {WRITER_CACHE_KIB};"
            ))
            .map_err(|e| self.corrupt_or(e, "cannot configure ledger"))
    }

    /// For a bulk writer (ingest): let the WAL grow to about 80 MB before it is copied back
    /// into the database, instead of SQLite's 4 MB. Ingest touches pages of random-key
    /// indexes all over the file; checkpointing every 4 MB wrote the same pages again and
    /// again (300k messages: 42 s, 28.9 s with this). Readers are not affected, and the WAL
    /// is checkpointed and removed when the writer closes.
    pub fn checkpoint_in_large_steps(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 20_000)
            .with_context(|| format!("cannot configure ledger `{}`", self.path.display()))
    }

    /// SQLite says "file is not a database" for a corrupted or foreign file: say that.
    pub(super) fn corrupt_or(&self, e: rusqlite::Error, what: &str) -> anyhow::Error {
        let corrupt = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
        );
        let msg = format!("{what} `{}`", self.path.display());
        if corrupt {
            anyhow::Error::new(e).context(
                Failure::new(
                    Exit::DataErr,
                    format!("{msg}: it is corrupted or not a ledger"),
                )
                .with_hint(CORRUPT_HINT),
            )
        } else {
            anyhow::Error::new(e).context(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let _held = Ledger::open_for_write(&path, "run").unwrap();
        let err = Ledger::open_for_write(&path, "ingest").err().unwrap();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("spoolreplay run"), "{text}");
        assert_eq!(crate::exit::exit_for(&err), Exit::TempFail);
    }
}
