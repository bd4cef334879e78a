//! Gradient-plan benchmark: the fused backend against the reference backend and against candle
//! autodiff of the objective's loss (what a user of an autodiff framework would run), with the
//! plain GEMMs the plan needs timed in the same run as the ceiling, and peak memory per step.
//!
//! `cargo bench --bench grad` (all cases) or `cargo bench --bench grad -- quick` (small ones).
//! A custom harness rather than criterion: the table needs ratios measured side by side and
//! allocator-level peak memory, which criterion does not report.

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use ssl_lang::backend::Backend;
use ssl_lang::ir::cost::Sizes;
use ssl_lang::ir::Op;
use ssl_lang::plan::{view, Features, ObjectiveState, Plan};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Counts live and peak heap bytes, so each case reports the memory its step needs.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Median seconds over `reps` runs, and the peak extra heap bytes of one run.
fn measure(reps: usize, mut f: impl FnMut()) -> (f64, usize) {
    f();
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    let peak = PEAK.load(Relaxed) - base;
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[reps / 2], peak)
}

fn features(n: usize, d: usize) -> Features {
    let f = ssl_lang::verify::random_features(&mut rand::rngs::StdRng::seed_from_u64(1), n, d).unwrap();
    let c = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    Features { u1: c(&f.u1), u2: c(&f.u2), t1: c(&f.t1), t2: c(&f.t2) }
}

fn objective(name: &str) -> ssl_lang::check::typed::Objective {
    let path = format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"));
    let (program, _) = ssl_lang::compile(&std::fs::read_to_string(path).unwrap());
    program.objectives.into_iter().next().unwrap()
}

/// The plan's contractions as plain candle matmuls of the same shapes: the GEMM-only time.
fn gemm_shapes(plan: &Plan, sizes: &Sizes) -> Vec<(usize, usize, usize)> {
    let g = &plan.lowered.graph;
    let mut out = Vec::new();
    for op in &g.ops {
        if let Op::Contract(a, b, over) = op {
            let k: usize = over.iter().map(|x| sizes.axis(g, *x)).product();
            let m: usize = g.axes_of(*a).iter().filter(|x| !over.contains(x)).map(|x| sizes.axis(g, *x)).product();
            let n: usize = g.axes_of(*b).iter().filter(|x| !over.contains(x)).map(|x| sizes.axis(g, *x)).product();
            out.push((m, k, n));
        }
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let mut cases: Vec<(&str, usize, usize, usize)> = Vec::new();
    for name in ["unigrad", "simclr", "barlow_twins"] {
        for (n, d) in [(256, 128), (1024, 128), (256, 2048), (1024, 2048)] {
            if !quick || (n, d) == (256, 128) {
                cases.push((name, n, d, 0));
            }
        }
    }
    cases.push(("moco", 256, 128, 4096));
    if !quick {
        cases.push(("moco", 256, 128, 65536));
    }
    println!(
        "{:<13} {:>5} {:>5} {:>6} | {:>9} {:>9} {:>9} | {:>7} {:>7} | {:>9} {:>7} | {:>9} {:>9} {:>9}",
        "objective",
        "N",
        "D",
        "K",
        "fused ms",
        "ref ms",
        "autod ms",
        "x ref",
        "x autod",
        "gemm ms",
        "x gemm",
        "fused MB",
        "ref MB",
        "autod MB"
    );
    for (name, n, d, k) in cases {
        let o = objective(name);
        let reps = if n * d >= 1024 * 2048 || k > 10_000 { 5 } else { 15 };
        let sizes = Sizes { n, d, fifo: vec![k; o.states.len()] };
        let fused = Plan::with_backend(&o, Backend::Fused, &sizes);
        let reference = Plan::new(&o);
        let f = features(n, d);
        let mut state: ObjectiveState = reference.initial_state();
        if k > 0 {
            let q = ssl_lang::verify::unit_rows(&mut rand::rngs::StdRng::seed_from_u64(2), k, d).unwrap();
            state.fifo[0] = Some(q.to_dtype(candle_core::DType::F32).unwrap());
        }
        reference.update_emas(&f, &mut state).unwrap();
        let step = |plan: &Plan| {
            let mut s = state.clone();
            plan.step(&f, &mut s).unwrap();
        };
        let (t_fused, m_fused) = measure(reps, || step(&fused));
        let (t_ref, m_ref) = measure(reps, || step(&reference));
        let autodiff = reference.lowered.loss.map(|loss| {
            measure(reps, || {
                let mut s = state.clone();
                reference.update_emas(&f, &mut s).unwrap();
                for mirrored in [false, true] {
                    let [u1, u2, t1, t2] = view(&f, mirrored);
                    let u = Var::from_tensor(u1).unwrap();
                    let l = reference.view_loss(loss, [u.as_tensor(), u2, t1, t2], &s).unwrap();
                    let _ = l.sum_all().unwrap().backward().unwrap();
                }
                reference.push_fifos(&f, &mut s).unwrap();
            })
        });
        // The same GEMMs as the fused plan, once per view order (plus the ema's once).
        let shapes = gemm_shapes(&fused, &sizes);
        let mats: Vec<(Tensor, Tensor)> = shapes
            .iter()
            .map(|&(m, kk, nn)| {
                (
                    Tensor::randn(0f32, 1.0, (m, kk), &candle_core::Device::Cpu).unwrap(),
                    Tensor::randn(0f32, 1.0, (kk, nn), &candle_core::Device::Cpu).unwrap(),
                )
            })
            .collect();
        let (t_gemm, _) = measure(reps, || {
            for _ in 0..2 {
                for (a, b) in &mats {
                    let _ = a.matmul(b).unwrap();
                }
            }
        });
        let (t_auto, m_auto) = autodiff.unwrap_or((f64::NAN, 0));
        let mb = |b: usize| b as f64 / 1e6;
        println!(
            "{:<13} {:>5} {:>5} {:>6} | {:>9.3} {:>9.3} {:>9.3} | {:>7.2} {:>7.2} | {:>9.3} {:>7.2} | {:>9.1} {:>9.1} {:>9.1}",
            name,
            n,
            d,
            k,
            t_fused * 1e3,
            t_ref * 1e3,
            t_auto * 1e3,
            t_ref / t_fused,
            t_auto / t_fused,
            t_gemm * 1e3,
            t_fused / t_gemm,
            mb(m_fused),
            mb(m_ref),
            mb(m_auto)
        );
    }
    println!("\nx ref, x autod: how many times faster the fused step is; x gemm: fused time over the time of the");
    println!("plain GEMMs it performs (1.0 = no overhead beyond the GEMMs). Medians; MB: peak extra heap per step.");
}
