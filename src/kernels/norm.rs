//! Fused BatchNorm (+ ReLU) and residual add + ReLU as candle custom ops with their own backward, for the CPU.
//!
//! Written with composable candle ops, one BatchNorm is about fifteen single-threaded passes forward and as many
//! backward, each allocating its result; in `resnet_mini` those passes cost five times the convolutions. Here the
//! forward is one reduction pass (per-channel sum and sum of squares, accumulated in f64) and one normalising pass
//! with the ReLU fused in; the backward is one reduction (Σ dz, Σ dz·x) and one pass writing dx. Work is split over
//! fixed groups of images with rayon, and per-group partial sums are combined in a fixed order, so results do not
//! depend on the number of threads.
//!
//! Layout: NCHW [B, C, H, W] or [B, C], seen as [B, C, S] with S = H·W or 1. Other devices and dtypes than the CPU
//! with f32/f64 are the caller's to route to candle's ops (see `model::batch_norm_train`).
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

/// [B, C, S] from [B, C] or [B, C, H, W].
fn bcs(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match *dims {
        [b, c] => Ok((b, c, 1)),
        [b, c, h, w] => Ok((b, c, h * w)),
        _ => bail!("batch norm expects [B, C] or [B, C, H, W], got {dims:?}"),
    }
}

/// Images per parallel task: a function of the shape only, so partial sums are combined the same way on any number
/// of threads.
fn images_per_task(c: usize, s: usize) -> usize {
    TASK_ELEMS.div_ceil(c * s).max(1)
}

/// Per-channel mean and biased variance of x [B, C, (H, W)], in f64, in one pass. f32 or f64 on the CPU. With
/// `ranks`, x is this rank's share of the batch and the statistics are the whole batch's (one all-reduce).
pub fn channel_stats(x: &Tensor, ranks: Option<&Comm>) -> Result<ChannelStats> {
    let (b, c, s) = bcs(x.dims())?;
    let mut sums = x.apply_op1_no_bwd(&SumsOp)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    sums.push((b * s) as f64);
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
    let (_, c, _) = bcs(x.dims())?;
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

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

/// Σv and Σv² of a slice in f64, in eight independent lanes so that the loop vectorises.
#[inline(always)]
fn sum_and_squares<T: Float>(v: &[T]) -> (f64, f64) {
    let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for ch in chunks {
        for i in 0..8 {
            let x = ch[i].to_f64();
            s[i] += x;
            q[i] += x * x;
        }
    }
    for &t in tail {
        let x = t.to_f64();
        s[0] += x;
        q[0] += x * x;
    }
    (s.iter().sum(), q.iter().sum())
}

/// dy masked by y > 0 when `relu`: the ReLU's backward, a select that loops over it vectorise.
#[inline(always)]
fn masked<T: Float>(dy: T, y: T, relu: bool) -> T {
    if relu && y <= T::zero() {
        T::zero()
    } else {
        dy
    }
}

/// Σdz and Σdz·x over a row, dz = dy masked by y > 0 when `relu`, in eight independent f64 lanes.
#[inline(always)]
fn grad_sums<T: Float>(dy: &[T], x: &[T], y: &[T], relu: bool) -> (f64, f64) {
    let (mut s, mut p) = ([0f64; 8], [0f64; 8]);
    let (dy8, x8, y8) = (dy.chunks_exact(8), x.chunks_exact(8), y.chunks_exact(8));
    let tail = dy8.remainder().iter().zip(x8.remainder()).zip(y8.remainder());
    for ((g, x), y) in dy8.zip(x8).zip(y8) {
        for i in 0..8 {
            let dz = masked(g[i], y[i], relu).to_f64();
            s[i] += dz;
            p[i] += dz * x[i].to_f64();
        }
    }
    for ((&g, &x), &y) in tail {
        let dz = masked(g, y, relu).to_f64();
        s[0] += dz;
        p[0] += dz * x.to_f64();
    }
    (s.iter().sum(), p.iter().sum())
}

/// Per-channel [Σa ‖ Σb] over [B, C, S] data, with `row(b, c)` giving each (image, channel) row's pair of sums.
fn reduce_channels(b: usize, c: usize, s: usize, row: impl Fn(usize, usize) -> (f64, f64) + Sync) -> Vec<f64> {
    let group = images_per_task(c, s);
    let partials: Vec<Vec<f64>> = (0..b.div_ceil(group))
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![0f64; 2 * c];
            vectorized(
                #[inline(always)]
                || {
                    for img in g * group..((g + 1) * group).min(b) {
                        for ch in 0..c {
                            let (u, v) = row(img, ch);
                            acc[ch] += u;
                            acc[c + ch] += v;
                        }
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

/// Writes `f(image, channel, out_row, row_index)` for every [S] row of a [B, C, S] output, in parallel.
fn map_rows<T: Float>(out: &mut [T], c: usize, s: usize, f: impl Fn(usize, &mut [T], usize) + Sync) {
    let group = images_per_task(c, s);
    out.par_chunks_mut(group * c * s).enumerate().for_each(|(g, chunk)| {
        vectorized(
            #[inline(always)]
            || {
                for (r, row) in chunk.chunks_mut(s).enumerate() {
                    let flat = g * group * c + r;
                    f(flat % c, row, flat);
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

fn forward<T: Float>(op: &BatchNormOp, x: &[T], gamma: &[T], beta: &[T], (c, s): (usize, usize)) -> Vec<T> {
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
        s,
        #[inline(always)]
        |ch, row, r| {
            let (k, t) = (scale[ch], shift[ch]);
            for (o, &v) in row.iter_mut().zip(&x[r * s..(r + 1) * s]) {
                let z = v * k + t;
                *o = if op.relu && z < T::zero() { T::zero() } else { z };
            }
        },
    );
    y
}

/// [dx ‖ dγ ‖ dβ] from dy, x and the forward's output y. dγ and dβ are this rank's shares (the training loop sums
/// parameter gradients over ranks); dx, in train mode, differentiates through the statistics of the whole batch.
fn backward<T: Float>(
    g: &BatchNormGradOp,
    dy: &[T],
    x: &[T],
    y: &[T],
    (b, c, s): (usize, usize, usize),
) -> Result<Vec<T>> {
    let op = &g.op;
    let rows = |r: usize| r * s..(r + 1) * s;
    let mut sums = reduce_channels(
        b,
        c,
        s,
        #[inline(always)]
        |img, ch| {
            let r = rows(img * c + ch);
            grad_sums(&dy[r.clone()], &x[r.clone()], &y[r], op.relu)
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
        sums.push((b * s) as f64);
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
    let (mean, invstd): (Vec<T>, Vec<T>) = (cast(&op.mean), cast(&op.invstd));
    // SAFETY: `map_rows` writes every row of dx, and dγ, dβ are copied in below.
    #[allow(unsafe_code)]
    let mut out = unsafe { unwritten(x.len() + 2 * c) };
    let (dx, params) = out.split_at_mut(x.len());
    map_rows(
        dx,
        c,
        s,
        #[inline(always)]
        |ch, row, r| {
            let r = rows(r);
            let (k, db, dg, m, i) = (k[ch], db_n[ch], dg_n[ch], mean[ch], invstd[ch]);
            for ((o, (&gy, &yv)), &xv) in row.iter_mut().zip(dy[r.clone()].iter().zip(&y[r.clone()])).zip(&x[r]) {
                *o = k * (masked(gy, yv, op.relu) - db - (xv - m) * i * dg);
            }
        },
    );
    params[..c].copy_from_slice(&cast::<T>(&dgamma));
    params[c..].copy_from_slice(&cast::<T>(&dbeta));
    Ok(out)
}

/// `f(a[i], b[i])` for every i, in parallel chunks.
fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    // SAFETY: the chunks of `out` cover it, and each is written element by element.
    #[allow(unsafe_code)]
    let mut out = unsafe { unwritten(a.len()) };
    out.par_chunks_mut(TASK_ELEMS).zip(a.par_chunks(TASK_ELEMS).zip(b.par_chunks(TASK_ELEMS))).for_each(
        |(o, (a, b))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &u), &v) in o.iter_mut().zip(a).zip(b) {
                        *o = f(u, v);
                    }
                },
            )
        },
    );
    out
}

/// relu(a + b); a NaN stays NaN, so that the training step's check sees it.
fn add_relu_kernel<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(
        a,
        b,
        #[inline(always)]
        |u, v| {
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
        a,
        b,
        #[inline(always)]
        |u, v| u + v,
    )
}

fn relu_grad_kernel<T: Float>(dy: &[T], y: &[T]) -> Vec<T> {
    zip_map(
        dy,
        y,
        #[inline(always)]
        |g, y| masked(g, y, true),
    )
}

// ---------------------------------------------------------------------------------------------------------------
// candle custom ops.

/// Per-channel [Σx ‖ Σx²], accumulated and returned in f64.
struct SumsOp;

impl candle_core::CustomOp1 for SumsOp {
    fn name(&self) -> &'static str {
        "ssl-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, sp) = bcs(l.dims())?;
        let sums = match s {
            CpuStorage::F32(_) => {
                let x = read::<f32>(s, l)?;
                reduce_channels(
                    b,
                    c,
                    sp,
                    #[inline(always)]
                    |img, ch| sum_and_squares(&x[(img * c + ch) * sp..(img * c + ch + 1) * sp]),
                )
            }
            CpuStorage::F64(_) => {
                let x = read::<f64>(s, l)?;
                reduce_channels(
                    b,
                    c,
                    sp,
                    #[inline(always)]
                    |img, ch| sum_and_squares(&x[(img * c + ch) * sp..(img * c + ch + 1) * sp]),
                )
            }
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
        let (_, c, s) = bcs(l1.dims())?;
        let operands = [(s1, l1), (s2, l2), (s3, l3)];
        let y = ternary(
            operands,
            |x, g, b| Ok(forward(self, x, g, b, (c, s))),
            |x, g, b| Ok(forward(self, x, g, b, (c, s))),
        )?;
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
        let dims = bcs(l2.dims())?;
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
        _ => bail!("batch norm: f32 or f64 operands of one dtype expected"),
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
