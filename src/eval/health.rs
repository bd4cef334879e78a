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
/// batch, D when every direction is used equally (Roy & Vetterli's effective rank).
pub fn effective_rank(z: &Tensor) -> Result<f64> {
    let z = z.to_dtype(DType::F64)?;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let cov = centred.t()?.matmul(&centred)?;
    let eig = symmetric_eigenvalues(cov.to_vec2::<f64>()?);
    let total: f64 = eig.iter().map(|l| l.max(0.0)).sum();
    if total <= 0.0 {
        return Ok(1.0);
    }
    let entropy: f64 = eig.iter().map(|l| l.max(0.0) / total).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
    Ok(entropy.exp())
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (D ≤ a few hundred here).
pub fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (head, tail) = a.split_at_mut(q);
                for (apk, aqk) in head[p].iter_mut().zip(tail[0].iter_mut()) {
                    let (x, y) = (*apk, *aqk);
                    *apk = c * x - s * y;
                    *aqk = s * x + c * y;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
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
