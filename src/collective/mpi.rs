//! The collectives over MPI (rsmpi on the system's OpenMPI): `mpirun -np P ssl-lang train …` starts P processes,
//! on one machine or on the hosts `mpirun` is given. Sums are reduced on rank 0 and broadcast, so that every rank
//! holds the same bits (an all-reduce may add in a different order on each rank).

use super::{Buffer, Collective, CollectiveError};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
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

    /// Every rank's `local`, concatenated in rank order.
    fn gather<T: Equivalence + Copy + Default>(&self, local: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); local.len() * self.ranks];
        self.world.all_gather_into(local, &mut out[..]);
        out
    }

    /// The element-wise sum over ranks, reduced on rank 0 and broadcast from it.
    fn sum<T: Equivalence + Copy>(&self, local: &[T]) -> Vec<T> {
        let mut out = local.to_vec();
        let root = self.world.process_at_rank(0);
        if self.rank == 0 {
            root.reduce_into_root(local, &mut out[..], SystemOperation::sum());
        } else {
            root.reduce_into(local, SystemOperation::sum());
        }
        root.broadcast_into(&mut out[..]);
        out
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
        // A rank with a different length would make MPI read out of bounds: agree on it first.
        let lengths = self.gather(&[local.len() as u64]);
        if lengths.iter().any(|&l| l as usize != local.len()) {
            return Err(CollectiveError::new(format!("ranks gathered buffers of lengths {lengths:?}")));
        }
        Ok(match local {
            Buffer::F32(v) => Buffer::F32(self.gather(v)),
            Buffer::F64(v) => Buffer::F64(self.gather(v)),
        })
    }

    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        Ok(match local {
            Buffer::F32(v) => Buffer::F32(self.sum(v)),
            Buffer::F64(v) => Buffer::F64(self.sum(v)),
        })
    }

    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = buffer.len() as u64;
        root.broadcast_into(&mut len);
        if self.rank != root.rank() as usize {
            *buffer = match buffer {
                Buffer::F32(_) => Buffer::F32(vec![0.0; len as usize]),
                Buffer::F64(_) => Buffer::F64(vec![0.0; len as usize]),
            };
        }
        match buffer {
            Buffer::F32(v) => root.broadcast_into(&mut v[..]),
            Buffer::F64(v) => root.broadcast_into(&mut v[..]),
        }
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
