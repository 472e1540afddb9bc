//! The shape of the source tree, checked: which modules may import which, and that
//! ARCHITECTURE.md's codemap names every file in `src/` and nothing that is gone.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as a path relative to the crate root (`src/ledger/tx.rs`).
fn rust_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root()).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// `config` builds values for the layers below `cmd/`; none of them may import it (fd's
/// `Config` depends on nothing above it), so no module below can form a cycle with it.
#[test]
fn nothing_below_cmd_imports_config() {
    let files = rust_files(&root().join("src"));
    assert!(files.len() > 20, "{files:?}");
    let allowed = |f: &str| {
        f.starts_with("src/cmd/")
            || ["src/cli.rs", "src/config.rs", "src/lib.rs", "src/main.rs"].contains(&f)
    };
    let offenders: Vec<&String> = files
        .iter()
        .filter(|f| !allowed(f))
        .filter(|f| {
            let text = std::fs::read_to_string(root().join(f)).unwrap();
            text.contains("crate::config") || text.contains("spoolreplay::config")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "these import `config`; move the type they need next to its user: {offenders:?}"
    );
}

/// The paths ARCHITECTURE.md names in backticks that point into the repository.
fn codemap_paths(text: &str) -> Vec<String> {
    const ROOTS: [&str; 7] = [
        "src/",
        "tests/",
        "fixtures/",
        "bench/",
        "examples/",
        "scripts/",
        ".ci/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| ROOTS.iter().any(|r| t.starts_with(r)))
        .filter(|t| !t.contains(['<', '{', '*', ' ']))
        .map(str::to_string)
        .collect()
}

/// The codemap is true: every file in `src/` has its row, and every path it names exists
/// (a file moved or removed takes its row along).
#[test]
fn the_codemap_names_every_source_file_and_nothing_gone() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let named = codemap_paths(&text);
    let files = rust_files(&root().join("src"));
    assert!(files.len() > 20, "{files:?}");
    let missing: Vec<&String> = files.iter().filter(|f| !named.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's codemap has no row for {missing:?}"
    );
    let gone: Vec<&String> = named.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {gone:?}"
    );
}
