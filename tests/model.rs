//! The Siamese model: shapes, BatchNorm semantics, gradients against finite differences, parameter count, EMA
//! target, initialisation, checkpoints, bad input; and (ignored, run by hand) the forward+backward timing.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::check::recipe::{Depth, Encoder, Mlp, Recipe, Stem};
use ssl_lang::data::idx;
use ssl_lang::nn::export::{to_torchvision, torchvision_name};
use ssl_lang::nn::layers::{
    batch_norm_eval, batch_norm_train, from_map_layout, global_avg_pool, linear, to_map_layout, BN_EPS, BN_MOMENTUM,
};
use ssl_lang::nn::{LayerImpl, Outputs, ParamKind, SiameseNet, Target};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The network's conv2d layer on an NCHW map, in and out of the layout `layers` keeps maps in.
fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize, layers: LayerImpl) -> Result<Tensor> {
    let y = ssl_lang::nn::layers::conv2d(&to_map_layout(x, layers)?, w, stride, pad, layers, &Arc::default())?;
    from_map_layout(&y, layers)?.contiguous()
}

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    // Uniform noise with unit variance is enough for these tests and keeps them independent of the model's sampler.
    let data: Vec<f64> = (0..n).map(|_| rng.gen_range(-3f64.sqrt()..3f64.sqrt())).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn tiny_net(predictor: bool) -> Result<SiameseNet> {
    let enc = Encoder::Mini { widths: vec![2, 3], blocks: 1 };
    let proj = Mlp::new(4, 3);
    let pred = Mlp::new(5, 3);
    SiameseNet::new(idx::SHAPE, &enc, &proj, predictor.then_some(&pred), 7, DType::F64, &Device::Cpu)
}

// ---------------------------------------------------------------------------------------------------------------
// Shapes.

#[test]
fn default_network_shapes() -> Result<()> {
    let net = SiameseNet::from_recipe(&Recipe::default(), idx::SHAPE, DType::F32, &Device::Cpu)?;
    assert_eq!((net.backbone_dim(), net.projection_dim(), net.has_predictor()), (128, 128, false));
    let out = net.forward(&randn(&[3, 1, 28, 28], 1, DType::F32)?, true)?;
    assert_eq!(out.backbone.dims(), [3, 128]);
    assert_eq!(out.projection.dims(), [3, 128]);
    assert!(out.prediction.is_none());
    let x = randn(&[1, 1, 28, 28], 2, DType::F32)?;
    let out = net.forward(&x, false)?;
    assert_eq!((out.backbone.dims(), out.projection.dims()), (&[1, 128][..], &[1, 128][..]));
    // Evaluation features: the eval-mode backbone, without a graph.
    let features = net.features(&x)?;
    assert_eq!(features.to_vec2::<f32>()?, out.backbone.to_vec2::<f32>()?);
    assert!(out.backbone.track_op() && !features.track_op());
    Ok(())
}

#[test]
fn custom_network_shapes_and_names() -> Result<()> {
    let enc = Encoder::Mini { widths: vec![8, 16, 24, 12], blocks: 2 };
    let net =
        SiameseNet::new(idx::SHAPE, &enc, &Mlp::new(32, 16), Some(&Mlp::new(20, 16)), 3, DType::F32, &Device::Cpu)?;
    for (b, train) in [(4, true), (1, false)] {
        let out = net.forward(&randn(&[b, 1, 28, 28], 5, DType::F32)?, train)?;
        assert_eq!(out.backbone.dims(), [b, 12]);
        assert_eq!(out.projection.dims(), [b, 16]);
        assert_eq!(out.prediction.as_ref().map(|p| p.dims().to_vec()), Some(vec![b, 16]));
    }
    let names: Vec<&str> = net.params().iter().map(|p| p.name.as_str()).collect();
    // Stage 1 keeps 8 channels at stride 1: no shortcut; every later stage's first block has one, its second none.
    assert!(!names.contains(&"encoder.stage1.block1.shortcut.conv.weight"));
    for s in 2..=4 {
        assert!(names.contains(&format!("encoder.stage{s}.block1.shortcut.conv.weight").as_str()));
        assert!(!names.contains(&format!("encoder.stage{s}.block2.shortcut.conv.weight").as_str()));
    }
    let shape = |n: &str| net.params().get(n).map(|p| p.var.dims().to_vec());
    assert_eq!(shape("encoder.stem.conv.weight"), Some(vec![8, 1, 3, 3]));
    assert_eq!(shape("encoder.stage4.block1.conv1.weight"), Some(vec![12, 24, 3, 3]));
    assert_eq!(shape("encoder.stage4.block1.shortcut.conv.weight"), Some(vec![12, 24, 1, 1]));
    assert_eq!(shape("projector.fc1.weight"), Some(vec![32, 12]));
    assert_eq!(shape("predictor.fc2.bias"), Some(vec![16]));
    assert!(net.params().get("projector.fc1.bias").is_none(), "the first MLP layer has no bias");
    let kind = |n: &str| net.params().get(n).map(|p| p.kind);
    assert_eq!(kind("encoder.stage2.block1.bn2.bias"), Some(ParamKind::Norm));
    assert_eq!(kind("predictor.fc2.bias"), Some(ParamKind::Bias));
    assert_eq!(kind("projector.fc2.weight"), Some(ParamKind::Weight));
    Ok(())
}

#[test]
fn default_parameter_count_matches_the_architecture() -> Result<()> {
    let net = SiameseNet::from_recipe(&Recipe::default(), idx::SHAPE, DType::F32, &Device::Cpu)?;
    let conv = |cin: usize, cout: usize, k: usize| cin * cout * k * k;
    let bn = |c: usize| 2 * c;
    let block = |cin: usize, cout: usize| {
        let shortcut = if cin != cout { conv(cin, cout, 1) + bn(cout) } else { 0 };
        conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout) + shortcut
    };
    let encoder = conv(1, 32, 3) + bn(32) + block(32, 32) + block(32, 64) + block(64, 128);
    let projector = 128 * 512 + bn(512) + 512 * 128 + 128;
    // 288 + 64 + 18 560 + 57 728 + 230 144 = 306 784 in the encoder, 132 224 in the projector.
    assert_eq!(encoder, 306_784);
    assert_eq!(projector, 132_224);
    assert_eq!(net.params().numel(), encoder + projector);
    // Two running-statistics vectors per BatchNorm: stem, 2 per block, 2 shortcuts, projector.
    assert_eq!(net.buffers().len(), 2 * (1 + 6 + 2 + 1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// BatchNorm.

/// Per-channel (mean, biased variance, unbiased variance) of [B, C, H, W] values, by plain loops.
fn channel_stats(x: &Tensor) -> Result<Vec<(f64, f64, f64)>> {
    let (b, c, h, w) = x.dims4()?;
    let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let n = (b * h * w) as f64;
    Ok((0..c)
        .map(|ch| {
            let vals: Vec<f64> =
                (0..b).flat_map(|i| (0..h * w).map(move |j| (i * c + ch) * h * w + j)).map(|k| v[k]).collect();
            let mean = vals.iter().sum::<f64>() / n;
            let ss = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
            (mean, ss / n, ss / (n - 1.0))
        })
        .collect())
}

#[test]
fn batch_norm_train_normalises_and_updates_running_stats_exactly() -> Result<()> {
    let dev = Device::Cpu;
    for kernels in [LayerImpl::Ours, LayerImpl::Candle] {
        let x = (randn(&[4, 3, 5, 5], 11, DType::F64)?.affine(2.0, 1.5))?;
        // The layer reads and writes maps in the layout of `kernels`; the checks read NCHW.
        let bn = |x: &Tensor, g: &Tensor, b: &Tensor, running: Option<(&mut Tensor, &mut Tensor)>| -> Result<Tensor> {
            let y = batch_norm_train(&to_map_layout(x, kernels)?, g, b, running, false, kernels, None)?.0;
            from_map_layout(&y, kernels)?.contiguous()
        };
        let (gamma, beta) = (Tensor::ones(3, DType::F64, &dev)?, Tensor::zeros(3, DType::F64, &dev)?);
        let (mut rm, mut rv) = (Tensor::new(&[0.5f64, -1.0, 2.0], &dev)?, Tensor::new(&[1.0f64, 2.0, 0.5], &dev)?);
        let (rm0, rv0) = (rm.to_vec1::<f64>()?, rv.to_vec1::<f64>()?);
        let y = bn(&x, &gamma, &beta, Some((&mut rm, &mut rv)))?;
        for (c, (mean, var, _)) in channel_stats(&y)?.into_iter().enumerate() {
            assert!(mean.abs() < 1e-4, "channel {c}: mean {mean}");
            assert!((var - 1.0).abs() < 1e-4, "channel {c}: var {var}");
        }
        let stats = channel_stats(&x)?;
        let (rm, rv) = (rm.to_vec1::<f64>()?, rv.to_vec1::<f64>()?);
        for (c, &(mean, _, unbiased)) in stats.iter().enumerate() {
            let want_m = (1.0 - BN_MOMENTUM) * rm0[c] + BN_MOMENTUM * mean;
            let want_v = (1.0 - BN_MOMENTUM) * rv0[c] + BN_MOMENTUM * unbiased;
            assert!((rm[c] - want_m).abs() < 1e-12, "running mean {c}: {} vs {want_m}", rm[c]);
            assert!((rv[c] - want_v).abs() < 1e-12, "running var {c}: {} vs {want_v}", rv[c]);
        }
        // γ and β scale and shift the normalised output.
        let (g2, b2) = (Tensor::new(&[2.0f64, 0.5, 3.0], &dev)?, Tensor::new(&[1.0f64, -1.0, 0.0], &dev)?);
        let y = bn(&x, &g2, &b2, None)?;
        for (c, (mean, var, _)) in channel_stats(&y)?.into_iter().enumerate() {
            let (g, b) = ([2.0, 0.5, 3.0][c], [1.0, -1.0, 0.0][c]);
            assert!((mean - b).abs() < 1e-4 && (var - g * g).abs() < 1e-3 * g * g, "channel {c}: {mean} {var}");
        }
    }
    Ok(())
}

#[test]
fn batch_norm_1d_and_eval_mode_known_values() -> Result<()> {
    let dev = Device::Cpu;
    for kernels in [LayerImpl::Ours, LayerImpl::Candle] {
        // One channel with values 1, 3: mean 2, biased var 1, unbiased var 2 → y = ±1/√(1 + eps).
        let x = Tensor::new(&[[1.0f64, 10.0], [3.0, 10.0]], &dev)?;
        let (gamma, beta) = (Tensor::ones(2, DType::F64, &dev)?, Tensor::zeros(2, DType::F64, &dev)?);
        let (mut rm, mut rv) = (Tensor::zeros(2, DType::F64, &dev)?, Tensor::ones(2, DType::F64, &dev)?);
        let y =
            batch_norm_train(&x, &gamma, &beta, Some((&mut rm, &mut rv)), false, kernels, None)?.0.to_vec2::<f64>()?;
        let s = 1.0 / (1.0 + BN_EPS).sqrt();
        assert!((y[0][0] + s).abs() < 1e-15 && (y[1][0] - s).abs() < 1e-15, "{y:?}");
        assert_eq!((y[0][1], y[1][1]), (0.0, 0.0), "a constant channel normalises to β");
        assert_eq!(rm.to_vec1::<f64>()?, vec![0.2, 1.0]);
        let rv = rv.to_vec1::<f64>()?;
        assert!((rv[0] - 1.1).abs() < 1e-15 && (rv[1] - 0.9).abs() < 1e-15, "{rv:?}");
        // Eval: (x − mean)/√(var + eps)·γ + β with the running statistics.
        let (mean, var) = (Tensor::new(&[2.0f64, 0.0], &dev)?, Tensor::new(&[4.0f64, 1.0], &dev)?);
        let (g, b) = (Tensor::new(&[3.0f64, 1.0], &dev)?, Tensor::new(&[0.5f64, -1.0], &dev)?);
        let y = batch_norm_eval(&x, &g, &b, &mean, &var, false, kernels)?.0.to_vec2::<f64>()?;
        let want = [
            [(1.0 - 2.0) / (4.0 + BN_EPS).sqrt() * 3.0 + 0.5, 10.0 / (1.0 + BN_EPS).sqrt() - 1.0],
            [(3.0 - 2.0) / (4.0 + BN_EPS).sqrt() * 3.0 + 0.5, 10.0 / (1.0 + BN_EPS).sqrt() - 1.0],
        ];
        for (r, w) in y.iter().zip(&want) {
            for (a, b) in r.iter().zip(w) {
                assert!((a - b).abs() < 1e-14, "{y:?} vs {want:?}");
            }
        }
        // A single value per channel has no variance: an error, as in torch, not a NaN or a panic.
        let one = Tensor::new(&[[1.0f64, 2.0]], &dev)?;
        assert!(batch_norm_train(&one, &gamma, &beta, None, false, kernels, None).is_err());
        assert!(batch_norm_train(
            &Tensor::zeros((2, 3, 4), DType::F64, &dev)?,
            &gamma,
            &beta,
            None,
            false,
            kernels,
            None
        )
        .is_err());
    }
    Ok(())
}

#[test]
fn small_layers_known_values() -> Result<()> {
    let dev = Device::Cpu;
    // linear: x·wᵀ + b.
    let x = Tensor::new(&[[1.0f64, 2.0]], &dev)?;
    let w = Tensor::new(&[[1.0f64, 0.0], [2.0, -1.0], [0.5, 0.5]], &dev)?;
    let b = Tensor::new(&[0.0f64, 1.0, -1.0], &dev)?;
    assert_eq!(linear(&x, &w, Some(&b))?.to_vec2::<f64>()?, vec![vec![1.0, 1.0, 0.5]]);
    assert_eq!(linear(&x, &w, None)?.to_vec2::<f64>()?, vec![vec![1.0, 0.0, 1.5]]);
    // conv2d with a 3×3 box kernel, padding 1, stride 2 on a 4×4 ramp: sums of the in-bounds neighbourhoods.
    let img = Tensor::arange(0.0f64, 16.0, &dev)?.reshape((1, 1, 4, 4))?;
    let k = Tensor::ones((1, 1, 3, 3), DType::F64, &dev)?;
    let y = conv2d(&img, &k, 2, 1, LayerImpl::Ours)?;
    assert_eq!(y.dims(), [1, 1, 2, 2]);
    // (0,0): 0+1+4+5; (0,1): 1+2+3+5+6+7; (1,0): 4+5+8+9+12+13; (1,1): 5+6+7+9+10+11+13+14+15.
    assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, vec![10.0, 24.0, 51.0, 90.0]);
    for layers in [LayerImpl::Ours, LayerImpl::Candle] {
        let pooled = global_avg_pool(&to_map_layout(&img, layers)?, layers)?;
        assert_eq!(pooled.to_vec2::<f64>()?, vec![vec![7.5]], "{layers:?}");
    }
    Ok(())
}

/// A direct NCHW convolution by loops: the oracle for `conv2d`.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f64],
    w: &[f64],
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let oh = (h + 2 * p - k) / s + 1;
    let mut out = vec![0.0; b * co * oh * oh];
    for n in 0..b {
        for o in 0..co {
            for i in 0..oh {
                for j in 0..oh {
                    let mut acc = 0.0;
                    for c in 0..ci {
                        for ki in 0..k {
                            for kj in 0..k {
                                let (y, xx) = ((i * s + ki) as isize - p as isize, (j * s + kj) as isize - p as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < h {
                                    let xi = ((n * ci + c) * h + y as usize) * h + xx as usize;
                                    acc += x[xi] * w[((o * ci + c) * k + ki) * k + kj];
                                }
                            }
                        }
                    }
                    out[((n * co + o) * oh + i) * oh + j] = acc;
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_a_direct_convolution_including_c_eq_h_eq_w() -> Result<()> {
    // candle 0.9.2 alone gets C == H == W wrong (huggingface/candle#3404); `conv2d` must not.
    let cases = [
        (3, 3, 3, 3, 3, 1, 1),
        (2, 4, 5, 4, 3, 2, 1),
        (2, 8, 8, 8, 3, 1, 1),
        (2, 4, 6, 4, 1, 2, 0),
        (3, 2, 3, 6, 3, 2, 1),
    ];
    for kernels in [LayerImpl::Ours, LayerImpl::Candle] {
        for (seed, (b, ci, co, h, k, s, p)) in cases.into_iter().enumerate() {
            let x = randn(&[b, ci, h, h], 70 + seed as u64, DType::F64)?;
            let w = randn(&[co, ci, k, k], 80 + seed as u64, DType::F64)?;
            let got = conv2d(&x, &w, s, p, kernels)?.flatten_all()?.to_vec1::<f64>()?;
            let want = naive_conv(&x.flatten_all()?.to_vec1()?, &w.flatten_all()?.to_vec1()?, b, ci, co, h, k, s, p);
            let err = got.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                got.len() == want.len() && err < 1e-12,
                "{kernels:?} case {:?}: error {err:e}",
                (b, ci, co, h, k, s, p)
            );
            // f32 goes through the same path.
            let got32 = conv2d(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?, s, p, kernels)?;
            let got32 = got32.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let err32 = got32.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err32 < 1e-4, "f32 case {:?}: error {err32:e}", (b, ci, co, h, k, s, p));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Gradients against central finite differences, in f64.
//
// Step h = 1e-5: truncation error ~h²·f'''/6 ≈ 1e-10 and rounding ≈ 1e-16·|L|/h ≈ 1e-10, so each parameter tensor's
// largest error must stay below 1e-6 relative to its largest gradient entry (plus 1e-9 absolute for entries that are
// zero by symmetry, e.g. a BatchNorm input gradient summed over a channel).

const H: f64 = 1e-5;
const REL_TOL: f64 = 1e-6;

fn assert_grad_matches(name: &str, analytic: &[f64], numeric: &[f64]) {
    let scale = numeric.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = analytic.iter().zip(numeric).fold(0.0f64, |m, (a, n)| m.max((a - n).abs()));
    assert!(err <= REL_TOL * scale + 1e-9, "{name}: max error {err:e} against gradient scale {scale:e}");
}

/// Central differences of `loss` in every entry of `var`.
fn numeric_grad(var: &Var, loss: &dyn Fn() -> Result<f64>) -> Result<Vec<f64>> {
    let base = var.as_detached_tensor().copy()?;
    let shape = base.dims().to_vec();
    let mut v = base.flatten_all()?.to_vec1::<f64>()?;
    let mut out = Vec::with_capacity(v.len());
    for i in 0..v.len() {
        let x = v[i];
        v[i] = x + H;
        var.set(&Tensor::from_slice(&v, shape.as_slice(), &Device::Cpu)?)?;
        let up = loss()?;
        v[i] = x - H;
        var.set(&Tensor::from_slice(&v, shape.as_slice(), &Device::Cpu)?)?;
        let down = loss()?;
        v[i] = x;
        out.push((up - down) / (2.0 * H));
    }
    var.set(&base)?;
    Ok(out)
}

#[test]
fn batch_norm_gradient_matches_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    for kernels in [LayerImpl::Ours, LayerImpl::Candle] {
        for shape in [&[3usize, 2, 3, 2][..], &[5, 3][..]] {
            let c = shape[1];
            let x = Var::from_tensor(&randn(shape, 21, DType::F64)?)?;
            let gamma = Var::from_tensor(&(randn(&[c], 22, DType::F64)? + 1.5)?)?;
            let beta = Var::from_tensor(&randn(&[c], 23, DType::F64)?)?;
            let r = randn(shape, 24, DType::F64)?; // a random cotangent, so no gradient is zero by symmetry
            let (rm, rv) = (Tensor::zeros(c, DType::F64, &dev)?, Tensor::ones(c, DType::F64, &dev)?);
            for train in [true, false] {
                let loss_t = || -> Result<Tensor> {
                    let y = if train {
                        batch_norm_train(&x, &gamma, &beta, None, false, kernels, None)?.0
                    } else {
                        batch_norm_eval(&x, &gamma, &beta, &rm, &rv, false, kernels)?.0
                    };
                    (y * &r)?.sum_all()
                };
                let grads = loss_t()?.backward()?;
                let loss = || loss_t()?.to_scalar::<f64>();
                for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
                    let analytic = grads.get(v).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
                    assert_grad_matches(
                        &format!("{name} {shape:?} train={train}"),
                        &analytic,
                        &numeric_grad(v, &loss)?,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Σ backbone⊙R₁ + Σ projection⊙R₂ (+ Σ prediction⊙R₃): every output carries a random cotangent.
fn weighted_loss(out: &Outputs, r: &[Tensor; 3]) -> Result<Tensor> {
    let mut l = ((&out.backbone * &r[0])?.sum_all()? + (&out.projection * &r[1])?.sum_all()?)?;
    if let Some(p) = &out.prediction {
        l = (l + (p * &r[2])?.sum_all()?)?;
    }
    Ok(l)
}

#[test]
fn network_gradient_matches_finite_differences() -> Result<()> {
    // widths [2, 3]: stem, a stride-1 block and a stride-2 block with a 1×1 shortcut; projector and predictor.
    assert_gradient_matches_finite_differences(&tiny_net(true)?, 3)
}

/// A three-layer projector ending in a BatchNorm (`mlp(layers = 3, last_bn = true)`): its names and shapes, and the
/// whole network's gradient against finite differences.
#[test]
fn three_layer_projector_with_a_last_batch_norm() -> Result<()> {
    let enc = Encoder::Mini { widths: vec![2, 3], blocks: 1 };
    let proj = Mlp { hidden: 4, out: 3, layers: 3, last_bn: true };
    let net = SiameseNet::new(idx::SHAPE, &enc, &proj, None, 7, DType::F64, &Device::Cpu)?;
    let heads: Vec<(String, Vec<usize>)> = net
        .params()
        .iter()
        .filter(|p| p.name.starts_with("projector."))
        .map(|p| (p.name.clone(), p.var.as_tensor().dims().to_vec()))
        .collect();
    let want = [
        ("projector.fc1.weight", vec![4, 3]),
        ("projector.bn.weight", vec![4]),
        ("projector.bn.bias", vec![4]),
        ("projector.fc2.weight", vec![4, 4]),
        ("projector.bn2.weight", vec![4]),
        ("projector.bn2.bias", vec![4]),
        ("projector.fc3.weight", vec![3, 4]),
        ("projector.bn_out.weight", vec![3]),
        ("projector.bn_out.bias", vec![3]),
    ];
    assert_eq!(heads, want.map(|(n, s)| (n.to_string(), s)));
    // The last BatchNorm (train mode) leaves each output feature with batch mean 0 (γ = 1, β = 0 at init).
    let out = net.forward(&randn(&[4, 1, 6, 6], 35, DType::F64)?, true)?;
    let means = out.projection.mean(0)?.to_vec1::<f64>()?;
    assert!(means.iter().all(|m| m.abs() < 1e-12), "{means:?}");
    assert_gradient_matches_finite_differences(&net, 4)
}

/// Every parameter gradient of Σ outputs⊙R (R random) through `net` on `batch` random images, in train and eval
/// mode, against central differences.
fn assert_gradient_matches_finite_differences(net: &SiameseNet, batch: usize) -> Result<()> {
    let x = randn(&[batch, 1, 6, 6], 31, DType::F64)?;
    let (b, p) = (net.backbone_dim(), net.projection_dim());
    let r =
        [randn(&[batch, b], 32, DType::F64)?, randn(&[batch, p], 33, DType::F64)?, randn(&[batch, p], 34, DType::F64)?];
    for train in [true, false] {
        let out = net.forward(&x, train)?;
        let grads = net.backward(&weighted_loss(&out, &r)?, vec![out])?;
        let loss = || weighted_loss(&net.forward(&x, train)?, &r)?.to_scalar::<f64>();
        for p in net.params() {
            let Some(g) = grads.get(&p.var) else { panic!("no gradient for {}", p.name) };
            let analytic = g.flatten_all()?.to_vec1::<f64>()?;
            assert_grad_matches(&format!("{} train={train}", p.name), &analytic, &numeric_grad(&p.var, &loss)?);
        }
    }
    Ok(())
}

/// Our encoder backward (recorded forward, fused kernels) against candle's ops and autodiff on the default
/// architecture with a predictor, f64, two forward passes sharing the parameters (as the two views of a step do):
/// every parameter gradient agrees to 1e-9 relative to its largest entry. It switches the process-wide kernels; a pass
/// reads them once, so other tests running meanwhile stay consistent (and pass on either).
#[test]
fn our_backward_matches_candle_autodiff_on_the_default_network() -> Result<()> {
    let recipe = Recipe { predictor: Some(Mlp::new(16, 128)), ..Default::default() };
    let (x1, x2) = (randn(&[3, 1, 28, 28], 81, DType::F64)?, randn(&[3, 1, 28, 28], 82, DType::F64)?);
    let r = [randn(&[3, 128], 83, DType::F64)?, randn(&[3, 128], 84, DType::F64)?, randn(&[3, 128], 85, DType::F64)?];
    assert_ours_match_candle("default", &recipe, idx::SHAPE, [&x1, &x2], &r)
}

/// Both implementations from the same seed (the same initial network) on two passes `x` sharing the parameters:
/// every parameter gradient of Σ outputs⊙`r` agrees to 1e-9 relative to its largest entry.
fn assert_ours_match_candle(
    what: &str,
    recipe: &Recipe,
    shape: ssl_lang::data::Shape,
    x: [&Tensor; 2],
    r: &[Tensor; 3],
) -> Result<()> {
    let mut grads = Vec::new();
    for choice in [LayerImpl::Ours, LayerImpl::Candle] {
        let net = SiameseNet::from_recipe(recipe, shape, DType::F64, &Device::Cpu)?.with_layers(choice);
        let (o1, o2) = (net.forward(x[0], true)?, net.forward(x[1], true)?);
        let loss = (weighted_loss(&o1, r)? + weighted_loss(&o2, r)?)?;
        let store = net.backward(&loss, vec![o1, o2])?;
        let mut all = Vec::new();
        for p in net.params() {
            let Some(g) = store.get(&p.var) else { panic!("{what}: no gradient for {} with {choice:?}", p.name) };
            all.push((p.name.clone(), g.flatten_all()?.to_vec1::<f64>()?));
        }
        grads.push(all);
    }
    for ((name, ours), (_, candle)) in grads[0].iter().zip(&grads[1]) {
        let scale = candle.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let err = ours.iter().zip(candle).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
        assert!(err <= 1e-9, "{what} {name}: relative error {err:e}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Target network.

#[test]
fn target_starts_as_a_copy_and_ema_update_is_exact() -> Result<()> {
    let net = tiny_net(true)?;
    let mut target = Target::new(&net)?;
    // The predictor is online-only.
    let n_target = net.params().iter().filter(|p| !p.name.starts_with("predictor.")).count();
    assert_eq!(target.params().count(), n_target);
    let x = randn(&[4, 1, 6, 6], 41, DType::F64)?;
    // Eval first: the online train-mode forward moves the running statistics the target copied.
    for train in [false, true] {
        let (o, t) = (net.forward(&x, train)?, target.forward_no_grad(&x, train)?);
        assert_eq!(o.projection.to_vec2::<f64>()?, t.projection.to_vec2::<f64>()?, "train={train}");
        assert_eq!(o.backbone.to_vec2::<f64>()?, t.backbone.to_vec2::<f64>()?, "train={train}");
        assert!(t.prediction.is_none());
        assert!(!t.projection.track_op(), "the target builds no graph");
    }
    // Move the online network: new parameter values and, through a train-mode forward, new running statistics.
    for (i, p) in net.params().iter().enumerate() {
        let moved = (randn(p.var.dims(), 100 + i as u64, DType::F64)? + p.var.as_detached_tensor())?;
        p.var.set(&moved)?;
    }
    net.forward(&x, true)?;
    let before: Vec<(String, Vec<f64>)> =
        target.params().map(|(n, t)| Ok((n.to_string(), t.flatten_all()?.to_vec1::<f64>()?))).collect::<Result<_>>()?;
    let m = 0.75;
    target.ema_update(&net, m)?;
    for ((name, t), (old_name, old)) in target.params().zip(&before) {
        assert_eq!(name, old_name);
        let online = net.params().get(name).expect("online").var.flatten_all()?.to_vec1::<f64>()?;
        let want: Vec<f64> = old.iter().zip(&online).map(|(t, o)| m * t + (1.0 - m) * o).collect();
        assert_eq!(t.flatten_all()?.to_vec1::<f64>()?, want, "{name}");
    }
    let online_buffers = net.buffers();
    let target_buffers = target.buffers();
    assert_eq!(target_buffers.len(), online_buffers.len() - 2, "the predictor's BatchNorm stays online");
    for (name, t) in target_buffers.iter() {
        let o = online_buffers.get(name).expect("online buffer");
        assert_eq!(t.to_vec1::<f64>()?, o.to_vec1::<f64>()?, "{name} is copied");
    }
    // m = 1 freezes the target; m = 0 copies the online network.
    let frozen = target.to_map();
    target.ema_update(&net, 1.0)?;
    for (name, t) in target.params() {
        assert_eq!(t.flatten_all()?.to_vec1::<f64>()?, frozen[name].flatten_all()?.to_vec1::<f64>()?);
    }
    target.ema_update(&net, 0.0)?;
    for (name, t) in target.params() {
        let o = net.params().get(name).expect("online").var.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(t.flatten_all()?.to_vec1::<f64>()?, o);
    }
    assert!(target.ema_update(&net, 1.5).is_err());
    assert!(target.ema_update(&tiny_net(false)?, 0.5).is_ok(), "same encoder and projector, no predictor");
    let other = SiameseNet::new(
        idx::SHAPE,
        &Encoder::Mini { widths: vec![2, 4], blocks: 1 },
        &Mlp::new(4, 3),
        None,
        7,
        DType::F64,
        &Device::Cpu,
    )?;
    assert!(target.ema_update(&other, 0.5).is_err(), "another architecture");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Initialisation, checkpoints, bad input.

#[test]
fn initialisation_is_seeded_and_follows_torch() -> Result<()> {
    let recipe = Recipe::default();
    let a = SiameseNet::from_recipe(&recipe, idx::SHAPE, DType::F32, &Device::Cpu)?;
    let b = SiameseNet::from_recipe(&recipe, idx::SHAPE, DType::F32, &Device::Cpu)?;
    let c = SiameseNet::new(idx::SHAPE, &recipe.encoder, &recipe.projector, None, 1, DType::F32, &Device::Cpu)?;
    let values = |n: &SiameseNet, name: &str| -> Result<Vec<f32>> {
        n.params().get(name).expect("param").var.flatten_all()?.to_vec1::<f32>()
    };
    let conv = "encoder.stage3.block1.conv2.weight"; // 128·128·9 = 147 456 values
    assert_eq!(values(&a, conv)?, values(&b, conv)?, "same seed, same weights");
    assert_ne!(values(&a, conv)?, values(&c, conv)?, "another seed, other weights");
    // Kaiming normal, fan_out = 128·9: std √(2/1152) = 0.041667; the sample std of 147 456 draws is within 1%.
    let w = values(&a, conv)?;
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let want = (2.0f64 / 1152.0).sqrt();
    assert!((std - want).abs() < 0.01 * want && mean.abs() < 0.01 * want, "std {std}, mean {mean}");
    // Linear: U(−1/√fan_in, 1/√fan_in) for weight and bias; variance bound²/3.
    for (name, fan_in) in
        [("projector.fc1.weight", 128.0f64), ("projector.fc2.weight", 512.0), ("projector.fc2.bias", 512.0)]
    {
        let v = values(&a, name)?;
        let bound = 1.0 / fan_in.sqrt();
        assert!(v.iter().all(|&x| (x as f64).abs() <= bound), "{name} within ±{bound}");
        let max = v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        assert!(max > 0.9 * bound, "{name} fills its range: max {max}");
    }
    assert!(values(&a, "encoder.stem.bn.weight")?.iter().all(|&x| x == 1.0));
    assert!(values(&a, "encoder.stem.bn.bias")?.iter().all(|&x| x == 0.0));
    let buffers = a.buffers();
    assert!(buffers.get("encoder.stem.bn.running_var").expect("var").to_vec1::<f32>()?.iter().all(|&x| x == 1.0));
    Ok(())
}

#[test]
fn checkpoint_maps_round_trip() -> Result<()> {
    let a = tiny_net(true)?;
    let x = randn(&[4, 1, 6, 6], 51, DType::F64)?;
    a.forward(&x, true)?; // running statistics move away from their initial values
    let b = SiameseNet::new(
        idx::SHAPE,
        &Encoder::Mini { widths: vec![2, 3], blocks: 1 },
        &Mlp::new(4, 3),
        Some(&Mlp::new(5, 3)),
        99,
        DType::F64,
        &Device::Cpu,
    )?;
    b.params().load(&a.params().to_map()?)?;
    b.load_buffers(&a.buffers().to_map())?;
    let (oa, ob) = (a.forward(&x, false)?, b.forward(&x, false)?);
    assert_eq!(oa.prediction.expect("a").to_vec2::<f64>()?, ob.prediction.expect("b").to_vec2::<f64>()?);
    let mut t = Target::new(&b)?;
    let saved = Target::new(&a)?.to_map();
    t.load(&saved)?;
    assert_eq!(
        t.forward_no_grad(&x, false)?.projection.to_vec2::<f64>()?,
        a.forward(&x, false)?.projection.to_vec2::<f64>()?
    );
    // Missing or misshapen entries are errors that change nothing.
    let mut partial = a.params().to_map()?;
    partial.remove("projector.fc2.bias");
    assert!(b.params().load(&partial).is_err());
    let mut wrong = a.params().to_map()?;
    wrong.insert("projector.fc2.bias".into(), Tensor::zeros(7, DType::F64, &Device::Cpu)?);
    assert!(b.params().load(&wrong).is_err());
    assert!(b.load_buffers(&Default::default()).is_err());
    Ok(())
}

#[test]
fn bad_input_is_an_error_not_a_panic() -> Result<()> {
    let net = tiny_net(true)?;
    let dev = Device::Cpu;
    assert!(net.forward(&Tensor::zeros((2, 3, 8, 8), DType::F64, &dev)?, true).is_err(), "3 channels");
    assert!(net.forward(&Tensor::zeros((2, 8, 8), DType::F64, &dev)?, true).is_err(), "rank 3");
    assert!(net.forward(&Tensor::zeros((2, 1, 8, 8), DType::F32, &dev)?, true).is_err(), "f32 into f64");
    assert!(net.forward(&Tensor::zeros((0, 1, 8, 8), DType::F64, &dev)?, false).is_err(), "empty batch");
    // Batch 1 in train mode: the projector's BatchNorm1d sees one value per channel.
    assert!(net.forward(&Tensor::zeros((1, 1, 8, 8), DType::F64, &dev)?, true).is_err());
    assert!(net.forward(&Tensor::zeros((1, 1, 8, 8), DType::F64, &dev)?, false).is_ok());
    let bad = |widths: Vec<usize>, blocks: usize, hidden: usize| {
        SiameseNet::new(idx::SHAPE, &Encoder::Mini { widths, blocks }, &Mlp::new(hidden, 4), None, 0, DType::F32, &dev)
            .is_err()
    };
    assert!(bad(vec![], 1, 4) && bad(vec![4, 0], 1, 4) && bad(vec![4, 4], 0, 4) && bad(vec![4, 4], 1, 0));
    let enc = Encoder::Mini { widths: vec![4], blocks: 1 };
    assert!(SiameseNet::new(idx::SHAPE, &enc, &Mlp::new(4, 4), None, 0, DType::U8, &dev).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Standard ResNets.

fn standard(depth: Depth, stem: Stem) -> Recipe {
    Recipe { encoder: Encoder::Standard { depth, stem }, ..Default::default() }
}

/// ResNet-18 and ResNet-50, exported under torchvision's names, have exactly the tensors (names and shapes) of
/// torchvision's own definitions but `fc.*` (the lists in tests/fixtures were written by torchvision 0.29.2 from
/// `models.resnetNN().state_dict()`), so `load_state_dict(strict=False)` misses only the classifier; with the CIFAR
/// stem only `conv1.weight` differs (3×3).
#[test]
fn standard_resnets_have_torchvision_names_and_shapes() -> Result<()> {
    let colour = ssl_lang::data::Shape::new(3, 32, 32);
    for (depth, fixture) in [
        (Depth::Resnet18, include_str!("fixtures/torchvision_resnet18.txt")),
        (Depth::Resnet50, include_str!("fixtures/torchvision_resnet50.txt")),
    ] {
        let want: BTreeMap<String, Vec<usize>> = fixture
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, shape) = l.split_once(' ').expect("name and shape");
                (name.to_string(), shape.split(',').filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect())
            })
            .collect();
        for stem in [Stem::Imagenet, Stem::Cifar] {
            let net = SiameseNet::from_recipe(&standard(depth, stem), colour, DType::F32, &Device::Cpu)?;
            let online: HashMap<String, Tensor> =
                net.params().iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
            let buffers: HashMap<String, Tensor> =
                net.buffers().iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
            let exported = to_torchvision(&online, &buffers, 7)?;
            let got: BTreeMap<String, Vec<usize>> =
                exported.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
            let mut want = want.clone();
            if stem == Stem::Cifar {
                want.insert("conv1.weight".into(), vec![64, 3, 3, 3]);
            }
            assert_eq!(got, want, "{depth:?} {stem:?}");
            assert_eq!(exported["layer1.0.bn1.num_batches_tracked"].to_scalar::<i64>()?, 7);
            // Nothing of the encoder is left out: every exported value is one of ours.
            let encoder = online.keys().chain(buffers.keys()).filter(|n| n.starts_with("encoder.")).count();
            assert_eq!(encoder + got.keys().filter(|n| n.ends_with("num_batches_tracked")).count(), got.len());
        }
    }
    assert_eq!(
        torchvision_name("encoder.stage3.block2.shortcut.bn.bias").as_deref(),
        Some("layer3.1.downsample.1.bias")
    );
    assert_eq!(torchvision_name("projector.fc1.weight"), None);
    Ok(())
}

/// Our recorded backward against candle's autodiff on the standard ResNets, f64, two passes sharing parameters:
/// ResNet-18 with the ImageNet stem (7×7 stride 2, max-pool) on 32×32 colour images and ResNet-50 (bottlenecks)
/// with the CIFAR stem on 16×16 — every parameter gradient to 1e-9 relative to its largest entry (at 8×8 the last
/// stage sees 2 values per channel per BatchNorm, whose ill-conditioned backward leaves ~1e-5 between the two
/// summation orders). (candle's side
/// runs our max-pool too: candle has none with padding; the pool's own backward is checked in tests/pool.rs.)
#[test]
fn our_backward_matches_candle_autodiff_on_the_standard_resnets() -> Result<()> {
    for (depth, stem, side) in [(Depth::Resnet18, Stem::Imagenet, 32), (Depth::Resnet50, Stem::Cifar, 16)] {
        let recipe = Recipe { projector: Mlp::new(8, 4), ..standard(depth, stem) };
        let shape = ssl_lang::data::Shape::new(3, side, side);
        let (x1, x2) = (randn(&[2, 3, side, side], 91, DType::F64)?, randn(&[2, 3, side, side], 92, DType::F64)?);
        let out = if depth == Depth::Resnet18 { 512 } else { 2048 };
        let r = [randn(&[2, out], 93, DType::F64)?, randn(&[2, 4], 94, DType::F64)?, randn(&[2, 4], 95, DType::F64)?];
        assert_eq!(SiameseNet::from_recipe(&recipe, shape, DType::F64, &Device::Cpu)?.backbone_dim(), out);
        assert_ours_match_candle(&format!("{depth:?}"), &recipe, shape, [&x1, &x2], &r)?;
    }
    Ok(())
}

/// The standard ResNets compute what torchvision's compute: ssl-lang's seed-0 ResNet-18 (ImageNet stem, with the
/// max-pool) and ResNet-50 (CIFAR stem), after one train-mode pass, give in eval mode the backbone features that
/// torchvision 0.29.2 computed from the same weights (exported with `--to torchvision`) on the same input
/// (tests/fixtures/torchvision_features.txt): 1e-3 of the largest feature. Measured: 1.7e-6 and 1.1e-6 with every
/// convolution direct or Winograd F(2×2, 3×3); 2.6e-4 for ResNet-18 with F(4×4, 3×3) on its 8×8 and 4×4 maps (the
/// default), whose f32 rounding (~5e-6 relative per product) compounds over its twenty convolutions. A wrong layer
/// is off by far more.
#[test]
fn standard_resnets_compute_what_torchvision_computes() -> Result<()> {
    let fixture = include_str!("fixtures/torchvision_features.txt");
    for (depth, stem, name) in
        [(Depth::Resnet18, Stem::Imagenet, "resnet18"), (Depth::Resnet50, Stem::Cifar, "resnet50")]
    {
        let line = fixture.lines().find(|l| l.starts_with(&format!("{name} "))).expect("a fixture line");
        let want: Vec<f32> = line.split(' ').skip(1).map(|v| v.parse().unwrap()).collect();
        let shape = ssl_lang::data::Shape::new(3, 32, 32);
        let net = SiameseNet::from_recipe(&standard(depth, stem), shape, DType::F32, &Device::Cpu)?;
        let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(x, (2, 3, 32, 32), &Device::Cpu)?;
        net.forward(&x, true)?;
        let got = net.features(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-3 * scale, "{name}: max difference {err:e} against features up to {scale}");
    }
    Ok(())
}
