//! The fused contrastive kernel (src/kernels/softmax_sum.rs) against the computation it replaces: the [N, K] logits
//! built whole, a softmax per row and the weighted sum of the candidates, on fresh random inputs. The candidate set
//! mixes every part kind — shared rows longer than one tile (so the online softmax rescales across tiles), one row
//! per sample, one vector shared by all — and a part that does not fit the features is an error, not a panic.

use candle_core::{DType, Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use ssl_lang::kernels::softmax_sum::{softmax_sum, Part, PartKind, TILE};

fn random(rng: &mut StdRng, dims: &[usize], dtype: DType) -> Result<Tensor> {
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// Σ_v softmax_v(scale · u·v) v with every candidate of sample i as a row of one [N, K, D] tensor.
fn direct(u: &Tensor, scale: f64, parts: &[Part]) -> Result<Vec<Vec<f64>>> {
    let u: Vec<Vec<f64>> = u.to_dtype(DType::F64)?.to_vec2()?;
    let n = u.len();
    let mut candidates: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n];
    for part in parts {
        let values = part.values.to_dtype(DType::F64)?;
        for (i, set) in candidates.iter_mut().enumerate() {
            match part.kind {
                PartKind::Rows => set.extend(values.to_vec2::<f64>()?),
                PartKind::PerSample => set.push(values.get(i)?.to_vec1()?),
                PartKind::Shared => set.push(values.to_vec1()?),
            }
        }
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    Ok(u.iter()
        .zip(&candidates)
        .map(|(ui, set)| {
            let logits: Vec<f64> = set.iter().map(|v| scale * dot(ui, v)).collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            (0..ui.len()).map(|c| set.iter().zip(&weights).map(|(v, w)| w * v[c]).sum::<f64>() / total).collect()
        })
        .collect())
}

#[test]
fn every_part_kind_matches_the_direct_softmax() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(31);
    // f64 to 1e-12, f32 to 1e-5 (relative to the largest output; the logits reach |scale · u·v| ≈ 10).
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (n, d, k) in [(5, 7, TILE + 37), (1, 3, 2), (17, 16, 2 * TILE)] {
            let u = random(&mut rng, &[n, d], dtype)?;
            let parts = vec![
                Part { kind: PartKind::PerSample, values: random(&mut rng, &[n, d], dtype)? },
                Part { kind: PartKind::Rows, values: random(&mut rng, &[k, d], dtype)? },
                Part { kind: PartKind::Shared, values: random(&mut rng, &[d], dtype)? },
            ];
            let scale = 10.0 / d as f64;
            let want = direct(&u, scale, &parts)?;
            let got: Vec<Vec<f64>> = softmax_sum(&u, scale, parts)?.to_dtype(DType::F64)?.to_vec2()?;
            let peak = want.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
            let err = got.iter().flatten().zip(want.iter().flatten()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol * peak, "{dtype:?} n={n} d={d} k={k}: error {err:.2e} of {peak:.2e}");
        }
    }
    Ok(())
}

#[test]
fn a_part_that_does_not_fit_the_features_is_an_error() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(32);
    let u = random(&mut rng, &[4, 3], DType::F32)?;
    for (kind, dims) in [
        (PartKind::PerSample, vec![3, 3]),
        (PartKind::PerSample, vec![4, 2]),
        (PartKind::Shared, vec![2, 3]),
        (PartKind::Rows, vec![5, 2]),
    ] {
        let part = Part { kind, values: random(&mut rng, &dims, DType::F32)? };
        let err = softmax_sum(&u, 1.0, vec![part]).expect_err("a mis-shaped part must be refused");
        assert!(
            err.to_string().contains("does not fit") || err.to_string().contains("columns"),
            "{kind:?} {dims:?}: {err}"
        );
    }
    Ok(())
}
