//! Max pooling (src/kernels/pool.rs) against a plain loop, candle's own pooling where candle has one (window ==
//! stride, no padding) with its autodiff, and central finite differences, on fresh random inputs; global average
//! pooling of channels-last maps (src/kernels/avg_pool.rs) against candle's mean; the linear probe's grid pooling
//! (src/nn/layers.rs) against torch's bins written out.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::kernels::pool::{self, PoolGeom};

#[path = "support/pool_shapes.rs"]
mod pool_shapes;
use pool_shapes::SHAPES;

fn draw(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ std::process::id() as u64);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// The plain definition: y = max over the window inside the image; dx = dy at the first maximum of each window.
fn reference(g: &PoolGeom, x: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
    for p in 0..g.planes {
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut best: Option<(usize, f64)> = None;
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let (iy, ix) = (
                            (oy * g.stride + ky) as isize - g.pad as isize,
                            (ox * g.stride + kx) as isize - g.pad as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let i = (p * g.h + iy as usize) * g.w + ix as usize;
                        if best.is_none_or(|(_, v)| x[i] > v) {
                            best = Some((i, x[i]));
                        }
                    }
                }
                let (i, v) = best.expect("every window holds an image pixel");
                y.push(v);
                dx[i] += dy[(p * g.ho + oy) * g.wo + ox];
            }
        }
    }
    (y, dx)
}

#[test]
fn max_pool_matches_the_plain_loop_and_its_gradient_finite_differences() -> Result<()> {
    for (n, &(b, c, h, w, k, s, p)) in SHAPES.iter().enumerate() {
        let g = PoolGeom::new(&[b, c, h, w], k, s, p)?;
        let x = draw(b * c * h * w, 10 + n as u64);
        let dy = draw(b * c * g.ho * g.wo, 20 + n as u64);
        let (want_y, want_dx) = reference(&g, &x, &dy);
        assert_eq!(pool::forward(&g, &x), want_y, "forward {:?}", SHAPES[n]);
        assert_eq!(pool::backward(&g, &x, &dy), want_dx, "backward {:?}", SHAPES[n]);
        // Through the candle op and its recorded backward, f64, against central differences of Σ y·dy (h = 1e-6;
        // the values are distinct, so no maximum changes within a step: agreement to 1e-6).
        let xv = Var::from_tensor(&Tensor::from_slice(&x, (b, c, h, w), &Device::Cpu)?)?;
        let r = Tensor::from_slice(&dy, (b, c, g.ho, g.wo), &Device::Cpu)?;
        let loss = |t: &Tensor| -> Result<Tensor> { (pool::max_pool2d(t, k, s, p)? * &r)?.sum_all() };
        let analytic = loss(xv.as_tensor())?.backward()?.get(&xv).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
        for i in 0..x.len() {
            let at = |d: f64| -> Result<f64> {
                let mut moved = x.clone();
                moved[i] += d;
                loss(&Tensor::from_slice(&moved, (b, c, h, w), &Device::Cpu)?)?.to_scalar::<f64>()
            };
            let numeric = (at(1e-6)? - at(-1e-6)?) / 2e-6;
            assert!((numeric - analytic[i]).abs() < 1e-6, "{:?} entry {i}: {numeric} vs {}", SHAPES[n], analytic[i]);
        }
    }
    Ok(())
}

#[test]
fn max_pool_agrees_with_candle_where_candle_has_one() -> Result<()> {
    let x = Var::from_tensor(&Tensor::from_slice(&draw(2 * 3 * 6 * 8, 3), (2, 3, 6, 8), &Device::Cpu)?)?;
    let r = Tensor::from_slice(&draw(2 * 3 * 3 * 4, 4), (2, 3, 3, 4), &Device::Cpu)?;
    let ours = pool::max_pool2d(x.as_tensor(), 2, 2, 0)?;
    let theirs = x.as_tensor().max_pool2d(2)?;
    assert_eq!(ours.flatten_all()?.to_vec1::<f64>()?, theirs.flatten_all()?.to_vec1::<f64>()?);
    // candle 0.9.2's backward of its own max_pool2d scales the gradient by 1 / (window area) — measured here: exactly
    // a quarter at k = 2 — so the gradient is checked against the loop and finite differences above, and here only
    // that candle's is ours divided by k².
    let grad = |y: &Tensor| -> Result<Vec<f64>> {
        (y * &r)?.sum_all()?.backward()?.get(&x).expect("gradient").flatten_all()?.to_vec1::<f64>()
    };
    let (g_ours, g_candle) = (grad(&ours)?, grad(&theirs)?);
    assert!(g_ours.iter().zip(&g_candle).all(|(a, b)| (a / 4.0 - b).abs() < 1e-15));
    // f32 too, and bad geometry is an error, not a panic.
    let x32 = x.as_tensor().to_dtype(DType::F32)?;
    assert_eq!(pool::max_pool2d(&x32, 3, 2, 1)?.dims(), [2, 3, 3, 4]);
    assert!(pool::max_pool2d(&x32, 3, 2, 2).is_err(), "padding over half the window");
    assert!(pool::max_pool2d(&x32, 9, 1, 0).is_err(), "window larger than the image");
    assert!(pool::max_pool2d(&x32, 3, 0, 1).is_err(), "zero stride");
    Ok(())
}

/// `grid_avg_pool` places its bins as torch's `adaptive_avg_pool2d` does; the bins per side are written out here
/// (torch's: 7 → 2 is [0, 4) and [3, 7), overlapping; 5 → 3 is [0, 2), [1, 4), [3, 5); 6 → 2 halves; n → 1 all;
/// n → n single pixels), and each output is the mean of its bin, channel-major ([B, C·g·g]).
#[test]
fn grid_pooling_averages_torch_adaptive_bins() -> Result<()> {
    let bins = |n: usize, g: usize| -> Vec<(usize, usize)> {
        match (n, g) {
            (_, 1) => vec![(0, n)],
            (7, 2) => vec![(0, 4), (3, 7)],
            (5, 3) => vec![(0, 2), (1, 4), (3, 5)],
            (6, 2) => vec![(0, 3), (3, 6)],
            (n, g) if n == g => (0..n).map(|i| (i, i + 1)).collect(),
            _ => unreachable!("no bins written for {n} → {g}"),
        }
    };
    for &(b, c, h, w, g) in &[(2, 3, 7, 7, 2), (1, 2, 5, 6, 1), (3, 1, 6, 6, 2), (1, 2, 3, 3, 3), (2, 2, 7, 7, 1)] {
        let x = draw(b * c * h * w, (h * 10 + g) as u64);
        let t = Tensor::from_vec(x.clone(), (b, c, h, w), &Device::Cpu)?;
        let y = ssl_lang::nn::layers::grid_avg_pool(&t, g)?;
        assert_eq!(y.dims(), &[b, c * g * g]);
        let y = y.flatten_all()?.to_vec1::<f64>()?;
        let (rows, cols) = (bins(h, g), bins(w, g));
        for (i, want) in (0..b)
            .flat_map(|n| (0..c).map(move |ch| (n, ch)))
            .flat_map(|(n, ch)| {
                let (rows, cols, x) = (&rows, &cols, &x);
                rows.iter().flat_map(move |&(r0, r1)| {
                    cols.iter().map(move |&(c0, c1)| {
                        let cell: Vec<f64> = (r0..r1)
                            .flat_map(|r| (c0..c1).map(move |col| x[((n * c + ch) * h + r) * w + col]))
                            .collect();
                        cell.iter().sum::<f64>() / cell.len() as f64
                    })
                })
            })
            .enumerate()
        {
            assert!((y[i] - want).abs() < 1e-12, "{b}x{c}x{h}x{w} → {g}: output {i} is {} not {want}", y[i]);
        }
    }
    Ok(())
}

/// Global average pooling of channels-last maps (src/kernels/avg_pool.rs) equals candle's mean over the pixels of
/// the NCHW map, value and gradient under a random cotangent, to 1e-12 in f64 and 1e-5 in f32 (absolute, on values
/// in [−1, 1]): one pixel, batch 1, odd sizes and channel counts off the vector width. A map that is not rank 4 is
/// an error.
#[test]
fn global_avg_pool_matches_candle_mean() -> Result<()> {
    use ssl_lang::kernels::avg_pool;
    let shapes = [(1, 1, 1, 1), (2, 7, 7, 33), (3, 5, 4, 16), (1, 28, 28, 3)];
    for (i, &(b, h, w, c)) in shapes.iter().enumerate() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let x = Tensor::from_slice(&draw(b * h * w * c, 10 + i as u64), (b, h, w, c), &Device::Cpu)?;
            let x = Var::from_tensor(&x.to_dtype(dtype)?)?;
            let r = Tensor::from_slice(&draw(b * c, 20 + i as u64), (b, c), &Device::Cpu)?.to_dtype(dtype)?;
            let run = |y: Tensor| -> Result<(Vec<f64>, Vec<f64>)> {
                let dx = (&y * &r)?.sum_all()?.backward()?.get(&x).expect("gradient").clone();
                let flat = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
                Ok((flat(&y)?, flat(&dx)?))
            };
            let ours = run(avg_pool::global_avg_pool(x.as_tensor())?)?;
            let theirs = run(x.as_tensor().permute((0, 3, 1, 2))?.contiguous()?.flatten_from(2)?.mean(2)?)?;
            for (what, a, b) in [("forward", &ours.0, &theirs.0), ("gradient", &ours.1, &theirs.1)] {
                let err = a.iter().zip(b).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
                assert!(a.len() == b.len() && err <= tol, "{dtype:?} {what} of {:?}: error {err:e}", (b, h, w, c));
            }
        }
    }
    assert!(avg_pool::global_avg_pool(&Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?).is_err());
    Ok(())
}
