//! Reader for mbox spools.

use std::path::Path;

use super::{SpoolError, SpoolItem};

pub fn read(path: &Path) -> Result<std::vec::IntoIter<SpoolItem>, SpoolError> {
    let _ = path;
    Ok(Vec::new().into_iter())
}

pub fn read_content(source: &super::SourceRef) -> std::io::Result<Vec<u8>> {
    let _ = source;
    Ok(Vec::new())
}
