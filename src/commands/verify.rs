//! `ssl-lang verify`: the proof table of every objective of the files (see [`crate::verify`]).

use super::{compile_file, device, Edge, Failure};
use crate::error::{Error, ErrorCode};
use crate::verify::World;
use std::path::PathBuf;

/// Verifies every objective of `files` on `device`; prints the table. Any failed check is exit 1.
pub fn run(files: &[PathBuf], device_name: &str, ranks: Option<usize>, edge: &Edge) -> Result<(), Failure> {
    let device = device::open(device_name)?;
    let world = match ranks {
        Some(p) => Some(world(p)?),
        None => None,
    };
    let rank = match &world {
        Some(World::Process(comm)) => comm.rank(),
        _ => 0,
    };
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
            let checked = match &world {
                Some(w) => crate::verify::verify_world(o, w),
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
    if rank == 0 {
        println!("{:<w$} {:<19} {:>12}  {:<6} note", "objective", "check", "max rel err", "result");
    }
    // In a job each rank checks its own rows: rank 0 prints its table, the others only what fails there.
    for r in rows.iter().filter(|r| rank == 0 || !r.pass) {
        if rank > 0 {
            print!("rank {rank}: ");
        }
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

/// Where `verify --ranks P` runs: in an MPI job of P processes, its world; otherwise P ranks in memory.
fn world(ranks: usize) -> Result<World, Error> {
    // The proofs run in f64 on the CPU.
    match super::job::join(&candle_core::Device::Cpu)? {
        Some(comm) if comm.ranks() == ranks => Ok(World::Process(comm)),
        Some(comm) => Err(Error::new(
            ErrorCode::RanksMismatch,
            format!("`--ranks {ranks}` in a job of {} processes", comm.ranks()),
        )
        .help(format!("start it with `mpirun -np {ranks}`, or pass `--ranks {}`", comm.ranks()))),
        None => Ok(World::Memory(ranks)),
    }
}
