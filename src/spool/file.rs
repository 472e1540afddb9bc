//! How every spool reader opens a file of the spool: regular files only, links never
//! followed inside a spool, non-blocking, reads bounded by the size seen at open.

use std::fmt;
use std::fs::{File, Metadata};
use std::path::Path;

/// Why a file of the spool was not read: it is not a plain file of the spool, or reading
/// it failed. `Display` is the quarantine reason.
#[derive(Debug)]
pub enum FileError {
    /// Not a regular file (a link, FIFO, device, socket or folder): never opened. The
    /// reason in words.
    Refused(&'static str),
    /// Too large to hold in memory.
    TooLarge(u64),
    Io(std::io::Error),
}

impl FileError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Refused(why) => f.write_str(why),
            FileError::TooLarge(len) => {
                write!(f, "cannot read file: {len} bytes do not fit in memory")
            }
            FileError::Io(e) => write!(f, "cannot read file: {e}"),
        }
    }
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> FileError {
        FileError::Io(e)
    }
}

impl From<FileError> for std::io::Error {
    fn from(e: FileError) -> std::io::Error {
        match e {
            FileError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// Whether opening a path may follow a symbolic link: the spool path the operator gave
/// may be one; a file found inside a spool may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    Refuse,
}

/// Opens a file found in a spool, as a regular file only. A symbolic link is refused,
/// never followed: it could point out of the spool (`/etc/shadow`) or at `/dev/zero`;
/// FIFOs, devices, sockets and folders are refused too. The open is non-blocking and
/// `O_NOFOLLOW`, and the type is checked again on the open file, so a FIFO or link swapped
/// in between the look and the open cannot hang or mislead the reader.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), FileError> {
    open_file(path, Links::Refuse)
}

/// `open_regular`, choosing whether a symbolic link at `path` itself is followed.
pub fn open_file(path: &Path, links: Links) -> Result<(File, Metadata), FileError> {
    let seen = match links {
        Links::Refuse => std::fs::symlink_metadata(path)?,
        Links::Follow => std::fs::metadata(path)?,
    };
    check_regular(&seen)?;
    open_checked(path, links)
}

/// Opens a file that its folder's listing gave as a regular file (`DirEntry::file_type`,
/// from `getdents`, with no extra system call): the look `open_regular` makes first has
/// been made, so only the open and the check on the open file are left.
pub(super) fn open_listed(path: &Path) -> Result<(File, Metadata), FileError> {
    open_checked(path, Links::Refuse)
}

/// The open itself: non-blocking, `O_NOFOLLOW` unless links are followed, and the type
/// checked on the open file. A symbolic link swapped in since the look fails the open
/// (`ELOOP`) and is refused as a link; anything else not regular fails the check.
fn open_checked(path: &Path, links: Links) -> Result<(File, Metadata), FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if links == Links::Refuse => FileError::Refused(LINK_REFUSED),
            _ => FileError::Io(e),
        })?;
    let metadata = file.metadata()?;
    check_regular(&metadata)?;
    Ok((file, metadata))
}

const LINK_REFUSED: &str = "symbolic link: not followed (only the spool's own files are read; \
                            copy the target into the spool to ingest it)";

fn check_regular(metadata: &Metadata) -> Result<(), FileError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    let why = if kind.is_file() {
        return Ok(());
    } else if kind.is_symlink() {
        LINK_REFUSED
    } else if kind.is_dir() {
        "not a regular file (a folder)"
    } else if kind.is_fifo() {
        "not a regular file (a FIFO): not opened"
    } else if kind.is_char_device() || kind.is_block_device() {
        "not a regular file (a device): not opened"
    } else if kind.is_socket() {
        "not a regular file (a socket): not opened"
    } else {
        "not a regular file: not opened"
    };
    Err(FileError::Refused(why))
}

/// Reads a whole file found in a spool (`open_regular`), never more than the size it had
/// when opened: a file that grows while it is read is cut there, not followed forever.
pub fn read_regular(path: &Path) -> Result<(Vec<u8>, Metadata), FileError> {
    let (file, metadata) = open_regular(path)?;
    let bytes = read_bounded(file, metadata.len())?;
    Ok((bytes, metadata))
}

/// Reads at most `len` bytes of `file`; memory is reserved up front, so a size that cannot
/// be held is an error rather than an abort.
pub fn read_bounded(file: File, len: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|n| bytes.try_reserve_exact(n).ok())
        .ok_or(FileError::TooLarge(len))?;
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file listed as regular and swapped for a link (or a FIFO) before the open is
    /// refused by the open itself, with the reason the walk would have given.
    #[test]
    fn a_listed_file_swapped_for_a_link_or_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"C").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let refused = open_listed(&link).unwrap_err();
        assert!(
            matches!(refused, FileError::Refused(why) if why.starts_with("symbolic link")),
            "{refused}"
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let refused = open_listed(&fifo).unwrap_err();
        assert!(
            matches!(refused, FileError::Refused(why) if why.contains("FIFO")),
            "{refused}"
        );
        let (_, metadata) = open_listed(&target).unwrap();
        assert_eq!(metadata.len(), 1);
    }
}
