//! The collectives over NCCL (cudarc), for training on GPUs under `mpirun`: the ranks exchange CUDA tensors device
//! to device, on the stream candle computes on, so a gradient never visits the host. MPI still starts the job: it
//! carries NCCL's unique id from rank 0 to the others and serves the host-side collectives (checkpoint votes, the
//! weight hash, sharded evaluation).
//!
//! Sums are reduced on rank 0 and broadcast from it (as over MPI), so that every rank holds the same bits.
//! NCCL's communicator is not `Send`: like MPI's world it is owned by a thread of our own that serves requests,
//! while the device buffers (which are `Send`) travel to it and back.

use super::mpi::MpiWorld;
use super::server::Server;
use super::{tensor, Buffer, Collective, CollectiveError};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// A device buffer of one float type.
enum Slice {
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
}

/// Which exchange a request asks for.
#[derive(Clone, Copy)]
enum Exchange {
    /// The element-wise sum over ranks.
    Sum,
    /// Every rank's buffer, concatenated in rank order.
    Stack,
}

/// An exchange of this rank's buffer, and where its result goes.
type Request = (Exchange, Slice, Sender<Result<Slice, CollectiveError>>);

/// The job's MPI world for host buffers and an NCCL communicator on this rank's GPU for CUDA tensors.
pub struct NcclWorld {
    server: Server<Request>,
    mpi: MpiWorld,
}

/// An NCCL or CUDA driver error, saying which step failed.
fn failed<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> CollectiveError {
    move |e| CollectiveError::new(format!("NCCL {what}: {e:?}"))
}

impl NcclWorld {
    /// Joins NCCL on `device`, the GPU this rank trains on: rank 0 makes the communicator's id and MPI carries it to
    /// the others. Fails when NCCL cannot set up the communicator (two ranks on one GPU, a rank
    /// without a GPU).
    pub fn new(mpi: MpiWorld, device: &CudaDevice) -> Result<NcclWorld, CollectiveError> {
        let mut id = Buffer::F64(Vec::new());
        if mpi.rank() == 0 {
            let made = Id::new().map_err(failed("id"))?;
            id = Buffer::F64(made.internal().iter().map(|&c| c as f64).collect());
        }
        mpi.broadcast(&mut id, 0)?;
        let Buffer::F64(bytes) = id else { unreachable!("broadcast keeps the buffer's type") };
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| CollectiveError::new("NCCL's id did not arrive whole"))?;
        let (rank, ranks, stream) = (mpi.rank(), mpi.ranks(), device.cuda_stream());
        let setup = move || {
            stream.context().bind_to_thread().map_err(failed("device"))?;
            let comm = Comm::from_rank(stream, rank, ranks, Id::uninit(internal)).map_err(failed("init"))?;
            Ok((comm, ()))
        };
        let (server, ()) = Server::start("NCCL", setup, |comm, inbox| serve(&comm, inbox))?;
        // Field order: the communicator goes with its thread before MPI finalises.
        Ok(NcclWorld { server, mpi })
    }

    /// Runs `exchange` of a CUDA tensor through NCCL.
    fn exchange(&self, exchange: Exchange, t: &Tensor) -> candle_core::Result<Tensor> {
        t.contiguous()?.apply_op1_no_bwd(&OnDevice { world: self, exchange })
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn ranks(&self) -> usize {
        self.mpi.ranks()
    }
    fn all_gather(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        self.mpi.all_gather(local)
    }
    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        self.mpi.all_reduce_sum(local)
    }
    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError> {
        self.mpi.broadcast(buffer, root)
    }
    fn sum_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match t.device().is_cuda() {
            true => self.exchange(Exchange::Sum, t),
            false => tensor::sum_on_host(self, t),
        }
    }
    fn stack_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match t.device().is_cuda() {
            true => self.exchange(Exchange::Stack, t),
            false => tensor::stack_on_host(self, t),
        }
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}

/// Answers requests, one at a time and in the order they come, until the handle is dropped.
fn serve(comm: &Comm, inbox: Receiver<Request>) {
    for (exchange, local, reply) in inbox {
        let answer = match local {
            Slice::F32(s) => run(comm, exchange, s).map(Slice::F32),
            Slice::F64(s) => run(comm, exchange, s).map(Slice::F64),
        };
        let _ = reply.send(answer);
    }
}

/// One exchange, queued on the communicator's stream (candle's): what follows on that stream sees its result.
fn run<T: NcclType + DeviceRepr + ValidAsZeroBits>(
    comm: &Comm,
    exchange: Exchange,
    local: CudaSlice<T>,
) -> Result<CudaSlice<T>, CollectiveError> {
    let stream: Arc<CudaStream> = comm.stream();
    let len = match exchange {
        Exchange::Sum => local.len(),
        Exchange::Stack => local.len() * comm.world_size(),
    };
    let mut out = stream.alloc_zeros::<T>(len).map_err(failed("alloc"))?;
    match exchange {
        Exchange::Sum => {
            comm.reduce(&local, Some(&mut out), &ReduceOp::Sum, 0).map_err(failed("reduce"))?;
            comm.broadcast_in_place(&mut out, 0).map_err(failed("broadcast"))?;
        }
        Exchange::Stack => {
            comm.all_gather(&local, &mut out).map_err(failed("all-gather"))?;
        }
    }
    Ok(out)
}

/// The exchange as a candle op, which hands us the tensor's device buffer and wraps the result.
struct OnDevice<'a> {
    world: &'a NcclWorld,
    exchange: Exchange,
}

impl CustomOp1 for OnDevice<'_> {
    fn name(&self) -> &'static str {
        "nccl-exchange"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL exchanges CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL exchanges contiguous tensors only")
        };
        let device = storage.device().clone();
        let stream = device.cuda_stream();
        let copy = |e| candle_core::Error::Msg(format!("NCCL staging copy: {e:?}"));
        let local = match storage.dtype() {
            DType::F32 => {
                Slice::F32(stream.clone_dtod(&storage.as_cuda_slice::<f32>()?.slice(start..end)).map_err(copy)?)
            }
            DType::F64 => {
                Slice::F64(stream.clone_dtod(&storage.as_cuda_slice::<f64>()?.slice(start..end)).map_err(copy)?)
            }
            other => candle_core::bail!("NCCL exchanges f32 and f64 tensors, not {other:?}"),
        };
        let shape = match self.exchange {
            Exchange::Sum => layout.shape().clone(),
            Exchange::Stack => Shape::from(
                std::iter::once(self.world.ranks()).chain(layout.dims().iter().copied()).collect::<Vec<_>>(),
            ),
        };
        let out = match self.world.server.ask(|reply| (self.exchange, local, reply))? {
            Slice::F32(s) => CudaStorage::wrap_cuda_slice(s, device),
            Slice::F64(s) => CudaStorage::wrap_cuda_slice(s, device),
        };
        Ok((out, shape))
    }
}
