//! `ssl-lang verify`: checks, on fresh random inputs, that the fused backend computes what the
//! reference backend does (1e-5 relative, f32), and proves that an objective's gradient form is the
//! gradient of its closed-form loss — autodiff of `loss` at u1 in f64 against
//! `positive + balance · negative` — over several seeds and sizes (N = 1, D = 1, fifos longer than
//! the batch, emas after a blend step).

use crate::backend::Backend;
use crate::check::typed::{Family, Objective, StateKind};
use crate::ir::cost::Sizes;
use crate::plan::{view, Features, Plan};
use candle_core::{DType, Device, Result, Tensor, Var};

mod ranks;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
pub use ranks::{verify_ranks, verify_world, World, RANKS_TOLERANCE_F32, RANKS_TOLERANCE_F64, RANK_SIZES};

/// The tolerance of the loss-gradient check (relative to the gradient's largest entry).
pub const LOSS_TOLERANCE: f64 = 1e-4;

/// One line of the verification table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Objective name.
    pub objective: String,
    /// What was checked.
    pub check: String,
    /// Largest relative error over all cases, if the check ran.
    pub max_error: Option<f64>,
    /// Whether it passed (`true` for checks that do not apply).
    pub pass: bool,
    /// Why a check did not run, or what to know about it.
    pub note: String,
}

/// Sizes (N, D) the checks run at.
pub const SIZES: &[(usize, usize)] = &[(1, 1), (1, 5), (4, 3), (16, 8), (33, 17)];

/// Seeds per size.
pub const SEEDS: u64 = 3;

/// Rows of unit vectors, [n, d], in f64.
pub fn unit_rows(rng: &mut StdRng, n: usize, d: usize) -> Result<Tensor> {
    crate::nn::layers::l2_normalize(&random_matrix(rng, n, d, 1.0)?)
}

/// Random features for one step.
pub fn random_features(rng: &mut StdRng, n: usize, d: usize) -> Result<Features> {
    Ok(Features {
        u1: unit_rows(rng, n, d)?,
        u2: unit_rows(rng, n, d)?,
        t1: unit_rows(rng, n, d)?,
        t2: unit_rows(rng, n, d)?,
    })
}

/// The tolerance of fused against reference (relative, f32).
pub const FUSED_TOLERANCE: f64 = 1e-5;

/// The tolerance of a GPU step against the CPU reference (relative, f32; TF32 is off in candle by default).
pub const DEVICE_TOLERANCE: f64 = 1e-4;

/// Checks one objective: on the CPU the fused backend against the reference, on another device the step there
/// against the CPU reference; then the loss gradient (CPU, f64).
pub fn verify(objective: &Objective, device: &Device) -> Result<Vec<Row>> {
    let mut rows = vec![step_matches_reference(objective, device)?];
    rows.extend(loss_gradient(objective)?);
    if objective.total.is_some() {
        rows.push(total_gradient(objective)?);
        if objective.positive.is_some() {
            rows.push(forms_compared(objective)?);
        }
    }
    Ok(rows)
}

/// How the two forms of one objective differ (a measurement, not a check): at random outputs z (u = z/‖z‖) with
/// the targets equal to the online features (`momentum = none`), the gradient each form sends into the network at
/// z — the unified one injected at u and carried through the normalisation, the loss form's ∂total/∂z plus its
/// ∂total/∂u carried the same way — compared by direction (cosine over all samples and both views) and scale.
fn forms_compared(objective: &Objective) -> Result<Row> {
    let plan = Plan::new(objective);
    let (mut cosine, mut ratios) = (f64::INFINITY, Vec::new());
    for &(n, d) in SIZES.iter().filter(|(n, d)| *n > 1 && *d > 1) {
        for seed in 0..SEEDS {
            let mut rng = case_rng(613, seed, n, d);
            let z = [random_matrix(&mut rng, n, d, 2.0)?, random_matrix(&mut rng, n, d, 2.0)?];
            let u = [crate::nn::layers::l2_normalize(&z[0])?, crate::nn::layers::l2_normalize(&z[1])?];
            let f = Features { u1: u[0].clone(), u2: u[1].clone(), t1: u[0].clone(), t2: u[1].clone() };
            let mut state = prepared_state(&plan, &mut rng, n, d)?;
            let unified = plan.step(&f, &mut state.clone())?;
            let loss = plan.total_step(&f, [&z[0], &z[1]], &mut state)?;
            let gz = loss.gz.as_ref().expect("the loss form has z gradients");
            // d/dz of ⟨u(z), g⟩ = (g − u⟨u, g⟩) / ‖z‖.
            let through = |g: &Tensor, i: usize| -> Result<Tensor> {
                let along = (&u[i] * g)?.sum_keepdim(1)?;
                let norm = z[i].sqr()?.sum_keepdim(1)?.sqrt()?;
                (g - u[i].broadcast_mul(&along)?)?.broadcast_div(&norm)
            };
            let a = Tensor::cat(&[through(&unified.g1, 0)?, through(&unified.g2, 1)?], 0)?;
            let b = Tensor::cat(&[(through(&loss.g1, 0)? + &gz[0])?, (through(&loss.g2, 1)? + &gz[1])?], 0)?;
            let dot = |x: &Tensor, y: &Tensor| -> Result<f64> { (x * y)?.sum_all()?.to_scalar::<f64>() };
            let (na, nb) = (dot(&a, &a)?.sqrt(), dot(&b, &b)?.sqrt());
            if na > 1e-12 && nb > 1e-12 {
                cosine = cosine.min(dot(&a, &b)? / (na * nb));
                ratios.push(nb / na);
            }
        }
    }
    ratios.sort_by(f64::total_cmp);
    let note = match ratios.get(ratios.len() / 2) {
        Some(r) => format!(
            "not a check: the gradient both forms send into the network at the projector output, targets = online \
             features; direction cosine at least {cosine:.4} over {} cases, loss form / gradient form scale {r:.3} \
             (median)",
            ratios.len()
        ),
        None => "not a check: both forms' gradients vanish at every case".into(),
    };
    Ok(Row { objective: objective.name.clone(), check: "forms compared".into(), max_error: None, pass: true, note })
}

/// The tolerance of the batch-level loss's autodiff against finite differences (relative to max(|∇|·|δ|, 1), f64).
pub const TOTAL_TOLERANCE: f64 = 1e-6;

/// The largest error seen so far, the first case (N, D, seed) that failed, and the cases where the objective itself
/// has no value to check against, for the row's note.
#[derive(Default)]
struct Worst {
    error: f64,
    failed: Option<(usize, usize, u64)>,
    checked: usize,
    undefined: usize,
}

impl Worst {
    /// Records one case's error; a NaN counts as infinitely wrong.
    fn see(&mut self, error: f64, tolerance: f64, case: (usize, usize, u64)) {
        let error = if error.is_nan() { f64::INFINITY } else { error };
        if error > tolerance && self.failed.is_none() {
            self.failed = Some(case);
        }
        self.error = self.error.max(error);
        self.checked += 1;
    }

    /// Whether the exact (f64) loss of a case has no value — NaN (W-MSE whitening one sample at N = 1), or −inf, a
    /// logsumexp over an empty set (DCL's negatives at N = 1) — so there is nothing to compare: counted, not checked.
    fn undefined_at(&mut self, loss: Option<&Tensor>) -> Result<bool> {
        let Some(loss) = loss else { return Ok(false) };
        let values: Vec<f64> = loss.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let undefined = values.iter().any(|v| v.is_nan() || *v == f64::NEG_INFINITY);
        self.undefined += usize::from(undefined);
        Ok(undefined)
    }

    /// Passed: no failure, and at least one case checked.
    fn pass(&self) -> bool {
        self.failed.is_none() && self.checked > 0
    }

    /// What the note says about skipped cases and a failure.
    fn note(&self) -> String {
        let mut note = match self.undefined {
            0 => String::new(),
            k => format!(" ({k} where the loss has no value — NaN or −inf, an empty set — not checked)"),
        };
        if let Some((n, d, seed)) = self.failed {
            note.push_str(&format!(" — first failure at N = {n}, D = {d}, seed {seed}"));
        } else if self.checked == 0 {
            note.push_str(" — fails: the loss has a value at no size and seed, so nothing was checked");
        }
        note
    }
}

/// Autodiff of `total` through (u1, u2, z1, z2) in f64 against central finite differences of `total` itself along
/// three random directions per case (step 1e-5, `stopgrad` values held fixed), at every size and seed.
fn total_gradient(objective: &Objective) -> Result<Row> {
    let plan = Plan::new(objective);
    let mut worst = Worst::default();
    let h = 1e-5;
    for &(n, d) in SIZES {
        for seed in 0..SEEDS {
            let mut rng = case_rng(4099, seed, n, d);
            let (state, f) = case_after_emas(&plan, &mut rng, n, d)?;
            // Outputs before normalisation: any direction, any length.
            let z = [random_matrix(&mut rng, n, d, 2.0)?, random_matrix(&mut rng, n, d, 2.0)?];
            let (value, grads) = plan.total_gradient(&f, [&z[0], &z[1]], &state)?;
            if worst.undefined_at(Some(&value))? {
                continue;
            }
            let mut error = finite_error(&value)?;
            let base = [&f.u1, &f.u2, &z[0], &z[1]];
            let frozen = plan.stopgrad_values([&f.u1, &f.u2, &f.t1, &f.t2], [&z[0], &z[1]], &state)?;
            for _ in 0..3 {
                let dir: Vec<Tensor> = (0..4).map(|_| random_matrix(&mut rng, n, d, 1.0)).collect::<Result<_>>()?;
                let at = |sign: f64| -> Result<f64> {
                    let x: Vec<Tensor> =
                        base.iter().zip(&dir).map(|(b, v)| *b + (v * (sign * h))?).collect::<Result<_>>()?;
                    let t = plan.eval_total([&x[0], &x[1], &f.t1, &f.t2], [&x[2], &x[3]], &state, Some(&frozen))?;
                    t.to_scalar::<f64>()
                };
                let numeric = (at(1.0)? - at(-1.0)?) / (2.0 * h);
                let (mut analytic, mut scale) = (0.0, 0.0);
                for (g, v) in grads.iter().zip(&dir) {
                    analytic += (g * v)?.sum_all()?.to_scalar::<f64>()?;
                    scale += g.sqr()?.sum_all()?.to_scalar::<f64>()? * v.sqr()?.sum_all()?.to_scalar::<f64>()?;
                }
                // Relative to |∇|·|δ|, floored at 1 as the f32 check is: where `total` is flat (N = 1 makes
                // NT-Xent identically zero) the differences' round-off, ~1e-7 here, is all there is to compare.
                error = error.max((numeric - analytic).abs() / scale.sqrt().max(1.0));
            }
            worst.see(error, TOTAL_TOLERANCE, (n, d, seed));
        }
    }
    Ok(Row {
        objective: objective.name.clone(),
        check: "total gradient".into(),
        max_error: Some(worst.error),
        pass: worst.pass(),
        note: format!(
            "autodiff of `total` at u1, u2, z1, z2 (f64) vs central differences of `total` along 3 random directions; {} cases{}",
            SIZES.len() as u64 * SEEDS,
            worst.note()
        ),
    })
}

/// 0 when every entry of `t` is finite, infinity otherwise.
fn finite_error(t: &Tensor) -> Result<f64> {
    let sum = t.to_dtype(DType::F64)?.abs()?.sum_all()?.to_scalar::<f64>()?;
    Ok(if sum.is_finite() { 0.0 } else { f64::INFINITY })
}

/// An [n, d] f64 matrix of uniform entries in (−scale, scale).
fn random_matrix(rng: &mut StdRng, n: usize, d: usize, scale: f64) -> Result<Tensor> {
    let data: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-scale..scale)).collect();
    Tensor::from_vec(data, (n, d), &Device::Cpu)
}

/// The sizes a check runs at: batch `n`, dimension `d`, each fifo filled as [`prepared_state`] fills it.
fn check_sizes(objective: &Objective, n: usize, d: usize) -> Sizes {
    let fifo = objective
        .states
        .iter()
        .map(|s| match s.kind {
            StateKind::Fifo { size, .. } => (3 * n + 2).min(size),
            _ => 0,
        })
        .collect();
    Sizes { n, d, fifo }
}

/// The random stream of one case (`seed` at sizes n × d); `salt` tells the checks apart, so that none reuses
/// another's inputs.
fn case_rng(salt: u64, seed: u64, n: usize, d: usize) -> StdRng {
    StdRng::seed_from_u64(seed * salt + (n * 31 + d) as u64)
}

/// A case's prepared state and random features, with the emas already updated from them as a training step would.
fn case_after_emas(
    plan: &Plan,
    rng: &mut StdRng,
    n: usize,
    d: usize,
) -> Result<(crate::plan::ObjectiveState, Features)> {
    let mut state = prepared_state(plan, rng, n, d)?;
    let f = random_features(rng, n, d)?;
    plan.update_emas(&f, &mut state)?;
    Ok((state, f))
}

/// A fresh state for a check: fifos hold more rows than the batch, emas have seen one batch.
fn prepared_state(plan: &Plan, rng: &mut StdRng, n: usize, d: usize) -> Result<crate::plan::ObjectiveState> {
    let mut state = plan.initial_state();
    for (i, s) in plan.objective.states.iter().enumerate() {
        if let StateKind::Fifo { size, .. } = s.kind {
            state.fifo[i] = Some(unit_rows(rng, (3 * n + 2).min(size), d)?);
        }
    }
    let warmup = random_features(rng, n, d)?;
    plan.update_emas(&warmup, &mut state)?;
    Ok(state)
}

/// One whole step (emas, both views, fifo pushes) on the CPU reference and on the candidate — the fused backend on
/// `device` (on a GPU: the generated CUDA kernels and cuBLAS) — in f32: every output agrees.
fn step_matches_reference(objective: &Objective, device: &Device) -> Result<Row> {
    let reference = Plan::new(objective);
    let mut worst = Worst::default();
    let mut kernels = std::collections::BTreeMap::new();
    let tolerance = if device.is_cpu() { FUSED_TOLERANCE } else { DEVICE_TOLERANCE };
    for &(n, d) in SIZES {
        for seed in 0..SEEDS {
            let candidate = Plan::with_backend(objective, Backend::Fused, &check_sizes(objective, n, d));
            for k in candidate.kernels.values() {
                *kernels.entry(k.name()).or_insert(0) += 1;
            }
            let mut rng = case_rng(7919, seed, n, d);
            let state = prepared_state(&reference, &mut rng, n, d)?;
            let f = random_features(&mut rng, n, d)?;
            let to32 = |t: &Tensor| t.to_dtype(DType::F32);
            let f = Features { u1: to32(&f.u1)?, u2: to32(&f.u2)?, t1: to32(&f.t1)?, t2: to32(&f.t2)? };
            let cast =
                |v: &[Option<Tensor>]| v.iter().map(|t| t.as_ref().map(to32).transpose()).collect::<Result<Vec<_>>>();
            let mut a = crate::plan::ObjectiveState { ema: cast(&state.ema)?, fifo: cast(&state.fifo)? };
            let on = |t: &Tensor, d: &Device| t.to_device(d);
            let move_all = |v: &[Option<Tensor>], d: &Device| {
                v.iter().map(|t| t.as_ref().map(|t| on(t, d)).transpose()).collect::<Result<Vec<_>>>()
            };
            let mut b =
                crate::plan::ObjectiveState { ema: move_all(&a.ema, device)?, fifo: move_all(&a.fifo, device)? };
            // The exact step: the reference in f64 on the same (f32-rounded) inputs and states.
            let to64 = |t: &Tensor| t.to_dtype(DType::F64);
            let f64_features = Features { u1: to64(&f.u1)?, u2: to64(&f.u2)?, t1: to64(&f.t1)?, t2: to64(&f.t2)? };
            let widen =
                |v: &[Option<Tensor>]| v.iter().map(|t| t.as_ref().map(to64).transpose()).collect::<Result<Vec<_>>>();
            let mut exact_state = crate::plan::ObjectiveState { ema: widen(&a.ema)?, fifo: widen(&a.fifo)? };
            let exact = reference.step_with_loss(&f64_features, &mut exact_state)?;
            if worst.undefined_at(exact.loss.as_ref())? {
                continue;
            }
            let ga = reference.step_with_loss(&f, &mut a)?;
            let fd = Features {
                u1: on(&f.u1, device)?,
                u2: on(&f.u2, device)?,
                t1: on(&f.t1, device)?,
                t2: on(&f.t2, device)?,
            };
            let gb = candidate.step_with_loss(&fd, &mut b)?;
            let cpu = Device::Cpu;
            let gb = crate::plan::Gradients {
                g1: on(&gb.g1, &cpu)?,
                g2: on(&gb.g2, &cpu)?,
                loss: gb.loss.as_ref().map(|l| on(l, &cpu)).transpose()?,
                ..gb
            };
            let b = crate::plan::ObjectiveState { ema: move_all(&b.ema, &cpu)?, fifo: move_all(&b.fifo, &cpu)? };
            // Gradients and losses are sums of O(1) terms (unit features) that may cancel to ~0, so their error is
            // taken relative to max(|exact|, 1); states relative. Both f32 steps are measured against the exact one.
            let error_of = |g: &crate::plan::Gradients, s: &crate::plan::ObjectiveState| -> Result<f64> {
                let unit = |x: &Tensor, y: &Tensor| error_against(&to64(x)?, y, 1.0);
                let mut error = unit(&g.g1, &exact.g1)?.max(unit(&g.g2, &exact.g2)?);
                if let (Some(l), Some(le)) = (&g.loss, &exact.loss) {
                    error = error.max(unit(l, le)?);
                }
                let states = s.ema.iter().chain(&s.fifo).zip(exact_state.ema.iter().chain(&exact_state.fifo));
                for (x, y) in states {
                    if let (Some(x), Some(y)) = (x, y) {
                        error = error.max(relative_error(&to64(x)?, y)?);
                    }
                }
                Ok(error)
            };
            let (error, reference_error) = (error_of(&gb, &b)?, error_of(&ga, &a)?);
            // At low temperatures f32 itself loses digits (logits of 1/τ): the fused step must then be as close to
            // the exact one as the op-by-op f32 reference is, within a factor 2.
            // A NaN or infinity anywhere fails: a non-finite reference error widens nothing.
            let allowed = if reference_error.is_finite() { tolerance.max(2.0 * reference_error) } else { tolerance };
            worst.see(error, allowed, (n, d, seed));
        }
    }
    let used: Vec<String> = kernels.keys().map(|k| k.to_string()).collect();
    let check = if device.is_cpu() { "fused = reference".to_string() } else { format!("{device:?} = cpu reference") };
    Ok(Row {
        objective: objective.name.clone(),
        check,
        max_error: Some(worst.error),
        pass: worst.pass(),
        note: format!(
            "one whole step in f32 against the exact (f64) step: gradients and loss vs max(|exact|, 1), states \
             relative; passes within {tolerance:.0e} or twice the f32 reference's own error; kernels: {}{}",
            if used.is_empty() { "none (reference ops throughout)".to_string() } else { used.join(", ") },
            worst.note()
        ),
    })
}

/// Autodiff of `loss` at u1 (f64) against positive + balance · negative.
fn loss_gradient(objective: &Objective) -> Result<Vec<Row>> {
    let plan = Plan::new(objective);
    let name = objective.name.clone();
    let Some(loss) = plan.lowered.loss else {
        let note = if objective.family == Family::Decorrelation {
            "no `loss` line: the decorrelation form drops the (1 - lambda)·diag(W)·t2 term of Barlow Twins' exact gradient, so no closed form matches it"
        } else {
            "no `loss` line: gradient form only"
        };
        return Ok(vec![Row {
            objective: name,
            check: "loss gradient".into(),
            max_error: None,
            pass: true,
            note: note.into(),
        }]);
    };
    let mut worst = Worst::default();
    for &(n, d) in SIZES {
        for seed in 0..SEEDS {
            let mut rng = case_rng(1000, seed, n, d);
            let (state, f) = case_after_emas(&plan, &mut rng, n, d)?;

            let [gradient, _, _] = plan.view_gradient(view(&f, false), &state)?;
            let u1 = Var::from_tensor(&f.u1)?;
            let features = [u1.as_tensor(), &f.u2, &f.t1, &f.t2];
            let per_sample = plan.view_loss(loss, features, &state)?;
            if worst.undefined_at(Some(&per_sample))? {
                continue;
            }
            let total = per_sample.sum_all()?;
            let grads = total.backward()?;
            let autodiff = match grads.get(u1.as_tensor()) {
                Some(g) => g.clone(),
                None => u1.as_tensor().zeros_like()?,
            };
            worst.see(relative_error(&autodiff, &gradient)?, LOSS_TOLERANCE, (n, d, seed));
        }
    }
    Ok(vec![Row {
        objective: name,
        check: "loss gradient".into(),
        max_error: Some(worst.error),
        pass: worst.pass(),
        note: format!(
            "autodiff of `loss` at u1 (f64) vs positive + balance * negative; {} cases{}",
            SIZES.len() as u64 * SEEDS,
            worst.note()
        ),
    }])
}

/// max |a − b| / max(max |b|, 1e-6): relative to the largest entry, floored so that a gradient
/// that is exactly zero (D = 1 makes every unit vector ±1) compares in absolute terms.
pub fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    error_against(a, b, 1e-6)
}

/// max |a − b| / max(max |b|, floor); infinite when either holds a NaN or an infinity (a NaN must never compare
/// as "no error").
pub fn error_against(a: &Tensor, b: &Tensor, floor: f64) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    if a.elem_count() == 0 && b.elem_count() == 0 {
        return Ok(0.0);
    }
    if finite_error(&a)? > 0.0 || finite_error(&b)? > 0.0 {
        return Ok(f64::INFINITY);
    }
    let diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?.max(floor);
    Ok(diff / scale)
}
