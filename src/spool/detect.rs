//! Telling a spool's format from what is at its path (`spoolreplay ingest` without
//! `--format`): the folders and files each MTA or mail store leaves.

use std::path::Path;

use super::{Links, SpoolError, SpoolFormat, eml, exim, open_file, postfix};

/// Looks at `path` and says which format it is: a directory with `new/` or `cur/` is a
/// Maildir, a Postfix queue or Exim spool by their folders and files, a directory with
/// `.eml` files (at the top or in subfolders, see `has_eml_within`) an eml folder, a
/// regular file whose first line starts with `From ` an mbox.
pub fn detect(path: &Path) -> Result<SpoolFormat, SpoolError> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpoolError::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(SpoolError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let found = if metadata.is_dir() {
        detect_dir(path)?
    } else if metadata.is_file() {
        detect_file(path)?
    } else {
        None
    };
    found.ok_or_else(|| SpoolError::Unrecognized {
        path: path.to_path_buf(),
        why: "looked for a Postfix queue directory (`deferred/`, `active/`, `incoming/`, \
              `hold/` or `maildrop/`), an Exim spool (`input/` or `*-H` files), a directory \
              with `new/` or `cur/` (maildir), a directory with `.eml` files, at the top or \
              in subfolders (eml), and a file whose first line starts with `From ` (mbox)"
            .into(),
    })
}

fn detect_dir(path: &Path) -> Result<Option<SpoolFormat>, SpoolError> {
    if path.join("new").is_dir() || path.join("cur").is_dir() {
        return Ok(Some(SpoolFormat::Maildir));
    }
    // MTA queues before the looser `.eml` check.
    if postfix::looks_like_queue(path) {
        return Ok(Some(SpoolFormat::Postfix));
    }
    if exim::looks_like_spool(path) {
        return Ok(Some(SpoolFormat::Exim));
    }
    let has_eml =
        has_eml_within(path, DETECT_DEPTH, &mut { DETECT_ENTRIES }).map_err(|source| {
            SpoolError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    Ok(has_eml.then_some(SpoolFormat::Eml))
}

/// How deep detection looks for `.eml` files below the spool folder (`2023/01/x.eml`).
const DETECT_DEPTH: usize = 3;
/// How many directory entries detection reads at most, so a huge folder that is no spool
/// is refused quickly instead of walked.
const DETECT_ENTRIES: usize = 10_000;

/// Whether an `.eml` file sits in `dir` or in a subfolder at most `depth` levels down,
/// reading at most `budget` entries in all. Each folder's own files are looked at before
/// its subfolders (in name order), which are not followed through symlinks, like the
/// reader. A folder without `.eml` files of its own that holds another spool (a Maildir
/// folder, an mbox file) is a folder of spools, not an eml spool: the operator names the
/// one meant. Only the top folder's listing failing is an error.
fn has_eml_within(dir: &Path, depth: usize, budget: &mut usize) -> std::io::Result<bool> {
    let mut subfolders = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if *budget == 0 {
            return Ok(false);
        }
        *budget -= 1;
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subfolders.push(entry.path());
        } else if eml::is_eml_name(&name) {
            return Ok(true);
        } else {
            files.push(entry.path());
        }
    }
    if depth == 0 {
        return Ok(false);
    }
    let other_spool = subfolders
        .iter()
        .any(|d| d.join("new").is_dir() || d.join("cur").is_dir())
        || files
            .iter()
            .any(|f| matches!(detect_file(f), Ok(Some(SpoolFormat::Mbox))));
    if other_spool {
        return Ok(false);
    }
    subfolders.sort();
    for sub in subfolders {
        if has_eml_within(&sub, depth - 1, budget).unwrap_or(false) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn detect_file(path: &Path) -> Result<Option<SpoolFormat>, SpoolError> {
    use std::io::Read;
    let mut start = [0u8; 5];
    let (mut file, _) = open_file(path, Links::Follow).map_err(|e| SpoolError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let mut filled = 0;
    while filled < start.len() {
        match file.read(&mut start[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SpoolError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok((&start[..filled] == b"From ").then_some(SpoolFormat::Mbox))
}
