//! The collectives over MPI (rsmpi on the system's OpenMPI): `mpirun -np P ssl-lang train …` starts P processes,
//! on one machine or on the hosts `mpirun` is given. Sums are reduced on rank 0 and broadcast, so that every rank
//! holds the same bits (an all-reduce may add in a different order on each rank).

use super::{Buffer, Collective, CollectiveError};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// MPI's world, initialised once for the process (rsmpi refuses a second initialisation).
pub struct MpiWorld {
    // Dropped last: finalises MPI.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    rank: usize,
    ranks: usize,
}

impl MpiWorld {
    /// Initialises MPI (only the thread that calls it may use the world: MPI's handles are not `Send`, so the
    /// compiler keeps it so). `None` when MPI was initialised already.
    pub fn init() -> Option<MpiWorld> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        let (rank, ranks) = (world.rank() as usize, world.size() as usize);
        Some(MpiWorld { _universe: universe, world, rank, ranks })
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        f(&self.world)
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        let len = local.len();
        // A rank with a different length would make MPI read out of bounds: agree on it first.
        let mut lengths = vec![0u64; self.ranks];
        self.with(|w| w.all_gather_into(&(len as u64), &mut lengths[..]));
        if lengths.iter().any(|&l| l as usize != len) {
            return Err(CollectiveError::new(format!("ranks gathered buffers of lengths {lengths:?}")));
        }
        Ok(match local {
            Buffer::F32(v) => {
                let mut out = vec![0f32; len * self.ranks];
                self.with(|w| w.all_gather_into(&v[..], &mut out[..]));
                Buffer::F32(out)
            }
            Buffer::F64(v) => {
                let mut out = vec![0f64; len * self.ranks];
                self.with(|w| w.all_gather_into(&v[..], &mut out[..]));
                Buffer::F64(out)
            }
        })
    }

    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        let mut out = local.clone();
        self.with(|w| {
            let root = w.process_at_rank(0);
            match (local, &mut out) {
                (Buffer::F32(v), Buffer::F32(o)) => {
                    if self.rank == 0 {
                        root.reduce_into_root(&v[..], &mut o[..], SystemOperation::sum());
                    } else {
                        root.reduce_into(&v[..], SystemOperation::sum());
                    }
                    root.broadcast_into(&mut o[..]);
                }
                (Buffer::F64(v), Buffer::F64(o)) => {
                    if self.rank == 0 {
                        root.reduce_into_root(&v[..], &mut o[..], SystemOperation::sum());
                    } else {
                        root.reduce_into(&v[..], SystemOperation::sum());
                    }
                    root.broadcast_into(&mut o[..]);
                }
                _ => unreachable!("out is a clone of local"),
            }
        });
        Ok(out)
    }

    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError> {
        let mut len = buffer.len() as u64;
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(&mut len));
        if self.rank != root {
            *buffer = match buffer {
                Buffer::F32(_) => Buffer::F32(vec![0.0; len as usize]),
                Buffer::F64(_) => Buffer::F64(vec![0.0; len as usize]),
            };
        }
        self.with(|w| {
            let root = w.process_at_rank(root as i32);
            match buffer {
                Buffer::F32(v) => root.broadcast_into(&mut v[..]),
                Buffer::F64(v) => root.broadcast_into(&mut v[..]),
            }
        });
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.with(|w| w.abort(code))
    }
}
