//! The edge of the crate: one file per CLI command, each turning its arguments into calls of the library and its
//! results into text. What they share is here: reading and compiling a source, choosing the objective, and the one
//! place where failures are rendered ([`Edge::report`]) and exit codes decided ([`Failure::exit_code`]).
//! Environment variables are read here and nowhere else in the library.

pub mod alloc;
pub mod bench;
pub mod check;
pub mod device;
pub mod eval;
pub mod explain;
pub mod export;
pub mod grad;
pub mod job;
pub mod report;
pub mod sweep;
pub mod train;
pub mod verify;

use crate::check::recipe::Recipe;
use crate::check::typed::{Objective, Program};
use crate::diagnostic::{Code, Diagnostic, Span};
use crate::error::{Error, ErrorCode};
pub use crate::render::{Edge, Format};
use std::io::IsTerminal;
use std::path::Path;

impl Edge {
    /// The edge for `format`, with colour when stderr is a terminal and `NO_COLOR` is unset.
    pub fn new(format: Format) -> Self {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Edge { format, color }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// A runtime error, not yet reported.
    Error(Error),
    /// Problems already reported (diagnostics, or several errors): the exit status to end with.
    Reported(u8),
}

/// Exit status of a source that has errors (or warnings under `--deny-warnings`): the input is wrong.
pub const REJECTED: u8 = 1;
/// Exit status of a command line that is wrong (a `--set` that does not check): usage.
pub const BAD_USAGE: u8 = 2;

impl Failure {
    /// The exit status: the error's class decides (1 the input is wrong, 2 usage or I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Error(e) => e.exit_code(),
            Failure::Reported(code) => *code,
        }
    }
}

impl<E: Into<Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

/// A source file, read and decoded.
pub struct Source {
    /// The path as given.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Reads a source file; bytes that are not UTF-8 are reported as a diagnostic.
pub fn read(path: &Path, edge: &Edge) -> Result<Source, Failure> {
    let name = path.display().to_string();
    let bytes = crate::files::read_bounded(path, crate::files::SOURCE_LIMIT).map_err(|e| {
        let help = match e {
            crate::files::ReadError::TooLarge { .. } => "an objective file is text of a few kilobytes: check the path",
            _ => "give the path of a `.ssl` file; `ls` shows what is there",
        };
        Error::new(ErrorCode::SourceRead, format!("cannot read `{name}`: it {e}")).help(help)
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source { name, text }),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let d = Diagnostic::new(
                Code::Encoding,
                "the file is not valid UTF-8",
                Span::new(at, at + 1),
                "invalid byte here",
            )
            .help("save the file as UTF-8");
            edge.diagnostics(&name, &text, &[d]);
            Err(Failure::Reported(REJECTED))
        }
    }
}

/// Reads and compiles a file, reporting its diagnostics; the program if it has no errors.
pub fn compile_file(path: &Path, edge: &Edge) -> Result<(Source, Program), Failure> {
    let source = read(path, edge)?;
    let (program, diagnostics) = crate::compile(&source.text);
    edge.diagnostics(&source.name, &source.text, &diagnostics);
    if crate::diagnostic::has_errors(&diagnostics) {
        return Err(Failure::Reported(REJECTED));
    }
    Ok((source, program))
}

/// The objective `wanted` names (default: the one the train block names, else the first) and its recipe (the file's
/// own when its train block names this objective, else the defaults).
pub fn select(program: &Program, wanted: Option<&str>, file: &str) -> Result<(Objective, Recipe), Error> {
    let wanted = wanted.or(program.recipe_target.as_deref());
    let Some(o) = program.objective(wanted) else {
        let names: Vec<&str> = program.objectives.iter().map(|o| o.name.as_str()).collect();
        return Err(Error::new(
            ErrorCode::NoObjective,
            format!("no objective `{}` in `{file}`", wanted.unwrap_or("?")),
        )
        .help(format!("it has: {}", if names.is_empty() { "none".to_string() } else { names.join(", ") })));
    };
    let recipe = if program.recipe_target.as_deref() == Some(o.name.as_str()) {
        program.recipe.clone()
    } else {
        Recipe::default()
    };
    Ok((o.clone(), recipe))
}

/// The latest checkpoint of `run` for a command that reads one (`eval`, `export`): a fallback to the previous one
/// is reported as a warning, none at all is `ssl::run::no_checkpoint`.
pub fn latest_checkpoint(
    run: &crate::runtime::run::RunDir,
    edge: &Edge,
) -> Result<crate::runtime::run::Loaded, Failure> {
    let Some(loaded) = run.load_checkpoint()? else {
        return Err(Error::new(
            ErrorCode::RunNoCheckpoint,
            format!("run {} has no checkpoint yet", run.path.display()),
        )
        .help("let the run reach its first checkpoint (every `checkpoint` epochs, and at the end)")
        .into());
    };
    if let Some(warning) = loaded.fallback_warning() {
        edge.report(&warning);
    }
    Ok(loaded)
}

/// The objective and recipe a saved run trained: its `config.json`'s source compiled again, the objective it names
/// selected and its overrides applied. `ssl::run::stale` when this version no longer reads them so.
pub fn saved_objective(
    run: &crate::runtime::run::RunDir,
    config: &crate::runtime::run::RunConfig,
) -> Result<(Program, Objective, Recipe), Error> {
    let stale = |why: String| {
        Error::new(ErrorCode::RunStale, format!("run {}: {why}", run.path.display()))
            .help("read it with the ssl-lang version that wrote it (config.json names it), or train it again")
    };
    let (program, diagnostics) = crate::compile(&config.source);
    if crate::diagnostic::has_errors(&diagnostics) {
        return Err(stale("its saved objective no longer checks".into()));
    }
    let (mut objective, mut recipe) = select(&program, Some(&config.objective), "config.json")
        .map_err(|e| stale(format!("its saved source has no objective `{}` ({})", config.objective, e.message)))?;
    let sets: Vec<String> = config.overrides.iter().map(|s| s.replacen(" = ", "=", 1)).collect();
    crate::runtime::overrides::apply(&mut recipe, &mut objective, &sets)
        .map_err(|_| stale("its saved overrides no longer apply".into()))?;
    Ok((program, objective, recipe))
}
