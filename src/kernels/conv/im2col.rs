//! im2col + GEMM: the direct convolution's three products for any kernel, stride and padding. The columns of the
//! im2col matrix are the receptive fields of output pixels, so each product is one GEMM per group of images; strided
//! convolutions read a copy of the image split by column phase, so that every im2col row segment is contiguous.

use super::{gemm, mat, scatter, schedule, scratch, side_by_side, sum_over_groups, ConvGeom};
use crate::kernels::gemm::{Float, Matrix};
use crate::kernels::simd::vectorized;
use crate::kernels::unwritten;
use rayon::prelude::*;

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
#[inline(always)]
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
#[inline(always)]
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
    vectorized(
        #[inline(always)]
        || {
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
        },
    )
}

/// col2im: the adjoint of [`im2col`], writing dx [C, H, W] (every element) from columns `off..off + P` of `col`
/// (row stride `ld`); strided convolutions accumulate into a phase-split image in `buf` and merge it at the end
/// (see [`phase_split`]).
fn col2im<T: Float>(g: &ConvGeom, col: &[T], ld: usize, off: usize, dx: &mut [T], buf: &mut Vec<T>) {
    vectorized(
        #[inline(always)]
        || {
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
        },
    )
}

/// The im2col matrix [C·kh·kw, n_img·P] of a group of images `xg`: the images themselves, side by side, for a
/// pointwise convolution; otherwise built in `col` (through `phased` when strided).
fn group_columns<'a, T: Float>(
    g: &ConvGeom,
    xg: &'a [T],
    n_img: usize,
    col: &'a mut [T],
    phased: &mut Vec<T>,
) -> Matrix<'a, T> {
    let (p, k) = (g.p(), g.k());
    if g.pointwise() {
        return side_by_side(xg, k, p, n_img, col);
    }
    for i in 0..n_img {
        im2col(g, &xg[i * g.in_len()..(i + 1) * g.in_len()], col, n_img * p, i * p, phased);
    }
    mat(col, k, n_img * p, n_img * p)
}

pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    // SAFETY: each group's GEMM (which does not read its destination unless accumulating) or scatter writes all of
    // its chunk.
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(g.batch * g.out_len()) };
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
            let (col, out) = scratch(buf, k * n + if n_img > 1 { o * n } else { 0 }).split_at_mut(k * n);
            let colm = group_columns(g, xg, n_img, col, phased);
            if n_img == 1 {
                gemm(yg, p, wm, colm, false, par);
            } else {
                gemm(out, n, wm, colm, false, par);
                scatter(out, o, p, n_img, yg);
            }
        },
    );
    y
}

/// Input gradient by GEMM and col2im (any stride): dcol_b = Wᵀ · dy_b, scattered back into dx.
pub(super) fn input_grad<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    // SAFETY: each group's GEMM, scatter or col2im (which zero-fills before accumulating) writes all of its chunk.
    #[allow(unsafe_code)]
    let mut dx = unsafe { unwritten(g.batch * g.in_len()) };
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
            let dym = side_by_side(dyg, o, p, n_img, dyc);
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

pub(super) fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k, o) = (g.p(), g.k(), g.c_out);
    if g.batch == 0 || p == 0 {
        return vec![T::zero(); o * k];
    }
    let (nb, _) = schedule(g);
    let dwt = sum_over_groups(
        g.batch,
        nb,
        k * o,
        |dwt: &mut [T], (b0, n_img), first, par, (buf, phased): &mut (Vec<T>, Vec<T>)| {
            let n = n_img * p;
            let xg = &x[b0 * g.in_len()..][..n_img * g.in_len()];
            let (col, dyc) = scratch(buf, k * n + o * n).split_at_mut(k * n);
            let colm = group_columns(g, xg, n_img, col, phased);
            let dym = side_by_side(&dy[b0 * g.out_len()..][..n_img * g.out_len()], o, p, n_img, dyc);
            // dWᵀ[C·kh·kw, O] += col · dyᵀ: this orientation packs the large col operand more cheaply (about 1.3×
            // faster than dW += dy · colᵀ on the first stage).
            gemm(dwt, o, colm, dym.t(), !first, par);
        },
    );
    let mut dw = vec![T::zero(); o * k];
    for (r, row) in dwt.chunks_exact(o).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dw[c * k + r] = v;
        }
    }
    dw
}
