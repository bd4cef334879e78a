//! im2col on channels-last images: row q of an image's patch matrix is output pixel q's receptive field, kh·kw·C
//! values ordered (ky, kx, c), so each of its kernel rows is one contiguous run of kw·C values of the image — one
//! copy per output pixel and kernel row, whatever the stride (a channels-first im2col copies one short output row
//! per input channel, kernel position and output row: 40 % of each product on the first stride-2 layer of
//! `resnet_mini`, measured).
//!
//! The three products are GEMMs on the patch matrix P [n, K] of a group of images (n pixels, K = kh·kw·C) and the
//! kernel W′ [O, K] in the same (ky, kx, c) order, and each lands in its channels-last place with no transpose:
//! y [n, O] = P·W′ᵀ, dP [n, K] = dy·W′ (added back into the images' gradient), dW′ = dyᵀ·P. A 1×1 stride-1
//! unpadded convolution needs no patches: the image [H·W, C] is its own patch matrix.

use super::{gemm, mat, schedule, scratch, sum_over_groups, ConvGeom};
use crate::kernels::gemm::Float;
use crate::kernels::simd::vectorized;
use crate::kernels::unwritten;
use rayon::prelude::*;

/// W [O, C, kh, kw] reordered to W′ [O, kh, kw, C], the patch matrix's order.
fn taps_channels_last<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let (c, taps) = (g.c_in, g.kh * g.kw);
    let mut wc = vec![T::zero(); w.len()];
    for (src, dst) in w.chunks_exact(c * taps).zip(wc.chunks_exact_mut(c * taps)) {
        for (ic, kernel) in src.chunks_exact(taps).enumerate() {
            for (t, &v) in kernel.iter().enumerate() {
                dst[t * c + ic] = v;
            }
        }
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

/// The patch rows of one image: `rows` [P, K] from the image `x` [H·W, C]; padding reads as zero.
fn patches<T: Float>(g: &ConvGeom, x: &[T], rows: &mut [T]) {
    let (c, kw) = (g.c_in, g.kw);
    let run = kw * c;
    for (q, row) in rows.chunks_exact_mut(g.kh * run).enumerate() {
        let (oy, ox) = (q / g.wo, q % g.wo);
        for (ky, seg) in row.chunks_exact_mut(run).enumerate() {
            match kernel_row(g, oy, ox, ky) {
                None => seg.fill(T::zero()),
                Some((iy, lo, hi, ix)) => {
                    seg[..lo * c].fill(T::zero());
                    seg[lo * c..hi * c].copy_from_slice(&x[(iy * g.w + ix) * c..][..(hi - lo) * c]);
                    seg[hi * c..].fill(T::zero());
                }
            }
        }
    }
}

/// The adjoint of [`patches`]: the input gradient `dx` [H·W, C] of one image from its patch rows' gradients
/// `rows` [P, K].
fn add_patches<T: Float>(g: &ConvGeom, rows: &[T], dx: &mut [T]) {
    let (c, kw) = (g.c_in, g.kw);
    let run = kw * c;
    dx.fill(T::zero());
    for (q, row) in rows.chunks_exact(g.kh * run).enumerate() {
        let (oy, ox) = (q / g.wo, q % g.wo);
        for (ky, seg) in row.chunks_exact(run).enumerate() {
            if let Some((iy, lo, hi, ix)) = kernel_row(g, oy, ox, ky) {
                let dst = &mut dx[(iy * g.w + ix) * c..][..(hi - lo) * c];
                for (d, &v) in dst.iter_mut().zip(&seg[lo * c..hi * c]) {
                    *d += v;
                }
            }
        }
    }
}

/// The patch matrix [n_img·P, K] of a group of images `x` [n_img, H·W, C]: the images themselves for a pointwise
/// convolution, built in `buf` otherwise.
fn group_patches<'a, T: Float>(g: &ConvGeom, x: &'a [T], n_img: usize, buf: &'a mut Vec<T>) -> &'a [T] {
    if g.pointwise() {
        return x;
    }
    let (p, k) = (g.p(), g.k());
    let rows = scratch(buf, n_img * p * k);
    vectorized(
        #[inline(always)]
        || {
            for (xi, ri) in x.chunks_exact(g.in_len()).zip(rows.chunks_exact_mut(p * k)) {
                patches(g, xi, ri);
            }
        },
    );
    rows
}

/// Forward: y [B, Ho, Wo, O]; per group y = P · W′ᵀ, written in place.
pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    // SAFETY: each group's GEMM (accumulate = false) writes all of its [n, O] output.
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(g.batch * g.out_len()) };
    if y.is_empty() {
        return y;
    }
    let wc = taps_channels_last(g, w);
    let (nb, par) = schedule(g);
    y.par_chunks_mut(nb * g.out_len()).enumerate().for_each_init(Vec::new, |buf: &mut Vec<T>, (gi, yg)| {
        let n_img = yg.len() / g.out_len();
        let rows = group_patches(g, &x[gi * nb * g.in_len()..][..n_img * g.in_len()], n_img, buf);
        gemm(yg, o, mat(rows, n_img * p, k, k), mat(&wc, o, k, k).t(), false, par);
    });
    y
}

/// Input gradient: dx [B, H, W, C]; per group dP = dy · W′, added back image by image into dx (for a pointwise
/// convolution dP is dx itself).
pub(super) fn input_grad<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    // SAFETY: a pointwise group's GEMM (accumulate = false) writes all of its [n, C] gradient; otherwise each
    // image's `add_patches` fills its gradient with zeros before adding into it.
    #[allow(unsafe_code)]
    let mut dx = unsafe { unwritten(g.batch * g.in_len()) };
    if dx.is_empty() {
        return dx;
    }
    let wc = taps_channels_last(g, w);
    let (nb, par) = schedule(g);
    dx.par_chunks_mut(nb * g.in_len()).enumerate().for_each_init(Vec::new, |buf: &mut Vec<T>, (gi, dxg)| {
        let n_img = dxg.len() / g.in_len();
        let n = n_img * p;
        let dym = mat(&dy[gi * nb * g.out_len()..][..n_img * g.out_len()], n, o, o);
        if g.pointwise() {
            return gemm(dxg, k, dym, mat(&wc, o, k, k), false, par);
        }
        let drows = scratch(buf, n * k);
        gemm(drows, k, dym, mat(&wc, o, k, k), false, par);
        vectorized(
            #[inline(always)]
            || {
                for (dri, dxi) in drows.chunks_exact(p * k).zip(dxg.chunks_exact_mut(g.in_len())) {
                    add_patches(g, dri, dxi);
                }
            },
        )
    });
    dx
}

/// Weight gradient: dW [O, C, kh, kw]; dW′ [O, K] = Σ over groups of dyᵀ · P, summed in order over parts.
pub(super) fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k, o, taps) = (g.p(), g.k(), g.c_out, g.kh * g.kw);
    if g.batch == 0 || p == 0 {
        return vec![T::zero(); o * k];
    }
    let (nb, _) = schedule(g);
    let dwc = sum_over_groups(g.batch, nb, o * k, |dwc: &mut [T], (b0, n_img), first, par, buf: &mut Vec<T>| {
        let n = n_img * p;
        let rows = group_patches(g, &x[b0 * g.in_len()..][..n_img * g.in_len()], n_img, buf);
        let dym = mat(&dy[b0 * g.out_len()..][..n_img * g.out_len()], n, o, o);
        gemm(dwc, k, dym.t(), mat(rows, n, k, k), !first, par);
    });
    // dW′ [O, (ky, kx, c)] → dW [O, c, (ky, kx)].
    let mut dw = vec![T::zero(); o * k];
    for (src, dst) in dwc.chunks_exact(k).zip(dw.chunks_exact_mut(k)) {
        for (ic, kernel) in dst.chunks_exact_mut(taps).enumerate() {
            for (t, d) in kernel.iter_mut().enumerate() {
                *d = src[t * g.c_in + ic];
            }
        }
    }
    dw
}
