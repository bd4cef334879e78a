//! The fused BatchNorm (+ ReLU) and residual-join kernels against candle's composable ops and autodiff (f32 and
//! f64, random inputs and upstream gradients, several shapes including batch 1 and [B, C]), against central finite
//! differences in f64, and for independence from the number of threads. Inputs are channels-last: [B, C] or
//! [B, H, W, C].

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::kernels::norm::{self, ChannelStats};

const EPS: f64 = 1e-5;

fn random(shape: &[usize], rng: &mut StdRng, dtype: DType, offset: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0) + offset).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}

fn max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Candle composable-op reference on channels-last x: train mode uses the batch statistics (differentiated through),
/// eval mode the given ones.
fn reference(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eval: Option<(&Tensor, &Tensor)>,
    relu: bool,
) -> Result<Tensor> {
    let c = channels(x.dims());
    let rows = x.elem_count() / c;
    let x2 = x.reshape((rows, c))?;
    let (mean, var) = match eval {
        Some((m, v)) => (m.reshape((1, c))?, v.reshape((1, c))?),
        None => {
            let mean = (x2.sum_keepdim(0)? / rows as f64)?;
            let var = (x2.broadcast_sub(&mean)?.sqr()?.sum_keepdim(0)? / rows as f64)?;
            (mean, var)
        }
    };
    let xhat = x2.broadcast_sub(&mean)?.broadcast_div(&(var + EPS)?.sqrt()?)?;
    let y = xhat.broadcast_mul(&gamma.reshape((1, c))?)?.broadcast_add(&beta.reshape((1, c))?)?;
    let y = y.reshape(x.dims())?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The channels of a channels-last shape: its last axis.
fn channels(shape: &[usize]) -> usize {
    shape[shape.len() - 1]
}

/// Output and gradients (x, γ, β) of `f` under the upstream gradient `r` (the gradient of Σ f(x)·r).
fn with_grads(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    r: &Tensor,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Vec<Vec<f64>>> {
    let (xv, gv, bv) = (Var::from_tensor(x)?, Var::from_tensor(gamma)?, Var::from_tensor(beta)?);
    let y = f(xv.as_tensor(), gv.as_tensor(), bv.as_tensor())?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![values(&y)?];
    for v in [&xv, &gv, &bv] {
        out.push(values(grads.get(v.as_tensor()).expect("every argument gets a gradient"))?);
    }
    Ok(out)
}

/// [B, C] and [B, H, W, C], batch 1, and one of several parallel tasks with a partial last one (4,500 rows of 8).
const SHAPES: &[&[usize]] = &[&[8, 5], &[4, 3], &[1, 4, 5, 3], &[3, 2, 4, 4], &[6, 7, 9, 9], &[5, 30, 30, 8]];

/// Train mode (batch statistics), with and without the ReLU, equals the composable reference in value and in all
/// three gradients: f64 to 1e-11, f32 to 2e-5 against the f64 reference (relative to the largest magnitude), on
/// inputs with a mean offset.
#[test]
fn train_mode_matches_candle_autodiff() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-11 } else { 2e-5 };
        for shape in SHAPES {
            for relu in [false, true] {
                let c = channels(shape);
                let x = random(shape, &mut rng, dtype, 0.7)?;
                let gamma = random(&[c], &mut rng, dtype, 1.0)?;
                let beta = random(&[c], &mut rng, dtype, 0.0)?;
                let r = random(shape, &mut rng, dtype, 0.0)?;
                let ours = with_grads(&x, &gamma, &beta, &r, |x, g, b| {
                    norm::batch_norm(x, g, b, &norm::channel_stats(x, None)?, EPS, true, relu)
                })?;
                let f64s = |t: &Tensor| t.to_dtype(DType::F64);
                let want = with_grads(&f64s(&x)?, &f64s(&gamma)?, &f64s(&beta)?, &f64s(&r)?, |x, g, b| {
                    reference(x, g, b, None, relu)
                })?;
                for (i, (o, w)) in ours.iter().zip(&want).enumerate() {
                    let err = max_rel_err(o, w);
                    assert!(err <= tol, "{dtype:?} {shape:?} relu={relu} output/grad #{i}: error {err:e}");
                }
            }
        }
    }
    Ok(())
}

/// Synchronised BatchNorm (`sync_bn`): P ranks (threads exchanging through memory), each passing its rows of the
/// batch, produce exactly one process's rows of the output and of dx, and dγ, dβ shares that sum to its dγ, dβ —
/// the forward's statistics and the backward's (Σdz, Σdz·x) are the whole batch's. f64, 1e-12 (only the order of
/// the sums differs); 2 and 3 ranks, [B, C] and [B, C, H, W], with and without the ReLU.
#[test]
fn synchronised_over_ranks_equals_one_process_on_the_whole_batch() -> Result<()> {
    use ssl_lang::collective::{memory::MemoryRank, Comm};
    let mut rng = StdRng::seed_from_u64(7);
    for ranks in [2, 3] {
        for shape in [&[6usize, 5][..], &[6, 3, 4, 4], &[12, 2, 3, 3]] {
            for relu in [false, true] {
                let (b, c) = (shape[0], channels(shape));
                let x = random(shape, &mut rng, DType::F64, 0.7)?;
                let (gamma, beta) =
                    (random(&[c], &mut rng, DType::F64, 1.0)?, random(&[c], &mut rng, DType::F64, 0.0)?);
                let r = random(shape, &mut rng, DType::F64, 0.0)?;
                let count = shape.iter().product::<usize>() / c;
                let bn = |x: &Tensor, g: &Tensor, b: &Tensor, ranks: Option<&Comm>| {
                    let stats = norm::channel_stats(x, ranks)?;
                    assert_eq!(stats.count, count, "the statistics count the whole batch");
                    norm::batch_norm(x, g, b, &stats, EPS, true, relu)
                };
                let want = with_grads(&x, &gamma, &beta, &r, |x, g, b| bn(x, g, b, None))?;
                let share = b / ranks;
                let per_rank: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
                    let handles: Vec<_> = MemoryRank::world(ranks)
                        .into_iter()
                        .enumerate()
                        .map(|(k, rank)| {
                            let (x, r, gamma, beta, bn) = (&x, &r, &gamma, &beta, &bn);
                            s.spawn(move || -> Result<Vec<Vec<f64>>> {
                                let comm = Comm::new(rank);
                                let (x, r) = (x.narrow(0, k * share, share)?, r.narrow(0, k * share, share)?);
                                with_grads(&x, gamma, beta, &r, |x, g, b| bn(x, g, b, Some(&comm)))
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect::<Result<_>>()
                })?;
                let rows = |i: usize| per_rank.iter().flat_map(|g| g[i].clone()).collect::<Vec<f64>>();
                let summed = |i: usize| (0..c).map(|ch| per_rank.iter().map(|g| g[i][ch]).sum()).collect::<Vec<f64>>();
                let got = [rows(0), rows(1), summed(2), summed(3)];
                for (i, (o, w)) in got.iter().zip(&want).enumerate() {
                    let err = max_rel_err(o, w);
                    assert!(err <= 1e-12, "{ranks} ranks {shape:?} relu={relu} output/grad #{i}: error {err:e}");
                }
            }
        }
    }
    Ok(())
}

/// Eval mode (fixed statistics): the gradient does not flow through the statistics.
#[test]
fn eval_mode_matches_candle_autodiff() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2);
    for shape in SHAPES {
        let c = channels(shape);
        let x = random(shape, &mut rng, DType::F64, 0.3)?;
        let (gamma, beta) = (random(&[c], &mut rng, DType::F64, 1.0)?, random(&[c], &mut rng, DType::F64, 0.0)?);
        let mean = random(&[c], &mut rng, DType::F64, 0.0)?;
        let var = random(&[c], &mut rng, DType::F64, 1.5)?;
        let stats = ChannelStats::running(values(&mean)?, values(&var)?);
        let r = random(shape, &mut rng, DType::F64, 0.0)?;
        let ours = with_grads(&x, &gamma, &beta, &r, |x, g, b| norm::batch_norm(x, g, b, &stats, EPS, false, true))?;
        let want = with_grads(&x, &gamma, &beta, &r, |x, g, b| reference(x, g, b, Some((&mean, &var)), true))?;
        for (i, (o, w)) in ours.iter().zip(&want).enumerate() {
            assert!(max_rel_err(o, w) <= 1e-12, "{shape:?} #{i}: {:e}", max_rel_err(o, w));
        }
    }
    Ok(())
}

/// The statistics: mean and biased variance per channel.
#[test]
fn channel_stats_are_exact() -> Result<()> {
    // Two images, two pixels, two channels: channel 0 holds 1, 2, 5, 8; channel 1 holds −1, −1, −1, −1.
    let x = Tensor::from_vec(vec![1.0f64, -1.0, 2.0, -1.0, 5.0, -1.0, 8.0, -1.0], (2, 1, 2, 2), &Device::Cpu)?;
    let s = norm::channel_stats(&x, None)?;
    assert_eq!(s.mean, vec![4.0, -1.0]);
    assert_eq!(s.var, vec![7.5, 0.0]);
    Ok(())
}

/// relu(a + b) and its gradient (the same masked gradient to both operands) equal candle's.
#[test]
fn add_relu_matches_candle_autodiff() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in [DType::F64, DType::F32] {
        for shape in [&[1usize, 1][..], &[3, 4, 5, 5], &[70_000]] {
            let (a, b, r) = (
                random(shape, &mut rng, dtype, 0.0)?,
                random(shape, &mut rng, dtype, 0.0)?,
                random(shape, &mut rng, dtype, 0.0)?,
            );
            let run = |fused: bool| -> Result<Vec<Vec<f64>>> {
                let (av, bv) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
                let y = if fused {
                    norm::add_relu(av.as_tensor(), bv.as_tensor())?
                } else {
                    (av.as_tensor() + bv.as_tensor())?.relu()?
                };
                let g = (&y * &r)?.sum_all()?.backward()?;
                Ok(vec![values(&y)?, values(g.get(av.as_tensor()).unwrap())?, values(g.get(bv.as_tensor()).unwrap())?])
            };
            assert_eq!(run(true)?, run(false)?, "{dtype:?} {shape:?}");
        }
    }
    assert!(norm::add_relu(&Tensor::zeros(3, DType::F32, &Device::Cpu)?, &Tensor::zeros(4, DType::F32, &Device::Cpu)?)
        .is_err());
    Ok(())
}

/// The parallel `a + b` equals candle's add bit for bit, in both float types and across the parallel split (70,000
/// elements span several tasks); mismatched shapes are an error.
#[test]
fn add_matches_candle() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    for dtype in [DType::F64, DType::F32] {
        for shape in [&[1usize][..], &[3, 4, 5, 5], &[70_000]] {
            let (a, b) = (random(shape, &mut rng, dtype, 0.0)?, random(shape, &mut rng, dtype, 0.0)?);
            assert_eq!(values(&norm::add(&a, &b)?)?, values(&(&a + &b)?)?, "{dtype:?} {shape:?}");
        }
    }
    let dev = Device::Cpu;
    assert!(norm::add(&Tensor::zeros(3, DType::F32, &dev)?, &Tensor::zeros(4, DType::F32, &dev)?).is_err());
    Ok(())
}

/// `masked_sum(a, b, y)` — two gradients summed through the ReLU whose output is y — equals candle's
/// (a + b)·[y > 0] bit for bit, in both float types and across the parallel split (y = 0 masks, as the ReLU's
/// gradient at 0 is 0); mismatched shapes are an error.
#[test]
fn masked_sum_matches_candle() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(6);
    for dtype in [DType::F64, DType::F32] {
        for shape in [&[1usize][..], &[3, 4, 5, 5], &[70_000]] {
            let (a, b) = (random(shape, &mut rng, dtype, 0.0)?, random(shape, &mut rng, dtype, 0.0)?);
            let y = random(shape, &mut rng, dtype, 0.0)?.relu()?;
            let want = ((&a + &b)? * y.gt(0.0)?.to_dtype(dtype)?)?;
            assert_eq!(values(&norm::masked_sum(&a, &b, &y)?)?, values(&want)?, "{dtype:?} {shape:?}");
        }
    }
    let (three, four) = (Tensor::zeros(3, DType::F32, &Device::Cpu)?, Tensor::zeros(4, DType::F32, &Device::Cpu)?);
    assert!(norm::masked_sum(&three, &three, &four).is_err());
    assert!(norm::masked_sum(&three, &four, &three).is_err());
    Ok(())
}

/// The train-mode gradient against central finite differences of L = Σ y·r in f64 (h = 1e-6, tolerance 1e-7
/// relative to the largest gradient), for x, γ and β, with the ReLU.
#[test]
fn train_mode_gradient_matches_finite_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    let shape = [3usize, 2, 3, 2];
    let x = random(&shape, &mut rng, DType::F64, 0.5)?;
    let (gamma, beta) = (random(&[2], &mut rng, DType::F64, 1.0)?, random(&[2], &mut rng, DType::F64, 0.2)?);
    let r = random(&shape, &mut rng, DType::F64, 0.0)?;
    let loss = |x: &Tensor, g: &Tensor, b: &Tensor| -> Result<f64> {
        let y = norm::batch_norm(x, g, b, &norm::channel_stats(x, None)?, EPS, true, true)?;
        (y * &r)?.sum_all()?.to_scalar::<f64>()
    };
    let analytic = with_grads(&x, &gamma, &beta, &r, |x, g, b| {
        norm::batch_norm(x, g, b, &norm::channel_stats(x, None)?, EPS, true, true)
    })?;
    let h = 1e-6;
    for (arg, base) in [&x, &gamma, &beta].into_iter().enumerate() {
        let v = values(base)?;
        let numeric: Vec<f64> = (0..v.len())
            .map(|i| {
                let at = |d: f64| -> Result<f64> {
                    let mut w = v.clone();
                    w[i] += d;
                    let t = Tensor::from_vec(w, base.shape(), &Device::Cpu)?;
                    match arg {
                        0 => loss(&t, &gamma, &beta),
                        1 => loss(&x, &t, &beta),
                        _ => loss(&x, &gamma, &t),
                    }
                };
                Ok((at(h)? - at(-h)?) / (2.0 * h))
            })
            .collect::<Result<_>>()?;
        let err = max_rel_err(&analytic[arg + 1], &numeric);
        assert!(err <= 1e-7, "argument {arg}: error {err:e}");
    }
    Ok(())
}

/// Outputs and gradients are bit-identical on one thread and on several: partial sums are grouped by shape, not by
/// thread.
#[test]
fn results_do_not_depend_on_the_thread_count() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let shape = [64usize, 12, 12, 16];
    let x = random(&shape, &mut rng, DType::F32, 0.1)?;
    let (gamma, beta) = (random(&[16], &mut rng, DType::F32, 1.0)?, random(&[16], &mut rng, DType::F32, 0.0)?);
    let r = random(&shape, &mut rng, DType::F32, 0.0)?;
    let run = || {
        with_grads(&x, &gamma, &beta, &r, |x, g, b| {
            norm::batch_norm(x, g, b, &norm::channel_stats(x, None)?, EPS, true, true)
        })
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a thread pool").install(run)?;
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a thread pool").install(run)?;
    assert_eq!(one, three);
    Ok(())
}

/// Shape errors are errors, not panics.
#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 4, 4, 3), DType::F32, &dev)?;
    let stats = norm::channel_stats(&x, None)?;
    let (g3, g2) = (Tensor::ones(3, DType::F32, &dev)?, Tensor::ones(2, DType::F32, &dev)?);
    assert!(norm::batch_norm(&x, &g2, &g3, &stats, EPS, true, false).is_err());
    assert!(norm::channel_stats(&Tensor::zeros((2, 3, 4), DType::F32, &dev)?, None).is_err());
    let short = ChannelStats::running(vec![0.0; 2], vec![1.0; 2]);
    assert!(norm::batch_norm(&x, &g3, &g3, &short, EPS, true, false).is_err());
    Ok(())
}
