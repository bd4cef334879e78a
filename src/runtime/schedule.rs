//! Schedules as pure functions of the step: the learning rate (linear warm-up, then cosine to zero) and the rate of
//! the momentum (EMA) target (BYOL's cosine from `base` to `end`). Pure, so a resumed run recomputes them exactly.

use crate::check::recipe::{Momentum, Recipe, Schedule};
use std::f64::consts::PI;

/// Linear warm-up to `peak` over `warmup_steps`, then a half cosine from `peak` to 0 at `total_steps`.
///
/// Warm-up step k (0-based) gets `peak·(k + 1)/warmup_steps`, so step 0 is small but not zero (an all-zero first
/// step would waste a batch) and step `warmup_steps − 1` reaches the peak. From `warmup_steps` on,
/// `peak·(1 + cos(π·(k − W)/(T − W)))/2`, which is the peak at k = W, half of it midway and 0 at k = T (and after).
pub fn warmup_cosine(peak: f64, warmup_steps: usize, total_steps: usize, step: usize) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    if step >= total_steps {
        return 0.0;
    }
    let progress = (step - warmup_steps) as f64 / (total_steps - warmup_steps) as f64;
    peak * 0.5 * (1.0 + (PI * progress).cos())
}

/// The learning-rate schedule of a run, resolved to steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The peak learning rate.
    pub peak: f64,
    /// Warm-up length in steps; 0 for the constant schedule.
    pub warmup_steps: usize,
    /// Length of the run in steps.
    pub total_steps: usize,
    /// Whether the rate stays at the peak (`constant`).
    pub constant: bool,
}

impl LrSchedule {
    /// Resolves a recipe schedule: warm-up epochs become `round(warmup_epochs · steps_per_epoch)` steps.
    pub fn new(schedule: &Schedule, peak: f64, steps_per_epoch: usize, total_steps: usize) -> Self {
        match schedule {
            Schedule::Constant => LrSchedule { peak, warmup_steps: 0, total_steps, constant: true },
            Schedule::WarmupCosine { warmup_epochs } => {
                let w = (warmup_epochs.max(0.0) * steps_per_epoch as f64).round();
                // `as` saturates on huge values, and the warm-up never outlasts the run.
                let warmup_steps = (w as usize).min(total_steps);
                LrSchedule { peak, warmup_steps, total_steps, constant: false }
            }
        }
    }

    /// The recipe's schedule and peak rate (`Recipe::lr`) over `recipe.epochs` epochs of `steps_per_epoch` steps.
    pub fn from_recipe(recipe: &Recipe, steps_per_epoch: usize) -> Self {
        Self::new(&recipe.schedule, recipe.lr(), steps_per_epoch, recipe.epochs.saturating_mul(steps_per_epoch))
    }

    /// The learning rate at `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if self.constant {
            self.peak
        } else {
            warmup_cosine(self.peak, self.warmup_steps, self.total_steps, step)
        }
    }
}

/// The target network's EMA rate at `step` of `total_steps`, or `None` when the recipe has no target network.
///
/// `cosine(base, end)` is BYOL's `m(k) = end − (end − base)·(cos(π·k/K) + 1)/2`: `base` at k = 0, `end` at k = K
/// (and after). With K = 0 the rate is `base`.
pub fn target_momentum(momentum: &Momentum, step: usize, total_steps: usize) -> Option<f64> {
    match *momentum {
        Momentum::None => None,
        Momentum::Constant(m) => Some(m),
        Momentum::Cosine { base, end } => {
            if total_steps == 0 {
                return Some(base);
            }
            let k = step.min(total_steps) as f64 / total_steps as f64;
            Some(end - (end - base) * ((PI * k).cos() + 1.0) / 2.0)
        }
    }
}
