//! Optimisers with torch's update rules, so that runs compare with PyTorch SSL code step for step: SGD (momentum,
//! Nesterov; `torch.optim.SGD`), LARS (the BYOL/solo-learn variant) and AdamW (`torch.optim.AdamW`).
//!
//! One pass over the parameters per step; each parameter is updated in place with `Var::set`. Momentum and moment
//! buffers are exported and imported by parameter name for checkpoints.

use crate::check::recipe;
use crate::nn::{ParamKind, Params};
use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Result, Tensor, Var};
use std::collections::HashMap;

/// AdamW's denominator epsilon, torch's default.
pub const ADAMW_EPS: f64 = 1e-8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Sgd { momentum: f64, weight_decay: f64, nesterov: bool },
    Lars { momentum: f64, weight_decay: f64, eta: f64 },
    Adamw { beta1: f64, beta2: f64, weight_decay: f64 },
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    kind: ParamKind,
    /// SGD/LARS momentum buffer, or AdamW's first moment.
    m: Option<Tensor>,
    /// AdamW's second moment.
    v: Option<Tensor>,
    /// AdamW's per-parameter step count (as torch keeps it).
    step: u64,
}

/// An optimiser over a fixed set of parameters, configured by the recipe.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    slots: Vec<Slot>,
    exclude_bias_and_norm: bool,
}

const MOMENTUM_BUFFER: &str = "momentum_buffer";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

fn check_rate(what: &str, x: f64, closed_above: bool) -> Result<()> {
    let ok = x.is_finite() && x >= 0.0 && (x < 1.0 || (closed_above && x == 1.0));
    if !ok {
        bail!("{what} must lie in [0, 1{}, got {x}", if closed_above { "]" } else { ")" });
    }
    Ok(())
}

fn check_nonneg(what: &str, x: f64) -> Result<()> {
    if !(x.is_finite() && x >= 0.0) {
        bail!("{what} must be finite and non-negative, got {x}");
    }
    Ok(())
}

/// ‖t‖₂ as an f64 on the host.
fn norm(t: &Tensor) -> Result<f64> {
    t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>().map(f64::sqrt)
}

impl Optimizer {
    /// The recipe's optimiser over `params`. Weight decay applies to every parameter (torch's default) except in
    /// LARS, which always excludes biases and norm parameters from decay and adaptation; see
    /// [`Optimizer::exclude_bias_and_norm`].
    pub fn new(config: &recipe::Optimizer, params: &Params) -> Result<Self> {
        let rule = match *config {
            recipe::Optimizer::Sgd { momentum, weight_decay, nesterov, .. } => {
                check_rate("SGD momentum", momentum, false)?;
                check_nonneg("weight decay", weight_decay)?;
                if nesterov && momentum == 0.0 {
                    bail!("Nesterov momentum requires a momentum above 0");
                }
                Rule::Sgd { momentum, weight_decay, nesterov }
            }
            recipe::Optimizer::Lars { momentum, weight_decay, eta, .. } => {
                check_rate("LARS momentum", momentum, false)?;
                check_nonneg("weight decay", weight_decay)?;
                check_nonneg("LARS eta", eta)?;
                Rule::Lars { momentum, weight_decay, eta }
            }
            recipe::Optimizer::Adamw { beta1, beta2, weight_decay, .. } => {
                check_rate("AdamW beta1", beta1, false)?;
                check_rate("AdamW beta2", beta2, false)?;
                check_nonneg("weight decay", weight_decay)?;
                Rule::Adamw { beta1, beta2, weight_decay }
            }
        };
        let slots = params
            .iter()
            .map(|p| Slot { name: p.name.clone(), var: p.var.clone(), kind: p.kind, m: None, v: None, step: 0 })
            .collect();
        Ok(Optimizer { rule, slots, exclude_bias_and_norm: false })
    }

    /// Whether biases and norm parameters are spared weight decay in SGD and AdamW (common in SSL recipes; off by
    /// default, as in torch). LARS always spares them.
    pub fn exclude_bias_and_norm(mut self, exclude: bool) -> Self {
        self.exclude_bias_and_norm = exclude;
        self
    }

    /// One update of every parameter that has a gradient in `grads` (others are skipped, as torch skips `None`
    /// gradients), at learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check_nonneg("learning rate", lr)?;
        let exclude = self.exclude_bias_and_norm;
        for s in &mut self.slots {
            let Some(g) = grads.get(&s.var) else { continue };
            let p = s.var.as_detached_tensor();
            let plain = s.kind == ParamKind::Weight;
            let update = match self.rule {
                Rule::Sgd { momentum, weight_decay, nesterov } => {
                    let wd = if exclude && !plain { 0.0 } else { weight_decay };
                    let d = if wd != 0.0 { (g + p.affine(wd, 0.0)?)? } else { g.clone() };
                    momentum_direction(&mut s.m, d, momentum, nesterov)?.affine(lr, 0.0)?
                }
                Rule::Lars { momentum, weight_decay, eta } => {
                    let mut d = g.clone();
                    if plain {
                        let (pn, gn) = (norm(&p)?, norm(g)?);
                        if pn > 0.0 && gn > 0.0 {
                            let trust = eta * pn / (gn + weight_decay * pn);
                            d = (g + p.affine(weight_decay, 0.0)?)?.affine(trust, 0.0)?;
                        }
                    }
                    momentum_direction(&mut s.m, d, momentum, false)?.affine(lr, 0.0)?
                }
                Rule::Adamw { beta1, beta2, weight_decay } => {
                    s.step += 1;
                    let wd = if exclude && !plain { 0.0 } else { weight_decay };
                    let m = match s.m.take() {
                        Some(m) => (m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?,
                        None => g.affine(1.0 - beta1, 0.0)?,
                    };
                    let g2 = g.sqr()?.affine(1.0 - beta2, 0.0)?;
                    let v = match s.v.take() {
                        Some(v) => (v.affine(beta2, 0.0)? + g2)?,
                        None => g2,
                    };
                    let t = i32::try_from(s.step).unwrap_or(i32::MAX);
                    let step_size = lr / (1.0 - beta1.powi(t));
                    let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                    let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, ADAMW_EPS)?;
                    let adam = m.div(&denom)?.affine(step_size, 0.0)?;
                    s.m = Some(m);
                    s.v = Some(v);
                    // torch: p ← p·(1 − lr·wd), then p ← p − step_size·m/denom.
                    let decayed = if wd != 0.0 { p.affine(1.0 - lr * wd, 0.0)? } else { p.clone() };
                    s.var.set(&(decayed - adam)?)?;
                    continue;
                }
            };
            s.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// The optimiser state by name (`<param>.momentum_buffer`; AdamW: `<param>.exp_avg`, `<param>.exp_avg_sq`,
    /// `<param>.step` as an f64 scalar), for checkpoints. Parameters that have not been stepped have no entry.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        let adamw = matches!(self.rule, Rule::Adamw { .. });
        for s in &self.slots {
            if let Some(m) = &s.m {
                out.insert(format!("{}.{}", s.name, if adamw { EXP_AVG } else { MOMENTUM_BUFFER }), m.clone());
            }
            if let Some(v) = &s.v {
                out.insert(format!("{}.{EXP_AVG_SQ}", s.name), v.clone());
            }
            if adamw && s.step > 0 {
                if let Ok(t) = Tensor::new(s.step as f64, s.var.device()) {
                    out.insert(format!("{}.{STEP}", s.name), t);
                }
            }
        }
        out
    }

    /// Restores state written by [`Optimizer::state`]: replaces the state of every parameter (those without an entry
    /// start fresh). Unknown names, entries of another optimiser and wrong shapes are errors, and leave the state as
    /// it was.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let adamw = matches!(self.rule, Rule::Adamw { .. });
        let index: HashMap<&str, usize> = self.slots.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut fresh: Vec<(Option<Tensor>, Option<Tensor>, u64)> = vec![(None, None, 0); self.slots.len()];
        for (key, t) in state {
            let Some((name, field)) = key.rsplit_once('.') else { bail!("unknown optimiser state `{key}`") };
            let Some(&i) = index.get(name) else { bail!("optimiser state `{key}` names no parameter") };
            let var = &self.slots[i].var;
            let known = if adamw { [EXP_AVG, EXP_AVG_SQ, STEP].contains(&field) } else { field == MOMENTUM_BUFFER };
            if !known {
                bail!("optimiser state `{key}` does not belong to this optimiser");
            }
            if field == STEP {
                let step = t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !(step.is_finite() && step >= 0.0 && step.fract() == 0.0) {
                    bail!("optimiser state `{key}` is not a step count: {step}");
                }
                fresh[i].2 = step as u64;
                continue;
            }
            if t.dims() != var.dims() {
                bail!("optimiser state `{key}` has shape {:?} but the parameter has {:?}", t.dims(), var.dims());
            }
            let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
            if field == EXP_AVG_SQ {
                fresh[i].1 = Some(t);
            } else {
                fresh[i].0 = Some(t);
            }
        }
        for (s, (m, v, step)) in self.slots.iter_mut().zip(fresh) {
            s.m = m;
            s.v = v;
            s.step = step;
        }
        Ok(())
    }
}

/// torch's SGD momentum with dampening 0: buf ← d on the first step, else μ·buf + d; the direction is buf, or
/// d + μ·buf with Nesterov. Momentum 0 is plain SGD and keeps no buffer.
fn momentum_direction(buf: &mut Option<Tensor>, d: Tensor, momentum: f64, nesterov: bool) -> Result<Tensor> {
    if momentum == 0.0 {
        return Ok(d);
    }
    let b = match buf.take() {
        Some(b) => (b.affine(momentum, 0.0)? + &d)?,
        None => d.clone(),
    };
    let dir = if nesterov { (d + b.affine(momentum, 0.0)?)? } else { b.clone() };
    *buf = Some(b);
    Ok(dir)
}
