//! ssl-lang: Siamese self-supervised objectives as data.
//!
//! The pipeline: [`syntax::parse`] → [`check::check`] → (lowering and kernels follow).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod diagnostic;
pub mod syntax;

use diagnostic::Diagnostic;

/// Parses and checks a source file: the front half of the pipeline.
pub fn compile(source: &str) -> (check::typed::Program, Vec<Diagnostic>) {
    let (file, mut diagnostics) = syntax::parse(source);
    let (program, more) = check::check(&file);
    diagnostics.extend(more);
    diagnostics.sort_by_key(|d| d.span().start);
    (program, diagnostics)
}
pub mod backend;
pub mod cli;
pub mod explain;
pub mod grad;
pub mod ir;
pub mod plan;
pub mod render;
pub mod verify;
