//! Snapshot tests of diagnostics: every `tests/ui/*.ssl` file is compiled and its diagnostics are
//! rendered exactly as `ssl-lang check` prints them (no colour, width 80), next to the source.
//! Review changes with `INSTA_UPDATE=new cargo test --test ui` and read every `.snap.new`.

use ssl_lang::diagnostic::{Code, Diagnostic};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The source and the rendered diagnostics of one file, as one snapshot body.
fn report(path: &Path) -> (String, Vec<Diagnostic>) {
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = path.file_name().expect("a file name").to_string_lossy();
    let (_, diagnostics) = ssl_lang::compile(&source);
    let rendered: Vec<String> =
        diagnostics.iter().map(|d| ssl_lang::render::human(d, &name, &source, false, 80)).collect();
    let rendered = if rendered.is_empty() { "(none)\n".to_string() } else { rendered.concat() };
    (format!("----- SOURCE\n{source}----- DIAGNOSTICS\n{rendered}"), diagnostics)
}

#[test]
fn ui() {
    insta::glob!("ui/*.ssl", |path| {
        let (body, _) = report(path);
        insta::assert_snapshot!(body);
    });
}

fn ui_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/ui exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ssl"))
        .collect();
    files.sort();
    files
}

/// A new diagnostic code without a ui file that produces it fails here.
#[test]
fn every_code_has_a_ui_test() {
    let mut seen = BTreeSet::new();
    for path in ui_files() {
        let (_, diagnostics) = report(&path);
        seen.extend(diagnostics.iter().map(|d| d.code.as_str()));
    }
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|&&c| c != Code::Encoding) // only the CLI reports it, for bytes that are not UTF-8
        .map(|c| c.as_str())
        .filter(|c| !seen.contains(c))
        .collect();
    assert!(missing.is_empty(), "codes no tests/ui file produces: {missing:?}");
}

/// Each ui file is a deliberate mistake and must produce a diagnostic, except the `ok_*` files,
/// borderline inputs that must stay clean.
#[test]
fn ui_files_report_exactly_when_they_should() {
    for path in ui_files() {
        let (_, diagnostics) = report(&path);
        let clean = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ok_"));
        if clean {
            assert!(diagnostics.is_empty(), "{} should be clean", path.display());
        } else {
            assert!(!diagnostics.is_empty(), "{} produces no diagnostic", path.display());
        }
    }
}
