//! Our CPU convolution: conv2d forward and both backward products (input gradient, weight gradient) as candle
//! custom ops built on the `gemm` crate, which candle itself uses for matmul.
//!
//! Layout is NCHW with an [O, C, kh, kw] kernel, as in torch and candle. The direct products are GEMMs over an
//! im2col matrix `col[C·kh·kw, n]` whose columns are the receptive fields of `n` output pixels:
//!
//! - forward: `y_b[O, P] = W[O, C·kh·kw] · col_b` (P = Ho·Wo output pixels of image b);
//! - weight gradient: `dWᵀ += col_b · dy_bᵀ`, summed over the batch;
//! - input gradient: `dcol_b = Wᵀ · dy_b`, scattered back by col2im; for stride 1 (and pad ≤ k − 1) it is instead
//!   the forward convolution of dy with the flipped, transposed kernel and padding k − 1 − pad, which has the
//!   forward's better GEMM shape and needs no scatter.
//!
//! Stride-1 3×3 convolutions with at least 16 channels in and out (80 % of `resnet_mini`'s FLOPs) use Winograd
//! F(2×2, 3×3) instead (see the section below): 2.25× fewer multiplies, 1.1–1.7× faster measured, and no less
//! accurate in f32. [`ConvAlgo`] selects the algorithm explicitly (benchmarks, tests).
//!
//! A 1×1 stride-1 unpadded convolution skips im2col (the image is already the `[C, P]` matrix); a strided one reads
//! a copy of the image whose rows are split by column phase, so that every im2col row segment is contiguous. Work
//! is split over the batch with rayon, each task running single-threaded GEMMs on groups of images (several images
//! share one GEMM when their pixel count is small, so that the GEMM stays wide); the weight gradient sums one
//! partial per task in a fixed order, so results do not depend on scheduling.
//!
//! Which implementation `model::conv2d` runs is chosen by [`crate::runtime::kernels`].

use crate::backend::fused::gemm::{gemm_strided, Float, Matrix};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------------------------------
// Work counters: what the training benchmark reports as the convolutions' achieved GFLOP/s.

static NANOS: AtomicU64 = AtomicU64::new(0);
static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Wall time and direct-convolution FLOPs (2·B·O·C·kh·kw·Ho·Wo per product, whatever the algorithm, so Winograd
/// shows as faster than its multiplies) of every product our kernels have run in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConvWork {
    /// Seconds spent inside the convolution kernels.
    pub seconds: f64,
    /// Direct-convolution FLOPs they computed.
    pub flops: f64,
}

/// The convolution work done so far; differences of two readings give a step's share.
pub fn work_done() -> ConvWork {
    ConvWork { seconds: NANOS.load(Ordering::Relaxed) as f64 * 1e-9, flops: FLOPS.load(Ordering::Relaxed) as f64 }
}

/// Runs one product, adding its time and FLOPs to the counters.
fn counted<R>(g: &ConvGeom, f: impl FnOnce() -> R) -> R {
    let start = std::time::Instant::now();
    let out = f();
    NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    FLOPS.fetch_add(g.flops() as u64, Ordering::Relaxed);
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor-level entry points.

/// conv2d of x [B, C, H, W] with w [O, C, kh, kw] (no bias, dilation 1, one group) through our kernels, recording
/// the backward pass (input and weight gradients, each computed only for an argument that needs it). f32 and f64 on
/// the CPU; other devices and dtypes fall back to candle's convolution.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return candle_conv2d(x, w, stride, pad);
    }
    x.apply_op2(w, Conv2dOp { stride, pad })
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

/// The input gradient of conv2d alone (no graph): dx [B, C, H, W] from dy [B, O, Ho, Wo], the kernel and the input
/// size `(h, w)`.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    dy.apply_op2_no_bwd(w, &InputGradOp { stride, pad, h: input_hw.0, w: input_hw.1 })
}

/// The weight gradient of conv2d alone (no graph): dW [O, C, kh, kw] from x [B, C, H, W], dy [B, O, Ho, Wo] and
/// the kernel size `(kh, kw)`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    kernel_hw: (usize, usize),
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    x.apply_op2_no_bwd(dy, &WeightGradOp { stride, pad, kh: kernel_hw.0, kw: kernel_hw.1 })
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
    /// The geometry of x [B, C, H, W] convolved with w [O, C, kh, kw]; errors on mismatched channels, a zero stride
    /// or a kernel larger than the padded input.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[batch, c_in, h, wd], &[c_out, c_w, kh, kw]) = (x, w) else {
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

    /// Rows of the im2col matrix: C·kh·kw.
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

    /// A 1×1, stride-1, unpadded convolution: the image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `[lo, hi)` of kernel column `kx` that read inside the input (the rest read padding).
    fn inside(&self, kx: usize, out: usize, size: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = p.saturating_sub(kx).div_ceil(s).min(out);
        // ox·s + kx − p < size  ⇔  ox < (size + p − kx) / s
        let hi = if size + p > kx { (size + p - kx).div_ceil(s).min(out) } else { 0 };
        (lo, hi.max(lo))
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

/// Whether a strided im2col reads a phase-split copy of the image ([`split_phases`]): when every phase is used by
/// some kernel column (kw ≥ stride); a 1×1 stride-2 convolution reads a quarter of the image, gathered directly.
fn phase_split(g: &ConvGeom) -> bool {
    g.stride > 1 && g.kw >= g.stride
}

/// Where column phase φ starts in a row reordered by [`split_phases`]: phases 0..φ hold ⌈(W − φ′)/s⌉ columns each.
fn phase_start(w: usize, s: usize, phase: usize) -> usize {
    (0..phase).map(|f| (w - f.min(w)).div_ceil(s)).sum()
}

/// Reorders every row of x [C, H, W] by column phase for stride s: columns φ, φ + s, φ + 2s, … for φ = 0, 1, …,
/// so that each kernel column of a strided im2col reads a contiguous run.
fn split_phases<T: Float>(g: &ConvGeom, x: &[T], out: &mut [T]) {
    let (w, s) = (g.w, g.stride);
    for (src, dst) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        let mut at = 0;
        for phase in 0..s.min(w) {
            for &v in src[phase..].iter().step_by(s) {
                dst[at] = v;
                at += 1;
            }
        }
    }
}

/// The inverse of [`split_phases`].
fn merge_phases<T: Float>(g: &ConvGeom, phased: &[T], x: &mut [T]) {
    let (w, s) = (g.w, g.stride);
    for (src, dst) in phased.chunks_exact(w).zip(x.chunks_exact_mut(w)) {
        let mut at = 0;
        for phase in 0..s.min(w) {
            for d in dst[phase..].iter_mut().step_by(s) {
                *d = src[at];
                at += 1;
            }
        }
    }
}

/// For kernel column kx: the start of its run in a phase-split row, such that output column ox reads element
/// `start + ox` (valid for the output columns [`ConvGeom::inside`] gives).
fn phase_offset(g: &ConvGeom, kx: usize) -> isize {
    let q = kx as isize - g.pad as isize;
    let (s, phase) = (g.stride as isize, (kx as isize - g.pad as isize).rem_euclid(g.stride as isize));
    phase_start(g.w, g.stride, phase as usize) as isize + (q - phase) / s
}

/// im2col of one image x [C, H, W] into columns `off..off + P` of `col` (row stride `ld`): row (c, ky, kx) holds
/// x[c, oy·s + ky − pad, ox·s + kx − pad] (0 outside) for every output pixel (oy, ox). For a stride above 1 the
/// image is first phase-split into `buf` (see [`phase_split`]), so that every row segment is a contiguous copy.
fn im2col<T: Float>(g: &ConvGeom, x: &[T], col: &mut [T], ld: usize, off: usize, buf: &mut Vec<T>) {
    let (h, w, s, wo) = (g.h, g.w, g.stride, g.wo);
    let split = phase_split(g);
    let x = if split {
        let phased = scratch(buf, x.len());
        split_phases(g, x, phased);
        &*phased
    } else {
        x
    };
    for c in 0..g.c_in {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for ky in 0..g.kh {
            let (oy_lo, oy_hi) = g.inside(ky, g.ho, h);
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let row = &mut col[r * ld + off..r * ld + off + g.p()];
                let (ox_lo, ox_hi) = g.inside(kx, wo, w);
                let start = (phase_offset(g, kx) + ox_lo as isize) as usize;
                row[..oy_lo * wo].fill(T::zero());
                row[oy_hi * wo..].fill(T::zero());
                for oy in oy_lo..oy_hi {
                    let src = &xc[(oy * s + ky - g.pad) * w..][..w];
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    dst[..ox_lo].fill(T::zero());
                    dst[ox_hi..].fill(T::zero());
                    if split || s == 1 {
                        dst[ox_lo..ox_hi].copy_from_slice(&src[start..start + ox_hi - ox_lo]);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate().take(ox_hi).skip(ox_lo) {
                            *d = src[ox * s + kx - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// col2im: the adjoint of [`im2col`], writing dx [C, H, W] (every element) from columns `off..off + P` of `col`
/// (row stride `ld`); strided convolutions accumulate into a phase-split image in `buf` and merge it at the end
/// (see [`phase_split`]).
fn col2im<T: Float>(g: &ConvGeom, col: &[T], ld: usize, off: usize, dx: &mut [T], buf: &mut Vec<T>) {
    let (h, w, s, wo) = (g.h, g.w, g.stride, g.wo);
    let split = phase_split(g);
    let acc = if split { scratch(buf, dx.len()) } else { &mut *dx };
    acc.fill(T::zero());
    for c in 0..g.c_in {
        let dxc = &mut acc[c * h * w..(c + 1) * h * w];
        for ky in 0..g.kh {
            let (oy_lo, oy_hi) = g.inside(ky, g.ho, h);
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let row = &col[r * ld + off..r * ld + off + g.p()];
                let (ox_lo, ox_hi) = g.inside(kx, wo, w);
                let start = (phase_offset(g, kx) + ox_lo as isize) as usize;
                for oy in oy_lo..oy_hi {
                    let dst = &mut dxc[(oy * s + ky - g.pad) * w..][..w];
                    let src = &row[oy * wo + ox_lo..oy * wo + ox_hi];
                    if split || s == 1 {
                        for (d, &v) in dst[start..start + ox_hi - ox_lo].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (ox, &v) in (ox_lo..ox_hi).zip(src) {
                            dst[ox * s + kx - g.pad] += v;
                        }
                    }
                }
            }
        }
    }
    if split {
        merge_phases(g, &buf[..dx.len()], dx);
    }
}

/// Copies the `[rows, P]` blocks of `n_img` consecutive images (image stride rows·P) side by side into
/// `out[rows, n_img·P]`.
fn gather<T: Float>(src: &[T], rows: usize, p: usize, n_img: usize, out: &mut [T]) {
    let n = n_img * p;
    for i in 0..n_img {
        for r in 0..rows {
            out[r * n + i * p..r * n + (i + 1) * p].copy_from_slice(&src[(i * rows + r) * p..(i * rows + r + 1) * p]);
        }
    }
}

/// The inverse of [`gather`]: `src[rows, n_img·P]` back to `n_img` images of `[rows, P]`.
fn scatter<T: Float>(src: &[T], rows: usize, p: usize, n_img: usize, out: &mut [T]) {
    let n = n_img * p;
    for i in 0..n_img {
        for r in 0..rows {
            out[(i * rows + r) * p..(i * rows + r + 1) * p].copy_from_slice(&src[r * n + i * p..r * n + (i + 1) * p]);
        }
    }
}

/// Grows a scratch buffer to `len` (contents unspecified) and returns it.
fn scratch<T: Float>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::zero());
    }
    &mut buf[..len]
}

/// How a convolution product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// The default: Winograd F(2×2, 3×3) for stride-1 3×3 convolutions with at least 16 input and output channels,
    /// im2col + GEMM otherwise.
    Auto,
    /// im2col + GEMM (direct convolution) everywhere.
    Im2col,
    /// Winograd F(2×2, 3×3) where it applies (3×3, stride 1), im2col + GEMM elsewhere.
    Winograd,
}

impl ConvAlgo {
    fn winograd(self, g: &ConvGeom) -> bool {
        match self {
            ConvAlgo::Im2col => false,
            ConvAlgo::Winograd => winograd_applies(g),
            // Its 16 GEMMs have C as inner and O as outer dimension: with few channels (the 1-channel stem) they
            // are too thin to beat one im2col GEMM with inner dimension 9·C.
            ConvAlgo::Auto => winograd_applies(g) && g.c_in >= 16 && g.c_out >= 16,
        }
    }
}

/// Forward convolution: y [B, O, Ho, Wo] from x [B, C, H, W] and w [O, C, kh, kw], all contiguous.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    forward_with(g, x, w, ConvAlgo::Auto)
}

/// [`forward`] with a chosen algorithm.
pub fn forward_with<T: Float>(g: &ConvGeom, x: &[T], w: &[T], algo: ConvAlgo) -> Vec<T> {
    assert_eq!((x.len(), w.len()), (g.batch * g.in_len(), g.c_out * g.k()), "conv2d forward: buffer sizes");
    if algo.winograd(g) {
        return winograd_forward(g, x, w);
    }
    im2col_forward(g, x, w)
}

fn im2col_forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    let mut y = vec![T::zero(); g.batch * g.out_len()];
    if y.is_empty() {
        return y;
    }
    let (nb, par) = schedule(g);
    let wm = mat(w, o, k, k);
    y.par_chunks_mut(nb * g.out_len()).enumerate().for_each_init(
        Default::default,
        |bufs: &mut (Vec<T>, Vec<T>), (gi, yg)| {
            let (buf, phased) = (&mut bufs.0, &mut bufs.1);
            let n_img = yg.len() / g.out_len();
            let xg = &x[gi * nb * g.in_len()..][..n_img * g.in_len()];
            let n = n_img * p;
            if n_img == 1 {
                if g.pointwise() {
                    gemm(yg, p, wm, mat(xg, k, p, p), false, par);
                } else {
                    let col = scratch(buf, k * n);
                    im2col(g, xg, col, n, 0, phased);
                    gemm(yg, p, wm, mat(col, k, n, n), false, par);
                }
            } else {
                let (col, out) = scratch(buf, k * n + o * n).split_at_mut(k * n);
                if g.pointwise() {
                    gather(xg, k, p, n_img, col);
                } else {
                    for i in 0..n_img {
                        im2col(g, &xg[i * g.in_len()..(i + 1) * g.in_len()], col, n, i * p, phased);
                    }
                }
                gemm(out, n, wm, mat(col, k, n, n), false, par);
                scatter(out, o, p, n_img, yg);
            }
        },
    );
    y
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

/// Input gradient: dx [B, C, H, W] from dy [B, O, Ho, Wo] and w [O, C, kh, kw], all contiguous.
pub fn input_grad<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    input_grad_with(g, dy, w, ConvAlgo::Auto)
}

/// [`input_grad`] with a chosen algorithm (for stride 1 it is a forward convolution, run with `algo`).
pub fn input_grad_with<T: Float>(g: &ConvGeom, dy: &[T], w: &[T], algo: ConvAlgo) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    assert_eq!((dy.len(), w.len()), (g.batch * g.out_len(), o * k), "conv2d input grad: buffer sizes");
    if g.stride == 1 && g.kh == g.kw && g.pad < g.kh && !g.pointwise() {
        // A stride-1 convolution's input gradient is the full correlation of dy with the flipped kernel.
        let gf = ConvGeom { c_in: o, h: g.ho, w: g.wo, c_out: g.c_in, pad: g.kh - 1 - g.pad, ho: g.h, wo: g.w, ..*g };
        return forward_with(&gf, dy, &flip_transpose(g, w), algo);
    }
    let mut dx = vec![T::zero(); g.batch * g.in_len()];
    if dx.is_empty() {
        return dx;
    }
    let (nb, par) = schedule(g);
    let wt = mat(w, o, k, k).t();
    dx.par_chunks_mut(nb * g.in_len()).enumerate().for_each_init(
        Default::default,
        |bufs: &mut (Vec<T>, Vec<T>), (gi, dxg)| {
            let (buf, phased) = (&mut bufs.0, &mut bufs.1);
            let n_img = dxg.len() / g.in_len();
            let dyg = &dy[gi * nb * g.out_len()..][..n_img * g.out_len()];
            let n = n_img * p;
            if n_img == 1 && g.pointwise() {
                gemm(dxg, p, wt, mat(dyg, o, p, p), false, par);
                return;
            }
            let (dcol, dyc) = scratch(buf, k * n + if n_img > 1 { o * n } else { 0 }).split_at_mut(k * n);
            let dym = if n_img == 1 {
                mat(dyg, o, n, n)
            } else {
                gather(dyg, o, p, n_img, dyc);
                mat(&*dyc, o, n, n)
            };
            gemm(dcol, n, wt, dym, false, par);
            if g.pointwise() {
                scatter(dcol, k, p, n_img, dxg);
            } else {
                for i in 0..n_img {
                    col2im(g, dcol, n, i * p, &mut dxg[i * g.in_len()..(i + 1) * g.in_len()], phased);
                }
            }
        },
    );
    dx
}

/// Weight gradient: dW [O, C, kh, kw] = Σ_b dy_b · col_bᵀ from x [B, C, H, W] and dy [B, O, Ho, Wo], contiguous.
pub fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    weight_grad_with(g, x, dy, ConvAlgo::Auto)
}

/// [`weight_grad`] with a chosen algorithm.
pub fn weight_grad_with<T: Float>(g: &ConvGeom, x: &[T], dy: &[T], algo: ConvAlgo) -> Vec<T> {
    assert_eq!((x.len(), dy.len()), (g.batch * g.in_len(), g.batch * g.out_len()), "conv2d weight grad: buffer sizes");
    if algo.winograd(g) {
        return winograd_weight_grad(g, x, dy);
    }
    im2col_weight_grad(g, x, dy)
}

fn im2col_weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    if g.batch == 0 || p == 0 {
        return vec![T::zero(); o * k];
    }
    let (nb, _) = schedule(g);
    let threads = rayon::current_num_threads().max(1);
    // One partial sum per part, parts of whole groups, summed in order below.
    let groups = g.batch.div_ceil(nb);
    let parts = threads.min(groups);
    let par = if parts < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut dwt = vec![T::zero(); k * o];
            let (mut buf, mut phased) = (Vec::new(), Vec::new());
            let (g_lo, g_hi) = (part * groups / parts, (part + 1) * groups / parts);
            for gi in g_lo..g_hi {
                let b0 = gi * nb;
                let n_img = nb.min(g.batch - b0);
                let n = n_img * p;
                let xg = &x[b0 * g.in_len()..][..n_img * g.in_len()];
                let dyg = &dy[b0 * g.out_len()..][..n_img * g.out_len()];
                let (col, dyc) = scratch(&mut buf, k * n + o * n).split_at_mut(k * n);
                let colm = if n_img == 1 && g.pointwise() {
                    mat(xg, k, n, n)
                } else {
                    if g.pointwise() {
                        gather(xg, k, p, n_img, col);
                    } else {
                        for i in 0..n_img {
                            im2col(g, &xg[i * g.in_len()..(i + 1) * g.in_len()], col, n, i * p, &mut phased);
                        }
                    }
                    mat(&*col, k, n, n)
                };
                let dym = if n_img == 1 {
                    mat(dyg, o, n, n)
                } else {
                    gather(dyg, o, p, n_img, dyc);
                    mat(&*dyc, o, n, n)
                };
                // dWᵀ[C·kh·kw, O] += col · dyᵀ: this orientation packs the large col operand more cheaply (about
                // 1.3× faster than dW += dy · colᵀ on the first stage).
                gemm(&mut dwt, o, colm, dym.t(), gi > g_lo, par);
            }
            dwt
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dwt = it.next().unwrap_or_else(|| vec![T::zero(); o * k]);
    for part in it {
        for (a, b) in dwt.iter_mut().zip(part) {
            *a += b;
        }
    }
    let mut dw = vec![T::zero(); o * k];
    for (r, row) in dwt.chunks_exact(o).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dw[c * k + r] = v;
        }
    }
    dw
}

// ---------------------------------------------------------------------------------------------------------------
// candle custom ops.

/// A tensor's elements in row-major order: borrowed when contiguous, gathered through its strides otherwise.
pub(crate) fn read<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = s.as_slice::<T>()?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    let (dims, strides) = (l.dims(), l.stride());
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; dims.len()];
    let mut off = l.start_offset();
    for _ in 0..count {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

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
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let out = counted(&g, || run2(s1, l1, s2, l2, |x, w| forward(&g, x, w), |x, w| forward(&g, x, w)))?;
        Ok((out, Shape::from_dims(&[g.batch, g.c_out, g.ho, g.wo])))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() { Some(conv2d_input_grad(dy, w, (h, wd), self.stride, self.pad)?) } else { None };
        let dw = if w.track_op() { Some(conv2d_weight_grad(x, dy, (kh, kw), self.stride, self.pad)?) } else { None };
        Ok((dx, dw))
    }
}

/// dx from (dy, w).
struct InputGradOp {
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[b, o, ho, wo], &[_, c, _, _]) = (l1.dims(), l2.dims()) else {
            bail!("conv2d input grad: rank-4 dy and kernel expected, got {:?} and {:?}", l1.dims(), l2.dims())
        };
        let g = ConvGeom::new(&[b, c, self.h, self.w], l2.dims(), self.stride, self.pad)?;
        if (g.c_out, g.ho, g.wo) != (o, ho, wo) {
            bail!("conv2d input grad: dy {:?} does not match the convolution {g:?}", l1.dims());
        }
        let out = counted(&g, || run2(s1, l1, s2, l2, |dy, w| input_grad(&g, dy, w), |dy, w| input_grad(&g, dy, w)))?;
        Ok((out, Shape::from_dims(&[b, c, self.h, self.w])))
    }
}

/// dW from (x, dy).
struct WeightGradOp {
    stride: usize,
    pad: usize,
    kh: usize,
    kw: usize,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "ssl-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[_, c, _, _], &[b, o, ho, wo]) = (l1.dims(), l2.dims()) else {
            bail!("conv2d weight grad: rank-4 x and dy expected, got {:?} and {:?}", l1.dims(), l2.dims())
        };
        let g = ConvGeom::new(l1.dims(), &[o, c, self.kh, self.kw], self.stride, self.pad)?;
        if (g.batch, g.ho, g.wo) != (b, ho, wo) {
            bail!("conv2d weight grad: dy {:?} does not match the convolution {g:?}", l2.dims());
        }
        let out = counted(&g, || run2(s1, l1, s2, l2, |x, dy| weight_grad(&g, x, dy), |x, dy| weight_grad(&g, x, dy)))?;
        Ok((out, Shape::from_dims(&[o, c, self.kh, self.kw])))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Winograd F(2×2, 3×3) for stride-1 3×3 convolutions.
//
// Each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of the 4×4 input tile d under it, so over the 16 positions ξ of
// the transformed tile the convolution becomes 16 GEMMs M_ξ[O, T] = U_ξ[O, C] · V_ξ[C, T] (T tiles): 16·O·C
// multiply-adds per tile instead of 36·O·C, 2.25× fewer. The weight gradient is the adjoint: dU_ξ = dM_ξ · V_ξᵀ
// with dM = A dY Aᵀ, then dW = Gᵀ dU G. Tiles past the output's edge (odd sizes) are computed and dropped.
//
//   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],  Aᵀ = [1 1 1 0; 0 1 −1 −1].

/// Tile columns a Winograd GEMM should have at least before images share one.
const MIN_TILES: usize = 256;

/// Whether Winograd F(2×2, 3×3) applies: a 3×3 kernel at stride 1.
fn winograd_applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1
}

/// Tile rows, tile columns.
fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.ho.div_ceil(2), g.wo.div_ceil(2))
}

/// Images per task for Winograd, and the GEMM parallelism inside a task (as [`schedule`]).
fn winograd_schedule(g: &ConvGeom) -> (usize, gemm::Parallelism) {
    let (th, tw) = tiles(g);
    let threads = rayon::current_num_threads().max(1);
    let per_thread = g.batch.div_ceil(threads).max(1);
    let nb = MIN_TILES.div_ceil(th * (tw + 1)).clamp(1, per_thread);
    let groups = g.batch.div_ceil(nb);
    let par = if groups < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    (nb, par)
}

/// U[ξ][o][c] = (G w[o, c] Gᵀ)[ξ], as 16 row-major [O, C] matrices.
fn filter_transform<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let half = T::from(0.5).unwrap_or(T::one());
    let mut u = vec![T::zero(); 16 * o * c];
    for oc in 0..o {
        for ic in 0..c {
            let k = &w[(oc * c + ic) * 9..][..9];
            // t = G·k (4×3), then u = t·Gᵀ (4×4).
            let mut t = [[T::zero(); 3]; 4];
            for col in 0..3 {
                let (k0, k1, k2) = (k[col], k[3 + col], k[6 + col]);
                t[0][col] = k0;
                t[1][col] = (k0 + k1 + k2) * half;
                t[2][col] = (k0 - k1 + k2) * half;
                t[3][col] = k2;
            }
            for (i, row) in t.iter().enumerate() {
                let ui = [row[0], (row[0] + row[1] + row[2]) * half, (row[0] - row[1] + row[2]) * half, row[2]];
                for (j, &v) in ui.iter().enumerate() {
                    u[((4 * i + j) * o + oc) * c + ic] = v;
                }
            }
        }
    }
    u
}

/// The adjoint of [`filter_transform`]: dW[o, c] = Gᵀ dU[o, c] G from dUᵀ stored as 16 row-major [C, O] matrices.
fn filter_transform_adjoint<T: Float>(g: &ConvGeom, dut: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let half = T::from(0.5).unwrap_or(T::one());
    let mut dw = vec![T::zero(); o * c * 9];
    for oc in 0..o {
        for ic in 0..c {
            let du = |i: usize, j: usize| dut[((4 * i + j) * c + ic) * o + oc];
            // s = Gᵀ·dU (3×4), then dW = s·G (3×3).
            let col = |j: usize| {
                let (d0, d1, d2, d3) = (du(0, j), du(1, j), du(2, j), du(3, j));
                [d0 + (d1 + d2) * half, (d1 - d2) * half, (d1 + d2) * half + d3]
            };
            let cols = [col(0), col(1), col(2), col(3)];
            let s: [[T; 4]; 3] = std::array::from_fn(|r| std::array::from_fn(|j| cols[j][r]));
            let out = &mut dw[(oc * c + ic) * 9..][..9];
            for (r, row) in s.iter().enumerate() {
                out[3 * r] = row[0] + (row[1] + row[2]) * half;
                out[3 * r + 1] = (row[1] - row[2]) * half;
                out[3 * r + 2] = (row[1] + row[2]) * half + row[3];
            }
        }
    }
    dw
}

/// dst[k] = f(a[k], b[k]) over the shortest of the three (inlined, so it vectorises).
#[inline(always)]
fn zip_with<T: Float>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

/// Splits `len` elements off the front of `rest`.
fn take<'a, T>(rest: &mut &'a mut [T], len: usize) -> &'a mut [T] {
    let (head, tail) = std::mem::take(rest).split_at_mut(len);
    *rest = tail;
    head
}

/// V[ξ][c][t0 + t] = (Bᵀ d B)[ξ] for every tile of one image x [C, H, W]; `v` holds 16 blocks of [C, ld].
///
/// Tiles are numbered t = ty·(tw + 1) + tx, one spare column per tile row: over the four polyphase planes
/// P_ab[y'][x'] = xpad[2y' + a][2x' + b] (rows of tw + 1), element (r, q) of every tile is then the plane P_(r mod 2,
/// q mod 2) shifted by (r div 2)·(tw + 1) + q div 2, so the whole transform is a few long contiguous vector
/// operations. The spare column's values are computed and never used (its output gradient is zero).
fn input_transform<T: Float>(g: &ConvGeom, x: &[T], v: &mut [T], ld: usize, t0: usize, buf: &mut Vec<T>) {
    let (th, tw) = tiles(g);
    let n1 = tw + 1;
    let len = th * n1;
    let plen = (th + 1) * n1 + 1;
    let mut rest = scratch(buf, 4 * plen + 8 * (len + 1));
    let mut planes: [&mut [T]; 4] = std::array::from_fn(|_| take(&mut rest, plen));
    let r: [&mut [T]; 8] = std::array::from_fn(|_| take(&mut rest, len + 1));
    let block = g.c_in * ld;
    let pad = g.pad as isize;
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..][..g.h * g.w];
        // Polyphase split of the padded image.
        for p in planes.iter_mut() {
            p.fill(T::zero());
        }
        for yp in 0..=th {
            for a in 0..2 {
                let iy = (2 * yp + a) as isize - pad;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let row = &plane[iy as usize * g.w..][..g.w];
                for bp in 0..2 {
                    let dst = &mut planes[2 * a + bp][yp * n1..(yp + 1) * n1];
                    // ix = 2x' + b − pad must lie in [0, W): the first x' is ⌈(pad − b) / 2⌉ (or 0), and from there
                    // the source advances two columns per destination column.
                    let skip = (pad - bp as isize).max(0) as usize;
                    let first = skip.div_ceil(2);
                    let start = 2 * first + bp - g.pad.min(2 * first + bp);
                    for (d, &v) in dst[first..].iter_mut().zip(row[start..].iter().step_by(2)) {
                        *d = v;
                    }
                }
            }
        }
        // Vertical, per column parity b: R_0b = d0 − d2, R_1b = d1 + d2, R_2b = d2 − d1, R_3b = d1 − d3, where
        // d0 = P_0b, d1 = P_1b, d2 = P_0b shifted a row, d3 = P_1b shifted a row.
        for bp in 0..2 {
            let (p0, p1) = (&*planes[bp], &*planes[2 + bp]);
            let (d0, d1, d2, d3) = (&p0[..len + 1], &p1[..len + 1], &p0[n1..], &p1[n1..]);
            let [r0, r1, r2, r3] = [0, 1, 2, 3].map(|i| 2 * i + bp);
            zip_with(r[r0], d0, d2, |a, b| a - b);
            zip_with(r[r1], d1, d2, |a, b| a + b);
            zip_with(r[r2], d2, d1, |a, b| a - b);
            zip_with(r[r3], d1, d3, |a, b| a - b);
        }
        // Horizontal, per row i: columns 0..3 of a tile are e[t], o[t], e[t + 1], o[t + 1].
        for i in 0..4 {
            let (e, o) = (&*r[2 * i], &*r[2 * i + 1]);
            let at = |j: usize| (4 * i + j) * block + c * ld + t0;
            zip_with(&mut v[at(0)..][..len], e, &e[1..], |a, b| a - b);
            zip_with(&mut v[at(1)..][..len], o, &e[1..], |a, b| a + b);
            zip_with(&mut v[at(2)..][..len], &e[1..], o, |a, b| a - b);
            zip_with(&mut v[at(3)..][..len], o, &o[1..], |a, b| a - b);
        }
    }
}

/// y [O, Ho, Wo] of one image from M[ξ][o][t0 + t] (16 blocks of [O, ld], tiles numbered as in
/// [`input_transform`]): each 2×2 output tile is Aᵀ M A, cut at the output's edge.
fn output_transform<T: Float>(g: &ConvGeom, m: &[T], ld: usize, t0: usize, y: &mut [T], buf: &mut Vec<T>) {
    let (th, tw) = tiles(g);
    let n1 = tw + 1;
    let len = th * n1;
    let mut rest = scratch(buf, 12 * len);
    let mut s: [&mut [T]; 8] = std::array::from_fn(|_| take(&mut rest, len));
    let mut eo: [&mut [T]; 4] = std::array::from_fn(|_| take(&mut rest, len));
    let block = g.c_out * ld;
    for o in 0..g.c_out {
        let mrow = |i: usize, j: usize| &m[(4 * i + j) * block + o * ld + t0..][..len];
        // Vertical: s0j = M0j + M1j + M2j, s1j = M1j − M2j − M3j.
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mrow(0, j), mrow(1, j), mrow(2, j), mrow(3, j));
            let (lo, hi) = s.split_at_mut(2 * j + 1);
            for (k, (s0, s1)) in lo[2 * j].iter_mut().zip(hi[0].iter_mut()).enumerate() {
                *s0 = m0[k] + m1[k] + m2[k];
                *s1 = m1[k] - m2[k] - m3[k];
            }
        }
        // Horizontal, per output row a: even columns sa0 + sa1 + sa2, odd columns sa1 − sa2 − sa3.
        for a in 0..2 {
            let (sa0, sa1, sa2, sa3) = (&*s[a], &*s[2 + a], &*s[4 + a], &*s[6 + a]);
            let (ev, od) = eo.split_at_mut(2);
            for (k, (e, d)) in ev[a].iter_mut().zip(od[a].iter_mut()).enumerate() {
                *e = sa0[k] + sa1[k] + sa2[k];
                *d = sa1[k] - sa2[k] - sa3[k];
            }
        }
        let plane = &mut y[o * g.p()..(o + 1) * g.p()];
        for (oy, row) in plane.chunks_exact_mut(g.wo).enumerate() {
            let (ty, a) = (oy / 2, oy % 2);
            let (e, d) = (&eo[a][ty * n1..ty * n1 + tw], &eo[2 + a][ty * n1..ty * n1 + tw]);
            let mut pairs = row.chunks_exact_mut(2);
            for ((pair, &ev), &dv) in (&mut pairs).zip(e).zip(d) {
                pair[0] = ev;
                pair[1] = dv;
            }
            if let [last] = pairs.into_remainder() {
                *last = e[tw - 1];
            }
        }
    }
}

/// dM[ξ][o][t0 + t] = (A dY Aᵀ)[ξ] for every tile of one image's output gradient dy [O, Ho, Wo] (zero past the
/// edge and in the spare tile column); `dm` holds 16 blocks of [O, ld], tiles numbered as in [`input_transform`].
fn output_grad_transform<T: Float>(g: &ConvGeom, dy: &[T], dm: &mut [T], ld: usize, t0: usize, buf: &mut Vec<T>) {
    let (th, tw) = tiles(g);
    let n1 = tw + 1;
    let len = th * n1;
    let mut rest = scratch(buf, 12 * len);
    // q[2a + b] = dY[2ty + a][2tx + b]; h[4a + j] = (dY Aᵀ)[a][j].
    let mut q: [&mut [T]; 4] = std::array::from_fn(|_| take(&mut rest, len));
    let h: [&mut [T]; 8] = std::array::from_fn(|_| take(&mut rest, len));
    let block = g.c_out * ld;
    for o in 0..g.c_out {
        for p in q.iter_mut() {
            p.fill(T::zero());
        }
        let plane = &dy[o * g.p()..(o + 1) * g.p()];
        for (oy, row) in plane.chunks_exact(g.wo).enumerate() {
            let (ty, a) = (oy / 2, oy % 2);
            let (qe, qo) = q.split_at_mut(2 * a + 1);
            let (e, d) = (&mut qe[2 * a][ty * n1..ty * n1 + tw], &mut qo[0][ty * n1..ty * n1 + tw]);
            let mut pairs = row.chunks_exact(2);
            for ((pair, ev), dv) in (&mut pairs).zip(e.iter_mut()).zip(d.iter_mut()) {
                *ev = pair[0];
                *dv = pair[1];
            }
            if let [last] = pairs.remainder() {
                e[tw - 1] = *last;
            }
        }
        // Horizontal: h[a] = (y0, y0 + y1, y0 − y1, −y1) for y0, y1 the even and odd columns of row a.
        for a in 0..2 {
            let (y0, y1) = (&*q[2 * a], &*q[2 * a + 1]);
            zip_with(h[4 * a], y0, y0, |u, _| u);
            zip_with(h[4 * a + 1], y0, y1, |u, v| u + v);
            zip_with(h[4 * a + 2], y0, y1, |u, v| u - v);
            zip_with(h[4 * a + 3], y1, y1, |v, _| -v);
        }
        // Vertical: dM0j = h0j, dM1j = h0j + h1j, dM2j = h0j − h1j, dM3j = −h1j.
        for j in 0..4 {
            let (h0, h1) = (&*h[j], &*h[4 + j]);
            let at = |i: usize| (4 * i + j) * block + o * ld + t0;
            zip_with(&mut dm[at(0)..][..len], h0, h0, |u, _| u);
            zip_with(&mut dm[at(1)..][..len], h0, h1, |u, v| u + v);
            zip_with(&mut dm[at(2)..][..len], h0, h1, |u, v| u - v);
            zip_with(&mut dm[at(3)..][..len], h1, h1, |v, _| -v);
        }
    }
}

/// Winograd forward: y [B, O, Ho, Wo] from x and w (3×3, stride 1), contiguous.
fn winograd_forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let (th, tw) = tiles(g);
    let mut y = vec![T::zero(); g.batch * g.out_len()];
    if y.is_empty() {
        return y;
    }
    let u = filter_transform(g, w);
    let (nb, par) = winograd_schedule(g);
    y.par_chunks_mut(nb * g.out_len()).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, rows): &mut (Vec<T>, Vec<T>), (gi, yg)| {
            let n_img = yg.len() / g.out_len();
            let t = n_img * th * (tw + 1);
            let (v, m) = scratch(buf, 16 * (c + o) * t).split_at_mut(16 * c * t);
            for i in 0..n_img {
                let xi = &x[(gi * nb + i) * g.in_len()..][..g.in_len()];
                input_transform(g, xi, v, t, i * th * (tw + 1), rows);
            }
            for xi in 0..16 {
                let (ux, vx) = (&u[xi * o * c..(xi + 1) * o * c], &v[xi * c * t..(xi + 1) * c * t]);
                gemm(&mut m[xi * o * t..(xi + 1) * o * t], t, mat(ux, o, c, c), mat(vx, c, t, t), false, par);
            }
            for i in 0..n_img {
                output_transform(g, m, t, i * th * (tw + 1), &mut yg[i * g.out_len()..(i + 1) * g.out_len()], rows);
            }
        },
    );
    y
}

/// Winograd weight gradient: dW [O, C, 3, 3] from x and dy (3×3, stride 1), contiguous.
fn winograd_weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let (th, tw) = tiles(g);
    if g.batch == 0 {
        return vec![T::zero(); o * c * 9];
    }
    let (nb, _) = winograd_schedule(g);
    let threads = rayon::current_num_threads().max(1);
    let groups = g.batch.div_ceil(nb);
    let parts = threads.min(groups);
    let par = if parts < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            // dUᵀ[ξ] [C, O], accumulated over this part's groups.
            let mut dut = vec![T::zero(); 16 * c * o];
            let (mut buf, mut rows) = (Vec::new(), Vec::new());
            let (g_lo, g_hi) = (part * groups / parts, (part + 1) * groups / parts);
            for gi in g_lo..g_hi {
                let b0 = gi * nb;
                let n_img = nb.min(g.batch - b0);
                let t = n_img * th * (tw + 1);
                let (v, dm) = scratch(&mut buf, 16 * (c + o) * t).split_at_mut(16 * c * t);
                for i in 0..n_img {
                    let xi = &x[(b0 + i) * g.in_len()..][..g.in_len()];
                    input_transform(g, xi, v, t, i * th * (tw + 1), &mut rows);
                    let dyi = &dy[(b0 + i) * g.out_len()..][..g.out_len()];
                    output_grad_transform(g, dyi, dm, t, i * th * (tw + 1), &mut rows);
                }
                for xi in 0..16 {
                    let (vx, dmx) = (&v[xi * c * t..(xi + 1) * c * t], &dm[xi * o * t..(xi + 1) * o * t]);
                    let dst = &mut dut[xi * c * o..(xi + 1) * c * o];
                    gemm(dst, o, mat(vx, c, t, t), mat(dmx, o, t, t).t(), gi > g_lo, par);
                }
            }
            dut
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dut = it.next().unwrap_or_else(|| vec![T::zero(); 16 * c * o]);
    for part in it {
        for (a, b) in dut.iter_mut().zip(part) {
            *a += b;
        }
    }
    filter_transform_adjoint(g, &dut)
}
