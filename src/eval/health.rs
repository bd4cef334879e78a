//! Representation health, logged during training: the spread of the normalised features (0 means
//! collapse; about 1/√D is healthy) and the effective rank of the batch features (how many
//! directions they really use) — and whether a tensor has become NaN or infinite.

use crate::error::{Error, ErrorCode};
use candle_core::{DType, Result, Tensor};

/// Mean over dimensions of the per-dimension standard deviation over the batch of L2-normalised
/// features `z` [B, D] — the `std(normalize(z))` monitor of the SSL literature.
pub fn z_std(z: &Tensor) -> Result<f64> {
    let z = z.to_dtype(DType::F64)?;
    let n = crate::nn::layers::l2_normalize(&z)?;
    let centred = n.broadcast_sub(&n.mean_keepdim(0)?)?;
    let rows = n.dims()[0].max(2) as f64;
    let var = (centred.sqr()?.sum(0)? / (rows - 1.0))?;
    var.sqrt()?.mean_all()?.to_scalar::<f64>()
}

/// The flat index of the first NaN or infinity in `t`, if any. The sum is checked first, so a finite tensor costs
/// one reduction; only a sum that is not finite (a bad value, or finite values large enough to overflow) is scanned.
pub fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    if t.elem_count() == 0 || t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite() {
        return Ok(None);
    }
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(values.iter().position(|v| !v.is_finite()))
}

/// Consecutive low readings before collapse is reported: one noisy batch is not a collapse.
pub const COLLAPSE_READINGS: usize = 3;

/// Watches the online z-std over logged steps and reports collapse once it has stayed far below the healthy 1/√D
/// (under a tenth of it) for [`COLLAPSE_READINGS`] readings in a row; reports again only after a recovery.
#[derive(Clone, Debug, Default)]
pub struct CollapseMonitor {
    streak: usize,
    reported: bool,
}

impl CollapseMonitor {
    /// Takes one reading; returns the warning when collapse has just been established.
    pub fn observe(&mut self, z_std: f64, healthy: f64) -> Option<Error> {
        if z_std >= 0.1 * healthy {
            *self = Self::default();
            return None;
        }
        self.streak += 1;
        if self.streak < COLLAPSE_READINGS || self.reported {
            return None;
        }
        self.reported = true;
        let message = format!(
            "z-std has stayed far below the healthy {healthy:.4} (1/sqrt(D)) for {} logged steps (now {z_std:.5}): \
             the features are collapsing",
            self.streak
        );
        Some(
            Error::new(ErrorCode::TrainCollapse, message)
                .help("add a negative term or a predictor, or lower the learning rate"),
        )
    }
}

/// exp(entropy) of the normalised eigenvalues of the features' covariance: 1 for a collapsed
/// batch, D when every direction is used equally (Roy & Vetterli's effective rank). The covariance ZᵀZ [D, D] and
/// the Gram matrix ZZᵀ [B, B] of the centred features share their non-zero eigenvalues, so the smaller of the two
/// is decomposed: a projector of 8,192 dimensions costs a 256×256 problem at batch 256, not an 8,192² one.
pub fn effective_rank(z: &Tensor) -> Result<f64> {
    let z = z.to_dtype(DType::F64)?;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let (b, d) = centred.dims2()?;
    let small = if b < d { centred.matmul(&centred.t()?)? } else { centred.t()?.matmul(&centred)? };
    let eig = symmetric_eigenvalues(small.to_vec2::<f64>()?);
    let total: f64 = eig.iter().map(|l| l.max(0.0)).sum();
    if total <= 0.0 {
        return Ok(1.0);
    }
    let entropy: f64 = eig.iter().map(|l| l.max(0.0) / total).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
    Ok(entropy.exp())
}

/// Eigenvalues of a symmetric matrix, in no particular order: Householder reduction to tridiagonal form, then
/// the implicit QL algorithm with Wilkinson-style shifts — O(n³) once instead of per Jacobi sweep (the step record
/// computes this every step; cyclic Jacobi on a 128×128 covariance was 1.3 % of a training step).
pub fn symmetric_eigenvalues(a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    let mut flat: Vec<f64> = a.into_iter().flatten().collect();
    let (mut d, mut e) = tridiagonalise(&mut flat, n);
    tridiagonal_ql(&mut d, &mut e);
    d
}

/// Householder reduction of the symmetric row-major n×n matrix `a` (overwritten) to tridiagonal form: its
/// diagonal, and its sub-diagonal with e[i] between rows i and i + 1 (e[n − 1] = 0).
fn tridiagonalise(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut d, mut e, mut v, mut p) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for k in 0..n.saturating_sub(2) {
        d[k] = a[k * n + k];
        let norm = (k + 1..n).map(|i| a[i * n + k] * a[i * n + k]).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        // The reflection H = I − 2vvᵀ that maps column k below the diagonal to (alpha, 0, …, 0); the sign of alpha
        // keeps v's first entry away from cancellation, so v ≠ 0.
        let alpha = if a[(k + 1) * n + k] > 0.0 { -norm } else { norm };
        for i in k + 1..n {
            v[i] = a[i * n + k];
        }
        v[k + 1] -= alpha;
        let v_norm = (k + 1..n).map(|i| v[i] * v[i]).sum::<f64>().sqrt();
        for vi in &mut v[k + 1..] {
            *vi /= v_norm;
        }
        // The trailing block A ← HAH = A − 2(vqᵀ + qvᵀ), with p = Av and q = p − (vᵀp)v.
        for i in k + 1..n {
            p[i] = a[i * n + k + 1..(i + 1) * n].iter().zip(&v[k + 1..]).map(|(x, y)| x * y).sum();
        }
        let vp: f64 = (k + 1..n).map(|i| v[i] * p[i]).sum();
        for i in k + 1..n {
            p[i] -= vp * v[i];
        }
        for i in k + 1..n {
            let (vi, pi) = (v[i], p[i]);
            for (x, (&vj, &pj)) in a[i * n + k + 1..(i + 1) * n].iter_mut().zip(v[k + 1..].iter().zip(&p[k + 1..])) {
                *x -= 2.0 * (vi * pj + pi * vj);
            }
        }
        e[k] = alpha;
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 1) * n + n - 2];
    }
    if n >= 1 {
        d[n - 1] = a[n * n - 1];
    }
    (d, e)
}

/// The eigenvalues of the symmetric tridiagonal matrix (diagonal `d`, sub-diagonal `e` as [`tridiagonalise`]
/// leaves them) into `d`, by implicit QL iterations (at most 60 per eigenvalue; `e` is destroyed).
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    for l in 0..n {
        for _ in 0..60 {
            // The first m ≥ l whose coupling to the next row is negligible: the block l..=m splits off.
            let mut m = l;
            while m + 1 < n && e[m].abs() > f64::EPSILON * (d[m].abs() + d[m + 1].abs()) {
                m += 1;
            }
            if m == l {
                break;
            }
            // The shift from the leading 2×2 block, then one QL sweep of plane rotations from m up to l.
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut deflated = false;
            for i in (l..m).rev() {
                let (f, b) = (s * e[i], c * e[i]);
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // An exact zero split the block: restart on what is left.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if !deflated {
                d[l] -= p;
                e[l] = g;
                e[m] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let mut e = symmetric_eigenvalues(vec![vec![2.0, 1.0], vec![1.0, 2.0]]);
        e.sort_by(f64::total_cmp);
        assert!((e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12, "{e:?}");
    }

    /// A = Q Λ Qᵀ with Q a product of random Householder reflections and a spectrum with repeats, zeros and
    /// negatives: the eigenvalues come back to 1e-10 of the largest, for sizes 1 to 40.
    #[test]
    fn eigenvalues_of_random_matrices_with_known_spectra() {
        let mut seed = 7u64;
        let mut uniform = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for n in [1usize, 2, 3, 5, 17, 40] {
            let lambda: Vec<f64> = (0..n).map(|i| [3.0, -1.5, 0.0, 3.0, 0.25][i % 5] * (1.0 + i as f64)).collect();
            let mut a: Vec<Vec<f64>> =
                (0..n).map(|i| (0..n).map(|j| if i == j { lambda[i] } else { 0.0 }).collect()).collect();
            for _ in 0..3 {
                // A ← HAH with H = I − 2uuᵀ/uᵀu.
                let u: Vec<f64> = (0..n).map(|_| uniform()).collect();
                let uu: f64 = u.iter().map(|x| x * x).sum();
                let h: Vec<Vec<f64>> = (0..n)
                    .map(|i| (0..n).map(|j| f64::from(u8::from(i == j)) - 2.0 * u[i] * u[j] / uu).collect())
                    .collect();
                let mul = |x: &Vec<Vec<f64>>, y: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                    (0..n).map(|i| (0..n).map(|j| (0..n).map(|k| x[i][k] * y[k][j]).sum()).collect()).collect()
                };
                a = mul(&mul(&h, &a), &h);
            }
            let mut got = symmetric_eigenvalues(a);
            let mut want = lambda.clone();
            got.sort_by(f64::total_cmp);
            want.sort_by(f64::total_cmp);
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-10 * scale, "n = {n}: {got:?} against {want:?}");
            }
        }
    }

    /// The Gram side (fewer samples than dimensions) and the covariance side give the same effective rank.
    #[test]
    fn effective_rank_is_the_same_from_either_side() {
        let z = Tensor::randn(0f64, 1.0, (12, 30), &Device::Cpu).unwrap();
        let wide = effective_rank(&z).unwrap();
        // The same spectrum through the covariance: pad the batch with copies of the mean, which centring zeroes.
        let mean = z.mean_keepdim(0).unwrap().broadcast_as((20, 30)).unwrap();
        let tall = effective_rank(&Tensor::cat(&[&z, &mean], 0).unwrap()).unwrap();
        assert!(wide > 1.0 && (wide - tall).abs() < 1e-9 * wide, "{wide} against {tall}");
    }

    #[test]
    fn collapse_and_spread_are_told_apart() {
        let collapsed = Tensor::ones((16, 4), DType::F64, &Device::Cpu).unwrap();
        assert!(z_std(&collapsed).unwrap() < 1e-9);
        // The 4 standard basis vectors, each 4 times: every direction used equally.
        let eye = Tensor::eye(4, DType::F64, &Device::Cpu).unwrap();
        let spread = Tensor::cat(&[&eye, &eye, &eye, &eye], 0).unwrap();
        assert!((effective_rank(&spread).unwrap() - 3.0).abs() < 1e-9, "centring removes one direction");
        // Per-dimension std of one-hot rows over 16 samples: sqrt(16/15 · 3/16) = 0.4472.
        assert!((z_std(&spread).unwrap() - (3.0f64 / 15.0).sqrt()).abs() < 1e-12);
    }
}
