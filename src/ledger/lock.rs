//! The one-writer lock: an exclusive advisory lock on `<ledger>.lock`, whose content names
//! the holder (pid, command, start time) so a second process can say who it is waiting for.
//! The kernel drops the lock when the holder dies, even by `kill -9`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::{Exit, Failure};

pub struct LedgerLock {
    _file: File,
}

pub fn lock_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl LedgerLock {
    pub fn acquire(ledger: &Path, command: &str) -> Result<LedgerLock> {
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
                let holder = crate::sanitize::for_terminal(holder.trim());
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
