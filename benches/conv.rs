//! Convolution benchmark: every conv layer of the default `resnet_mini` at batch 256 — forward, input gradient and
//! weight gradient with candle's ops (what its autodiff runs) and with ours (src/kernels/conv/) — and the whole
//! resnet_mini + projector forward + backward with each, all in one run.
//!
//! `cargo bench --bench conv` (everything); arguments after `--`: `quick` (fewer repetitions), `layers` (only the
//! per-layer tables), `winograd` (only the Winograd table), `net` (only the whole network).
//!
//! Achieved GFLOP/s count direct-convolution FLOPs (2·B·O·C·kh·kw·Ho·Wo per product). The ceilings, measured in
//! the same run: a square 1024³ GEMM, and per layer the plain GEMM the layer's forward is equivalent to
//! ([O, C·kh·kw] × [C·kh·kw, B·Ho·Wo], with its operand already materialised), both with candle's matmul (the `gemm`
//! crate on all cores).

use candle_core::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::check::recipe::Recipe;
use ssl_lang::data::idx;
use ssl_lang::kernels::conv::{self, ConvGeom, WorkCounter};
use ssl_lang::nn::{LayerImpl, SiameseNet};
use std::sync::Arc;
use std::time::Instant;

/// Median seconds of `f` over at least `min_reps` runs (after one warm-up), running more while under `budget_s`.
fn median(min_reps: usize, budget_s: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps || (start.elapsed().as_secs_f64() < budget_s && times.len() < 50) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn randn(rng: &mut StdRng, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// candle's input gradient of conv2d, exactly as its backprop computes it.
fn candle_input_grad(dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let out_size = (g.ho - 1) * g.stride + g.kh - 2 * g.pad;
    dy.conv_transpose2d(w, g.pad, g.h - out_size, g.stride, 1)
}

/// candle's weight gradient of conv2d, exactly as its backprop computes it.
fn candle_weight_grad(x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let gw = x.transpose(0, 1)?.conv2d(&dy.transpose(0, 1)?, g.pad, 1, g.stride, 1)?.transpose(0, 1)?;
    gw.narrow(2, 0, g.kh)?.narrow(3, 0, g.kw)
}

/// One way to compute one product of a layer.
type Product<'a> = Box<dyn Fn() -> Result<Tensor> + 'a>;

fn gflops(flops: f64, s: f64) -> f64 {
    flops / s / 1e9
}

fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// max |a − b| / max |b| against an f64 reference.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let diff = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(f64::MIN_POSITIVE, f64::max)
}

/// Winograd F(2×2, 3×3) and F(4×4, 3×3) against im2col + GEMM on the stride-1 3×3 layers (what `ConvAlgo::Auto`
/// chooses among): time and f32 error of each (max relative to an f64 direct convolution of the same data).
fn winograd_table(rng: &mut StdRng, batch: usize, reps: usize, budget: f64) -> Result<()> {
    use conv::ConvAlgo::{Im2col, WinogradF2, WinogradF4};
    println!(
        "Winograd F(2×2) and F(4×4) vs im2col + GEMM, stride-1 3×3 layers (f32 error: max relative to f64 direct)"
    );
    println!(
        "{:<22} {:<7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "layer", "product", "im2col ms", "F2 ms", "F4 ms", "F2 ×", "F4 ×", "im2col err", "F2 err", "F4 err"
    );
    let layers =
        [("s1 conv 32→32 @28", 32, 32, 28), ("s2 conv2 64→64 @14", 64, 64, 14), ("s3 conv2 128→128 @7", 128, 128, 7)];
    for (name, c, o, h) in layers {
        let g = ConvGeom::new(&[batch, h, h, c], &[o, c, 3, 3], 1, 1)?;
        let x = values(rng, batch * c * h * h);
        let w: Vec<f32> = values(rng, o * c * 9).iter().map(|v| v * 0.1).collect();
        let dy = values(rng, batch * o * h * h);
        let wide = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let (x64, w64, dy64) = (wide(&x), wide(&w), wide(&dy));
        for product in ["fwd", "dx", "dw"] {
            let run = |algo| match product {
                "fwd" => conv::forward_with(&g, &x, &w, algo),
                "dx" => conv::input_grad_with(&g, &dy, &w, algo),
                _ => conv::weight_grad_with(&g, &x, &dy, algo),
            };
            let exact = match product {
                "fwd" => conv::forward_with(&g, &x64, &w64, Im2col),
                "dx" => conv::input_grad_with(&g, &dy64, &w64, Im2col),
                _ => conv::weight_grad_with(&g, &x64, &dy64, Im2col),
            };
            let algos = [Im2col, WinogradF2, WinogradF4];
            let errs = algos.map(|a| rel_err(&run(a), &exact));
            let mut times = [0.0; 3];
            for (t, algo) in times.iter_mut().zip(algos) {
                *t = median(reps, budget, || {
                    std::hint::black_box(run(algo));
                    Ok(())
                })?;
            }
            println!(
                "{:<22} {:<7} {:>10.2} {:>8.2} {:>8.2} {:>7.2}× {:>7.2}× {:>10.1e} {:>8.1e} {:>8.1e}",
                if product == "fwd" { name } else { "" },
                product,
                times[0] * 1e3,
                times[1] * 1e3,
                times[2] * 1e3,
                times[0] / times[1],
                times[0] / times[2],
                errs[0],
                errs[1],
                errs[2]
            );
        }
    }
    println!();
    Ok(())
}

fn main() -> Result<()> {
    ssl_lang::commands::alloc::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    let (only_layers, only_net) = (args.iter().any(|a| a == "layers"), args.iter().any(|a| a == "net"));
    let (reps, budget) = if quick { (3, 0.5) } else { (5, 2.0) };
    let batch = 256;
    let mut rng = StdRng::seed_from_u64(1);
    println!(
        "conv benchmark: batch {batch}, {} rayon threads, f32, medians of ≥ {reps} runs",
        rayon::current_num_threads()
    );

    // The GEMM ceiling: a square product.
    let a = randn(&mut rng, &[1024, 1024])?;
    let b = randn(&mut rng, &[1024, 1024])?;
    let t = median(reps, budget, || a.matmul(&b).map(drop))?;
    let ceiling = gflops(2.0 * 1024f64.powi(3), t);
    println!("plain GEMM 1024×1024×1024 (candle matmul): {:.2} ms, {ceiling:.1} GFLOP/s\n", t * 1e3);
    if args.iter().any(|a| a == "winograd") {
        return winograd_table(&mut rng, batch, reps, budget);
    }

    // (name, C, O, H, k, stride, pad, count in the network)
    let layers = [
        ("stem 1→32 @28", 1, 32, 28, 3, 1, 1, 1),
        ("s1 conv 32→32 @28 (×2)", 32, 32, 28, 3, 1, 1, 2),
        ("s2 conv1 32→64 s2", 32, 64, 28, 3, 2, 1, 1),
        ("s2 conv2 64→64 @14", 64, 64, 14, 3, 1, 1, 1),
        ("s2 shortcut 1×1 s2", 32, 64, 28, 1, 2, 0, 1),
        ("s3 conv1 64→128 s2", 64, 128, 14, 3, 2, 1, 1),
        ("s3 conv2 128→128 @7", 128, 128, 7, 3, 1, 1, 1),
        ("s3 shortcut 1×1 s2", 64, 128, 14, 1, 2, 0, 1),
    ];
    println!(
        "{:<24} {:<7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10}",
        "layer", "product", "candle ms", "ours ms", "ratio", "candle GF/s", "ours GF/s", "GEMM GF/s"
    );
    let (mut total_candle, mut total_ours) = (0.0, 0.0);
    for (name, c, o, h, k, s, p, count) in layers.into_iter().filter(|_| !only_net) {
        // candle's products run NCHW, ours channels-last (`xl`, `dyl`); ours are viewed NCHW to compare.
        let x = randn(&mut rng, &[batch, c, h, h])?;
        let w = (randn(&mut rng, &[o, c, k, k])? * 0.1)?;
        let xl = x.permute((0, 2, 3, 1))?.contiguous()?;
        let g = ConvGeom::new(xl.dims(), w.dims(), s, p)?;
        let dy = randn(&mut rng, &[batch, o, g.ho, g.wo])?;
        let dyl = dy.permute((0, 2, 3, 1))?.contiguous()?;
        let nchw = |t: Tensor| t.permute((0, 3, 1, 2));
        // The same-shape plain GEMM: W[O, C·k·k] · col[C·k·k, B·P].
        let col = randn(&mut rng, &[c * k * k, batch * g.ho * g.wo])?;
        let wm = w.reshape((o, c * k * k))?;
        let t_gemm = median(reps, budget, || wm.matmul(&col).map(drop))?;
        drop(col);
        let work = Arc::new(WorkCounter::default());
        let products: [(&str, Product, Product); 3] = [
            (
                "fwd",
                Box::new(|| conv::candle_conv2d(&x, &w, s, p)),
                Box::new(|| nchw(conv::conv2d(&xl, &w, s, p, &work)?)),
            ),
            (
                "dx",
                Box::new(|| candle_input_grad(&dy, &w, &g)),
                Box::new(|| nchw(conv::conv2d_input_grad(&dyl, &w, (h, h), s, p, &work)?)),
            ),
            (
                "dw",
                Box::new(|| candle_weight_grad(&x, &dy, &g)),
                Box::new(|| conv::conv2d_weight_grad(&xl, &dyl, (k, k), s, p, &work)),
            ),
        ];
        for (i, (product, theirs, ours)) in products.iter().enumerate() {
            // Agreement, so a fast wrong kernel cannot go unnoticed.
            let (a, b) = (theirs()?, ours()?);
            let err = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? / a.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "{name} {product}: ours differs from candle by {err:.2e} (relative)");
            let tc = median(reps, budget, || theirs().map(drop))?;
            let to = median(reps, budget, || ours().map(drop))?;
            // The stem's input gradient is never needed in training (the images take no gradient).
            if !(c == 1 && i == 1) {
                total_candle += tc * count as f64;
                total_ours += to * count as f64;
            }
            println!(
                "{:<24} {:<7} {:>10.2} {:>10.2} {:>6.1}× {:>10.1} {:>10.1} {:>10}",
                if i == 0 { name } else { "" },
                product,
                tc * 1e3,
                to * 1e3,
                tc / to,
                gflops(g.flops(), tc),
                gflops(g.flops(), to),
                if i == 0 { format!("{:.1}", gflops(g.flops(), t_gemm)) } else { String::new() },
            );
        }
    }
    println!(
        "all conv products of one training step (×count, no stem dx): candle {:.0} ms, ours {:.0} ms, {:.1}×\n",
        total_candle * 1e3,
        total_ours * 1e3,
        total_candle / total_ours
    );

    if !only_net {
        winograd_table(&mut rng, batch, reps, budget)?;
    }
    if only_layers {
        return Ok(());
    }
    // The whole network: resnet_mini + projector, forward (train mode) and backward of Σ projection ⊙ r.
    let x = randn(&mut rng, &[batch, 1, 28, 28])?;
    let mut rows = Vec::new();
    for choice in [LayerImpl::Candle, LayerImpl::Ours] {
        let net =
            SiameseNet::from_recipe(&Recipe::default(), idx::SHAPE, DType::F32, &Device::Cpu)?.with_layers(choice);
        let r = randn(&mut rng, &[batch, net.projection_dim()])?;
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for _ in 0..(if quick { 2 } else { 4 }) {
            let t0 = Instant::now();
            let out = net.forward(&x, true)?;
            let loss = (&out.projection * &r)?.sum_all()?;
            let _ = loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let grads = net.backward(&loss, vec![out])?;
            let t2 = Instant::now();
            drop(grads);
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
        }
        // Drop the first (warm-up) run, take the median of the rest.
        let med = |v: &mut Vec<f64>| {
            v.remove(0);
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        rows.push((choice, med(&mut fwd), med(&mut bwd)));
    }
    println!("resnet_mini + projector, batch {batch}, forward (train) + backward:");
    for (choice, f, b) in &rows {
        println!(
            "  {:<7} forward {:>7.0} ms, backward {:>7.0} ms, total {:>7.0} ms",
            format!("{choice:?}"),
            f * 1e3,
            b * 1e3,
            (f + b) * 1e3
        );
    }
    let (c, o) = (rows[0].1 + rows[0].2, rows[1].1 + rows[1].2);
    println!("  speed-up {:.1}×", c / o);
    Ok(())
}
