//! The collectives over MPI (rsmpi on the system's OpenMPI): `mpirun -np P ssl-lang train …` starts P processes,
//! on one machine or on the hosts `mpirun` is given. Sums are reduced on rank 0 and broadcast, so that every rank
//! holds the same bits (an all-reduce may add in a different order on each rank).
//!
//! MPI's handles belong to the thread that initialised MPI (they are not `Send`), while a collective may be called
//! from any thread (a kernel's backward). So one thread of our own initialises MPI, owns the world and serves the
//! requests of [`MpiWorld`], a handle any thread may hold; dropping the handle finalises MPI on that thread.

use super::server::Server;
use super::{Buffer, Collective, CollectiveError};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::mpsc::{Receiver, Sender};

type Reply = Sender<Result<Buffer, CollectiveError>>;

/// What the MPI thread is asked to do.
enum Request {
    Gather(Buffer, Reply),
    Sum(Buffer, Reply),
    Broadcast(Buffer, usize, Reply),
    Abort(i32),
}

/// A handle on MPI's world, served by the thread that initialised MPI (once per process: rsmpi refuses a second
/// initialisation).
pub struct MpiWorld {
    server: Server<Request>,
    rank: usize,
    ranks: usize,
}

impl MpiWorld {
    /// Initialises MPI on a thread of its own; fails when MPI was initialised already.
    pub fn init() -> Result<MpiWorld, CollectiveError> {
        let setup = || {
            // Funneled: only this thread, the one that initialises MPI, ever calls it.
            let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
                .ok_or_else(|| CollectiveError::new("MPI was initialised twice in this process"))?;
            let world = Served { world: universe.world() };
            let told = (world.rank(), world.world.size() as usize);
            Ok(((universe, world), told))
        };
        // `universe` is dropped after the last request: MPI is finalised on its own thread.
        let serve = |(_universe, world): (mpi::environment::Universe, Served), inbox| world.serve(inbox);
        let (server, (rank, ranks)) = Server::start("MPI", setup, serve)?;
        Ok(MpiWorld { server, rank, ranks })
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
        self.server.ask(|reply| Request::Gather(local.clone(), reply))
    }

    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        self.server.ask(|reply| Request::Sum(local.clone(), reply))
    }

    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError> {
        *buffer = self.server.ask(|reply| Request::Broadcast(buffer.clone(), root, reply))?;
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        if self.server.send(Request::Abort(code)).is_ok() {
            // MPI's abort ends this process (and the job); should the thread be gone, leave by ourselves.
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
        std::process::exit(code)
    }
}

/// The world, on the thread that initialised MPI.
struct Served {
    world: SimpleCommunicator,
}

impl Served {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Answers requests, one at a time and in the order they come, until every handle is dropped.
    fn serve(&self, inbox: Receiver<Request>) {
        for request in inbox {
            let (answer, reply) = match request {
                Request::Gather(local, reply) => (self.all_gather(&local), reply),
                Request::Sum(local, reply) => (Ok(self.all_reduce_sum(&local)), reply),
                Request::Broadcast(buffer, root, reply) => (Ok(self.broadcast(buffer, root)), reply),
                Request::Abort(code) => self.world.abort(code),
            };
            let _ = reply.send(answer);
        }
    }

    /// Every rank's `local`, concatenated in rank order.
    fn gather<T: Equivalence + Copy + Default>(&self, local: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); local.len() * self.world.size() as usize];
        self.world.all_gather_into(local, &mut out[..]);
        out
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

    /// The element-wise sum over ranks, reduced on rank 0 and broadcast from it.
    fn sum<T: Equivalence + Copy>(&self, local: &[T]) -> Vec<T> {
        let mut out = local.to_vec();
        let root = self.world.process_at_rank(0);
        if self.rank() == 0 {
            root.reduce_into_root(local, &mut out[..], SystemOperation::sum());
        } else {
            root.reduce_into(local, SystemOperation::sum());
        }
        root.broadcast_into(&mut out[..]);
        out
    }

    fn all_reduce_sum(&self, local: &Buffer) -> Buffer {
        match local {
            Buffer::F32(v) => Buffer::F32(self.sum(v)),
            Buffer::F64(v) => Buffer::F64(self.sum(v)),
        }
    }

    /// Rank `root`'s buffer (its length first, so the others can make room).
    fn broadcast(&self, mut buffer: Buffer, root: usize) -> Buffer {
        let root = self.world.process_at_rank(root as i32);
        let mut len = buffer.len() as u64;
        root.broadcast_into(&mut len);
        if self.rank() != root.rank() as usize {
            buffer = match buffer {
                Buffer::F32(_) => Buffer::F32(vec![0.0; len as usize]),
                Buffer::F64(_) => Buffer::F64(vec![0.0; len as usize]),
            };
        }
        match &mut buffer {
            Buffer::F32(v) => root.broadcast_into(&mut v[..]),
            Buffer::F64(v) => root.broadcast_into(&mut v[..]),
        }
        buffer
    }
}
