//! Powers of a symmetric matrix — its square root and inverse square root — through its eigendecomposition
//! (nalgebra's symmetric eigensolver), as a candle op with its backward, so that a batch-level loss that whitens
//! features (W-MSE) trains by autodiff.
//!
//! The argument is symmetrised first, `S = (A + Aᵀ)/2`, and `f(S) = U diag(λᵢᵖ) Uᵀ`. The backward is the
//! Daleckii–Krein formula: for the gradient `G` of `f(S)`, `∂L/∂S = U (F ∘ (Uᵀ G U)) Uᵀ` with
//! `Fᵢⱼ = (λᵢᵖ − λⱼᵖ)/(λᵢ − λⱼ)` and `Fᵢᵢ = p λᵢᵖ⁻¹` (the limit, also used where two eigenvalues coincide to
//! rounding), then symmetrised for `A`. An eigenvalue that is not positive has no real power below 1: the result is
//! NaN there, which training and `verify` report (add `eps * eye()` to a covariance that may be singular).

use super::read;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

/// `f(S) = Sᵖ` of the symmetric part of a square matrix.
#[derive(Clone, Copy, Debug)]
pub struct SymmetricPower {
    /// The exponent: ½ for the square root, −½ for the inverse square root.
    pub p: f64,
}

/// The symmetric part of a `d × d` row-major matrix, and its eigendecomposition.
fn eigen(a: &[f64], d: usize) -> SymmetricEigen<f64, nalgebra::Dyn> {
    let m = DMatrix::from_fn(d, d, |i, j| 0.5 * (a[i * d + j] + a[j * d + i]));
    SymmetricEigen::new(m)
}

/// `U M Uᵀ`, row-major.
fn rotate_back(u: &DMatrix<f64>, inner: &DMatrix<f64>) -> Vec<f64> {
    let out = u * inner * u.transpose();
    let d = out.nrows();
    (0..d * d).map(|k| out[(k / d, k % d)]).collect()
}

fn square(dims: &[usize]) -> Result<usize> {
    match dims {
        [d, e] if d == e => Ok(*d),
        _ => candle_core::bail!("a symmetric matrix power needs a square matrix, got {dims:?}"),
    }
}

impl SymmetricPower {
    fn forward(&self, a: &[f64], d: usize) -> Vec<f64> {
        let e = eigen(a, d);
        let powered = DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.powf(self.p)));
        rotate_back(&e.eigenvectors, &powered)
    }

    fn backward(&self, a: &[f64], g: &[f64], d: usize) -> Vec<f64> {
        let e = eigen(a, d);
        let (u, l) = (&e.eigenvectors, &e.eigenvalues);
        let f = DMatrix::from_fn(d, d, |i, j| {
            let (x, y) = (l[i], l[j]);
            if (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(f64::MIN_POSITIVE) {
                self.p * (0.5 * (x + y)).powf(self.p - 1.0)
            } else {
                (x.powf(self.p) - y.powf(self.p)) / (x - y)
            }
        });
        let g = DMatrix::from_fn(d, d, |i, j| g[i * d + j]);
        let inner = (u.transpose() * g * u).component_mul(&f);
        let ds = rotate_back(u, &inner);
        // S = (A + Aᵀ)/2, so ∂L/∂A is the symmetric part of ∂L/∂S.
        (0..d * d).map(|k| 0.5 * (ds[k] + ds[(k % d) * d + k / d])).collect()
    }
}

fn as_f64(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    Ok(match s {
        CpuStorage::F32(_) => read::<f32>(s, l)?.iter().map(|&x| f64::from(x)).collect(),
        CpuStorage::F64(_) => read::<f64>(s, l)?.into_owned(),
        _ => candle_core::bail!("a symmetric matrix power: f32 or f64 expected"),
    })
}

fn storage_like(s: &CpuStorage, v: Vec<f64>) -> CpuStorage {
    match s {
        CpuStorage::F32(_) => CpuStorage::F32(v.into_iter().map(|x| x as f32).collect()),
        _ => CpuStorage::F64(v),
    }
}

impl CustomOp1 for SymmetricPower {
    fn name(&self) -> &'static str {
        "symmetric-power"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = square(l.dims())?;
        let out = self.forward(&as_f64(s, l)?, d);
        Ok((storage_like(s, out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = square(arg.dims())?;
        let a: Vec<f64> = arg.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let g: Vec<f64> = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let da = Tensor::from_vec(self.backward(&a, &g, d), (d, d), arg.device())?;
        Ok(Some(da.to_dtype(arg.dtype())?))
    }
}

/// `Sᵖ` of the symmetric part of the square matrix `a` (on the CPU; another device's tensor goes through it).
pub fn symmetric_power(a: &Tensor, p: f64) -> Result<Tensor> {
    let device = a.device().clone();
    a.to_device(&candle_core::Device::Cpu)?.apply_op1(SymmetricPower { p })?.to_device(&device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// A random symmetric positive definite matrix with eigenvalues spread over two decades.
    fn spd(rng: &mut rand::rngs::StdRng, d: usize) -> Tensor {
        let x: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x = Tensor::from_vec(x, (d, d), &Device::Cpu).unwrap();
        let eye = Tensor::eye(d, DType::F64, &Device::Cpu).unwrap();
        (x.matmul(&x.t().unwrap()).unwrap() + (eye * 0.05).unwrap()).unwrap()
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// √A √A = A and A^−½ A A^−½ = I, to 1e-10 relative (f64).
    #[test]
    fn the_powers_invert_each_other() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for d in [1, 2, 7, 16] {
            let a = spd(&mut rng, d);
            let root = symmetric_power(&a, 0.5).unwrap();
            let back = root.matmul(&root).unwrap();
            assert!(max_abs(&(back - &a).unwrap()) < 1e-10 * max_abs(&a), "d = {d}");
            let w = symmetric_power(&a, -0.5).unwrap();
            let white = w.matmul(&a).unwrap().matmul(&w).unwrap();
            let eye = Tensor::eye(d, DType::F64, &Device::Cpu).unwrap();
            assert!(max_abs(&(white - eye).unwrap()) < 1e-9, "d = {d}");
        }
    }

    /// The backward against central finite differences of ⟨W, f(A)⟩ for a random W, along random symmetric and
    /// non-symmetric directions (f64, h = 1e-6, 1e-6 relative to |∇|·|δ|).
    #[test]
    fn the_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for p in [0.5, -0.5] {
            for d in [1, 3, 8] {
                let a = spd(&mut rng, d);
                let weights: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let w = Tensor::from_vec(weights, (d, d), &Device::Cpu).unwrap();
                let loss = |x: &Tensor| (symmetric_power(x, p).unwrap() * &w).unwrap().sum_all().unwrap();
                let var = Var::from_tensor(&a).unwrap();
                let grads = loss(var.as_tensor()).backward().unwrap();
                let g = grads.get(var.as_tensor()).unwrap().clone();
                for _ in 0..3 {
                    let dir: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let dir = Tensor::from_vec(dir, (d, d), &Device::Cpu).unwrap();
                    let h = 1e-6;
                    let at = |s: f64| loss(&(&a + (&dir * (s * h)).unwrap()).unwrap()).to_scalar::<f64>().unwrap();
                    let numeric = (at(1.0) - at(-1.0)) / (2.0 * h);
                    let analytic = (&g * &dir).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
                    let scale = (g.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                        * dir.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
                    .sqrt();
                    assert!(
                        (numeric - analytic).abs() < 1e-6 * scale.max(1.0),
                        "p = {p}, d = {d}: {numeric} vs {analytic}"
                    );
                }
            }
        }
    }
}
