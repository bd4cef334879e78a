//! ssl-lang: Siamese self-supervised objectives as data.
//!
//! The compiler: [`syntax::parse`] (source → syntax tree) → [`check::check`] (→ typed objective) → [`ir::lower`]
//! (→ gradient IR) → [`ir::optimize`] (the passes) → [`plan::Plan`] (run on a [`backend`] once per step).
//!
//! The execution: [`data`] (sources, augmentation) → [`nn`] (the Siamese network on our [`kernels`]) →
//! [`runtime::train`] (the loop: plan, backward, optimiser, EMA target; run directory and checkpoints), measured
//! by [`eval`]. [`commands`] is the edge: one file per CLI command, where errors ([`error`]) and diagnostics are
//! rendered.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod check;
pub mod cli;
mod code_table;
pub mod collective;
pub mod commands;
pub mod data;
pub mod diagnostic;
pub mod error;
pub mod eval;
pub mod files;
pub mod ir;
pub mod kernels;
pub mod nn;
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
