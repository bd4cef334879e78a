//! `ssl-lang verify`: the proof table of every objective of the files (see [`crate::verify`]).

use super::{compile_file, device, Edge, Failure};
use crate::error::Error;
use std::path::PathBuf;

/// Verifies every objective of `files` on `device`; prints the table. Any failed check is exit 1.
pub fn run(files: &[PathBuf], device_name: &str, ranks: Option<usize>, edge: &Edge) -> Result<(), Failure> {
    let device = device::open(device_name)?;
    let mut rows = Vec::new();
    let mut worst = 0u8;
    for path in files {
        let program = match compile_file(path, edge) {
            Ok((_, p)) => p,
            Err(failure) => {
                worst = worst.max(failure.exit_code());
                if let Failure::Error(e) = &failure {
                    edge.report(e);
                }
                continue;
            }
        };
        for o in &program.objectives {
            let checked = match ranks {
                Some(p) => crate::verify::verify_ranks(o, p),
                None => crate::verify::verify(o, &device),
            };
            match checked {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    let e = Error::from(e);
                    edge.report(&Error { message: format!("verifying `{}`: {}", o.name, e.message), ..e.clone() });
                    worst = worst.max(e.exit_code());
                }
            }
        }
    }
    let w = rows.iter().map(|r| r.objective.len()).max().unwrap_or(0).max(9);
    println!("{:<w$} {:<19} {:>12}  {:<6} note", "objective", "check", "max rel err", "result");
    for r in &rows {
        let err = r.max_error.map_or("-".to_string(), |e| format!("{e:.2e}"));
        let result = match (r.pass, r.max_error) {
            (true, Some(_)) => "pass",
            (true, None) => "n/a",
            (false, _) => "FAIL",
        };
        println!("{:<w$} {:<19} {:>12}  {:<6} {}", r.objective, r.check, err, result, r.note);
        if !r.pass {
            worst = worst.max(super::REJECTED);
        }
    }
    if worst == 0 {
        Ok(())
    } else {
        Err(Failure::Reported(worst))
    }
}
