//! Reader for maildir spools.
//!
//! Messages are the files in `new/` and `cur/` of the given folder; `tmp/` holds mail still
//! being written and is ignored, as are names starting with `.` and Maildir++ subfolders
//! (`.Sent/` …: only the top folder is the spool). The queue id is the unique part of the
//! file name, before any `:2,FLAGS` info. Files are read in path order (`cur/` before
//! `new/`), one at a time; only the list of names is collected up front.
//!
//! The shard key is the queue id: it survives a flag change (`:2,S`) and a move from
//! `new/` to `cur/`.

use std::path::{Path, PathBuf};

use super::{Selection, SpoolError, SpoolFormat, SpoolItem, file_item};

/// Lists the messages of the Maildir at `path`; reading happens as the iterator advances.
pub fn read(path: &Path) -> Result<MaildirReader, SpoolError> {
    read_selected(path, Selection::all())
}

/// Like `read`, yielding only the messages `selection` takes.
pub fn read_selected(path: &Path, selection: Selection) -> Result<MaildirReader, SpoolError> {
    let io_err = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let root = std::path::absolute(path).map_err(io_err)?;
    let subdirs: Vec<PathBuf> = ["cur", "new"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    if subdirs.is_empty() {
        return Err(SpoolError::Unrecognized {
            path: path.to_path_buf(),
            why: "a maildir needs a `new/` or `cur/` folder".into(),
        });
    }
    let mut files = Vec::new();
    for dir in &subdirs {
        let entries = std::fs::read_dir(dir).map_err(|source| SpoolError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SpoolError::Io {
                path: dir.clone(),
                source,
            })?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(MaildirReader {
        files: files.into_iter(),
        selection,
    })
}

/// Streams the messages of one Maildir folder.
pub struct MaildirReader {
    files: std::vec::IntoIter<PathBuf>,
    selection: Selection,
}

impl Iterator for MaildirReader {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        loop {
            let path = self.files.next()?;
            let queue_id = queue_id(&path);
            if self.selection.takes(&queue_id) {
                return Some(file_item(&path, SpoolFormat::Maildir, queue_id, None));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.files.size_hint()
    }
}

/// The unique part of a Maildir file name: everything before the first `:`.
pub fn queue_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.split_once(':') {
        Some((unique, _info)) => unique.to_string(),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_drops_info_suffix() {
        assert_eq!(
            queue_id(Path::new("/m/cur/1674468000.M1P2.host:2,RS")),
            "1674468000.M1P2.host"
        );
        assert_eq!(
            queue_id(Path::new("/m/new/1674468000.M1P2.host")),
            "1674468000.M1P2.host"
        );
        assert_eq!(queue_id(Path::new("/m/new/a:b:2,")), "a");
    }

    #[test]
    fn folder_without_new_or_cur_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let err = read(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("a maildir needs a `new/` or `cur/` folder"),
            "{err}"
        );
    }
}
