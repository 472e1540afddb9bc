//! Durable, exclusive file writes for files that hold other people's mail (Maildir copies,
//! outbox DSNs): created with `O_EXCL` (`create_new`, so a symlink planted at the name is
//! refused, never followed) and mode 0600 whatever the umask, written, fsynced, and removed
//! again if anything fails.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

/// What failed, and at which step (`cannot create`, `cannot write`, …), so each caller can
/// word it for its own user.
#[derive(Debug)]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes and fsyncs `path` as a new file, replacing a leftover of a crashed run (the
/// leftover is removed, not opened: a symlink there is unlinked, its target untouched).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_new_at(path, bytes, None)
}

/// `write_new` that also sets the file's modification time (before the fsync, so it is
/// durable with the bytes): a Maildir copy carries its arrival, which IMAP servers show.
pub fn write_new_at(
    path: &Path,
    bytes: &[u8],
    mtime: Option<std::time::SystemTime>,
) -> Result<(), WriteError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(at("cannot remove leftover", path)(e)),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(at("cannot create", path))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| mtime.map_or(Ok(()), |t| file.set_modified(t)))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(at("cannot write", path)(e));
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically: `write_new` to `<path>.tmp`, then rename, so a
/// reader sees the old file or the whole new one. The folder is not synced: callers that
/// write several files sync it once with `sync_dir`.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    write_new(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        at("cannot rename into place", path)(e)
    })
}

/// Fsyncs a folder, so the names created or renamed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("dsn-1.eml.tmp")).unwrap();
        let path = dir.path().join("dsn-1.eml");
        replace(&path, b"a DSN").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(fs::read(&path).unwrap(), b"a DSN");
        assert!(!dir.path().join("dsn-1.eml.tmp").exists());
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        write_new(&path, b"mail").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        replace(&path, b"other mail").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"other mail");
    }
}
