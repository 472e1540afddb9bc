//! Reader for Exim spools. (Placeholder: the reader is being written.)

use std::path::Path;

use super::{SourceRef, SpoolError, SpoolItem};

/// Whether `dir` looks like one of these spools (for `detect`).
pub fn looks_like_spool(dir: &Path) -> bool {
    let _ = dir;
    false
}

pub fn read(path: &Path) -> Result<std::vec::IntoIter<SpoolItem>, SpoolError> {
    Err(SpoolError::Unrecognized {
        path: path.to_path_buf(),
        why: "this reader is not written yet".into(),
    })
}

pub fn read_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    Err(std::io::Error::other(format!(
        "cannot read {source}: reader not written yet"
    )))
}
