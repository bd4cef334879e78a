//! Collectives on candle tensors, keeping autodiff through this rank's share: a gathered or all-reduced value is
//! the same bits on every rank, and its gradient flows into the local rows or partial value it came from (the
//! other ranks' shares are constants here; their own rank differentiates them). Summed over ranks, the parameter
//! gradients are then exactly the single-process ones — the factor-of-world-size bug of hand-written gathers
//! cannot happen.

use super::{Buffer, Collective};
use candle_core::{DType, Result, Tensor};

fn to_buffer(t: &Tensor) -> Result<Buffer> {
    let flat = t.detach().flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => Buffer::F64(flat.to_vec1::<f64>()?),
        _ => Buffer::F32(flat.to_dtype(DType::F32)?.to_vec1::<f32>()?),
    })
}

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
    let (ranks, me) = (comm.ranks(), comm.rank());
    let rows = t.dims().first().copied().unwrap_or(0);
    if parts == 0 || rows % parts != 0 {
        candle_core::bail!("gather: {rows} rows do not split into {parts} blocks");
    }
    let block = rows / parts;
    let row_len: usize = t.dims()[1..].iter().product();
    let all = comm.all_gather(&to_buffer(t)?)?;
    let mut pieces = Vec::with_capacity(parts * ranks);
    for p in 0..parts {
        for r in 0..ranks {
            let piece = if r == me {
                t.narrow(0, p * block, block)?
            } else {
                let start = (r * rows + p * block) * row_len;
                let mut shape = t.dims().to_vec();
                shape[0] = block;
                from_buffer(all.slice(start, block * row_len), t, &shape)?
            };
            pieces.push(piece);
        }
    }
    Tensor::cat(&pieces, 0)
}

/// The element-wise sum over ranks of `t`, without a graph (the training loop's gradients and metrics).
pub fn sum_over_ranks(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    from_buffer(comm.all_reduce_sum(&to_buffer(t)?)?, t, t.dims())
}

/// The element-wise sum over ranks of `t`; its gradient flows into `t`.
pub fn all_reduce_sum(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    // total + (t − t): the value is `total` exactly (x − x = 0), the gradient reaches `t`.
    sum_over_ranks(comm, t)? + (t - t.detach())?
}

/// Every rank's `t`, stacked along a new leading axis of length P in rank order (this rank's slot is `t` itself).
pub fn stack_ranks(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    gather_rows(comm, &t.unsqueeze(0)?, 1)
}
