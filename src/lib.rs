//! ssl-lang: Siamese self-supervised objectives as data.
//!
//! The pipeline, one module per arrow: [`syntax::parse`] (source → syntax tree) →
//! [`check::check`] (→ typed objective) → [`ir::lower`] (→ gradient IR) → passes
//! ([`ir::reassociate`], [`ir::fuse`]) → [`plan::Plan`] (run on a [`backend`] once per step) →
//! [`runtime::train`] (data, augmentation, online and target networks, optimiser), evaluated by
//! [`eval`].

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod check;
pub mod cli;
pub mod data;
pub mod device;
pub mod diagnostic;
pub mod eval;
pub mod explain;
pub mod grad;
pub mod ir;
pub mod plan;
pub mod render;
pub mod runtime;
pub mod syntax;
pub mod verify;

use diagnostic::Diagnostic;

/// Parses and checks a source file: the front half of the pipeline.
pub fn compile(source: &str) -> (check::typed::Program, Vec<Diagnostic>) {
    let (file, mut diagnostics) = syntax::parse(source);
    let (program, more) = check::check(&file);
    diagnostics.extend(more);
    diagnostics.sort_by_key(|d| d.span().start);
    (program, diagnostics)
}
