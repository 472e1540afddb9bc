//! The one golden-file check, for the integration tests and (by `#[path]`) the DSN unit
//! tests: byte-exact; on a mismatch it writes the output next to the golden
//! (`<case>.expected.eml` → `<case>.actual`, other names get `.actual` appended) and fails
//! naming both; `UPDATE_GOLDEN=1` rewrites the golden instead.

use std::path::{Path, PathBuf};

fn actual_path(expected: &Path) -> PathBuf {
    let name = expected.file_name().unwrap_or_default().to_string_lossy();
    let actual = match name.strip_suffix(".expected.eml") {
        Some(case) => format!("{case}.actual"),
        None => format!("{name}.actual"),
    };
    expected.with_file_name(actual)
}

/// Whether `UPDATE_GOLDEN` asks for the goldens to be rewritten (set, and not `0`).
fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

#[track_caller]
pub(crate) fn check_golden_file(expected_path: &Path, actual: &[u8]) {
    let actual_path = actual_path(expected_path);
    if updating() {
        if let Some(dir) = expected_path.parent() {
            std::fs::create_dir_all(dir).expect("create the golden folder");
        }
        std::fs::write(expected_path, actual).expect("write golden");
        let _ = std::fs::remove_file(&actual_path);
        return;
    }
    let expected = std::fs::read(expected_path);
    if expected.as_deref().is_ok_and(|e| e == actual) {
        let _ = std::fs::remove_file(&actual_path);
        return;
    }
    std::fs::write(&actual_path, actual).expect("write .actual");
    let why = match expected {
        Ok(_) => "differs from".to_string(),
        Err(e) => format!("has no golden ({e}) at"),
    };
    panic!(
        "the output {why} {}; got {} (UPDATE_GOLDEN=1 regenerates)",
        expected_path.display(),
        actual_path.display()
    );
}
