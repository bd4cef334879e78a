//! `ssl-lang check`: every error and warning of each file, and one status line per file.

use super::{read, Edge, Failure, Format, REJECTED};
use crate::diagnostic::Severity;
use crate::render;
use std::path::PathBuf;

/// Checks `files`; the worst outcome decides the exit status (a file with errors 1, an unreadable file 2). With JSON,
/// each diagnostic is one object on stdout.
pub fn run(files: &[PathBuf], deny_warnings: bool, edge: &Edge) -> Result<(), Failure> {
    let mut worst = 0u8;
    for path in files {
        let source = match read(path, edge) {
            Ok(s) => s,
            Err(failure) => {
                worst = worst.max(failure.exit_code());
                if let Failure::Error(e) = &failure {
                    edge.report(e);
                }
                continue;
            }
        };
        let (program, diagnostics) = crate::compile(&source.text);
        match edge.format {
            Format::Human => edge.diagnostics(&source.name, &source.text, &diagnostics),
            Format::Json => {
                for d in &diagnostics {
                    println!("{}", render::json(d, &source.name, &source.text));
                }
            }
        }
        let errors = diagnostics.iter().filter(|d| d.severity() == Severity::Error).count();
        let warnings = diagnostics.len() - errors;
        let failed = errors > 0 || (deny_warnings && warnings > 0);
        if failed {
            worst = worst.max(REJECTED);
        }
        if edge.format == Format::Human {
            let names: Vec<&str> = program.objectives.iter().map(|o| o.name.as_str()).collect();
            println!(
                "{}: {} ({} error{}, {} warning{}; objectives: {})",
                source.name,
                if failed { "FAILED" } else { "ok" },
                errors,
                if errors == 1 { "" } else { "s" },
                warnings,
                if warnings == 1 { "" } else { "s" },
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            );
        }
    }
    if worst == 0 {
        Ok(())
    } else {
        Err(Failure::Reported(worst))
    }
}
