//! The one-writer lock: an exclusive advisory lock on `<ledger>.lock`, whose content names
//! the holder (pid, command, start time) so a second process can say who it is waiting for.
//! The kernel drops the lock when the holder dies, even by `kill -9`.
//!
//! The lock file is named after the ledger's real path (symbolic links resolved, the
//! folder made absolute), so every path to one ledger (`ln -s a.db b.db`, `./a.db`,
//! `dir/../a.db`) meets the same lock. A hard link is a second name the file system cannot
//! tell apart; ledgers are not hard-linked in practice, and SQLite itself does not support
//! it either (its journal is named after the path too).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::{Exit, Failure};

pub(super) struct LedgerLock {
    _file: File,
}

/// `<real path of the ledger>.lock`.
pub(super) fn lock_path(ledger: &Path) -> PathBuf {
    let mut name = real_path(ledger).into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Where the ledger really is: links followed, even to a file not created yet (SQLite
/// creates a link's target), the folder canonical. Falls back to the path as given where
/// it cannot be resolved (the open then fails with its own error).
fn real_path(ledger: &Path) -> PathBuf {
    let mut path = std::path::absolute(ledger).unwrap_or_else(|_| ledger.to_path_buf());
    // A bounded walk: a link loop ends here rather than spinning.
    for _ in 0..40 {
        if let Ok(real) = std::fs::canonicalize(&path) {
            return real;
        }
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            // Not there yet: the real folder plus the name.
            Err(_) => {
                return match (path.parent(), path.file_name()) {
                    (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                        .map(|d| d.join(name))
                        .unwrap_or(path),
                    _ => path,
                };
            }
        }
    }
    path
}

impl LedgerLock {
    pub(super) fn acquire(ledger: &Path, command: &str) -> Result<LedgerLock> {
        let path = lock_path(ledger);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                anyhow::Error::new(e).context(Failure::new(
                    Exit::CantCreate,
                    format!("cannot create lock file `{}`", path.display()),
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = crate::sanitize::for_terminal(holder.trim()).into_owned();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder
                };
                return Err(anyhow::Error::new(
                    Failure::new(
                        Exit::TempFail,
                        format!("ledger `{}` is in use by {holder}", ledger.display()),
                    )
                    .with_hint("wait for it to finish (or stop it with Ctrl-C), then run again"),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock `{}`", path.display()));
            }
        }
        let stamp = format!(
            "pid {} (`spoolreplay {command}`, started {})\n",
            std::process::id(),
            super::timestamp()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(stamp.as_bytes()))
            .with_context(|| format!("cannot write lock file `{}`", path.display()))?;
        Ok(LedgerLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_to_one_ledger_has_one_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("a.db");
        std::fs::write(&real, b"").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("b.db")).unwrap();
        std::os::unix::fs::symlink("a.db", dir.path().join("c.db")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let expected = lock_path(&real);
        for other in ["b.db", "c.db", "sub/../a.db", "./a.db"] {
            assert_eq!(lock_path(&dir.path().join(other)), expected, "{other}");
        }
        // A link to a ledger not made yet (SQLite would create the target).
        std::os::unix::fs::symlink("new.db", dir.path().join("later.db")).unwrap();
        assert_eq!(
            lock_path(&dir.path().join("later.db")),
            lock_path(&dir.path().join("new.db"))
        );
        // A link loop ends (SQLite's open then fails with its own error).
        std::os::unix::fs::symlink("loop2.db", dir.path().join("loop1.db")).unwrap();
        std::os::unix::fs::symlink("loop1.db", dir.path().join("loop2.db")).unwrap();
        let looped = lock_path(&dir.path().join("loop1.db"));
        assert!(looped.to_string_lossy().ends_with(".db.lock"), "{looped:?}");
    }
}
