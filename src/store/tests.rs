//! Tests of the seam itself: which way the imports go.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of `files` that are code (not comments) and contain `needle`.
fn code_lines_with(files: &[PathBuf], needle: &str) -> Vec<(PathBuf, usize, String)> {
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") && line.contains(needle) {
                out.push((path.clone(), n + 1, line.to_string()));
            }
        }
    }
    out
}

/// The store depends on nothing above it: only on these leaf modules (see
/// the module docs and `docs/architecture.md`).
#[test]
fn the_store_imports_nothing_from_the_layers_above() {
    const BELOW: [&str; 6] = ["store", "crypto", "failpoint", "fsutil", "timefmt", "secret"];
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store"), &mut files);
    assert!(files.len() > 10, "the walk found the store's files");
    let mut upward = Vec::new();
    for (path, n, line) in code_lines_with(&files, "crate::") {
        for (i, _) in line.match_indices("crate::") {
            let module: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !module.is_empty() && !BELOW.contains(&module.as_str()) {
                upward.push(format!("{}:{n}: crate::{module}", path.display()));
            }
        }
    }
    assert!(upward.is_empty(), "store/ imports from above: {upward:#?}");
}

/// Nothing above the store knows which backend it talks to: no code
/// outside `src/store` names sled or the embedded backend's modules, so a
/// second backend behind [`super::Backend`] changes none of it.
#[test]
fn the_layers_above_see_only_the_seam() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|p| !p.starts_with(src.join("store")));
    assert!(files.len() > 20, "the walk found the layers above");
    let mut leaks = Vec::new();
    for needle in [
        "sled",
        "embedded::",
        "Embedded",
        "store::log",
        "keyring::",
        "Postgres::",
        "postgres::",
    ] {
        for (path, n, line) in code_lines_with(&files, needle) {
            leaks.push(format!("{}:{n}: {}", path.display(), line.trim()));
        }
    }
    assert!(leaks.is_empty(), "backend details above the seam: {leaks:#?}");
}
