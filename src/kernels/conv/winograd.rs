//! ---------------------------------------------------------------------------------------------------------------
//! Winograd F(2×2, 3×3) for stride-1 3×3 convolutions: the forward product and the weight gradient.
//!
//! Each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of the 4×4 input tile d under it, so over the 16 positions ξ of
//! the transformed tile the convolution becomes 16 GEMMs M_ξ[O, T] = U_ξ[O, C] · V_ξ[C, T] (T tiles): 16·O·C
//! multiply-adds per tile instead of 36·O·C, 2.25× fewer. The weight gradient is the adjoint: dU_ξ = dM_ξ · V_ξᵀ
//! with dM = A dY Aᵀ, then dW = Gᵀ dU G. Tiles past the output's edge (odd sizes) are computed and dropped.
//!
//!   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],  Aᵀ = [1 1 1 0; 0 1 −1 −1].

use super::{gemm, mat, partition, scratch, sum_in_order, ConvGeom};
use crate::kernels::gemm::Float;
use crate::kernels::simd::vectorized;
use crate::kernels::zeros;
use rayon::prelude::*;

/// Tile columns a Winograd GEMM should have at least before images share one.
const MIN_TILES: usize = 256;

/// Whether Winograd F(2×2, 3×3) applies: a 3×3 kernel at stride 1.
pub(super) fn applies(g: &ConvGeom) -> bool {
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
    vectorized(
        #[inline(always)]
        || {
            let (th, tw) = tiles(g);
            let n1 = tw + 1;
            let len = th * n1;
            let plen = (th + 1) * n1 + 1;
            let mut rest = scratch(buf, 4 * plen + 8 * (len + 1) + 2 * n1);
            let mut planes: [&mut [T]; 4] = std::array::from_fn(|_| take(&mut rest, plen));
            let r: [&mut [T]; 8] = std::array::from_fn(|_| take(&mut rest, len + 1));
            // One padded input row: zeros in the padding, the row itself written for every row below.
            let padded = take(&mut rest, 2 * n1);
            padded.fill(T::zero());
            let block = g.c_in * ld;
            let pad = g.pad as isize;
            for c in 0..g.c_in {
                let plane = &x[c * g.h * g.w..][..g.h * g.w];
                // Polyphase split of the padded image, a row at a time: the padded row (zeros outside the image)
                // is laid out in `padded`, and its pairs of columns split into the two planes of that row parity,
                // a deinterleave the compiler vectorises.
                for yp in 0..=th {
                    for a in 0..2 {
                        let iy = (2 * yp + a) as isize - pad;
                        let (even, odd) = planes[2 * a..].split_at_mut(1);
                        let (even, odd) = (&mut even[0][yp * n1..(yp + 1) * n1], &mut odd[0][yp * n1..(yp + 1) * n1]);
                        if iy < 0 || iy >= g.h as isize {
                            even.fill(T::zero());
                            odd.fill(T::zero());
                            continue;
                        }
                        let row = &plane[iy as usize * g.w..][..g.w];
                        let inside = g.w.min(padded.len() - g.pad);
                        padded[g.pad..g.pad + inside].copy_from_slice(&row[..inside]);
                        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(padded.chunks_exact(2)) {
                            *e = pair[0];
                            *o = pair[1];
                        }
                    }
                }
                for p in planes.iter_mut() {
                    p[plen - 1] = T::zero();
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
        },
    )
}

/// y [O, Ho, Wo] of one image from M[ξ][o][t0 + t] (16 blocks of [O, ld], tiles numbered as in
/// [`input_transform`]): each 2×2 output tile is Aᵀ M A, cut at the output's edge.
fn output_transform<T: Float>(g: &ConvGeom, m: &[T], ld: usize, t0: usize, y: &mut [T], buf: &mut Vec<T>) {
    vectorized(
        #[inline(always)]
        || {
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
        },
    )
}

/// dM[ξ][o][t0 + t] = (A dY Aᵀ)[ξ] for every tile of one image's output gradient dy [O, Ho, Wo] (zero past the
/// edge and in the spare tile column); `dm` holds 16 blocks of [O, ld], tiles numbered as in [`input_transform`].
fn output_grad_transform<T: Float>(g: &ConvGeom, dy: &[T], dm: &mut [T], ld: usize, t0: usize, buf: &mut Vec<T>) {
    vectorized(
        #[inline(always)]
        || {
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
        },
    )
}

/// Winograd forward: y [B, O, Ho, Wo] from x and w (3×3, stride 1), contiguous.
pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let (th, tw) = tiles(g);
    let mut y = zeros(g.batch * g.out_len());
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
pub(super) fn weight_grad<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (o, c) = (g.c_out, g.c_in);
    let (th, tw) = tiles(g);
    if g.batch == 0 {
        return vec![T::zero(); o * c * 9];
    }
    let (nb, _) = winograd_schedule(g);
    let (groups, parts, par) = partition(g.batch, nb);
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
    let dut = sum_in_order(partials, 16 * c * o);
    filter_transform_adjoint(g, &dut)
}
