//! Our convolution kernels (src/kernels/conv) against a plain-loop reference, candle's conv2d and autodiff, and
//! central finite differences. Ours are channels-last: inputs [B, H, W, C], outputs [B, Ho, Wo, O]; candle's NCHW
//! convolution is compared through permutes.
//!
//! Tolerances, as max |ours − reference| / max |reference| over the whole tensor:
//! - f32: 1e-4 (forward, input gradient and weight gradient, against candle and against the f64 loop reference);
//! - f64: 1e-10 against candle and the loop reference (observed ~1e-15);
//! - f64 finite differences (central, eps 1e-6, of a loss bilinear in x and w, so only rounding remains): 1e-7.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::kernels::conv::{self, ConvGeom};
use ssl_lang::nn::LayerImpl;
use std::sync::Arc;

/// A convolution: (B, C, H, W, O, kh, kw, stride, pad).
type Shape = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

/// The shapes tested: strides 1 and 2, pads 0 and 1, 1×1 and 3×3, batch 1, non-square channels and images, a 3×1
/// kernel, batches large enough that several images share one GEMM (with a partial last group), and padding wider
/// than the kernel; one and three input channels (short patch runs) and sixteen or more (runs of whole vectors).
const SHAPES: &[Shape] = &[
    (1, 3, 9, 9, 5, 3, 3, 1, 1),
    (2, 4, 8, 6, 7, 3, 3, 1, 0),
    (3, 5, 9, 7, 6, 3, 3, 2, 1),
    (2, 6, 10, 10, 4, 3, 3, 2, 0),
    (1, 8, 7, 7, 3, 1, 1, 1, 0),
    (3, 6, 9, 8, 10, 1, 1, 2, 0),
    (2, 3, 6, 6, 4, 1, 1, 1, 1),
    (2, 5, 7, 9, 3, 3, 1, 1, 1),
    (37, 7, 7, 7, 9, 3, 3, 1, 1),
    (37, 6, 7, 7, 5, 1, 1, 1, 0),
    (21, 6, 14, 14, 8, 3, 3, 2, 1),
    (21, 6, 14, 14, 8, 1, 1, 2, 0),
    (1, 1, 28, 28, 4, 3, 3, 1, 1),
    (2, 3, 5, 4, 3, 3, 3, 2, 4),
    (3, 16, 9, 7, 6, 3, 3, 2, 1),
    (2, 17, 10, 10, 5, 3, 3, 2, 0),
    (5, 16, 9, 8, 7, 1, 1, 2, 0),
    (1, 20, 5, 6, 3, 3, 1, 1, 1),
    (2, 16, 6, 7, 4, 3, 3, 1, 2),
    (21, 16, 14, 14, 8, 3, 3, 2, 1),
    (2, 16, 5, 4, 3, 3, 3, 1, 4),
];

/// Our conv2d with a counter of its own (the tests read no work counts).
fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    conv::conv2d(x, w, stride, pad, &Arc::default())
}

/// candle's NCHW conv2d on channels-last tensors.
fn candle_nhwc(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    conv::candle_conv2d(&to_nchw(x)?, w, stride, pad)?.permute((0, 2, 3, 1))
}

fn to_nchw(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 3, 1, 2))?.contiguous()
}

fn random(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    diff / scale
}

fn geom(s: Shape) -> ConvGeom {
    let (b, c, h, w, o, kh, kw, st, p) = s;
    ConvGeom::new(&[b, h, w, c], &[o, c, kh, kw], st, p).expect("valid shape")
}

/// Plain-loop direct convolution and its two gradients (for a loss Σ y ⊙ r), in f64, channels-last.
struct Reference {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

fn reference(g: &ConvGeom, x: &[f64], w: &[f64], r: &[f64]) -> Reference {
    let mut y = vec![0.0; g.batch * g.c_out * g.ho * g.wo];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for b in 0..g.batch {
        for o in 0..g.c_out {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let yi = ((b * g.ho + oy) * g.wo + ox) * g.c_out + o;
                    for c in 0..g.c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((b * g.h + iy as usize) * g.w + ix as usize) * g.c_in + c;
                                let wi = ((o * g.c_in + c) * g.kh + ky) * g.kw + kx;
                                y[yi] += x[xi] * w[wi];
                                dx[xi] += r[yi] * w[wi];
                                dw[wi] += r[yi] * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    Reference { y, dx, dw }
}

struct Case {
    g: ConvGeom,
    x: Tensor,
    w: Tensor,
    r: Tensor,
}

fn case(i: usize, dtype: DType) -> Result<Case> {
    let g = geom(SHAPES[i]);
    let mut rng = StdRng::seed_from_u64(100 + i as u64);
    let x = random(&mut rng, &[g.batch, g.h, g.w, g.c_in], dtype)?;
    let w = random(&mut rng, &[g.c_out, g.c_in, g.kh, g.kw], dtype)?;
    let r = random(&mut rng, &[g.batch, g.ho, g.wo, g.c_out], dtype)?;
    Ok(Case { g, x, w, r })
}

/// y and (dx, dw) of Σ y ⊙ r through `conv` with candle autodiff.
fn autodiff(
    conv: fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>,
    c: &Case,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (x, w) = (Var::from_tensor(&c.x)?, Var::from_tensor(&c.w)?);
    let y = conv(&x, &w, c.g.stride, c.g.pad)?;
    let grads = (&y * &c.r)?.sum_all()?.backward()?;
    let dx = grads.get(&x).expect("input gradient");
    let dw = grads.get(&w).expect("weight gradient");
    Ok((values(&y)?, values(dx)?, values(dw)?))
}

fn check_against_loops(dtype: DType, tol: f64) -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        let c = case(i, dtype)?;
        let want = reference(&c.g, &values(&c.x)?, &values(&c.w)?, &values(&c.r)?);
        let (y, dx, dw) = autodiff(conv2d, &c)?;
        for (what, got, want) in
            [("forward", &y, &want.y), ("input grad", &dx, &want.dx), ("weight grad", &dw, &want.dw)]
        {
            let e = rel_err(got, want);
            assert!(e <= tol, "{dtype:?} {what} of {shape:?}: relative error {e:.2e} > {tol:.0e}");
        }
    }
    Ok(())
}

#[test]
fn forward_and_gradients_match_a_plain_loop_f32() -> Result<()> {
    check_against_loops(DType::F32, 1e-4)
}

#[test]
fn forward_and_gradients_match_a_plain_loop_f64() -> Result<()> {
    check_against_loops(DType::F64, 1e-10)
}

fn check_against_candle(dtype: DType, tol: f64) -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        let c = case(i, dtype)?;
        let g = &c.g;
        if (g.h + 2 * g.pad - g.kh) % g.stride != (g.w + 2 * g.pad - g.kw) % g.stride {
            // candle 0.9.2's conv2d backward takes conv_transpose2d's output padding from the height alone, so its
            // input gradient has the wrong width here (a shape error); the loop reference covers this shape.
            continue;
        }
        let (y, dx, dw) = autodiff(conv2d, &c)?;
        let (cy, cdx, cdw) = autodiff(candle_nhwc, &c)?;
        for (what, got, want) in [("forward", &y, &cy), ("input grad", &dx, &cdx), ("weight grad", &dw, &cdw)] {
            let e = rel_err(got, want);
            assert!(e <= tol, "{dtype:?} {what} of {shape:?} vs candle: relative error {e:.2e} > {tol:.0e}");
        }
    }
    Ok(())
}

#[test]
fn forward_and_gradients_match_candle_autodiff_f32() -> Result<()> {
    check_against_candle(DType::F32, 1e-4)
}

#[test]
fn forward_and_gradients_match_candle_autodiff_f64() -> Result<()> {
    check_against_candle(DType::F64, 1e-10)
}

/// The standalone gradient functions (what the backward pass applies) equal autodiff's.
#[test]
fn standalone_gradient_ops_match() -> Result<()> {
    for i in 0..SHAPES.len() {
        let c = case(i, DType::F64)?;
        let (_, dx, dw) = autodiff(conv2d, &c)?;
        let g = &c.g;
        let sdx = conv::conv2d_input_grad(&c.r, &c.w, (g.h, g.w), g.stride, g.pad, &Arc::default())?;
        let sdw = conv::conv2d_weight_grad(&c.x, &c.r, (g.kh, g.kw), g.stride, g.pad, &Arc::default())?;
        assert_eq!(sdx.dims(), c.x.dims());
        assert_eq!(sdw.dims(), c.w.dims());
        assert!(rel_err(&values(&sdx)?, &dx) <= 1e-12 && rel_err(&values(&sdw)?, &dw) <= 1e-12);
    }
    Ok(())
}

/// Central differences of L = Σ conv(x, w) ⊙ r in f64 at every input and weight element of small shapes.
#[test]
fn gradients_match_finite_differences_f64() -> Result<()> {
    let eps = 1e-6;
    for &i in &[0, 2, 3, 5, 6, 7] {
        let c = case(i, DType::F64)?;
        let (_, dx, dw) = autodiff(conv2d, &c)?;
        let loss = |x: &[f64], w: &[f64]| -> Result<f64> {
            let x = Tensor::from_slice(x, c.x.dims(), &Device::Cpu)?;
            let w = Tensor::from_slice(w, c.w.dims(), &Device::Cpu)?;
            (conv2d(&x, &w, c.g.stride, c.g.pad)? * &c.r)?.sum_all()?.to_scalar::<f64>()
        };
        let (x0, w0) = (values(&c.x)?, values(&c.w)?);
        let numeric = |which: usize| -> Result<Vec<f64>> {
            let base = if which == 0 { &x0 } else { &w0 };
            (0..base.len())
                .map(|j| {
                    let (mut plus, mut minus) = (base.clone(), base.clone());
                    plus[j] += eps;
                    minus[j] -= eps;
                    let (lp, lm) = if which == 0 {
                        (loss(&plus, &w0)?, loss(&minus, &w0)?)
                    } else {
                        (loss(&x0, &plus)?, loss(&x0, &minus)?)
                    };
                    Ok((lp - lm) / (2.0 * eps))
                })
                .collect()
        };
        let (ex, ew) = (rel_err(&dx, &numeric(0)?), rel_err(&dw, &numeric(1)?));
        assert!(ex <= 1e-7 && ew <= 1e-7, "{:?}: finite differences off by {ex:.2e} (x), {ew:.2e} (w)", SHAPES[i]);
    }
    Ok(())
}

/// Strided (non-contiguous) inputs, including the C == H == W layout candle 0.9.2 misreads, give the same result.
#[test]
fn non_contiguous_and_c_eq_h_eq_w_inputs() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let x = random(&mut rng, &[2, 6, 6, 6], DType::F64)?;
    let w = random(&mut rng, &[4, 6, 3, 3], DType::F64)?;
    let want = reference(&geom((2, 6, 6, 6, 4, 3, 3, 1, 1)), &values(&x)?, &values(&w)?, &vec![0.0; 2 * 4 * 36]).y;
    assert!(rel_err(&values(&conv2d(&x, &w, 1, 1)?)?, &want) <= 1e-12);
    let candle = conv::candle_conv2d(&to_nchw(&x)?, &w, 1, 1)?.permute((0, 2, 3, 1))?;
    assert!(rel_err(&values(&candle)?, &want) <= 1e-12);
    let xt = x.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
    assert!(!xt.is_contiguous());
    assert!(rel_err(&values(&conv2d(&xt, &w, 1, 1)?)?, &want) <= 1e-12);
    Ok(())
}

/// Only the arguments that need a gradient get one; an untracked input (the images) costs no input gradient.
#[test]
fn untracked_input_gets_no_gradient() -> Result<()> {
    let c = case(1, DType::F32)?;
    let w = Var::from_tensor(&c.w)?;
    let grads = (conv2d(&c.x, &w, c.g.stride, c.g.pad)? * &c.r)?.sum_all()?.backward()?;
    assert!(grads.get(&w).is_some());
    assert!(grads.get(&c.x).is_none());
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let x = Tensor::zeros((1, 4, 4, 3), DType::F32, &Device::Cpu)?;
    assert!(conv2d(&x, &Tensor::zeros((2, 4, 3, 3), DType::F32, &Device::Cpu)?, 1, 1).is_err());
    assert!(conv2d(&x, &Tensor::zeros((2, 3, 7, 7), DType::F32, &Device::Cpu)?, 1, 1).is_err());
    assert!(conv2d(&x, &Tensor::zeros((2, 3, 3, 3), DType::F32, &Device::Cpu)?, 0, 1).is_err());
    assert!(conv2d(&x, &Tensor::zeros((2, 3, 3, 3), DType::F64, &Device::Cpu)?, 1, 1).is_err());
    Ok(())
}

/// The network's `conv2d` layer runs the implementation it is given, ours (on channels-last maps) or candle's (on
/// NCHW ones), with equal results; ours is the default.
#[test]
fn model_conv2d_runs_either_implementation() -> Result<()> {
    use ssl_lang::nn::layers::{conv2d, from_map_layout, to_map_layout};
    let c = case(2, DType::F64)?;
    assert_eq!(LayerImpl::default(), LayerImpl::Ours);
    let (work, images) = (Arc::default(), to_nchw(&c.x)?);
    let run = |k| -> Result<Vec<f64>> {
        let y = conv2d(&to_map_layout(&images, k)?, &c.w, c.g.stride, c.g.pad, k, &work)?;
        values(&from_map_layout(&y, k)?)
    };
    assert!(rel_err(&run(LayerImpl::Ours)?, &run(LayerImpl::Candle)?) <= 1e-12);
    Ok(())
}

/// Every algorithm (im2col + GEMM, Winograd F(2×2, 3×3) and F(4×4, 3×3)) on stride-1 3×3 shapes — odd and even
/// sizes (partial tiles of both sizes), pads 0, 1 and 2, non-square images and channels, batch 1 and batches grouped
/// into one GEMM — for all three products, against the plain loop: 1e-10 in f64; in f32 against the f64 loop, 1e-5
/// for im2col and 1e-4 for Winograd (observed ≤ ~2e-6 for F(2×2) and ~1e-5 for F(4×4), whose transforms have larger
/// constants).
#[test]
fn winograd_and_im2col_match_the_loop_reference() -> Result<()> {
    use conv::ConvAlgo::{Im2col, WinogradF2, WinogradF4};
    let shapes: &[Shape] = &[
        (1, 3, 9, 9, 5, 3, 3, 1, 1),
        (2, 4, 8, 6, 7, 3, 3, 1, 0),
        (1, 5, 7, 10, 4, 3, 3, 1, 2),
        (3, 2, 4, 4, 3, 3, 3, 1, 1),
        (1, 3, 3, 5, 2, 3, 3, 1, 0),
        (40, 6, 7, 7, 5, 3, 3, 1, 1),
        (9, 4, 14, 13, 6, 3, 3, 1, 1),
        (2, 3, 6, 11, 4, 3, 3, 1, 2),
    ];
    for (i, &shape) in shapes.iter().enumerate() {
        let g = geom(shape);
        let mut rng = StdRng::seed_from_u64(500 + i as u64);
        let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let (x, w, r) =
            (draw(g.batch * g.h * g.w * g.c_in), draw(g.c_out * g.c_in * 9), draw(g.batch * g.ho * g.wo * g.c_out));
        let want = reference(&g, &x, &w, &r);
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let (x32, w32, r32) = (f32s(&x), f32s(&w), f32s(&r));
        for (algo, tol32) in [(Im2col, 1e-5), (WinogradF2, 1e-4), (WinogradF4, 1e-4)] {
            let products = [
                (
                    "forward",
                    conv::forward_with(&g, &x, &w, algo),
                    f64s(conv::forward_with(&g, &x32, &w32, algo)),
                    &want.y,
                ),
                (
                    "input grad",
                    conv::input_grad_with(&g, &r, &w, algo),
                    f64s(conv::input_grad_with(&g, &r32, &w32, algo)),
                    &want.dx,
                ),
                (
                    "weight grad",
                    conv::weight_grad_with(&g, &x, &r, algo),
                    f64s(conv::weight_grad_with(&g, &x32, &r32, algo)),
                    &want.dw,
                ),
            ];
            for (what, got64, got32, want) in products {
                let (e64, e32) = (rel_err(&got64, want), rel_err(&got32, want));
                assert!(e64 <= 1e-10, "{algo:?} f64 {what} of {shape:?}: relative error {e64:.2e}");
                assert!(e32 <= tol32, "{algo:?} f32 {what} of {shape:?}: relative error {e32:.2e}");
            }
        }
    }
    Ok(())
}
