//! Our CPU convolution: conv2d forward and both backward products (input gradient, weight gradient) as candle
//! custom ops built on the `gemm` crate, which candle itself uses for matmul.
//!
//! Layout is channels-last, NHWC [B, H, W, C], with torch's [O, C, kh, kw] kernel: the network's feature maps stay
//! channels-last from the stem to the global pool (`nn::layers`), so that no product transposes its operands. (With
//! NCHW maps every product transposed at both ends: 12 % of the training step under `perf`.) The direct products
//! are GEMMs over the patch matrix `P[n, kh·kw·C]` whose rows are the receptive fields of `n` output pixels
//! (`patches.rs`):
//!
//! - forward: `y[n, O] = P · W′ᵀ` (W′ the kernel in P's (ky, kx, c) order);
//! - weight gradient: `dW′ += dyᵀ · P`, summed over the batch;
//! - input gradient: `dP = dy · W′`, added back into the image; for stride 1 (and pad ≤ k − 1) it is instead the
//!   forward convolution of dy with the flipped, transposed kernel and padding k − 1 − pad, which has the forward's
//!   GEMM shape and needs no scatter.
//!
//! Stride-1 3×3 convolutions with at least 16 channels in and out (80 % of `resnet_mini`'s FLOPs) use Winograd
//! F(4×4, 3×3) instead (`winograd.rs`): 4× fewer multiplies than the direct product, 1.6–2.7× faster than im2col
//! measured, at an f32 error of about 10⁻⁵ relative; F(2×2, 3×3), exact in its arithmetic, is the alternative.
//! [`ConvAlgo`] selects the algorithm explicitly (benchmarks, tests).
//!
//! Work is split over the batch with rayon, each task running single-threaded GEMMs on groups of images (several
//! images share one GEMM when their pixel count is small, so that the GEMM stays wide); the weight gradient sums one
//! partial per task in a fixed order, so results do not depend on scheduling.
//!
//! Which implementation the network's layers run is the network's [`crate::nn::LayerImpl`].

mod patches;
mod winograd;

pub use winograd::Tile;

use super::gemm::{gemm_strided, Float, Matrix};
use super::read;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------------------------
// Work counters: what the training benchmark reports as the convolutions' achieved GFLOP/s.

/// Wall time and direct-convolution FLOPs (2·B·O·C·kh·kw·Ho·Wo per product, whatever the algorithm, so Winograd
/// shows as faster than its multiplies) of the products counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConvWork {
    /// Seconds spent inside the convolution kernels.
    pub seconds: f64,
    /// Direct-convolution FLOPs they computed.
    pub flops: f64,
}

/// Counts the convolution work of one network (and its target, which shares it): each product our kernels run adds
/// its time and FLOPs. Differences of two readings give a step's share.
#[derive(Debug, Default)]
pub struct WorkCounter {
    nanos: AtomicU64,
    flops: AtomicU64,
}

impl WorkCounter {
    /// The work counted so far.
    pub fn total(&self) -> ConvWork {
        ConvWork {
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            flops: self.flops.load(Ordering::Relaxed) as f64,
        }
    }

    /// Runs one product, adding its time and FLOPs.
    fn count<R>(&self, g: &ConvGeom, f: impl FnOnce() -> R) -> R {
        let start = std::time::Instant::now();
        let out = f();
        self.nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.flops.fetch_add(g.flops() as u64, Ordering::Relaxed);
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor-level entry points.

/// conv2d of a channels-last x [B, H, W, C] with w [O, C, kh, kw] (no bias, dilation 1, one group) through our
/// kernels, giving y [B, Ho, Wo, O] and recording the backward pass (input and weight gradients, each computed only
/// for an argument that needs it), counting every product in `work`. f32 and f64 on the CPU (`nn::layers` sends
/// other devices to candle's NCHW convolution).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize, work: &Arc<WorkCounter>) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        bail!("our conv2d runs on the CPU in f32 or f64, not {:?} on {:?}", x.dtype(), x.device().location());
    }
    x.apply_op2(w, Conv2dOp { stride, pad, work: work.clone() })
}

/// candle's own conv2d (and autodiff), working around candle 0.9.2's CPU bug huggingface/candle#3404 (fixed
/// upstream by PR #3405, not in 0.9.2): its tiled conv reads any input whose strides equal those of a contiguous
/// NHWC tensor as NHWC data, and a contiguous NCHW input with C == H == W has exactly those strides, so its output
/// is garbage. Such an input is handed over stored as NHWC instead (one copy, only in that case), which candle's
/// general path reads correctly.
pub fn candle_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    if x.stride() == [h * wd * c, wd * c, c, 1] && c > 1 {
        let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?.permute((0, 3, 1, 2))?;
        return nhwc.conv2d(w, pad, stride, 1, 1);
    }
    x.conv2d(w, pad, stride, 1, 1)
}

/// The input gradient of [`conv2d`] alone (no graph): dx [B, H, W, C] from dy [B, Ho, Wo, O], the kernel and the
/// input size `(h, w)`.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    pad: usize,
    work: &Arc<WorkCounter>,
) -> Result<Tensor> {
    dy.apply_op2_no_bwd(w, &InputGradOp { stride, pad, h: input_hw.0, w: input_hw.1, work: work.clone() })
}

/// The weight gradient of [`conv2d`] alone (no graph): dW [O, C, kh, kw] from x [B, H, W, C], dy [B, Ho, Wo, O] and
/// the kernel size `(kh, kw)`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    kernel_hw: (usize, usize),
    stride: usize,
    pad: usize,
    work: &Arc<WorkCounter>,
) -> Result<Tensor> {
    x.apply_op2_no_bwd(dy, &WeightGradOp { stride, pad, kh: kernel_hw.0, kw: kernel_hw.1, work: work.clone() })
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry.

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch size B.
    pub batch: usize,
    /// Input channels C.
    pub c_in: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Output channels O.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes, both sides).
    pub pad: usize,
    /// Output height Ho = (H + 2·pad − kh) / stride + 1.
    pub ho: usize,
    /// Output width Wo.
    pub wo: usize,
}

impl ConvGeom {
    /// The geometry of x [B, H, W, C] convolved with w [O, C, kh, kw]; errors on mismatched channels, a zero stride
    /// or a kernel larger than the padded input.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[batch, h, wd, c_in], &[c_out, c_w, kh, kw]) = (x, w) else {
            bail!("conv2d expects a rank-4 input and kernel, got {x:?} and {w:?}")
        };
        if c_w != c_in {
            bail!("conv2d: the input has {c_in} channels but the kernel {w:?} expects {c_w}");
        }
        if stride == 0 || kh == 0 || kw == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            bail!("conv2d: kernel {kh}×{kw}, stride {stride}, pad {pad} does not fit an input of {h}×{wd}");
        }
        let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (wd + 2 * pad - kw) / stride + 1);
        Ok(ConvGeom { batch, c_in, h, w: wd, c_out, kh, kw, stride, pad, ho, wo })
    }

    /// Multiply-adds ×2 of the direct convolution: 2·B·O·C·kh·kw·Ho·Wo (also the count of each backward product).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.c_out * self.c_in * self.kh * self.kw * self.ho * self.wo) as f64
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Columns of the patch matrix: kh·kw·C.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Elements of one input image.
    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Elements of one output image.
    fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own patch matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scheduling: groups of images per task.

/// Columns a GEMM should have at least before images are grouped into one (narrow GEMMs repack the kernel per
/// image and run short loops).
const MIN_COLUMNS: usize = 512;

/// Images per task and the GEMM parallelism inside a task: groups wide enough for the GEMM, but enough of them to
/// keep every thread busy; gemm's own threads only when there are fewer groups than threads.
fn schedule(g: &ConvGeom) -> (usize, gemm::Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    let per_thread = g.batch.div_ceil(threads).max(1);
    let nb = MIN_COLUMNS.div_ceil(g.p().max(1)).clamp(1, per_thread);
    let groups = g.batch.div_ceil(nb);
    let par = if groups < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    (nb, par)
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels on plain slices.

/// `dst[m×n] (row stride dst_rs) ← (dst if accumulate) + a[m×k]·b[k×n]`, single GEMM call.
fn gemm<T: Float>(
    dst: &mut [T],
    dst_rs: usize,
    a: Matrix<'_, T>,
    b: Matrix<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    gemm_strided(dst, dst_rs, a, b, accumulate, T::one(), T::one(), par);
}

/// A row-major matrix view.
fn mat<T>(data: &[T], rows: usize, cols: usize, row_stride: usize) -> Matrix<'_, T> {
    Matrix { data, rows, cols, row_stride: row_stride as isize, col_stride: 1 }
}

/// Grows a scratch buffer to `len` (contents unspecified) and returns it.
fn scratch<T: Float>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::zero());
    }
    &mut buf[..len]
}

/// Σ over the batch's groups of `nb` images of what `add` accumulates into a `len`-element buffer: one partial per
/// part (whole groups, at most one part per thread), summed in part order, so that the result does not depend on
/// scheduling. `add(acc, (b0, n_img), first, par, scratch)` adds images b0..b0 + n_img into `acc` (overwriting it
/// when `first`), running its GEMMs with `par` (gemm's own threads only when there are fewer parts than threads)
/// and reusing the part's `scratch`.
fn sum_over_groups<T: Float, S: Default>(
    batch: usize,
    nb: usize,
    len: usize,
    add: impl Fn(&mut [T], (usize, usize), bool, gemm::Parallelism, &mut S) + Sync,
) -> Vec<T> {
    let threads = rayon::current_num_threads().max(1);
    let groups = batch.div_ceil(nb);
    let parts = threads.min(groups);
    let par = if parts < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = vec![T::zero(); len];
            let mut scratch = S::default();
            let (g_lo, g_hi) = (part * groups / parts, (part + 1) * groups / parts);
            for gi in g_lo..g_hi {
                let b0 = gi * nb;
                add(&mut acc, (b0, nb.min(batch - b0)), gi == g_lo, par, &mut scratch);
            }
            acc
        })
        .collect();
    sum_in_order(partials, len)
}

/// The element-wise sum of per-task partial results, added in task order so that the result does not depend on
/// scheduling; `len` zeros when there are none.
fn sum_in_order<T: Float>(partials: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut it = partials.into_iter();
    let mut sum = it.next().unwrap_or_else(|| vec![T::zero(); len]);
    for part in it {
        for (a, b) in sum.iter_mut().zip(part) {
            *a += b;
        }
    }
    sum
}

/// How a convolution product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// The default: Winograd for stride-1 3×3 convolutions with at least 16 input and output channels, with the tile
    /// that needs the fewest multiplies for the output's size (F(4×4) from 3×3 maps up), im2col + GEMM otherwise.
    Auto,
    /// im2col + GEMM (the direct convolution, `patches.rs`) everywhere.
    Im2col,
    /// Winograd F(2×2, 3×3) where it applies (3×3, stride 1), im2col + GEMM elsewhere.
    WinogradF2,
    /// Winograd F(4×4, 3×3) where it applies, im2col + GEMM elsewhere.
    WinogradF4,
}

impl ConvAlgo {
    /// The Winograd tile this algorithm runs `g` with, or None for im2col.
    fn winograd(self, g: &ConvGeom) -> Option<Tile> {
        match self {
            ConvAlgo::Im2col => None,
            ConvAlgo::WinogradF2 => winograd::applies(g).then_some(Tile::F2),
            ConvAlgo::WinogradF4 => winograd::applies(g).then_some(Tile::F4),
            // Its GEMMs have C as inner and O as outer dimension: with few channels (the 1-channel stem) they are
            // too thin to beat one im2col GEMM with inner dimension 9·C.
            ConvAlgo::Auto if winograd::applies(g) && g.c_in >= 16 && g.c_out >= 16 => winograd::fewest_multiplies(g),
            ConvAlgo::Auto => None,
        }
    }
}

/// Forward convolution: y [B, Ho, Wo, O] from x [B, H, W, C] and w [O, C, kh, kw], all contiguous.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    forward_with(g, x, w, ConvAlgo::Auto)
}

/// [`forward`] with a chosen algorithm.
pub fn forward_with<T: Float>(g: &ConvGeom, x: &[T], w: &[T], algo: ConvAlgo) -> Vec<T> {
    assert_eq!((x.len(), w.len()), (g.batch * g.in_len(), g.c_out * g.k()), "conv2d forward: buffer sizes");
    if let Some(tile) = algo.winograd(g) {
        return winograd::forward(g, tile, x, w);
    }
    patches::forward(g, x, w)
}

/// The kernel of the input gradient as a forward convolution: wf[c, o, ky, kx] = w[o, c, kh−1−ky, kw−1−kx].
fn flip_transpose<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let (o, c, kh, kw) = (g.c_out, g.c_in, g.kh, g.kw);
    let mut wf = vec![T::zero(); w.len()];
    for oc in 0..o {
        for ic in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    wf[((ic * o + oc) * kh + kh - 1 - ky) * kw + kw - 1 - kx] = w[((oc * c + ic) * kh + ky) * kw + kx];
                }
            }
        }
    }
    wf
}

/// Input gradient: dx [B, H, W, C] from dy [B, Ho, Wo, O] and w [O, C, kh, kw], all contiguous.
pub fn input_grad<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    input_grad_with(g, dy, w, ConvAlgo::Auto)
}

/// [`input_grad`] with a chosen algorithm (for stride 1 it is a forward convolution, run with `algo`).
pub fn input_grad_with<T: Float>(g: &ConvGeom, dy: &[T], w: &[T], algo: ConvAlgo) -> Vec<T> {
    let (k, o) = (g.k(), g.c_out);
    assert_eq!((dy.len(), w.len()), (g.batch * g.out_len(), o * k), "conv2d input grad: buffer sizes");
    if g.stride == 1 && g.kh == g.kw && g.pad < g.kh && !g.pointwise() {
        // A stride-1 convolution's input gradient is the full correlation of dy with the flipped kernel.
        let gf = ConvGeom { c_in: o, h: g.ho, w: g.wo, c_out: g.c_in, pad: g.kh - 1 - g.pad, ho: g.h, wo: g.w, ..*g };
        return forward_with(&gf, dy, &flip_transpose(g, w), algo);
    }
    patches::input_grad(g, dy, w)
}

/// Weight gradient: dW [O, C, kh, kw] = Σ_b dy_bᵀ · P_b from x [B, H, W, C] and dy [B, Ho, Wo, O], contiguous.
pub fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    weight_grad_with(g, x, dy, ConvAlgo::Auto)
}

/// [`weight_grad`] with a chosen algorithm.
pub fn weight_grad_with<T: Float>(g: &ConvGeom, x: &[T], dy: &[T], algo: ConvAlgo) -> Vec<T> {
    assert_eq!((x.len(), dy.len()), (g.batch * g.in_len(), g.batch * g.out_len()), "conv2d weight grad: buffer sizes");
    if let Some(tile) = algo.winograd(g) {
        return winograd::weight_grad(g, tile, x, dy);
    }
    patches::weight_grad(g, x, dy)
}

// ---------------------------------------------------------------------------------------------------------------
// candle custom ops.

/// Runs `f` on the two operands as slices of one float type, wrapping its result as storage.
fn run2<F32, F64>(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, f32: F32, f64: F64) -> Result<CpuStorage>
where
    F32: FnOnce(&[f32], &[f32]) -> Vec<f32>,
    F64: FnOnce(&[f64], &[f64]) -> Vec<f64>,
{
    Ok(match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(f32(&read(s1, l1)?, &read(s2, l2)?)),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(f64(&read(s1, l1)?, &read(s2, l2)?)),
        _ => bail!("conv2d: f32 or f64 operands of one dtype expected"),
    })
}

/// conv2d forward, with our backward.
struct Conv2dOp {
    stride: usize,
    pad: usize,
    work: Arc<WorkCounter>,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let out = self.work.count(&g, || run2(s1, l1, s2, l2, |x, w| forward(&g, x, w), |x, w| forward(&g, x, w)))?;
        Ok((out, Shape::from_dims(&[g.batch, g.ho, g.wo, g.c_out])))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, h, wd, _) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            Some(conv2d_input_grad(dy, w, (h, wd), self.stride, self.pad, &self.work)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(conv2d_weight_grad(x, dy, (kh, kw), self.stride, self.pad, &self.work)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// dx from (dy, w).
struct InputGradOp {
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    work: Arc<WorkCounter>,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[b, ho, wo, o], &[_, c, _, _]) = (l1.dims(), l2.dims()) else {
            bail!("conv2d input grad: rank-4 dy and kernel expected, got {:?} and {:?}", l1.dims(), l2.dims())
        };
        let g = ConvGeom::new(&[b, self.h, self.w, c], l2.dims(), self.stride, self.pad)?;
        if (g.c_out, g.ho, g.wo) != (o, ho, wo) {
            bail!("conv2d input grad: dy {:?} does not match the convolution {g:?}", l1.dims());
        }
        let out = self
            .work
            .count(&g, || run2(s1, l1, s2, l2, |dy, w| input_grad(&g, dy, w), |dy, w| input_grad(&g, dy, w)))?;
        Ok((out, Shape::from_dims(&[b, self.h, self.w, c])))
    }
}

/// dW from (x, dy).
struct WeightGradOp {
    stride: usize,
    pad: usize,
    kh: usize,
    kw: usize,
    work: Arc<WorkCounter>,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[_, _, _, c], &[b, ho, wo, o]) = (l1.dims(), l2.dims()) else {
            bail!("conv2d weight grad: rank-4 x and dy expected, got {:?} and {:?}", l1.dims(), l2.dims())
        };
        let g = ConvGeom::new(l1.dims(), &[o, c, self.kh, self.kw], self.stride, self.pad)?;
        if (g.batch, g.ho, g.wo) != (b, ho, wo) {
            bail!("conv2d weight grad: dy {:?} does not match the convolution {g:?}", l2.dims());
        }
        let out = self
            .work
            .count(&g, || run2(s1, l1, s2, l2, |x, dy| weight_grad(&g, x, dy), |x, dy| weight_grad(&g, x, dy)))?;
        Ok((out, Shape::from_dims(&[o, c, self.kh, self.kw])))
    }
}
