//! Snapshot tests of `ssl-lang explain` for every standard objective: the typed unified form
//! (terms with types and shapes, params, states, family, recipe) exactly as it is printed.

#[test]
fn explain_standard_objectives() {
    insta::glob!(concat!(env!("CARGO_MANIFEST_DIR"), "/objectives"), "*.ssl", |path| {
        let source = std::fs::read_to_string(path).expect("a readable objective");
        let (program, diagnostics) = ssl_lang::compile(&source);
        assert!(diagnostics.is_empty(), "{} has diagnostics: {diagnostics:?}", path.display());
        let explained: Vec<String> =
            program.objectives.iter().map(|o| ssl_lang::commands::explain::explain(&program, o)).collect();
        assert!(!explained.is_empty(), "{} has no objective", path.display());
        insta::assert_snapshot!(explained.join("\n"));
    });
}

/// The borderline-but-clean ui inputs: a one-view objective without a train block (recipe
/// defaults), declarations after their uses.
#[test]
fn explain_clean_ui_inputs() {
    insta::glob!("ui/ok_*.ssl", |path| {
        let source = std::fs::read_to_string(path).expect("a readable input");
        let (program, diagnostics) = ssl_lang::compile(&source);
        assert!(diagnostics.is_empty(), "{} has diagnostics: {diagnostics:?}", path.display());
        let explained: Vec<String> =
            program.objectives.iter().map(|o| ssl_lang::commands::explain::explain(&program, o)).collect();
        insta::assert_snapshot!(explained.join("\n"));
    });
}
