//! The collectives data-parallel training needs, behind one interface with one implementation per engine: a single
//! process ([`Solo`]: nothing to exchange), ranks in one process ([`memory`]: threads, for `verify --ranks` and
//! the tests), MPI ([`mpi`], cargo feature `mpi`) and, for CUDA tensors under MPI, NCCL ([`nccl`], cargo feature
//! `nccl`). Every result is bit-identical on every rank, so replicated state (weights, emas, fifos) never drifts
//! apart.

pub mod memory;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
#[cfg(feature = "mpi")]
mod server;
pub mod tensor;

use candle_core::Tensor;
use std::fmt;
use std::sync::Arc;

/// A flat buffer of one float type (the plan runs in f32 for training and f64 for proofs).
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    /// Single precision.
    F32(Vec<f32>),
    /// Double precision.
    F64(Vec<f64>),
}

impl Buffer {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::F32(v) => v.len(),
            Buffer::F64(v) => v.len(),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Buffer {
        match self {
            Buffer::F32(v) => Buffer::F32(v[start..start + len].to_vec()),
            Buffer::F64(v) => Buffer::F64(v[start..start + len].to_vec()),
        }
    }

    /// The buffers one after another (all of one type).
    pub fn concat(parts: &[Buffer]) -> Result<Buffer, CollectiveError> {
        fn join<T: Copy>(parts: &[Buffer], get: fn(&Buffer) -> Option<&Vec<T>>) -> Result<Vec<T>, CollectiveError> {
            let mut out = Vec::new();
            for p in parts {
                out.extend_from_slice(get(p).ok_or_else(CollectiveError::mixed)?);
            }
            Ok(out)
        }
        Ok(match parts.first() {
            Some(Buffer::F64(_)) => Buffer::F64(join(parts, Buffer::as_f64)?),
            _ => Buffer::F32(join(parts, Buffer::as_f32)?),
        })
    }

    /// The element-wise sum of `parts`, added in the order given (so every rank adding them gets the same bits).
    pub fn sum(parts: &[Buffer]) -> Result<Buffer, CollectiveError> {
        fn add<T: Copy + std::ops::AddAssign>(
            parts: &[Buffer],
            get: fn(&Buffer) -> Option<&Vec<T>>,
        ) -> Result<Vec<T>, CollectiveError> {
            let mismatch = || CollectiveError::new("ranks contributed buffers of different types or lengths");
            let mut acc = get(&parts[0]).ok_or_else(mismatch)?.clone();
            for p in &parts[1..] {
                let v = get(p).filter(|v| v.len() == acc.len()).ok_or_else(mismatch)?;
                acc.iter_mut().zip(v).for_each(|(x, y)| *x += *y);
            }
            Ok(acc)
        }
        Ok(match parts.first() {
            None => return Err(CollectiveError::new("nothing to sum")),
            Some(Buffer::F32(_)) => Buffer::F32(add(parts, Buffer::as_f32)?),
            Some(Buffer::F64(_)) => Buffer::F64(add(parts, Buffer::as_f64)?),
        })
    }

    fn as_f32(&self) -> Option<&Vec<f32>> {
        match self {
            Buffer::F32(v) => Some(v),
            Buffer::F64(_) => None,
        }
    }

    fn as_f64(&self) -> Option<&Vec<f64>> {
        match self {
            Buffer::F64(v) => Some(v),
            Buffer::F32(_) => None,
        }
    }
}

/// A collective that could not complete: a rank left or died, or the ranks disagree on a buffer's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectiveError(pub String);

impl CollectiveError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        CollectiveError(message.into())
    }

    fn mixed() -> Self {
        CollectiveError::new("ranks contributed buffers of different float types")
    }
}

impl fmt::Display for CollectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CollectiveError {}

impl From<CollectiveError> for candle_core::Error {
    fn from(e: CollectiveError) -> Self {
        candle_core::Error::Msg(format!("collective: {e}"))
    }
}

/// The operations of data-parallel training. Every rank calls the same operations in the same order; a call
/// returns once every rank has made it (or fails when one cannot). `Send + Sync` so that a kernel's backward (which
/// candle may run on any thread) can take part — synchronised BatchNorm sums its gradient statistics there; calls
/// are still made one at a time per rank.
pub trait Collective: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// How many ranks take part.
    fn ranks(&self) -> usize;
    /// Every rank's buffer (all of one length), concatenated in rank order.
    fn all_gather(&self, local: &Buffer) -> Result<Buffer, CollectiveError>;
    /// The element-wise sum of every rank's buffer, the same bits on every rank.
    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError>;
    /// Rank `root`'s buffer, on every rank (`buffer` is overwritten except on the root).
    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError>;
    /// [`Collective::all_reduce_sum`] of a tensor, on its device, without a graph. An engine that reaches device
    /// memory itself (NCCL) overrides it; by default the values travel through a host buffer.
    fn sum_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        tensor::sum_on_host(self, t)
    }
    /// Every rank's `t` (all of one shape), stacked along a new leading axis of length P in rank order, on `t`'s
    /// device, without a graph; overridden like [`Collective::sum_tensor`].
    fn stack_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        tensor::stack_on_host(self, t)
    }
    /// Stops every rank of the job with `code` (a rank that failed calls it so that the others do not wait).
    fn abort(&self, code: i32) -> !;
}

/// One process, one rank: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        Ok(local.clone())
    }
    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        Ok(local.clone())
    }
    fn broadcast(&self, _: &mut Buffer, _: usize) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A shared handle on this process's collective, for the plan, the network's synchronised BatchNorms and the
/// training loop.
#[derive(Clone)]
pub struct Comm(pub Arc<dyn Collective>);

impl Comm {
    /// A handle on `collective`.
    pub fn new(collective: impl Collective + 'static) -> Comm {
        Comm(Arc::new(collective))
    }

    /// The handle of a single process.
    pub fn solo() -> Comm {
        Comm::new(Solo)
    }
}

impl std::ops::Deref for Comm {
    type Target = dyn Collective;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.ranks())
    }
}
