//! Collectives on candle tensors, keeping autodiff through this rank's share: a gathered or all-reduced value is
//! the same bits on every rank, and its gradient flows into the local rows or partial value it came from (the
//! other ranks' shares are constants here; their own rank differentiates them). Summed over ranks, the parameter
//! gradients are then exactly the single-process ones — the factor-of-world-size bug of hand-written gathers
//! cannot happen.

use super::{Buffer, Collective};
use candle_core::{DType, Result, Tensor};

/// [`Collective::sum_tensor`] through a host buffer.
pub fn sum_on_host<C: Collective + ?Sized>(comm: &C, t: &Tensor) -> Result<Tensor> {
    from_buffer(comm.all_reduce_sum(&to_buffer(t)?)?, t, t.dims())
}

/// [`Collective::stack_tensor`] through a host buffer.
pub fn stack_on_host<C: Collective + ?Sized>(comm: &C, t: &Tensor) -> Result<Tensor> {
    let shape: Vec<usize> = std::iter::once(comm.ranks()).chain(t.dims().iter().copied()).collect();
    from_buffer(comm.all_gather(&to_buffer(t)?)?, t, &shape)
}

/// `t`'s values in a host buffer (f64 stays f64; every other type travels as f32).
fn to_buffer(t: &Tensor) -> Result<Buffer> {
    let flat = t.detach().flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => Buffer::F64(flat.to_vec1::<f64>()?),
        _ => Buffer::F32(flat.to_dtype(DType::F32)?.to_vec1::<f32>()?),
    })
}

/// A host buffer as a tensor of `shape` with `like`'s type and device.
fn from_buffer(b: Buffer, like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let t = match b {
        Buffer::F32(v) => Tensor::from_vec(v, shape, like.device())?,
        Buffer::F64(v) => Tensor::from_vec(v, shape, like.device())?,
    };
    t.to_dtype(like.dtype())
}

/// Every rank's rows of `t` along dim 0, which holds `parts` equal blocks: block `p` of every rank (in rank order)
/// before block `p + 1`. This rank's blocks are `t`'s own (live) rows.
pub fn gather_rows(comm: &dyn Collective, t: &Tensor, parts: usize) -> Result<Tensor> {
    let me = comm.rank();
    let rows = t.dims().first().copied().unwrap_or(0);
    if parts == 0 || rows % parts != 0 {
        candle_core::bail!("gather: {rows} rows do not split into {parts} blocks");
    }
    let block = rows / parts;
    let all = comm.stack_tensor(t)?;
    let mut pieces = Vec::with_capacity(parts * comm.ranks());
    for p in 0..parts {
        for r in 0..comm.ranks() {
            let rank_rows = if r == me { t.clone() } else { all.get(r)? };
            pieces.push(rank_rows.narrow(0, p * block, block)?);
        }
    }
    Tensor::cat(&pieces, 0)
}

/// The element-wise sum over ranks of `t`; its gradient flows into `t`.
pub fn all_reduce_sum(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    // total + (t − t): the value is `total` exactly (x − x = 0), the gradient reaches `t`.
    comm.sum_tensor(t)? + (t - t.detach())?
}

/// Every rank's `t`, stacked along a new leading axis of length P in rank order (this rank's slot is `t` itself).
pub fn stack_ranks(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    gather_rows(comm, &t.unsqueeze(0)?, 1)
}
