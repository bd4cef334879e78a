//! `ssl-lang report RUN...`: rebuilds a run's `report.html` (every training writes one), or puts several runs on
//! one page, compared in a table and then one by one.

use super::{saved_objective, Failure};
use crate::error::{Error, ErrorCode};
use crate::runtime::report::{html, RunReport};
use crate::runtime::run::{write_atomic, RunDir};
use std::path::{Path, PathBuf};

/// The file every run directory gets.
pub const REPORT_FILE: &str = "report.html";

/// Writes the report of `runs` to `out` (default: the run's own `report.html` for one run, `report.html` here for
/// several) and prints where.
pub fn run(runs: &[PathBuf], out: Option<&Path>) -> Result<(), Failure> {
    let dirs = runs.iter().map(|r| RunDir::open(r)).collect::<Result<Vec<_>, _>>()?;
    let out = match (out, dirs.as_slice()) {
        (Some(out), _) => out.to_path_buf(),
        (None, [one]) => one.file(REPORT_FILE),
        _ => PathBuf::from(REPORT_FILE),
    };
    write(&dirs, &out)?;
    println!("report: {}", out.display());
    Ok(())
}

/// Writes the report of the run directory into it; training calls this at its end (or interruption).
pub fn write_for(run: &RunDir) -> Result<PathBuf, Error> {
    let out = run.file(REPORT_FILE);
    write(std::slice::from_ref(run), &out)?;
    Ok(out)
}

fn write(dirs: &[RunDir], out: &Path) -> Result<(), Error> {
    let mut configs = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let config = dir.read_config()?;
        let records = dir.read_metrics()?;
        let unified_form = match saved_objective(dir, &config) {
            Ok((program, objective, _)) => super::explain::explain(&program, &objective),
            Err(e) => format!("(not available: {})", e.message),
        };
        configs.push((dir, config, records, unified_form));
    }
    let reports: Vec<RunReport> = configs
        .iter()
        .map(|(dir, config, records, unified_form)| RunReport {
            name: dir.path.file_name().map_or_else(|| dir.path.display().to_string(), |n| n.to_string_lossy().into()),
            config,
            records,
            unified_form,
        })
        .collect();
    let page = html(&reports).map_err(|reason| {
        Error::new(ErrorCode::RunPlot, format!("cannot render `{}`: {reason}", out.display()))
            .help("the metrics are intact in metrics.jsonl; render the report again with `ssl-lang report RUN`")
    })?;
    Ok(write_atomic(out, page.as_bytes())?)
}
