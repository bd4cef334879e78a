//! Finding the job this process belongs to, from the environment its launcher set: a process started by `mpirun` (or
//! another MPI launcher) is one rank of it, any other process is alone.

use crate::collective::Comm;
use crate::error::{Error, ErrorCode};
use candle_core::Device;

/// The environment variables MPI launchers set in every process they start (OpenMPI, PMIx, MPICH/Hydra).
const LAUNCHER_SIZE: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"];

/// The variables that give a process's rank among those on its own host (OpenMPI, MPICH/Hydra).
const LAUNCHER_LOCAL_RANK: &[&str] = &["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"];

/// The number of processes the launcher started, when one started this process.
pub fn launched_ranks() -> Option<usize> {
    LAUNCHER_SIZE.iter().find_map(|v| std::env::var(v).ok()).and_then(|s| s.trim().parse().ok())
}

/// The device a rank of a job opens for `--device NAME`: a bare `cuda` means the GPU of the process's rank on its
/// host (`cuda:LOCAL_RANK`), so that the ranks of one machine do not all share its first GPU.
pub fn device_name(name: &str) -> String {
    let local =
        LAUNCHER_LOCAL_RANK.iter().find_map(|v| std::env::var(v).ok()).and_then(|s| s.trim().parse::<usize>().ok());
    match (name, launched_ranks(), local) {
        ("cuda", Some(_), Some(rank)) => format!("cuda:{rank}"),
        (name, ..) => name.to_string(),
    }
}

/// This process's job on `device`: MPI's world under a launcher (with NCCL for CUDA tensors when `device` is a
/// GPU), `None` when it runs alone. A launch into a build without the `mpi` feature is an error (each process would
/// otherwise train alone, P times over).
pub fn join(device: &Device) -> Result<Option<Comm>, Error> {
    let Some(ranks) = launched_ranks() else { return Ok(None) };
    connect(ranks, device)
}

#[cfg(feature = "mpi")]
fn connect(_ranks: usize, device: &Device) -> Result<Option<Comm>, Error> {
    let world = crate::collective::mpi::MpiWorld::init().map_err(|e| {
        Error::new(ErrorCode::RanksUnavailable, e.to_string()).help("start one `ssl-lang` command per process")
    })?;
    on_device(world, device).map(Some)
}

/// MPI alone: this build has no NCCL (a GPU rank then exchanges through host buffers).
#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn on_device(world: crate::collective::mpi::MpiWorld, _: &Device) -> Result<Comm, Error> {
    Ok(Comm::new(world))
}

/// On a GPU, CUDA tensors travel over NCCL.
#[cfg(feature = "nccl")]
fn on_device(world: crate::collective::mpi::MpiWorld, device: &Device) -> Result<Comm, Error> {
    let Device::Cuda(gpu) = device else { return Ok(Comm::new(world)) };
    crate::collective::nccl::NcclWorld::new(world, gpu).map(Comm::new).map_err(|e| {
        Error::new(ErrorCode::RanksUnavailable, format!("cannot join NCCL on {device:?}: {e}"))
            .help("check that every rank has its own GPU (`nvidia-smi`; NCCL refuses two ranks on one), or train with `--device cpu`")
    })
}

#[cfg(not(feature = "mpi"))]
fn connect(ranks: usize, _: &Device) -> Result<Option<Comm>, Error> {
    Err(Error::new(
        ErrorCode::RanksUnavailable,
        format!("started by an MPI launcher as one of {ranks} processes, but this ssl-lang was built without MPI"),
    )
    .help("build with `cargo build --release --features mpi` (needs OpenMPI and libclang: `apt install libopenmpi-dev openmpi-bin libclang-dev`)"))
}
