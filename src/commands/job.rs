//! Finding the job this process belongs to, from the environment its launcher set: a process started by `mpirun` (or
//! another MPI launcher) is one rank of it, any other process is alone.

use crate::collective::Comm;
use crate::error::{Error, ErrorCode};

/// The environment variables MPI launchers set in every process they start (OpenMPI, PMIx, MPICH/Hydra).
const LAUNCHER_SIZE: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"];

/// The number of processes the launcher started, when one started this process.
pub fn launched_ranks() -> Option<usize> {
    LAUNCHER_SIZE.iter().find_map(|v| std::env::var(v).ok()).and_then(|s| s.trim().parse().ok())
}

/// This process's job: MPI's world under a launcher, `None` when it runs alone. A launch into a build without the
/// `mpi` feature is an error (each process would otherwise train alone, P times over).
pub fn join() -> Result<Option<Comm>, Error> {
    let Some(ranks) = launched_ranks() else { return Ok(None) };
    connect(ranks)
}

#[cfg(feature = "mpi")]
fn connect(_ranks: usize) -> Result<Option<Comm>, Error> {
    match crate::collective::mpi::MpiWorld::init() {
        Some(world) => Ok(Some(Comm::new(world))),
        None => Err(Error::new(ErrorCode::RanksUnavailable, "MPI was initialised twice in this process")
            .help("start one `ssl-lang` command per process")),
    }
}

#[cfg(not(feature = "mpi"))]
fn connect(ranks: usize) -> Result<Option<Comm>, Error> {
    Err(Error::new(
        ErrorCode::RanksUnavailable,
        format!("started by an MPI launcher as one of {ranks} processes, but this ssl-lang was built without MPI"),
    )
    .help("build with `cargo build --release --features mpi` (needs OpenMPI and libclang: `apt install libopenmpi-dev openmpi-bin libclang-dev`)"))
}
