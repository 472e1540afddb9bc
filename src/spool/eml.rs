//! Reader for eml spools.

use std::path::Path;

use super::{SpoolError, SpoolItem};

pub fn read(path: &Path) -> Result<std::vec::IntoIter<SpoolItem>, SpoolError> {
    let _ = path;
    Ok(Vec::new().into_iter())
}
