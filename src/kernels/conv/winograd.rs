//! ---------------------------------------------------------------------------------------------------------------
//! Winograd F(m×m, 3×3) for stride-1 3×3 convolutions, m = 2 or 4: the forward product and the weight gradient.
//!
//! Each m×m output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of the n×n input tile d under it (n = m + 2), so over the n²
//! positions ξ of the transformed tile the convolution becomes n² GEMMs Mᵀ_ξ[T, O] = V_ξ[T, C] · Uᵀ_ξ[C, O] (T
//! tiles): n²/m² multiply-adds per output and channel pair instead of 9 — 4 for F(2×2), 2.25 for F(4×4). The weight
//! gradient is the adjoint: dUᵀ_ξ = V_ξᵀ · dMᵀ_ξ with dM = A dY Aᵀ, then dW = Gᵀ dU G. Tiles past the output's edge
//! (sizes not a multiple of m) are computed and dropped.
//!
//! The transformed tiles are channels-last (V_ξ[t][c], M_ξ[t][o]), as the images are: the transforms then run over
//! the tiles of a tile row and all their channels as one contiguous vector, which stays long on a 7×7 map (where a
//! channels-first tile row is two tiles), and no tile is computed beyond the output's edge. Each image is copied
//! zero-padded and split by column phase on the way in (one contiguous copy of C values per pixel), and each output
//! tile row is copied pixel by pixel into place on the way out.
//!
//! F(2×2, 3×3) (points 0, ±1, ∞) is exact in its arithmetic (its constants are 0, ±1 and ½); F(4×4, 3×3) (points
//! 0, ±1, ±2, ∞, as Lavin & Gray) has larger constants and rounds more in f32: 4–10·10⁻⁶ relative to an f64
//! direct convolution against 3–9·10⁻⁷ (`cargo bench --bench conv -- quick winograd`), well below what training
//! notices, for 1.78× fewer multiplies.

use super::{gemm, mat, scratch, sum_over_groups, ConvGeom};
use crate::kernels::gemm::Float;
use crate::kernels::simd::vectorized;
use crate::kernels::unwritten;
use rayon::prelude::*;

/// The transformed input and output of one group of images (V and M) fit in about this much, so that the GEMMs read
/// them from L2 (measured: 1 MiB groups ran the 7×7 layer's products 1.2× faster than groups of 256 tiles).
const GROUP_BYTES: usize = 1 << 20;

/// Whether Winograd applies: a 3×3 kernel at stride 1.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1
}

/// The Winograd tile with the fewest multiplies per output of `g` (n² per tile over the outputs the tiles really
/// cover, against 9 for the direct product), or None when the direct product has fewer: F(4×4) on maps of 3×3 and
/// more (2.25–2.94 at 7×7 and up), F(2×2) on 2×2 (4, against F(4×4)'s 9, the more accurate one on a tie), the
/// direct product on 1×1.
pub(super) fn fewest_multiplies(g: &ConvGeom) -> Option<Tile> {
    let per_output = |m: usize| ((m + 2) * (m + 2) * g.ho.div_ceil(m) * g.wo.div_ceil(m)) as f64 / (g.ho * g.wo) as f64;
    let (f2, f4) = (per_output(2), per_output(4));
    if f4 < f2 && f4 < 9.0 {
        Some(Tile::F4)
    } else if f2 < 9.0 {
        Some(Tile::F2)
    } else {
        None
    }
}

/// The output tile size of a Winograd algorithm: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 2×2 output tiles from 4×4 input tiles: 16 GEMMs, 4 multiplies per output and channel pair.
    F2,
    /// 4×4 output tiles from 6×6 input tiles: 36 GEMMs, 2.25 multiplies per output and channel pair.
    F4,
}

/// The three matrices of F(m×m, 3×3), row-major: Bᵀ (n×n), G (n×3), Aᵀ (m×n).
struct Matrices {
    bt: &'static [f64],
    g: &'static [f64],
    at: &'static [f64],
}

const F2: Matrices = Matrices {
    #[rustfmt::skip]
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

const F4: Matrices = Matrices {
    #[rustfmt::skip]
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// One convolution's Winograd F(M×M, 3×3) geometry: its matrices and the tiles covering its output. M is a
/// constant, so that the transforms' loops over a tile unroll.
struct Plan<'a, const M: usize> {
    g: &'a ConvGeom,
    mx: &'static Matrices,
    /// Tile rows and columns of one image.
    th: usize,
    tw: usize,
}

impl<'a, const M: usize> Plan<'a, M> {
    /// The input tile size n = M + 2.
    const N: usize = M + 2;

    fn new(g: &'a ConvGeom) -> Self {
        let mx = if M == 2 { &F2 } else { &F4 };
        Plan { g, mx, th: g.ho.div_ceil(M), tw: g.wo.div_ceil(M) }
    }

    /// Tiles of one image.
    fn tiles(&self) -> usize {
        self.th * self.tw
    }

    /// Transformed positions ξ: n².
    fn positions(&self) -> usize {
        Self::N * Self::N
    }

    /// Images per task, and the GEMM parallelism inside a task (as [`super::schedule`]): as many images as keep
    /// the group's transformed input and output within [`GROUP_BYTES`], at least one, and enough groups for every
    /// thread.
    fn schedule<T>(&self) -> (usize, gemm::Parallelism) {
        let threads = rayon::current_num_threads().max(1);
        let per_thread = self.g.batch.div_ceil(threads).max(1);
        let per_image = self.positions() * (self.g.c_in + self.g.c_out) * self.tiles() * std::mem::size_of::<T>();
        let nb = (GROUP_BYTES / per_image.max(1)).clamp(1, per_thread);
        let groups = self.g.batch.div_ceil(nb);
        let par =
            if groups < threads && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        (nb, par)
    }

    /// Uᵀ[c][ξ][o] = (G w[o, c] Gᵀ)[ξ]: for each ξ the [C, O] matrix Uᵀ_ξ, at row stride n²·O. One task per input
    /// channel, each vectorised over the output channels.
    fn filter_transform<T: Float>(&self, w: &[T]) -> Vec<T> {
        let (o, c, n) = (self.g.c_out, self.g.c_in, Self::N);
        let g_rows: Vec<Vec<(usize, T)>> = (0..n).map(|i| nonzeros(self.mx.g, 3, Line::Row(i))).collect();
        // SAFETY: every (ξ, output channel) run of each input channel's chunk is written by `combine`.
        #[allow(unsafe_code)]
        let mut u = unsafe { unwritten(c * n * n * o) };
        u.par_chunks_mut(n * n * o).enumerate().for_each_init(Vec::new, |buf, (ic, ui)| {
            vectorized(
                #[inline(always)]
                || {
                    let mut rest = scratch(buf, 9 * o + 3 * n * o);
                    // k[e][oc] = w[oc, ic][e]; t[i][q] = Σ_r G[i][r]·k[r][q] (the 3×3 kernel's row r, column q).
                    let k = take(&mut rest, 9 * o);
                    for (oc, kernel) in w.chunks_exact(9 * c).enumerate() {
                        for (e, &v) in kernel[9 * ic..9 * ic + 9].iter().enumerate() {
                            k[e * o + oc] = v;
                        }
                    }
                    let t = take(&mut rest, 3 * n * o);
                    for (i, coefs) in g_rows.iter().enumerate() {
                        for q in 0..3 {
                            let terms = coefs.iter().map(|&(r, cf)| (cf, &k[(3 * r + q) * o..][..o]));
                            combine(&mut t[(3 * i + q) * o..][..o], terms);
                        }
                    }
                    // u[i][j] = Σ_q t[i][q]·G[j][q].
                    for i in 0..n {
                        for (j, coefs) in g_rows.iter().enumerate() {
                            let terms = coefs.iter().map(|&(q, cf)| (cf, &t[(3 * i + q) * o..][..o]));
                            combine(&mut ui[(n * i + j) * o..][..o], terms);
                        }
                    }
                },
            )
        });
        u
    }

    /// The adjoint of [`Plan::filter_transform`]: dW[o, c] = Gᵀ dU[o, c] G from dUᵀ laid out as its result.
    fn filter_transform_adjoint<T: Float>(&self, dut: &[T]) -> Vec<T> {
        let (o, c, n) = (self.g.c_out, self.g.c_in, Self::N);
        let g_cols: Vec<Vec<(usize, T)>> = (0..3).map(|q| nonzeros(self.mx.g, 3, Line::Col(q))).collect();
        // dwt[c][e][o]: per input channel, then into dW's [O, C, 3, 3] order.
        // SAFETY: every (kernel element, output channel) run of each input channel's chunk is written by `combine`.
        #[allow(unsafe_code)]
        let mut dwt = unsafe { unwritten(c * 9 * o) };
        dwt.par_chunks_mut(9 * o).zip(dut.par_chunks(n * n * o)).for_each_init(Vec::new, |buf, (dwi, dui)| {
            vectorized(
                #[inline(always)]
                || {
                    // s[r][j] = Σ_i G[i][r]·dU[i][j], then dW[r][q] = Σ_j s[r][j]·G[j][q].
                    let s = scratch(buf, 3 * n * o);
                    for (r, coefs) in g_cols.iter().enumerate() {
                        for j in 0..n {
                            let terms = coefs.iter().map(|&(i, cf)| (cf, &dui[(n * i + j) * o..][..o]));
                            combine(&mut s[(n * r + j) * o..][..o], terms);
                        }
                    }
                    for r in 0..3 {
                        for (q, coefs) in g_cols.iter().enumerate() {
                            let terms = coefs.iter().map(|&(j, cf)| (cf, &s[(n * r + j) * o..][..o]));
                            combine(&mut dwi[(3 * r + q) * o..][..o], terms);
                        }
                    }
                },
            )
        });
        let mut dw = vec![T::zero(); o * c * 9];
        for (oc, kernels) in dw.chunks_exact_mut(9 * c).enumerate() {
            for (ic, kernel) in kernels.chunks_exact_mut(9).enumerate() {
                for (e, d) in kernel.iter_mut().enumerate() {
                    *d = dwt[(ic * 9 + e) * o + oc];
                }
            }
        }
        dw
    }

    /// V[ξ][t][c] = (Bᵀ d B)[ξ] for every tile t = i·tiles + ty·tw + tx of the images x [n_img, H, W, C] of one
    /// group and every channel c; `v` holds n² row-major [n_img·tiles, C] matrices.
    ///
    /// Each image is first copied zero-padded and split by column phase ([`to_phased`]), so that
    /// element (r, q) of the tiles of one tile row, over all their channels, is one contiguous run of tw·C values:
    /// both passes of the transform — R_iq = Σ_r Bᵀ[i][r]·E_rq, then V_ij = Σ_q Bᵀ[j][q]·R_iq — are then long
    /// vector operations, whatever the image size.
    fn input_transform<T: Float>(&self, x: &[T], n_img: usize, v: &mut [T], buf: &mut Vec<T>) {
        vectorized(
            #[inline(always)]
            || {
                let (g, n, th, tw, tpi) = (self.g, Self::N, self.th, self.tw, self.tiles());
                let (c, tt, run) = (g.c_in, n_img * tpi, tw * g.c_in);
                let (rows, cols) = (M * th + 2, tw + 1);
                let mut rest = scratch(buf, rows * M * cols * c + n * run);
                let xt = take(&mut rest, rows * M * cols * c);
                let mut r: Vec<&mut [T]> = (0..n).map(|_| take(&mut rest, run)).collect();
                let bt: Vec<Vec<(usize, T)>> = (0..n).map(|i| nonzeros(self.mx.bt, n, Line::Row(i))).collect();
                for img in 0..n_img {
                    to_phased::<T, M>(g, &x[img * g.in_len()..][..g.in_len()], xt, (rows, cols));
                    for ty in 0..th {
                        // E_rq of this tile row: padded row M·ty + r, column phase q mod M, from column q div M.
                        let e = |er: usize, q: usize| &xt[(((M * ty + er) * M + q % M) * cols + q / M) * c..][..run];
                        // V_ij = Σ_r Σ_q Bᵀ[i][r] Bᵀ[j][q] E_rq.
                        let at = |i: usize, j: usize| ((n * i + j) * tt + img * tpi + ty * tw) * c;
                        separable(&bt, &bt, &mut r, e, (&mut *v, at));
                    }
                }
            },
        )
    }

    /// y [n_img, Ho, Wo, O] of one group from M[ξ][t][o] (n² row-major [n_img·tiles, O] matrices, tiles numbered
    /// as in [`Plan::input_transform`]): each M×M output tile is Aᵀ M A, cut at the output's edge.
    fn output_transform<T: Float>(&self, mm: &[T], n_img: usize, y: &mut [T], buf: &mut Vec<T>) {
        vectorized(
            #[inline(always)]
            || {
                let (g, n, th, tw, tpi) = (self.g, Self::N, self.th, self.tw, self.tiles());
                let (o, tt, run) = (g.c_out, n_img * tpi, tw * g.c_out);
                let mut rest = scratch(buf, (n + M * M * th) * run);
                let mut s: Vec<&mut [T]> = (0..n).map(|_| take(&mut rest, run)).collect();
                // Y_ab of tile row ty at (M·(M·ty + a) + b)·run.
                let out = take(&mut rest, M * M * th * run);
                let at: Vec<Vec<(usize, T)>> = (0..M).map(|a| nonzeros(self.mx.at, n, Line::Row(a))).collect();
                for img in 0..n_img {
                    let yi = &mut y[img * g.out_len()..][..g.out_len()];
                    for ty in 0..th {
                        let mrow = |i: usize, j: usize| &mm[((n * i + j) * tt + img * tpi + ty * tw) * o..][..run];
                        // Y_ab = Σ_i Σ_j Aᵀ[a][i] Aᵀ[b][j] M_ij.
                        let dst_at = |a: usize, b: usize| (M * (M * ty + a) + b) * run;
                        separable(&at, &at, &mut s, mrow, (&mut *out, dst_at));
                    }
                    // Y_ab[tx][o] of tile row ty is y[M·ty + a][M·tx + b][o].
                    for (k, pixel) in yi.chunks_exact_mut(o).enumerate() {
                        let (oy, ox) = (k / g.wo, k % g.wo);
                        pixel.copy_from_slice(&out[(M * oy + ox % M) * run + ox / M * o..][..o]);
                    }
                }
            },
        )
    }

    /// dM[ξ][t][o] = (A dY Aᵀ)[ξ] for every tile of the output gradients dy [n_img, Ho, Wo, O] of one group (zero
    /// past the edge); `dm` holds n² row-major [n_img·tiles, O] matrices, tiles numbered as in
    /// [`Plan::input_transform`].
    fn output_grad_transform<T: Float>(&self, dy: &[T], n_img: usize, dm: &mut [T], buf: &mut Vec<T>) {
        vectorized(
            #[inline(always)]
            || {
                let (g, n, th, tw, tpi) = (self.g, Self::N, self.th, self.tw, self.tiles());
                let (o, tt, run) = (g.c_out, n_img * tpi, tw * g.c_out);
                let mut rest = scratch(buf, M * th * M * run + M * run);
                // dyt[M·ty + a][b][tx][o] = dY[M·ty + a][M·tx + b][o], zero past the edge; h[a] = (dY Aᵀ)[a][j].
                let dyt = take(&mut rest, M * th * M * run);
                let mut h: Vec<&mut [T]> = (0..M).map(|_| take(&mut rest, run)).collect();
                let cols: Vec<Vec<(usize, T)>> = (0..n).map(|j| nonzeros(self.mx.at, n, Line::Col(j))).collect();
                for img in 0..n_img {
                    let di = &dy[img * g.out_len()..][..g.out_len()];
                    let at = |oy: usize, ox: usize| ((oy * M + ox % M) * tw + ox / M) * o;
                    for oy in 0..M * th {
                        if oy >= g.ho {
                            dyt[at(oy, 0)..at(oy + 1, 0)].fill(T::zero());
                            continue;
                        }
                        for ox in g.wo..M * tw {
                            dyt[at(oy, ox)..][..o].fill(T::zero());
                        }
                    }
                    for (k, pixel) in di.chunks_exact(o).enumerate() {
                        dyt[at(k / g.wo, k % g.wo)..][..o].copy_from_slice(pixel);
                    }
                    for ty in 0..th {
                        let q = |a: usize, b: usize| &dyt[((M * ty + a) * M + b) * run..][..run];
                        // dM_ij = Σ_b Σ_a Aᵀ[b][j] Aᵀ[a][i] dY_ab, column j at a time.
                        let at = |j: usize, i: usize| ((n * i + j) * tt + img * tpi + ty * tw) * o;
                        separable(&cols, &cols, &mut h, |b, a| q(a, b), (&mut *dm, at));
                    }
                }
            },
        )
    }
}

/// x [H, W, C] of one image into `xt`, zero-padded and split by column phase:
/// xt[yp][b][x'][c] = xpad[yp][M·x' + b][c] for `dims` = (padded rows, columns per phase).
fn to_phased<T: Float, const M: usize>(g: &ConvGeom, x: &[T], xt: &mut [T], dims: (usize, usize)) {
    let (rows, cols) = dims;
    let c = g.c_in;
    let at = |yp: usize, xp: usize| ((yp * M + xp % M) * cols + xp / M) * c;
    for yp in 0..rows {
        if yp < g.pad || yp >= g.pad + g.h {
            xt[at(yp, 0)..at(yp + 1, 0)].fill(T::zero());
            continue;
        }
        for xp in (0..g.pad).chain(g.pad + g.w..M * cols) {
            xt[at(yp, xp)..][..c].fill(T::zero());
        }
    }
    for (p, pixel) in x.chunks_exact(c).enumerate() {
        xt[at(p / g.w + g.pad, p % g.w + g.pad)..][..c].copy_from_slice(pixel);
    }
}

/// A row or a column of a matrix.
#[derive(Clone, Copy)]
enum Line {
    Row(usize),
    Col(usize),
}

/// The non-zero entries of one line of a row-major matrix with `cols` columns, as (index along the line,
/// coefficient in type T) pairs: the terms of one output of a transform.
fn nonzeros<T: Float>(matrix: &[f64], cols: usize, line: Line) -> Vec<(usize, T)> {
    let (start, step, len) = match line {
        Line::Row(i) => (i * cols, 1, cols),
        Line::Col(j) => (j, cols, matrix.len() / cols),
    };
    matrix[start..]
        .iter()
        .step_by(step)
        .take(len)
        .enumerate()
        .filter(|(_, &c)| c != 0.0)
        .map(|(k, &c)| (k, cast(c)))
        .collect()
}

/// A matrix constant in type T.
fn cast<T: Float>(c: f64) -> T {
    T::from(c).unwrap_or_else(T::zero)
}

/// Splits `len` elements off the front of `rest`.
fn take<'a, T>(rest: &mut &'a mut [T], len: usize) -> &'a mut [T] {
    let (head, tail) = std::mem::take(rest).split_at_mut(len);
    *rest = tail;
    head
}

/// A separable transform of one tile row: dst(p, s) = Σ_k Σ_l L_p[k]·R_s[l]·src(k, l), for the non-zero
/// coefficients `left[p]` = L_p and `right[s]` = R_s, one p at a time through `tmp` (a run per l, which stays in
/// L1); `dst` is a buffer and where each (p, s) run of it starts.
#[inline(always)]
fn separable<'s, T: Float + 's>(
    left: &[Vec<(usize, T)>],
    right: &[Vec<(usize, T)>],
    tmp: &mut [&mut [T]],
    src: impl Fn(usize, usize) -> &'s [T],
    dst: (&mut [T], impl Fn(usize, usize) -> usize),
) {
    let (buf, at) = dst;
    let len = tmp.first().map_or(0, |t| t.len());
    for (p, lc) in left.iter().enumerate() {
        for (l, t) in tmp.iter_mut().enumerate() {
            combine(t, lc.iter().map(|&(k, c)| (c, src(k, l))));
        }
        for (s, rc) in right.iter().enumerate() {
            let start = at(p, s);
            combine(&mut buf[start..start + len], rc.iter().map(|&(l, c)| (c, &*tmp[l])));
        }
    }
}

/// dst[k] = Σ c · src[k] over `terms` (coefficient, source at least as long as dst), three sources a pass (inlined,
/// so it vectorises); the sum runs in the order of `terms`.
#[inline(always)]
fn combine<'s, T: Float + 's>(dst: &mut [T], terms: impl Iterator<Item = (T, &'s [T])>) {
    let len = dst.len();
    let mut terms = terms.map(|(c, s)| (c, &s[..len]));
    let mut first = true;
    loop {
        let (a, b, c) = (terms.next(), terms.next(), terms.next());
        match (a, b, c, first) {
            (None, _, _, true) => dst.fill(T::zero()),
            (None, _, _, false) => {}
            (Some((ca, xa)), None, _, true) => dst.iter_mut().zip(xa).for_each(|(d, &a)| *d = ca * a),
            (Some((ca, xa)), None, _, false) => dst.iter_mut().zip(xa).for_each(|(d, &a)| *d += ca * a),
            (Some((ca, xa)), Some((cb, xb)), None, true) => {
                dst.iter_mut().zip(xa).zip(xb).for_each(|((d, &a), &b)| *d = ca * a + cb * b)
            }
            (Some((ca, xa)), Some((cb, xb)), None, false) => {
                dst.iter_mut().zip(xa).zip(xb).for_each(|((d, &a), &b)| *d = *d + ca * a + cb * b)
            }
            (Some((ca, xa)), Some((cb, xb)), Some((cc, xc)), true) => {
                dst.iter_mut().zip(xa).zip(xb).zip(xc).for_each(|(((d, &a), &b), &c)| *d = ca * a + cb * b + cc * c)
            }
            (Some((ca, xa)), Some((cb, xb)), Some((cc, xc)), false) => dst
                .iter_mut()
                .zip(xa)
                .zip(xb)
                .zip(xc)
                .for_each(|(((d, &a), &b), &c)| *d = *d + ca * a + cb * b + cc * c),
        }
        if a.is_none() || b.is_none() || c.is_none() {
            return;
        }
        first = false;
    }
}

/// Winograd forward: y [B, Ho, Wo, O] from x [B, H, W, C] and w (3×3, stride 1), contiguous.
pub(super) fn forward<T: Float>(g: &ConvGeom, tile: Tile, x: &[T], w: &[T]) -> Vec<T> {
    match tile {
        Tile::F2 => forward_tiled::<T, 2>(g, x, w),
        Tile::F4 => forward_tiled::<T, 4>(g, x, w),
    }
}

/// Winograd weight gradient: dW [O, C, 3, 3] from x and dy (3×3, stride 1), contiguous.
pub(super) fn weight_grad<T: Float>(g: &ConvGeom, tile: Tile, x: &[T], dy: &[T]) -> Vec<T> {
    match tile {
        Tile::F2 => weight_grad_tiled::<T, 2>(g, x, dy),
        Tile::F4 => weight_grad_tiled::<T, 4>(g, x, dy),
    }
}

/// [`forward`] with F(M×M, 3×3).
fn forward_tiled<T: Float, const M: usize>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let plan = Plan::<M>::new(g);
    let (o, c, np, tpi) = (g.c_out, g.c_in, plan.positions(), plan.tiles());
    // SAFETY: each group's output transform writes all of its images (every output pixel is copied into place).
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(g.batch * g.out_len()) };
    if y.is_empty() {
        return y;
    }
    let u = plan.filter_transform(w);
    let (nb, par) = plan.schedule::<T>();
    y.par_chunks_mut(nb * g.out_len()).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, rows): &mut (Vec<T>, Vec<T>), (gi, yg)| {
            let n_img = yg.len() / g.out_len();
            let t = n_img * tpi;
            let (v, m) = scratch(buf, np * (c + o) * t).split_at_mut(np * c * t);
            plan.input_transform(&x[gi * nb * g.in_len()..][..n_img * g.in_len()], n_img, v, rows);
            // Mᵀ_ξ [T, O] = V_ξ [T, C] · Uᵀ_ξ [C, O].
            for xi in 0..np {
                let (ux, vx) = (&u[xi * o..], &v[xi * c * t..(xi + 1) * c * t]);
                gemm(&mut m[xi * o * t..(xi + 1) * o * t], o, mat(vx, t, c, c), mat(ux, c, o, np * o), false, par);
            }
            plan.output_transform(m, n_img, yg, rows);
        },
    );
    y
}

/// [`weight_grad`] with F(M×M, 3×3).
fn weight_grad_tiled<T: Float, const M: usize>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let plan = Plan::<M>::new(g);
    let (o, c, np, tpi) = (g.c_out, g.c_in, plan.positions(), plan.tiles());
    if g.batch == 0 {
        return vec![T::zero(); o * c * 9];
    }
    let (nb, _) = plan.schedule::<T>();
    // dUᵀ[c][ξ][o], accumulated over the groups.
    let dut = sum_over_groups(
        g.batch,
        nb,
        np * c * o,
        |dut: &mut [T], (b0, n_img), first, par, (buf, rows): &mut (Vec<T>, Vec<T>)| {
            let t = n_img * tpi;
            let (v, dm) = scratch(buf, np * (c + o) * t).split_at_mut(np * c * t);
            plan.input_transform(&x[b0 * g.in_len()..][..n_img * g.in_len()], n_img, v, rows);
            plan.output_grad_transform(&dy[b0 * g.out_len()..][..n_img * g.out_len()], n_img, dm, rows);
            // dUᵀ_ξ [C, O] += V_ξᵀ [C, T] · dMᵀ_ξ [T, O].
            for xi in 0..np {
                let (vx, dmx) = (&v[xi * c * t..(xi + 1) * c * t], &dm[xi * o * t..(xi + 1) * o * t]);
                gemm(&mut dut[xi * o..], np * o, mat(vx, t, c, c).t(), mat(dmx, t, o, o), !first, par);
            }
        },
    );
    plan.filter_transform_adjoint(&dut)
}
