//! im2col in channels-last order for convolutions with many input channels: row q of the patch matrix is output
//! pixel q's receptive field, kh·kw·C values ordered (ky, kx, c). Each image is first transposed channels-last
//! ([`crate::kernels::transpose`]), so a receptive field's kernel row is one contiguous run of kw·C values in it —
//! one copy per output pixel and kernel row, whatever the stride — where the channels-first im2col copies one short
//! output row (seven to fourteen values on the strided layers) per input channel, kernel position and output row.
//! Measured on the first stride-2 layer (32→64, 28×28, batch 256): that copying was 40 % of each product.
//!
//! The three products are GEMMs on the patch matrix P [n, K] of a group of images (n pixels, K = kh·kw·C) and the
//! kernel W′ [O, K] in the same (ky, kx, c) order: yᵀ = P·W′ᵀ (channels-last, then transposed into each image: 8 %
//! faster than y = W′·Pᵀ, whose GEMM repacks P), dP = dyᵀ·W′ (then added back into a channels-last image and
//! transposed), dW′ᵀ = Pᵀ·dyᵀ. Measured per product against the channels-first im2col on the two stride-2 layers
//! of `resnet_mini` at batch 256: 10–24 % faster (docs/performance.md). A 1×1
//! convolution stays with the channels-first im2col, which gathers the quarter of the image a stride-2 one reads
//! instead of transposing all of it.

use super::{gemm, mat, schedule, scratch, side_by_side, sum_over_groups, ConvGeom};
use crate::kernels::gemm::Float;
use crate::kernels::simd::vectorized;
use crate::kernels::transpose::transpose;
use crate::kernels::unwritten;
use rayon::prelude::*;

/// Whether the channels-last patches apply: at least 16 input channels (a run of kw·C values is then at least one
/// full vector) and a kernel larger than 1×1.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.c_in >= 16 && g.kh * g.kw > 1
}

/// W [O, C, kh, kw] reordered to W′ [O, kh, kw, C], the patch matrix's order.
fn taps_channels_last<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let (c, taps) = (g.c_in, g.kh * g.kw);
    let mut wc = vec![T::zero(); w.len()];
    for (src, dst) in w.chunks_exact(c * taps).zip(wc.chunks_exact_mut(c * taps)) {
        transpose(src, |ic| ic * taps, c, taps, dst, |t| t * c);
    }
    wc
}

/// For output pixel (oy, ox) and kernel row ky: the input row it reads, the kernel columns [lo, hi) that fall
/// inside the image and the input column of kernel column lo; None where the row reads padding only.
fn kernel_row(g: &ConvGeom, oy: usize, ox: usize, ky: usize) -> Option<(usize, usize, usize, usize)> {
    let iy = (oy * g.stride + ky).checked_sub(g.pad).filter(|&iy| iy < g.h)?;
    let x0 = ox * g.stride;
    let lo = g.pad.saturating_sub(x0).min(g.kw);
    let hi = (g.w + g.pad).saturating_sub(x0).min(g.kw);
    // lo ≥ pad − x0, so x0 + lo − pad does not underflow.
    (lo < hi).then(|| (iy, lo, hi, x0 + lo - g.pad))
}

/// The patch rows of one image: `rows` [P, K] from its channels-last copy `xc` [H·W, C]; padding reads as zero.
fn patches<T: Float>(g: &ConvGeom, xc: &[T], rows: &mut [T]) {
    let (c, kw) = (g.c_in, g.kw);
    let run = kw * c;
    for (q, row) in rows.chunks_exact_mut(g.kh * run).enumerate() {
        let (oy, ox) = (q / g.wo, q % g.wo);
        for (ky, seg) in row.chunks_exact_mut(run).enumerate() {
            match kernel_row(g, oy, ox, ky) {
                None => seg.fill(T::zero()),
                Some((iy, lo, hi, ix)) => {
                    seg[..lo * c].fill(T::zero());
                    seg[lo * c..hi * c].copy_from_slice(&xc[(iy * g.w + ix) * c..][..(hi - lo) * c]);
                    seg[hi * c..].fill(T::zero());
                }
            }
        }
    }
}

/// The adjoint of [`patches`]: the channels-last input gradient `dxc` [H·W, C] of one image from its patch rows'
/// gradients `rows` [P, K].
fn add_patches<T: Float>(g: &ConvGeom, rows: &[T], dxc: &mut [T]) {
    let (c, kw) = (g.c_in, g.kw);
    let run = kw * c;
    dxc.fill(T::zero());
    for (q, row) in rows.chunks_exact(g.kh * run).enumerate() {
        let (oy, ox) = (q / g.wo, q % g.wo);
        for (ky, seg) in row.chunks_exact(run).enumerate() {
            if let Some((iy, lo, hi, ix)) = kernel_row(g, oy, ox, ky) {
                let dst = &mut dxc[(iy * g.w + ix) * c..][..(hi - lo) * c];
                for (d, &v) in dst.iter_mut().zip(&seg[lo * c..hi * c]) {
                    *d += v;
                }
            }
        }
    }
}

/// Image i of a group `x` [n_img, C, H·W] channels-last into `xc` [H·W, C].
fn image_channels_last<T: Float>(g: &ConvGeom, x: &[T], i: usize, xc: &mut [T]) {
    let hw = g.h * g.w;
    transpose(&x[i * g.in_len()..][..g.in_len()], |ic| ic * hw, g.c_in, hw, xc, |p| p * g.c_in);
}

/// The patch matrix [n_img·P, K] of a group of images, in `rows`, through the channels-last copy in `xc`.
fn group_patches<T: Float>(g: &ConvGeom, x: &[T], n_img: usize, rows: &mut [T], xc: &mut Vec<T>) {
    let (p, k) = (g.p(), g.k());
    vectorized(
        #[inline(always)]
        || {
            let xc = scratch(xc, g.in_len());
            for i in 0..n_img {
                image_channels_last(g, x, i, xc);
                patches(g, xc, &mut rows[i * p * k..(i + 1) * p * k]);
            }
        },
    )
}

/// Forward: y [B, O, Ho, Wo]; per group yᵀ = P · W′ᵀ [n, O], transposed into each image.
pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    // SAFETY: each image's transpose writes all of its [O, P] output.
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(g.batch * g.out_len()) };
    if y.is_empty() {
        return y;
    }
    let wc = taps_channels_last(g, w);
    let (nb, par) = schedule(g);
    y.par_chunks_mut(nb * g.out_len()).enumerate().for_each_init(
        Default::default,
        |bufs: &mut (Vec<T>, Vec<T>), (gi, yg)| {
            let n_img = yg.len() / g.out_len();
            let n = n_img * p;
            let (rows, out) = scratch(&mut bufs.0, n * k + o * n).split_at_mut(n * k);
            group_patches(g, &x[gi * nb * g.in_len()..][..n_img * g.in_len()], n_img, rows, &mut bufs.1);
            gemm(out, o, mat(&*rows, n, k, k), mat(&wc, o, k, k).t(), false, par);
            for (i, yi) in yg.chunks_exact_mut(g.out_len()).enumerate() {
                transpose(out, |q| (i * p + q) * o, p, o, yi, |oc| oc * p);
            }
        },
    );
    y
}

/// Input gradient: dx [B, C, H, W]; per group dP = dyᵀ · W′, added back image by image into a channels-last
/// gradient and transposed into dx.
pub(super) fn input_grad<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o, hw) = (g.p(), g.k(), g.c_out, g.h * g.w);
    // SAFETY: each image's final transpose writes all of its [C, H·W] gradient.
    #[allow(unsafe_code)]
    let mut dx = unsafe { unwritten(g.batch * g.in_len()) };
    if dx.is_empty() {
        return dx;
    }
    let wc = taps_channels_last(g, w);
    let (nb, par) = schedule(g);
    dx.par_chunks_mut(nb * g.in_len()).enumerate().for_each_init(
        Default::default,
        |bufs: &mut (Vec<T>, Vec<T>), (gi, dxg)| {
            let n_img = dxg.len() / g.in_len();
            let n = n_img * p;
            let dyg = &dy[gi * nb * g.out_len()..][..n_img * g.out_len()];
            let (drows, dyc) = scratch(&mut bufs.0, n * k + if n_img > 1 { o * n } else { 0 }).split_at_mut(n * k);
            let dym = side_by_side(dyg, o, p, n_img, dyc);
            gemm(drows, k, dym.t(), mat(&wc, o, k, k), false, par);
            vectorized(
                #[inline(always)]
                || {
                    let dxc = scratch(&mut bufs.1, g.in_len());
                    for (i, dxi) in dxg.chunks_exact_mut(g.in_len()).enumerate() {
                        add_patches(g, &drows[i * p * k..(i + 1) * p * k], dxc);
                        transpose(dxc, |q| q * g.c_in, hw, g.c_in, dxi, |ic| ic * hw);
                    }
                },
            )
        },
    );
    dx
}

/// Weight gradient: dW [O, C, kh, kw]; dW′ᵀ [K, O] = Σ over groups of Pᵀ · dyᵀ, summed in order over parts.
pub(super) fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k, o, taps) = (g.p(), g.k(), g.c_out, g.kh * g.kw);
    if g.batch == 0 || p == 0 {
        return vec![T::zero(); o * k];
    }
    let (nb, _) = schedule(g);
    let dwt = sum_over_groups(
        g.batch,
        nb,
        k * o,
        |dwt: &mut [T], (b0, n_img), first, par, (buf, xc): &mut (Vec<T>, Vec<T>)| {
            let n = n_img * p;
            let (rows, dyc) = scratch(buf, n * k + o * n).split_at_mut(n * k);
            group_patches(g, &x[b0 * g.in_len()..][..n_img * g.in_len()], n_img, rows, xc);
            let dym = side_by_side(&dy[b0 * g.out_len()..][..n_img * g.out_len()], o, p, n_img, dyc);
            gemm(dwt, o, mat(&*rows, n, k, k).t(), dym.t(), !first, par);
        },
    );
    // dW′ᵀ [(ky, kx, c), O] → dW [O, c, (ky, kx)].
    let mut dw = vec![T::zero(); o * k];
    for (oc, kernels) in dw.chunks_exact_mut(k).enumerate() {
        for (ic, kernel) in kernels.chunks_exact_mut(taps).enumerate() {
            for (t, d) in kernel.iter_mut().enumerate() {
                *d = dwt[(t * g.c_in + ic) * o + oc];
            }
        }
    }
    dw
}
