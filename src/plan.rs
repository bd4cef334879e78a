//! The plan the runtime calls once per training step: update the ema states, evaluate the
//! gradient for both view orders, push the fifos. Order within a step follows the README: emas are
//! updated first and the gradient sees the new value; fifos are read first and pushed after.

use crate::backend::reference::Inputs;
use crate::backend::{execute, fused, Backend};
use crate::check::typed::{Objective, StateKind};
use crate::collective::Comm;
use crate::ir::distribute::Sets;
use crate::ir::fuse::Kernel;
use crate::ir::{self, cost::Sizes, Lowered, Node};
use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

/// The four feature matrices of a step, each [N, D], L2-normalised by the caller.
#[derive(Clone, Debug)]
pub struct Features {
    /// Online features, view 1.
    pub u1: Tensor,
    /// Online features, view 2.
    pub u2: Tensor,
    /// Target features, view 1.
    pub t1: Tensor,
    /// Target features, view 2.
    pub t2: Tensor,
}

/// The objective's states between steps, by state index (`None`: not yet set, or not that kind).
#[derive(Clone, Debug, Default)]
pub struct ObjectiveState {
    /// Ema values.
    pub ema: Vec<Option<Tensor>>,
    /// Fifo contents, newest rows first.
    pub fifo: Vec<Option<Tensor>>,
}

/// What the health metrics read.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Mean of u1·t2 over the batch (view 1).
    pub positive_similarity: f64,
    /// Mean ‖positive‖ per view.
    pub positive_norm: [f64; 2],
    /// Mean ‖balance · negative‖ per view.
    pub push_norm: [f64; 2],
}

/// One step's result. `g1`, `g2` are dL/du1 and dL/du2 per sample, [N, D], already averaged over
/// the two view orders when the objective is symmetric (each view's gradient times ½).
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Gradient at the view-1 online features.
    pub g1: Tensor,
    /// Gradient at the view-2 online features (zero when not symmetric).
    pub g2: Tensor,
    /// Per-sample loss [N], averaged over view orders, when the objective has one (in the loss form: `total`,
    /// the same for every sample).
    pub loss: Option<Tensor>,
    /// In the loss form, the gradients at the online outputs before L2 normalisation (z1, z2), scaled as `g1`.
    pub gz: Option<[Tensor; 2]>,
    /// Health statistics.
    pub stats: Stats,
}

/// A lowered objective with its current param values, ready to run on one backend.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The checked objective.
    pub objective: Objective,
    /// Its IR (reassociated for the plan's sizes on the fused backend).
    pub lowered: Lowered,
    /// Param values by index (defaults, or overrides).
    pub params: Vec<f64>,
    /// Which backend runs it.
    pub backend: Backend,
    /// The fused kernels, by the node each computes (empty on the reference backend).
    pub kernels: HashMap<Node, Kernel>,
    /// The ranks a per-rank plan runs on (`None`: one process on the whole batch).
    pub comm: Option<Comm>,
}

impl Plan {
    /// The reference plan: the IR as lowered, run op by op.
    pub fn new(objective: &Objective) -> Plan {
        Plan {
            lowered: ir::lower(objective),
            params: objective.params.iter().map(|p| p.value).collect(),
            objective: objective.clone(),
            backend: Backend::Reference,
            kernels: HashMap::new(),
            comm: None,
        }
    }

    /// The plan of one rank of `comm` (see [`ir::distribute`]): it takes this rank's rows of each feature and
    /// computes this rank's rows of the gradient, exchanging what the objective needs; states stay identical on
    /// every rank. `sizes` are global (the recipe's batch); `sets` lays out the sets over the batch.
    pub fn for_rank(objective: &Objective, backend: Backend, sizes: &Sizes, sets: Sets, comm: Comm) -> Plan {
        let mut plan = Plan::new(objective);
        if backend == Backend::Fused {
            plan.lowered = ir::optimize(&plan.lowered, sizes);
        }
        plan.lowered = ir::distribute::distribute(&plan.lowered, sizes, comm.ranks(), sets);
        if backend == Backend::Fused {
            plan.kernels = ir::fuse::fuse(&plan.lowered);
            plan.backend = Backend::Fused;
        }
        plan.comm = Some(comm);
        plan
    }

    /// The batch size of the objective: every rank's rows together.
    pub fn global_n(&self, local_n: usize) -> usize {
        local_n * self.comm.as_ref().map_or(1, |c| c.ranks())
    }

    /// A plan for `backend`; the fused one reassociates matrix chains for `sizes` (the batch and
    /// dimension it will mostly run at — any size stays correct) and picks its kernels.
    pub fn with_backend(objective: &Objective, backend: Backend, sizes: &Sizes) -> Plan {
        let mut plan = Plan::new(objective);
        if backend == Backend::Fused {
            plan.lowered = ir::optimize(&plan.lowered, sizes);
            plan.kernels = ir::fuse::fuse(&plan.lowered);
            plan.backend = Backend::Fused;
        }
        plan
    }

    /// Empty states: emas unset (the first step takes the value), fifos empty.
    pub fn initial_state(&self) -> ObjectiveState {
        let n = self.objective.states.len();
        ObjectiveState { ema: vec![None; n], fifo: vec![None; n] }
    }

    fn inputs<'a>(&'a self, features: [&'a Tensor; 4], state: &'a ObjectiveState) -> Inputs<'a> {
        Inputs {
            features,
            params: &self.params,
            ema: &state.ema,
            fifo: &state.fifo,
            z: None,
            frozen: None,
            comm: self.comm.as_deref(),
        }
    }

    /// Updates every ema state from this batch (in declaration order, so later ones see earlier).
    pub fn update_emas(&self, f: &Features, state: &mut ObjectiveState) -> Result<()> {
        for &(i, value_node, rate_node) in &self.lowered.ema_values {
            let rate = self.eval(&[rate_node], view(f, false), state)?.remove(0);
            let rate = rate.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            let fused = match (&state.ema[i], self.backend) {
                (Some(old), Backend::Fused) => {
                    let inputs = self.inputs(view(f, false), state);
                    fused::ema_update(&self.lowered.graph, value_node, old, rate, &inputs).transpose()?
                }
                _ => None,
            };
            let new = match (fused, &state.ema[i]) {
                (Some(new), _) => new,
                (None, None) => self.eval(&[value_node], view(f, false), state)?.remove(0),
                (None, Some(old)) => {
                    let value = self.eval(&[value_node], view(f, false), state)?.remove(0);
                    ((old * rate)? + (value * (1.0 - rate))?)?
                }
            };
            state.ema[i] = Some(new.detach());
        }
        Ok(())
    }

    /// Evaluates `roots` for one view order.
    pub fn eval(&self, roots: &[Node], features: [&Tensor; 4], state: &ObjectiveState) -> Result<Vec<Tensor>> {
        execute(&self.lowered.graph, &self.kernels, roots, &self.inputs(features, state))
    }

    /// The unscaled gradient `positive + balance · negative` of one view order, [N, D], with the
    /// positive and push terms (for statistics).
    pub fn view_gradient(&self, features: [&Tensor; 4], state: &ObjectiveState) -> Result<[Tensor; 3]> {
        let l = &self.lowered;
        let shape = features[0].dims().to_vec();
        let out = self.eval(&[l.gradient, l.positive, l.push], features, state)?;
        let mut full = out.into_iter().zip([l.gradient, l.positive, l.push]).map(|(t, n)| {
            let t = crate::backend::reference::align(&t, l.graph.axes_of(n), &[ir::Axis::N, ir::Axis::D])?;
            t.broadcast_as(shape.as_slice())?.contiguous()
        });
        let mut next = || full.next().expect("three roots");
        Ok([next()?, next()?, next()?])
    }

    /// The per-sample loss [N] of one view order.
    pub fn view_loss(&self, loss: Node, features: [&Tensor; 4], state: &ObjectiveState) -> Result<Tensor> {
        let t = self.eval(&[loss], features, state)?.remove(0);
        let t = crate::backend::reference::align(&t, self.lowered.graph.axes_of(loss), &[ir::Axis::N])?;
        t.broadcast_as(features[0].dims()[0])
    }

    /// One training step: emas, both view orders, fifo pushes. The loss is not evaluated (it can
    /// cost as much as the gradient); see [`Plan::step_with_loss`].
    pub fn step(&self, f: &Features, state: &mut ObjectiveState) -> Result<Gradients> {
        self.run_step(f, state, false)
    }

    /// [`Plan::step`], also evaluating the per-sample loss where the objective has one.
    pub fn step_with_loss(&self, f: &Features, state: &mut ObjectiveState) -> Result<Gradients> {
        self.run_step(f, state, true)
    }

    fn run_step(&self, f: &Features, state: &mut ObjectiveState, with_loss: bool) -> Result<Gradients> {
        self.update_emas(f, state)?;
        let symmetric = self.objective.symmetric;
        let [g_a, pos_a, push_a] = self.view_gradient(view(f, false), state)?;
        let positive_similarity = positive_similarity(f)?;
        let mut stats = Stats {
            positive_similarity,
            positive_norm: [mean_norm(&pos_a)?, 0.0],
            push_norm: [mean_norm(&push_a)?, 0.0],
        };
        let loss_node = self.lowered.loss.filter(|_| with_loss);
        let loss_a = match loss_node {
            Some(l) => Some(self.view_loss(l, view(f, false), state)?),
            None => None,
        };
        let (g1, g2, loss) = if symmetric {
            let [g_b, pos_b, push_b] = self.view_gradient(view(f, true), state)?;
            stats.positive_norm[1] = mean_norm(&pos_b)?;
            stats.push_norm[1] = mean_norm(&push_b)?;
            let loss = match (loss_node, loss_a) {
                (Some(l), Some(a)) => Some(((a + self.view_loss(l, view(f, true), state)?)? * 0.5)?),
                _ => None,
            };
            ((g_a * 0.5)?, (g_b * 0.5)?, loss)
        } else {
            let zeros = g_a.zeros_like()?;
            (g_a, zeros, loss_a)
        };
        self.push_fifos(f, state)?;
        Ok(Gradients { g1, g2, loss, gz: None, stats })
    }

    /// One training step of the loss form: emas, the batch-level `total` and its gradient at every online feature
    /// (autodiff through the reference ops), fifo pushes. `z` are the online outputs before L2 normalisation. The
    /// gradients are N·∂total/∂x, scaled as the gradient form's per-sample ones; `stats.positive_norm` holds their
    /// mean norm at u1 and u2, and `push_norm` is zero (the loss form has no separate push).
    pub fn total_step(&self, f: &Features, z: [&Tensor; 2], state: &mut ObjectiveState) -> Result<Gradients> {
        self.update_emas(f, state)?;
        let (value, [g1, g2, gz1, gz2]) = self.total_gradient(f, z, state)?;
        let n = f.u1.dims()[0];
        let scale = |g: Tensor| g * self.global_n(n) as f64;
        let (g1, g2, gz) = (scale(g1)?, scale(g2)?, [scale(gz1)?, scale(gz2)?]);
        let positive_similarity = positive_similarity(f)?;
        let stats =
            Stats { positive_similarity, positive_norm: [mean_norm(&g1)?, mean_norm(&g2)?], push_norm: [0.0; 2] };
        let loss = Some(value.broadcast_as(n)?.contiguous()?);
        self.push_fifos(f, state)?;
        Ok(Gradients { g1, g2, loss, gz: Some(gz), stats })
    }

    /// `total` at the features and its gradients at (u1, u2, z1, z2) by autodiff (zeros where it does not depend on
    /// one); states are read, not updated.
    pub fn total_gradient(
        &self,
        f: &Features,
        z: [&Tensor; 2],
        state: &ObjectiveState,
    ) -> Result<(Tensor, [Tensor; 4])> {
        let leaf = |t: &Tensor| Var::from_tensor(&t.detach());
        let (u1, u2, z1, z2) = (leaf(&f.u1)?, leaf(&f.u2)?, leaf(z[0])?, leaf(z[1])?);
        let value = self.eval_total(
            [u1.as_tensor(), u2.as_tensor(), &f.t1, &f.t2],
            [z1.as_tensor(), z2.as_tensor()],
            state,
            None,
        )?;
        let grads = value.backward()?;
        let grad = |v: &Var| grads.get(v.as_tensor()).map_or_else(|| v.as_tensor().zeros_like(), |g| Ok(g.clone()));
        Ok((value.detach(), [grad(&u1)?, grad(&u2)?, grad(&z1)?, grad(&z2)?]))
    }

    /// `total` (a rank-0 tensor) on the reference ops, with `stopgrad` nodes taking `frozen`'s values where given.
    pub fn eval_total(
        &self,
        features: [&Tensor; 4],
        z: [&Tensor; 2],
        state: &ObjectiveState,
        frozen: Option<&HashMap<Node, Tensor>>,
    ) -> Result<Tensor> {
        let Some(total) = self.lowered.total else {
            candle_core::bail!("objective `{}` has no `total`", self.objective.name)
        };
        let inputs = Inputs { z: Some(z), frozen, ..self.inputs(features, state) };
        execute(&self.lowered.graph, &HashMap::new(), &[total], &inputs)?.remove(0).reshape(())
    }

    /// The value of every `stopgrad` node of `total` at these features, for a check that holds them fixed.
    pub fn stopgrad_values(
        &self,
        features: [&Tensor; 4],
        z: [&Tensor; 2],
        state: &ObjectiveState,
    ) -> Result<HashMap<Node, Tensor>> {
        let g = &self.lowered.graph;
        let nodes: Vec<Node> = (0..g.ops.len() as u32)
            .map(Node)
            .filter(|&n| matches!(g.op(n), ir::Op::Unary(ir::Unary::StopGrad, _)))
            .collect();
        let inputs = Inputs { z: Some(z), ..self.inputs(features, state) };
        let values = execute(g, &HashMap::new(), &nodes, &inputs)?;
        Ok(nodes.into_iter().zip(values).collect())
    }

    /// The gradient at an extra online view (a multi-crop local crop): the local feature stands in
    /// for u1 against each global target in turn, and the two are averaged. States are read, not
    /// updated (the global views already updated them this step).
    pub fn local_gradient(&self, u_local: &Tensor, f: &Features, state: &ObjectiveState) -> Result<Tensor> {
        let [a, _, _] = self.view_gradient([u_local, &f.u2, &f.t1, &f.t2], state)?;
        let [b, _, _] = self.view_gradient([u_local, &f.u1, &f.t2, &f.t1], state)?;
        (a + b)? * 0.5
    }

    /// Pushes this step's rows into every fifo, newest first, dropping the oldest beyond capacity.
    pub fn push_fifos(&self, f: &Features, state: &mut ObjectiveState) -> Result<()> {
        for (i, s) in self.objective.states.iter().enumerate() {
            let StateKind::Fifo { size, .. } = s.kind else { continue };
            let roots: Vec<Node> = self.lowered.fifo_pushes.iter().filter(|(j, _)| *j == i).map(|(_, n)| *n).collect();
            let parts = self.eval(&roots, view(f, false), state)?;
            let d = f.u1.dims()[1];
            let mut rows: Vec<Tensor> = parts.iter().map(|p| p.reshape(((), d))).collect::<Result<_>>()?;
            if let Some(old) = &state.fifo[i] {
                rows.push(old.clone());
            }
            let all = Tensor::cat(&rows, 0)?;
            let keep = all.dims()[0].min(size);
            state.fifo[i] = Some(all.narrow(0, 0, keep)?.detach());
        }
        Ok(())
    }
}

/// The mean Euclidean norm of the rows of `t`.
fn mean_norm(t: &Tensor) -> Result<f64> {
    t.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// The mean of u1·t2 over the batch.
fn positive_similarity(f: &Features) -> Result<f64> {
    (&f.u1 * &f.t2)?.sum(1)?.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// The features in view order: (u1, u2, t1, t2), or mirrored (u2, u1, t2, t1).
pub fn view(f: &Features, mirrored: bool) -> [&Tensor; 4] {
    if mirrored {
        [&f.u2, &f.u1, &f.t2, &f.t1]
    } else {
        [&f.u1, &f.u2, &f.t1, &f.t2]
    }
}
