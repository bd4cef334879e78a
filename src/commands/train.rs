//! `ssl-lang train`: compile the file, apply `--set`, train, and print where the run went.

use super::{compile_file, device, select, Edge, Failure};
use crate::backend::Backend;
use crate::nn::LayerImpl;
use crate::runtime::overrides;
use crate::runtime::train::{train, TrainOptions};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Everything `train` is given on the command line.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    /// The .ssl file.
    pub file: PathBuf,
    /// Which objective (default: the one the train block names, else the first).
    pub objective: Option<String>,
    /// `--data DIR`.
    pub data: Option<PathBuf>,
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--runs`.
    pub runs: PathBuf,
    /// `--resume`.
    pub resume: bool,
    /// `--override`.
    pub allow_changes: bool,
    /// `--max-steps`.
    pub max_steps: Option<usize>,
    /// `--limit`.
    pub limit: Option<usize>,
    /// `--backend`.
    pub backend: Backend,
    /// `--log-every`.
    pub log_every: usize,
    /// `--device`.
    pub device: String,
    /// `--layers`.
    pub layers: LayerImpl,
}

/// Exit status of a training stopped by SIGINT, SIGTERM or SIGHUP after writing its checkpoint (128 + SIGINT, as
/// shells report Ctrl-C): not a success, since the run is not finished; `--resume` continues it.
pub const INTERRUPTED: u8 = 130;

/// Trains; `stop` is the flag the binary's signal handler sets.
pub fn run(args: TrainArgs, stop: Arc<AtomicBool>, edge: &Edge) -> Result<(), Failure> {
    let device = device::open(&super::job::device_name(&args.device))?;
    let (source, program) = compile_file(&args.file, edge)?;
    let (mut objective, mut recipe) = select(&program, args.objective.as_deref(), &source.name)?;
    let applied = match overrides::apply(&mut recipe, &mut objective, &args.set) {
        Ok(applied) => applied,
        Err(overrides::SetError::Diagnostics { text, diagnostics }) => {
            edge.diagnostics("--set", &text, &diagnostics);
            return Err(Failure::Reported(super::BAD_USAGE));
        }
        Err(overrides::SetError::Error(e)) => return Err(Failure::Error(e)),
    };
    let job = super::job::join(&device)?;
    let opts = TrainOptions {
        data_dir: args.data,
        runs_root: args.runs,
        name: args.name,
        resume: args.resume,
        allow_changes: args.allow_changes,
        max_steps: args.max_steps,
        limit: args.limit,
        backend: args.backend,
        log_every: args.log_every,
        overrides: applied,
        device,
        layers: args.layers,
        stop,
        edge: *edge,
        job,
    };
    let summary = match train(&source.text, &objective, &recipe, &opts) {
        Ok(summary) => summary,
        // A rank that fails stops the whole job, so that no other rank waits for it in a collective.
        Err(e) => match &opts.job {
            Some(job) if job.ranks() > 1 => {
                edge.report(&crate::error::Error {
                    message: format!("rank {}: {}", job.rank(), e.message),
                    ..e.clone()
                });
                job.abort(e.exit_code() as i32)
            }
            _ => return Err(e.into()),
        },
    };
    if opts.job.as_ref().is_some_and(|j| j.rank() > 0) {
        return Ok(());
    }
    let report = super::report::write_for(&crate::runtime::run::RunDir { path: summary.run_dir.clone() })?;
    println!("report: {}", report.display());
    if summary.interrupted {
        return Err(Failure::Reported(INTERRUPTED));
    }
    let percent = |x: Option<f64>| x.map_or("-".to_string(), |k| format!("{:.2} %", k * 100.0));
    let linear = summary.linear.map_or(String::new(), |l| format!(", linear probe {}", percent(Some(l))));
    println!(
        "done: {} steps, final kNN top-1 {}{linear}; run in {}",
        summary.steps,
        percent(summary.knn),
        summary.run_dir.display()
    );
    Ok(())
}
