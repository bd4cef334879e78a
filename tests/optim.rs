//! Optimisers and schedules against values computed independently.
//!
//! Every optimiser runs three steps on the quadratic f(w) = ½·Σ aᵢ·wᵢ², a = [1, 4], from w₀ = [1, −2], with learning
//! rates 0.1, 0.05, 0.02 (so the per-step rate is exercised too). The expected values come from this plain-Python
//! transcription of torch's update rules (no numpy, no torch), run with python3:
//!
//! ```python
//! import math
//! a = [1.0, 4.0]
//! def grad(w): return [ai*wi for ai, wi in zip(a, w)]
//! def sgd(w, lrs, mom, wd, nesterov):                  # torch.optim.SGD, dampening 0
//!     buf = None; out = []
//!     for lr in lrs:
//!         g = grad(w)
//!         d = [gi + wd*wi for gi, wi in zip(g, w)]
//!         buf = list(d) if buf is None else [mom*bi + di for bi, di in zip(buf, d)]
//!         d = [di + mom*bi for di, bi in zip(d, buf)] if nesterov else buf
//!         w = [wi - lr*di for wi, di in zip(w, d)]; out.append(w)
//!     return out
//! def adamw(w, lrs, b1, b2, wd, eps=1e-8):            # torch.optim.AdamW, amsgrad off
//!     m = [0.0]*len(w); v = [0.0]*len(w); out = []
//!     for t, lr in enumerate(lrs, 1):
//!         g = grad(w)
//!         w = [wi*(1 - lr*wd) for wi in w]
//!         m = [b1*mi + (1-b1)*gi for mi, gi in zip(m, g)]
//!         v = [b2*vi + (1-b2)*gi*gi for vi, gi in zip(v, g)]
//!         bc1 = 1 - b1**t; bc2 = 1 - b2**t
//!         w = [wi - lr/bc1*mi/(math.sqrt(vi)/math.sqrt(bc2) + eps) for wi, mi, vi in zip(w, m, v)]
//!         out.append(w)
//!     return out
//! def lars(w, lrs, mom, wd, eta, adapt):               # solo-learn LARS, no eps, no clipping
//!     buf = None; out = []
//!     for lr in lrs:
//!         g = grad(w); d = g
//!         if adapt:
//!             pn = math.sqrt(sum(x*x for x in w)); gn = math.sqrt(sum(x*x for x in g))
//!             if pn > 0 and gn > 0:
//!                 tr = eta*pn/(gn + wd*pn)
//!                 d = [(gi + wd*wi)*tr for gi, wi in zip(g, w)]
//!         buf = list(d) if buf is None else [mom*bi + di for bi, di in zip(buf, d)]
//!         w = [wi - lr*bi for wi, bi in zip(w, buf)]; out.append(w)
//!     return out
//! ```
//!
//! Tolerance: 1e-12 absolute (values are O(1), computed in f64; only the association of roundings can differ).

use candle_core::{DType, Device, Result, Tensor, Var};
use ssl_lang::check::recipe::{self, Momentum, Recipe, Schedule};
use ssl_lang::nn::{ParamKind, Params};
use ssl_lang::runtime::optim::Optimizer;
use ssl_lang::runtime::schedule::{target_momentum, warmup_cosine, LrSchedule};
use std::collections::HashMap;

const LRS: [f64; 3] = [0.1, 0.05, 0.02];
const TOL: f64 = 1e-12;

fn var(values: &[f64]) -> Var {
    Var::from_slice(values, values.len(), &Device::Cpu).expect("var")
}

/// ½·Σ aᵢ·pᵢ² summed over every parameter, so each gets gradient a ⊙ p.
fn quadratic_grads(params: &Params) -> Result<candle_core::backprop::GradStore> {
    let a = Tensor::new(&[1.0f64, 4.0], &Device::Cpu)?;
    let mut loss = Tensor::new(0.0f64, &Device::Cpu)?;
    for p in params {
        loss = (loss + (p.var.sqr()? * &a)?.sum_all()?.affine(0.5, 0.0)?)?;
    }
    loss.backward()
}

/// Runs the three steps and returns each parameter's value after every step.
fn run(config: &recipe::Optimizer, kinds: &[ParamKind], exclude: bool) -> Result<Vec<Vec<Vec<f64>>>> {
    let mut params = Params::new();
    for (i, &kind) in kinds.iter().enumerate() {
        params.push(format!("p{i}"), var(&[1.0, -2.0]), kind)?;
    }
    let mut opt = Optimizer::new(config, &params)?.exclude_bias_and_norm(exclude);
    let mut history = vec![Vec::new(); kinds.len()];
    for lr in LRS {
        let grads = quadratic_grads(&params)?;
        opt.step(&grads, lr)?;
        for (h, p) in history.iter_mut().zip(&params) {
            h.push(p.var.to_vec1::<f64>()?);
        }
    }
    Ok(history)
}

fn assert_close(got: &[Vec<f64>], want: &[[f64; 2]; 3], what: &str) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        for (x, y) in g.iter().zip(w) {
            assert!((x - y).abs() <= TOL, "{what}, step {}: got {g:?}, want {w:?}", step + 1);
        }
    }
}

const SGD: [[f64; 2]; 3] =
    [[0.89, -1.1800000000000002], [0.79155, -0.5691000000000002], [0.7386939, -0.30250980000000016]];
const SGD_NO_DECAY: [[f64; 2]; 3] =
    [[0.9, -1.2], [0.81, -0.5999999999999999], [0.7614000000000001, -0.33599999999999985]];

fn sgd(nesterov: bool) -> recipe::Optimizer {
    recipe::Optimizer::Sgd { lr: None, momentum: 0.9, weight_decay: 0.1, nesterov }
}

#[test]
fn sgd_momentum_matches_torch() -> Result<()> {
    // By hand, step 1: g = a⊙w + 0.1·w = [1.1, −8.2]; buf = g; w = w₀ − 0.1·g = [0.89, −1.18].
    let h = run(&sgd(false), &[ParamKind::Weight], false)?;
    assert_close(&h[0], &SGD, "sgd");
    Ok(())
}

#[test]
fn sgd_nesterov_matches_torch() -> Result<()> {
    // By hand, step 1: d = g + 0.9·buf = 1.9·[1.1, −8.2]; w = w₀ − 0.1·d = [0.791, −0.442].
    let h = run(&sgd(true), &[ParamKind::Weight], false)?;
    let want = [
        [0.7909999999999999, -0.44200000000000017],
        [0.6637905, 0.06225899999999995],
        [0.6059104370999999, 0.20147268779999997],
    ];
    assert_close(&h[0], &want, "nesterov");
    Ok(())
}

#[test]
fn sgd_excludes_bias_and_norm_from_decay_only_when_asked() -> Result<()> {
    let kinds = [ParamKind::Weight, ParamKind::Bias, ParamKind::Norm];
    let h = run(&sgd(false), &kinds, true)?;
    assert_close(&h[0], &SGD, "weight keeps decay");
    assert_close(&h[1], &SGD_NO_DECAY, "bias without decay");
    assert_close(&h[2], &SGD_NO_DECAY, "norm without decay");
    let h = run(&sgd(false), &kinds, false)?;
    for p in &h {
        assert_close(p, &SGD, "every parameter decays by default");
    }
    Ok(())
}

#[test]
fn adamw_matches_torch() -> Result<()> {
    // By hand, step 1: m̂/√v̂ = sign(g) (up to eps), so w = w₀·(1 − 0.1·0.01) − 0.1·sign(g) ≈ [0.899, −1.898].
    let config = recipe::Optimizer::Adamw { lr: None, beta1: 0.9, beta2: 0.999, weight_decay: 0.01 };
    let h = run(&config, &[ParamKind::Weight, ParamKind::Bias], true)?;
    let want = [
        [0.899000001, -1.898000000125],
        [0.8487595145943895, -1.847136294258585],
        [0.8287504666738537, -1.8268329460823416],
    ];
    let no_decay = [
        [0.900000001, -1.900000000125],
        [0.8502061153561691, -1.8500832429940026],
        [0.8303646602202377, -1.830147776362446],
    ];
    assert_close(&h[0], &want, "adamw");
    assert_close(&h[1], &no_decay, "adamw, bias excluded");
    Ok(())
}

#[test]
fn lars_adapts_weights_and_leaves_biases_and_norms_plain() -> Result<()> {
    // By hand, step 1: ‖w‖ = √5, ‖g‖ = √65, trust = 0.02·√5/(√65 + 0.1·√5) = 0.0053973;
    // d = (g + 0.1·w)·trust = [0.0059371, −0.0442582]; w = w₀ − 0.1·d = [0.99940629, −1.99557418].
    // Biases and norm parameters get neither decay nor adaptation: plain momentum SGD.
    let config = recipe::Optimizer::Lars { lr: None, momentum: 0.9, weight_decay: 0.1, eta: 0.02 };
    let h = run(&config, &[ParamKind::Weight, ParamKind::Bias, ParamKind::Norm], false)?;
    let want = [
        [0.9994062961658182, -1.9955742077815544],
        [0.9988423672305964, -1.991373958050221],
        [0.9985206819087119, -1.9889800251003227],
    ];
    assert_close(&h[0], &want, "lars weight");
    assert_close(&h[1], &SGD_NO_DECAY, "lars bias");
    assert_close(&h[2], &SGD_NO_DECAY, "lars norm");
    Ok(())
}

#[test]
fn parameters_without_gradient_are_left_alone() -> Result<()> {
    let mut params = Params::new();
    params.push("used", var(&[1.0, -2.0]), ParamKind::Weight)?;
    params.push("unused", var(&[3.0, 4.0]), ParamKind::Weight)?;
    let mut opt = Optimizer::new(&sgd(false), &params)?;
    let used = params.get("used").map(|p| p.var.clone()).expect("used");
    let grads = used.sqr()?.sum_all()?.backward()?;
    opt.step(&grads, 0.1)?;
    assert_eq!(params.get("unused").expect("unused").var.to_vec1::<f64>()?, vec![3.0, 4.0]);
    assert!(opt.state().keys().all(|k| k.starts_with("used.")), "{:?}", opt.state().keys());
    Ok(())
}

/// Two optimisers, one resumed from the other's exported state after two steps, take identical third steps.
fn resume_is_exact(config: &recipe::Optimizer) -> Result<()> {
    let make = || -> Result<Params> {
        let mut p = Params::new();
        p.push("w", var(&[1.0, -2.0]), ParamKind::Weight)?;
        p.push("b", var(&[0.5, 0.25]), ParamKind::Bias)?;
        Ok(p)
    };
    let (pa, pb) = (make()?, make()?);
    let mut a = Optimizer::new(config, &pa)?;
    for lr in [0.1, 0.05] {
        a.step(&quadratic_grads(&pa)?, lr)?;
    }
    let state: HashMap<String, Tensor> = a.state();
    pb.load(&pa.to_map()?)?;
    let mut b = Optimizer::new(config, &pb)?;
    b.load_state(&state)?;
    a.step(&quadratic_grads(&pa)?, 0.02)?;
    b.step(&quadratic_grads(&pb)?, 0.02)?;
    for name in ["w", "b"] {
        let va = pa.get(name).expect("a").var.to_vec1::<f64>()?;
        let vb = pb.get(name).expect("b").var.to_vec1::<f64>()?;
        assert_eq!(va, vb, "{name} after resuming {config:?}");
    }
    Ok(())
}

#[test]
fn state_round_trips_by_name() -> Result<()> {
    resume_is_exact(&sgd(true))?;
    resume_is_exact(&recipe::Optimizer::Lars { lr: None, momentum: 0.9, weight_decay: 0.1, eta: 0.02 })?;
    resume_is_exact(&recipe::Optimizer::Adamw { lr: None, beta1: 0.9, beta2: 0.999, weight_decay: 0.01 })?;
    Ok(())
}

#[test]
fn bad_state_and_settings_are_errors() -> Result<()> {
    let mut params = Params::new();
    params.push("w", var(&[1.0, -2.0]), ParamKind::Weight)?;
    let mut opt = Optimizer::new(&sgd(false), &params)?;
    let t = Tensor::zeros(2, DType::F64, &Device::Cpu)?;
    let bad = |k: &str, t: &Tensor| HashMap::from([(k.to_string(), t.clone())]);
    assert!(opt.load_state(&bad("v.momentum_buffer", &t)).is_err(), "unknown parameter");
    assert!(opt.load_state(&bad("w.exp_avg", &t)).is_err(), "another optimiser's state");
    assert!(opt.load_state(&bad("w.momentum_buffer", &Tensor::zeros(3, DType::F64, &Device::Cpu)?)).is_err());
    assert!(opt.load_state(&bad("w.momentum_buffer", &t)).is_ok());
    let grads = params.get("w").expect("w").var.sqr()?.sum_all()?.backward()?;
    assert!(opt.step(&grads, f64::NAN).is_err());
    assert!(opt.step(&grads, -1.0).is_err());
    let nan = recipe::Optimizer::Sgd { lr: None, momentum: f64::NAN, weight_decay: 0.0, nesterov: false };
    assert!(Optimizer::new(&nan, &params).is_err());
    let nesterov0 = recipe::Optimizer::Sgd { lr: None, momentum: 0.0, weight_decay: 0.0, nesterov: true };
    assert!(Optimizer::new(&nesterov0, &params).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Schedules.

#[test]
fn warmup_cosine_at_its_landmarks() {
    let (peak, warmup, total) = (0.4, 10, 110);
    assert_eq!(warmup_cosine(peak, warmup, total, 0), 0.04, "step 0: peak/warm-up steps");
    assert!((warmup_cosine(peak, warmup, total, 4) - 0.2).abs() < 1e-15, "halfway through warm-up");
    assert_eq!(warmup_cosine(peak, warmup, total, 9), peak, "last warm-up step");
    assert_eq!(warmup_cosine(peak, warmup, total, 10), peak, "end of warm-up");
    assert!((warmup_cosine(peak, warmup, total, 60) - 0.2).abs() < 1e-15, "middle of the cosine");
    // A quarter of the way: peak·(1 + cos(π/4))/2.
    let quarter = peak * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
    assert!((warmup_cosine(peak, warmup, total, 35) - quarter).abs() < 1e-15);
    assert!(warmup_cosine(peak, warmup, total, 109) < 1e-3, "last step is near zero");
    assert_eq!(warmup_cosine(peak, warmup, total, 110), 0.0, "end");
    assert_eq!(warmup_cosine(peak, warmup, total, 500), 0.0, "after the end");
    // Degenerate lengths never divide by zero.
    assert_eq!(warmup_cosine(peak, 0, 0, 0), 0.0);
    assert_eq!(warmup_cosine(peak, 0, 10, 0), peak);
    assert_eq!(warmup_cosine(peak, 5, 5, 4), peak);
}

#[test]
fn lr_schedule_from_the_default_recipe() {
    let recipe = Recipe::default(); // batch 256 → peak 0.06, warm-up 1 epoch, 20 epochs
    let s = LrSchedule::from_recipe(&recipe, 100);
    assert_eq!((s.warmup_steps, s.total_steps), (100, 2000));
    assert!((s.at(0) - 0.0006).abs() < 1e-15);
    assert!((s.at(99) - 0.06).abs() < 1e-15);
    assert!((s.at(1050) - 0.03).abs() < 1e-15);
    assert_eq!(s.at(2000), 0.0);
    let half = LrSchedule::new(&Schedule::WarmupCosine { warmup_epochs: 0.5 }, 1.0, 7, 70);
    assert_eq!(half.warmup_steps, 4, "round(0.5 · 7)");
    let constant = LrSchedule::new(&Schedule::Constant, 0.3, 10, 100);
    assert_eq!((constant.at(0), constant.at(50), constant.at(100)), (0.3, 0.3, 0.3));
}

#[test]
fn target_momentum_schedules() {
    let cosine = Momentum::Cosine { base: 0.99, end: 1.0 };
    assert_eq!(target_momentum(&cosine, 0, 1000), Some(0.99));
    let mid = target_momentum(&cosine, 500, 1000).expect("cosine");
    assert!((mid - 0.995).abs() < 1e-15, "{mid}");
    // A quarter: 1 − 0.01·(cos(π/4) + 1)/2.
    let quarter = target_momentum(&cosine, 250, 1000).expect("cosine");
    assert!((quarter - (1.0 - 0.01 * (std::f64::consts::FRAC_1_SQRT_2 + 1.0) / 2.0)).abs() < 1e-15);
    assert_eq!(target_momentum(&cosine, 1000, 1000), Some(1.0));
    assert_eq!(target_momentum(&cosine, 2000, 1000), Some(1.0));
    assert_eq!(target_momentum(&cosine, 0, 0), Some(0.99));
    assert_eq!(target_momentum(&Momentum::Constant(0.996), 123, 1000), Some(0.996));
    assert_eq!(target_momentum(&Momentum::None, 0, 1000), None);
}
