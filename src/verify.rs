//! `ssl-lang verify`: proves, on fresh random inputs, that an objective's gradient form is the
//! gradient of its closed-form loss — autodiff of `loss` at u1 in f64 against
//! `positive + balance · negative` — over several seeds and sizes (N = 1, D = 1, fifos longer than
//! the batch, emas after a blend step).

use crate::check::typed::{Family, Objective, StateKind};
use crate::plan::{view, Features, Plan};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    let data: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let t = Tensor::from_vec(data, (n, d), &Device::Cpu)?;
    t.broadcast_div(&t.sqr()?.sum_keepdim(1)?.sqrt()?)
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

/// Checks one objective.
pub fn verify(objective: &Objective) -> Result<Vec<Row>> {
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
    let mut worst = 0.0f64;
    for &(n, d) in SIZES {
        for seed in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + (n * 31 + d) as u64);
            let mut state = plan.initial_state();
            // Fifos hold more rows than the batch; emas have seen one earlier batch.
            for (i, s) in objective.states.iter().enumerate() {
                if let StateKind::Fifo { size, .. } = s.kind {
                    state.fifo[i] = Some(unit_rows(&mut rng, (3 * n + 2).min(size), d)?);
                }
            }
            let warmup = random_features(&mut rng, n, d)?;
            plan.update_emas(&warmup, &mut state)?;
            let f = random_features(&mut rng, n, d)?;
            plan.update_emas(&f, &mut state)?;

            let [gradient, _, _] = plan.view_gradient(view(&f, false), &state)?;
            let u1 = Var::from_tensor(&f.u1)?;
            let features = [u1.as_tensor(), &f.u2, &f.t1, &f.t2];
            let total = plan.view_loss(loss, features, &state)?.sum_all()?;
            let grads = total.backward()?;
            let autodiff = match grads.get(u1.as_tensor()) {
                Some(g) => g.clone(),
                None => u1.as_tensor().zeros_like()?,
            };
            worst = worst.max(relative_error(&autodiff, &gradient)?);
        }
    }
    let pass = worst <= LOSS_TOLERANCE;
    Ok(vec![Row {
        objective: name,
        check: "loss gradient".into(),
        max_error: Some(worst),
        pass,
        note: format!(
            "autodiff of `loss` at u1 (f64) vs positive + balance * negative; {} cases",
            SIZES.len() as u64 * SEEDS
        ),
    }])
}

/// max |a − b| / max(max |b|, 1e-6): relative to the largest entry, floored so that a gradient
/// that is exactly zero (D = 1 makes every unit vector ±1) compares in absolute terms.
pub fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?.max(1e-6);
    Ok(diff / scale)
}
