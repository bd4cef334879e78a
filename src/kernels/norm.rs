//! Fused BatchNorm (+ ReLU) and residual add + ReLU as candle custom ops with their own backward, for the CPU.
//!
//! Written with composable candle ops, one BatchNorm is about fifteen single-threaded passes forward and as many
//! backward, each allocating its result; in `resnet_mini` those passes cost five times the convolutions. Here the
//! forward is one reduction pass (per-channel sum and sum of squares, accumulated in f64) and one normalising pass
//! with the ReLU fused in; the backward is one reduction (Σ dz, Σ dz·x) and one pass writing dx. Work is split over
//! fixed groups of rows with rayon, and per-group partial sums are combined in a fixed order, so results do not
//! depend on the number of threads.
//!
//! Layout: channels-last, [B, H, W, C] (the network's feature maps with our kernels) or [B, C], seen as [R, C] with
//! the channel along each row: every pass then runs over rows of C contiguous values with per-channel vectors.
//! Other devices and dtypes than the CPU with f32/f64 are the caller's to route to candle's ops (see
//! `nn::layers::batch_norm_train`).
//!
//! Synchronised BatchNorm (data-parallel training, `sync_bn = true`): the forward's per-channel sums and the
//! backward's (Σdz, Σdz·x) are summed over the ranks whose shares make up the batch, so every rank normalises with,
//! and differentiates through, the statistics of the whole batch, as one process would.

use super::gemm::Float;
use super::simd::vectorized;
use super::{read, unwritten};
use crate::collective::{Buffer, Comm};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Elements a parallel task should cover at least, so that rayon's overhead stays negligible.
const TASK_ELEMS: usize = 1 << 15;

/// The per-channel statistics a BatchNorm normalises with.
#[derive(Clone, Debug)]
pub struct ChannelStats {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Biased variance per channel (what train mode normalises with).
    pub var: Vec<f64>,
    /// Values per channel they summarise (over every rank's share when synchronised; 0 for running statistics).
    pub count: usize,
    /// The ranks whose shares of the batch they span (synchronised BatchNorm), over which the backward then sums
    /// its own statistics too; `None`: this process's batch alone.
    pub ranks: Option<Comm>,
}

impl ChannelStats {
    /// Running statistics (eval mode): constants, summarising no batch of their own.
    pub fn running(mean: Vec<f64>, var: Vec<f64>) -> Self {
        ChannelStats { mean, var, count: 0, ranks: None }
    }
}

/// The element-wise sum of `v` over `ranks`.
fn sum_over(ranks: &Comm, v: Vec<f64>) -> Result<Vec<f64>> {
    match ranks.all_reduce_sum(&Buffer::F64(v))? {
        Buffer::F64(sum) => Ok(sum),
        Buffer::F32(_) => bail!("internal: an f64 all-reduce returned f32"),
    }
}

/// [R, C] from [B, C] or [B, H, W, C]: rows and channels.
fn rows_channels(dims: &[usize]) -> Result<(usize, usize)> {
    match *dims {
        [b, c] => Ok((b, c)),
        [b, h, w, c] => Ok((b * h * w, c)),
        _ => bail!("batch norm expects [B, C] or [B, H, W, C], got {dims:?}"),
    }
}

/// Rows per parallel task: a function of the shape only, so partial sums are combined the same way on any number
/// of threads.
fn rows_per_task(c: usize) -> usize {
    TASK_ELEMS.div_ceil(c.max(1)).max(1)
}

/// Per-channel mean and biased variance of x [B, (H, W,) C], in f64, in one pass. f32 or f64 on the CPU. With
/// `ranks`, x is this rank's share of the batch and the statistics are the whole batch's (one all-reduce).
pub fn channel_stats(x: &Tensor, ranks: Option<&Comm>) -> Result<ChannelStats> {
    let (r, c) = rows_channels(x.dims())?;
    let mut sums = x.apply_op1_no_bwd(&SumsOp)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    sums.push(r as f64);
    if let Some(ranks) = ranks {
        sums = sum_over(ranks, sums)?;
    }
    let n = sums[2 * c];
    let mean: Vec<f64> = sums[..c].iter().map(|v| v / n).collect();
    // Σx² / n − mean², accumulated in f64: exact enough unless |mean| / std exceeds ~1e6.
    let var = sums[c..2 * c].iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0)).collect();
    Ok(ChannelStats { mean, var, count: n as usize, ranks: ranks.cloned() })
}

/// `relu?(γ·(x − mean)/√(var + eps) + β)` per channel, recording the backward pass. With `batch` the statistics are
/// the batch's own (train mode), so the gradient flows through them; otherwise they are constants (eval mode).
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &ChannelStats,
    eps: f64,
    batch: bool,
    relu: bool,
) -> Result<Tensor> {
    let (_, c) = rows_channels(x.dims())?;
    if gamma.dims() != [c] || beta.dims() != [c] || stats.mean.len() != c || stats.var.len() != c {
        bail!("batch norm over {c} channels got scale {:?} and shift {:?}", gamma.dims(), beta.dims());
    }
    x.apply_op3(gamma, beta, BatchNormOp::new(stats, eps, batch, relu))
}

/// `relu(a + b)`, recording the backward pass: the residual join of a BasicBlock in one pass each way.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    a.apply_op2(b, AddReluOp)
}

/// The gradients (dx, dγ, dβ) of [`batch_norm`] from its input `x`, its output `y` and the gradient `dy` at the
/// output, with the statistics and flags the forward pass used (no graph). The output is read only for the ReLU's
/// mask: without a ReLU it may be left out, so that the forward need not keep it.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    y: Option<&Tensor>,
    gamma: &Tensor,
    stats: &ChannelStats,
    eps: f64,
    batch: bool,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let y = match (y, relu) {
        (Some(y), _) => y,
        // Unread: `masked` passes dy through without a ReLU, and dy's own cache lines stand in for y's.
        (None, false) => dy,
        (None, true) => bail!("internal: a BatchNorm + ReLU backward without the forward's output"),
    };
    BatchNormOp::new(stats, eps, batch, relu).backward(x, gamma, y, dy)
}

/// `dy` where `y > 0`, else 0: the ReLU's backward from its output (no graph).
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    dy.apply_op2_no_bwd(y, &RELU_GRAD)
}

/// `a + b` on all threads (no graph): the sum of a residual block's two input gradients, which candle's own add
/// computes on one thread.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &ADD)
}

/// `a + b` where `y > 0`, else 0, in one pass (no graph): a residual block's two input gradients summed and taken
/// back through the ReLU of the join before it, whose output is `y` — [`add`] then [`relu_backward`] without the
/// intermediate's write and read.
pub fn masked_sum(a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() || a.dims() != y.dims() {
        bail!("masked_sum: shapes {:?}, {:?} and {:?} differ", a.dims(), b.dims(), y.dims());
    }
    a.apply_op3_no_bwd(b, y, &MaskedSumOp)
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

/// dy masked by y > 0 when `relu`: the ReLU's backward, a select that loops over it vectorise.
#[inline(always)]
fn masked<T: Float>(dy: T, y: T, relu: bool) -> T {
    if relu && y <= T::zero() {
        T::zero()
    } else {
        dy
    }
}

/// Per-channel [Σa ‖ Σb] over the `r` rows of [R, C] data, `add(row, a, b)` adding one row's terms into the
/// per-channel sums a and b (in f64).
fn reduce_channels(r: usize, c: usize, add: impl Fn(usize, &mut [f64], &mut [f64]) + Sync) -> Vec<f64> {
    let per = rows_per_task(c);
    let partials: Vec<Vec<f64>> = (0..r.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f64; 2 * c];
            let (a, b) = acc.split_at_mut(c);
            vectorized(
                #[inline(always)]
                || {
                    for row in t * per..((t + 1) * per).min(r) {
                        add(row, &mut *a, &mut *b);
                    }
                },
            );
            acc
        })
        .collect();
    let mut total = vec![0f64; 2 * c];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Writes `f(row, out_row)` for every [C] row of an [R, C] output, in parallel.
fn map_rows<T: Float>(out: &mut [T], c: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let per = rows_per_task(c);
    out.par_chunks_mut(per * c).enumerate().for_each(|(t, chunk)| {
        vectorized(
            #[inline(always)]
            || {
                for (i, row) in chunk.chunks_exact_mut(c).enumerate() {
                    f(t * per + i, row);
                }
            },
        )
    });
}

fn cast<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn to_f64<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| WithDType::to_f64(*x)).collect()
}

fn forward<T: Float>(op: &BatchNormOp, x: &[T], gamma: &[T], beta: &[T], c: usize) -> Vec<T> {
    let (gamma, beta) = (to_f64(gamma), to_f64(beta));
    let scale: Vec<f64> = gamma.iter().zip(&op.invstd).map(|(g, i)| g * i).collect();
    let shift: Vec<f64> = beta.iter().zip(&scale).zip(&op.mean).map(|((b, k), m)| b - m * k).collect();
    let (scale, shift) = (cast::<T>(&scale), cast::<T>(&shift));
    // SAFETY: `map_rows` hands every row to the closure, which writes all of it.
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(x.len()) };
    map_rows(
        &mut y,
        c,
        #[inline(always)]
        |r, row| {
            for (((o, &v), &k), &t) in row.iter_mut().zip(&x[r * c..][..c]).zip(&scale).zip(&shift) {
                let z = v * k + t;
                *o = if op.relu && z < T::zero() { T::zero() } else { z };
            }
        },
    );
    y
}

/// [dx ‖ dγ ‖ dβ] from dy, x and the forward's output y. dγ and dβ are this rank's shares (the training loop sums
/// parameter gradients over ranks); dx, in train mode, differentiates through the statistics of the whole batch.
fn backward<T: Float>(g: &BatchNormGradOp, dy: &[T], x: &[T], y: &[T], (r, c): (usize, usize)) -> Result<Vec<T>> {
    let op = &g.op;
    let row = |i: usize| i * c..(i + 1) * c;
    let mut sums = reduce_channels(
        r,
        c,
        #[inline(always)]
        |i, s, p| {
            let rows = dy[row(i)].iter().zip(&x[row(i)]).zip(&y[row(i)]);
            for ((s, p), ((&gy, &xv), &yv)) in s.iter_mut().zip(p.iter_mut()).zip(rows) {
                let dz = masked(gy, yv, op.relu).to_f64();
                *s += dz;
                *p += dz * xv.to_f64();
            }
        },
    );
    // dβ = Σdz, dγ = Σdz·x̂ = invstd·(Σdz·x − mean·Σdz).
    let param_grads = |sums: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let dbeta = sums[..c].to_vec();
        let dgamma = (0..c).map(|ch| op.invstd[ch] * (sums[c + ch] - op.mean[ch] * dbeta[ch])).collect();
        (dgamma, dbeta)
    };
    let (dgamma, dbeta) = param_grads(&sums);
    // dx = k·(dz − dβ/n − x̂·dγ/n), k = γ·invstd, in train mode (dβ, dγ and n of the whole batch); k·dz in eval mode.
    let k: Vec<T> = cast(&(0..c).map(|ch| g.gamma[ch] * op.invstd[ch]).collect::<Vec<_>>());
    let (db_n, dg_n): (Vec<T>, Vec<T>) = if op.batch {
        sums.push(r as f64);
        if let Some(ranks) = &op.ranks {
            sums = sum_over(ranks, sums)?;
        }
        let n = sums[2 * c];
        let (dgamma, dbeta) = param_grads(&sums);
        (
            cast(&dbeta.iter().map(|v| v / n).collect::<Vec<_>>()),
            cast(&dgamma.iter().map(|v| v / n).collect::<Vec<_>>()),
        )
    } else {
        (vec![T::zero(); c], vec![T::zero(); c])
    };
    // x̂·dγ/n = (x − mean)·invstd·dγ/n: one per-channel factor and offset.
    let slope: Vec<T> = cast(&(0..c).map(|ch| op.invstd[ch] * dg_n[ch].to_f64()).collect::<Vec<_>>());
    let mean: Vec<T> = cast(&op.mean);
    // SAFETY: `map_rows` writes every row of dx, and dγ, dβ are copied in below.
    #[allow(unsafe_code)]
    let mut out = unsafe { unwritten(x.len() + 2 * c) };
    let (dx, params) = out.split_at_mut(x.len());
    map_rows(
        dx,
        c,
        #[inline(always)]
        |i, out| {
            let rows = dy[row(i)].iter().zip(&y[row(i)]).zip(&x[row(i)]);
            let per_channel = k.iter().zip(&db_n).zip(&mean).zip(&slope);
            for ((o, ((&gy, &yv), &xv)), (((&k, &db), &m), &sl)) in out.iter_mut().zip(rows).zip(per_channel) {
                *o = k * (masked(gy, yv, op.relu) - db - (xv - m) * sl);
            }
        },
    );
    params[..c].copy_from_slice(&cast::<T>(&dgamma));
    params[c..].copy_from_slice(&cast::<T>(&dbeta));
    Ok(out)
}

/// `f([a[i], b[i], …])` for every i over equally long operands, in parallel chunks.
fn zip_map<T: Float, const N: usize>(operands: [&[T]; N], f: impl Fn([T; N]) -> T + Sync) -> Vec<T> {
    let len = operands[0].len();
    // SAFETY: the chunks of `out` cover it, and each is written element by element.
    #[allow(unsafe_code)]
    let mut out = unsafe { unwritten(len) };
    out.par_chunks_mut(TASK_ELEMS).enumerate().for_each(|(t, o)| {
        let start = t * TASK_ELEMS;
        let chunks = operands.map(|v| &v[start..start + o.len()]);
        vectorized(
            #[inline(always)]
            || {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = f(chunks.map(|v| v[i]));
                }
            },
        )
    });
    out
}

/// relu(a + b); a NaN stays NaN, so that the training step's check sees it.
fn add_relu_kernel<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(
        [a, b],
        #[inline(always)]
        |[u, v]| {
            let z = u + v;
            if z < T::zero() {
                T::zero()
            } else {
                z
            }
        },
    )
}

fn add_kernel<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(
        [a, b],
        #[inline(always)]
        |[u, v]| u + v,
    )
}

fn relu_grad_kernel<T: Float>(dy: &[T], y: &[T]) -> Vec<T> {
    zip_map(
        [dy, y],
        #[inline(always)]
        |[g, y]| masked(g, y, true),
    )
}

fn masked_sum_kernel<T: Float>(a: &[T], b: &[T], y: &[T]) -> Vec<T> {
    zip_map(
        [a, b, y],
        #[inline(always)]
        |[u, v, y]| masked(u + v, y, true),
    )
}

// ---------------------------------------------------------------------------------------------------------------
// candle custom ops.

/// Per-channel [Σx ‖ Σx²] of [R, C] data, in f64.
fn sums_and_squares<T: Float>(x: &[T], r: usize, c: usize) -> Vec<f64> {
    reduce_channels(
        r,
        c,
        #[inline(always)]
        |i, s, q| {
            for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(&x[i * c..][..c]) {
                let v = v.to_f64();
                *s += v;
                *q += v * v;
            }
        },
    )
}

/// Per-channel [Σx ‖ Σx²], accumulated and returned in f64.
struct SumsOp;

impl candle_core::CustomOp1 for SumsOp {
    fn name(&self) -> &'static str {
        "ssl-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = rows_channels(l.dims())?;
        let sums = match s {
            CpuStorage::F32(_) => sums_and_squares(&read::<f32>(s, l)?, r, c),
            CpuStorage::F64(_) => sums_and_squares(&read::<f64>(s, l)?, r, c),
            _ => bail!("batch norm: f32 or f64 expected"),
        };
        Ok((CpuStorage::F64(sums), Shape::from_dims(&[2 * c])))
    }
}

/// The normalisation with fixed per-channel statistics; its backward accounts for them being the batch's own when
/// `batch` is set (over `ranks`' shares of it when synchronised).
struct BatchNormOp {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    batch: bool,
    relu: bool,
    ranks: Option<Comm>,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "ssl-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c) = rows_channels(l1.dims())?;
        let operands = [(s1, l1), (s2, l2), (s3, l3)];
        let y = ternary(operands, |x, g, b| Ok(forward(self, x, g, b, c)), |x, g, b| Ok(forward(self, x, g, b, c)))?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = self.backward(x, gamma, y, dy)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl BatchNormOp {
    fn new(stats: &ChannelStats, eps: f64, batch: bool, relu: bool) -> Self {
        let invstd = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        BatchNormOp { mean: stats.mean.clone(), invstd, batch, relu, ranks: stats.ranks.clone() }
    }

    /// (dx, dγ, dβ) through one [`BatchNormGradOp`], whose flat result is split without copies.
    fn backward(&self, x: &Tensor, gamma: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = gamma.elem_count();
        let grad = BatchNormGradOp {
            op: BatchNormOp {
                mean: self.mean.clone(),
                invstd: self.invstd.clone(),
                ranks: self.ranks.clone(),
                ..*self
            },
            gamma: gamma.to_dtype(DType::F64)?.to_vec1()?,
        };
        let packed = dy.apply_op3_no_bwd(x, y, &grad)?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((dx, packed.narrow(0, n, c)?, packed.narrow(0, n + c, c)?))
    }
}

/// The backward of [`BatchNormOp`]: (dy, x, y) → [dx ‖ dγ ‖ dβ], flat.
struct BatchNormGradOp {
    op: BatchNormOp,
    gamma: Vec<f64>,
}

impl CustomOp3 for BatchNormGradOp {
    fn name(&self) -> &'static str {
        "ssl-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = rows_channels(l2.dims())?;
        let operands = [(s1, l1), (s2, l2), (s3, l3)];
        let out = ternary(operands, |d, x, y| backward(self, d, x, y, dims), |d, x, y| backward(self, d, x, y, dims))?;
        Ok((out, Shape::from_dims(&[l2.shape().elem_count() + 2 * dims.1])))
    }
}

/// relu(a + b).
struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "ssl-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((elementwise(s1, l1, s2, l2, add_relu_kernel, add_relu_kernel)?, l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = relu_backward(dy, y)?;
        Ok((Some(dz.clone()), Some(dz)))
    }
}

/// A two-operand elementwise kernel with no backward of its own (the gradient passes `add` and `relu_backward`).
struct ZipOp {
    name: &'static str,
    f32: fn(&[f32], &[f32]) -> Vec<f32>,
    f64: fn(&[f64], &[f64]) -> Vec<f64>,
}

/// a + b.
const ADD: ZipOp = ZipOp { name: "ssl-add", f32: add_kernel, f64: add_kernel };

/// dy masked by y > 0.
const RELU_GRAD: ZipOp = ZipOp { name: "ssl-relu-grad", f32: relu_grad_kernel, f64: relu_grad_kernel };

impl CustomOp2 for ZipOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((elementwise(s1, l1, s2, l2, self.f32, self.f64)?, l1.shape().clone()))
    }
}

/// (a + b) masked by y > 0.
struct MaskedSumOp;

impl CustomOp3 for MaskedSumOp {
    fn name(&self) -> &'static str {
        "ssl-masked-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let operands = [(s1, l1), (s2, l2), (s3, l3)];
        let out =
            ternary(operands, |a, b, y| Ok(masked_sum_kernel(a, b, y)), |a, b, y| Ok(masked_sum_kernel(a, b, y)))?;
        Ok((out, l1.shape().clone()))
    }
}

/// Runs a three-operand kernel in the operands' float type.
fn ternary(
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CpuStorage, &Layout); 3],
    f32: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<Vec<f32>>,
    f64: impl FnOnce(&[f64], &[f64], &[f64]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
            CpuStorage::F32(f32(&read(s1, l1)?, &read(s2, l2)?, &read(s3, l3)?)?)
        }
        (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
            CpuStorage::F64(f64(&read(s1, l1)?, &read(s2, l2)?, &read(s3, l3)?)?)
        }
        _ => bail!("f32 or f64 operands of one dtype expected"),
    })
}

/// Runs a two-operand elementwise kernel in the operands' float type.
fn elementwise(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    f32: fn(&[f32], &[f32]) -> Vec<f32>,
    f64: fn(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    if l1.dims() != l2.dims() {
        bail!("elementwise op: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
    }
    Ok(match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(f32(&read(s1, l1)?, &read(s2, l2)?)),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(f64(&read(s1, l1)?, &read(s2, l2)?)),
        _ => bail!("elementwise op: f32 or f64 operands of one dtype expected"),
    })
}
