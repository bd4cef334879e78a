//! The training loop: data → two augmented views → online and target networks →
//! normalise → the objective's plan → inject the gradient at the normalised features → backward →
//! optimiser → EMA target. Every random choice derives from (seed, step), so `--resume` continues a
//! run exactly — and `--resume` refuses a command that would compute something else —; a NaN or infinity in the
//! gradient, the weights, the statistics, the optimiser or the objective's states stops the run with the last good
//! checkpoint intact; SIGINT, SIGTERM and SIGHUP checkpoint.

use super::checkpoint::{Checkpoint, Meta};
use super::optim::Optimizer;
use super::records::{Baseline, EndRecord, EvalRecord, Phase, Record, StepRecord};
use super::run::{Loaded, RunConfig, RunDir, RunLock};
use super::schedule::{target_momentum, LrSchedule};
use crate::backend::Backend;
use crate::check::recipe::{Augment, Form, Knn, Momentum, Recipe};
use crate::check::typed::{Objective, StateKind};
use crate::collective::{tensor::gather_rows, Comm};
use crate::data::loader::{Loader, Share};
use crate::data::{self, Dataset};
use crate::error::{Error, ErrorCode};
use crate::eval::features::pooled_features_over;
use crate::eval::health::{self, first_non_finite};
use crate::eval::{self, LinearProbe};
use crate::ir::cost::Sizes;
use crate::ir::distribute::Sets;
use crate::nn::layers::l2_normalize;
use crate::nn::{LayerImpl, Outputs, SiameseNet, Target};
use crate::plan::{Features, ObjectiveState, Plan};
use crate::render::Edge;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How to run, beyond the recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// A directory for the recipe's data source (`--data DIR`), overriding the recipe's and the defaults.
    pub data_dir: Option<PathBuf>,
    /// Where runs live (`runs/`).
    pub runs_root: PathBuf,
    /// The run's name (default: objective + timestamp).
    pub name: Option<String>,
    /// Continue the named run from its checkpoint.
    pub resume: bool,
    /// With `resume`: allow the recipe fields of `run::RESUMABLE_FIELDS` (epochs, eval) to change (`--override`).
    pub allow_changes: bool,
    /// Stop after this many steps in total (smoke tests, benchmarks); the schedules still span the recipe's epochs.
    pub max_steps: Option<usize>,
    /// Use only the first this-many training images (and test images) — quick experiments.
    pub limit: Option<usize>,
    /// Gradient backend.
    pub backend: Backend,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Overrides applied, for the record.
    pub overrides: Vec<String>,
    /// Where the networks, the plan and the kNN run (`--device`); augmentation stays on the CPU and each batch is
    /// uploaded.
    pub device: Device,
    /// Which implementation the network's layers run (ours, or candle's as a baseline).
    pub layers: LayerImpl,
    /// Set (by a signal handler, say) to stop at the next step boundary with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Where warnings (collapse, a damaged checkpoint skipped, an unclean end before) are reported.
    pub edge: Edge,
    /// The MPI job this process is one rank of (`None`: it trains alone). Every rank trains on its rows of the
    /// recipe's (global) batch; rank 0 alone writes the run directory and evaluates.
    pub job: Option<Comm>,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps done in total.
    pub steps: usize,
    /// kNN top-1 after the last evaluation.
    pub knn: Option<f64>,
    /// Linear-probe top-1 of the finished encoder.
    pub linear: Option<f64>,
    /// Whether the stop signal ended it.
    pub interrupted: bool,
}

/// The evaluation bank's and queries' features: the global average kNN reads and, when the probe reads others
/// (the recipe's `probe` grid), those.
struct EvalFeatures {
    knn: (Tensor, Tensor),
    probe: Option<(Tensor, Tensor)>,
}

impl EvalFeatures {
    /// What the linear probe reads.
    fn for_probe(&self) -> &(Tensor, Tensor) {
        self.probe.as_ref().unwrap_or(&self.knn)
    }
}

/// Everything that changes during training.
struct Trainer<'a> {
    recipe: &'a Recipe,
    /// The recipe's kNN evaluation, or none where the data has no labels to evaluate with.
    eval: Option<Knn>,
    plan: Plan,
    data: Arc<Dataset>,
    net: SiameseNet,
    target: Option<Target>,
    optimizer: Optimizer,
    lr: LrSchedule,
    state: ObjectiveState,
    run: RunDir,
    /// Held for as long as the trainer writes the run directory (rank 0's only).
    _lock: Option<RunLock>,
    /// This process's job: itself alone, or one rank of several.
    comm: Comm,
    /// `RunConfig::identity_sha256`, written into every checkpoint and required of the one resumed.
    identity: String,
    steps_per_epoch: usize,
    total_steps: usize,
    last_checkpoint: Option<usize>,
    last_knn: Option<f64>,
    /// Each step's views, made ahead on a worker thread (started at the first step trained).
    loader: Option<Loader>,
    collapse: health::CollapseMonitor,
}

/// Trains `objective` with `recipe`, writing the run directory.
pub fn train(source: &str, objective: &Objective, recipe: &Recipe, opts: &TrainOptions) -> Result<TrainSummary, Error> {
    if let Some((message, help)) = crate::check::recipe::form_problem(objective, recipe) {
        return Err(Error::new(ErrorCode::TrainForm, message).help(help));
    }
    let device = opts.device.clone();
    let mut data = data::load_recipe(recipe, opts.data_dir.as_deref())?;
    if let Some(limit) = opts.limit {
        data.limit(limit);
    }
    let n_train = data.train_len();
    if recipe.batch > n_train {
        return Err(Error::new(
            ErrorCode::TrainConfig,
            format!("batch {} is larger than the {n_train} training images", recipe.batch),
        )
        .help("lower it with `--set batch=...`"));
    }
    if recipe.batch < 2 {
        return Err(Error::new(ErrorCode::TrainConfig, format!("batch {} is below 2", recipe.batch))
            .help("BatchNorm needs two samples: use `--set batch=2` or more"));
    }
    let comm = opts.job.clone().unwrap_or_else(Comm::solo);
    let (rank, ranks) = (comm.rank(), comm.ranks());
    let root = rank == 0;
    if !recipe.batch.is_multiple_of(ranks) || recipe.batch / ranks < 2 {
        return Err(Error::new(
            ErrorCode::RanksMismatch,
            format!("batch {} does not split over {ranks} ranks into shares of two or more", recipe.batch),
        )
        .help(format!(
            "the batch is global, and each rank's BatchNorm needs two samples: choose a multiple of {ranks} of at least {}, or start fewer ranks",
            2 * ranks
        )));
    }
    if ranks > 1 && recipe.augment.iter().any(|a| matches!(a, Augment::Cutmix { .. })) {
        return Err(Error::new(
            ErrorCode::TrainConfig,
            "CutMix mixes images across the batch, which is split over ranks",
        )
        .help("train CutMix recipes in one process, or drop `cutmix(...)` from `augment`"));
    }
    let steps_per_epoch = n_train / recipe.batch;
    let total_steps = steps_per_epoch * recipe.epochs;
    let mut net = SiameseNet::from_recipe(recipe, data.shape, DType::F32, &device)?.with_layers(opts.layers);
    if recipe.sync_bn && ranks > 1 {
        if opts.layers != LayerImpl::Ours || !device.is_cpu() {
            return Err(Error::new(
                ErrorCode::TrainConfig,
                format!("`sync_bn` needs our layers on the CPU, not {:?} layers on {device:?}", opts.layers),
            )
            .help("train on the CPU with the default layers, or drop `sync_bn` (BatchNorm per rank)"));
        }
        net = net.with_sync_bn(comm.clone());
    }
    let target = match recipe.momentum {
        Momentum::None => None,
        _ => Some(Target::new(&net)?),
    };
    let optimizer = Optimizer::new(&recipe.optimizer, net.params())?;
    let backend = if device.is_cpu() { opts.backend } else { Backend::Reference };
    if backend != opts.backend && root {
        println!("note: the fused CUDA kernels are not yet verified on a GPU (`verify --device cuda`); on {device:?} the plan runs candle's ops (reference)");
    }
    let sizes = Sizes::of(objective, recipe.batch, net.projection_dim());
    let plan = if ranks > 1 {
        Plan::for_rank(objective, backend, &sizes, Sets::ByBytes, comm.clone())
    } else {
        Plan::with_backend(objective, backend, &sizes)
    };
    let state = plan.initial_state();
    let name = opts.name.clone().unwrap_or_else(|| super::run::default_name(&objective.name));
    let config = RunConfig {
        version: env!("CARGO_PKG_VERSION").into(),
        objective: objective.name.clone(),
        source: source.into(),
        recipe: serde_json::to_value(recipe).expect("a Recipe always serialises"),
        recipe_text: recipe.to_string(),
        overrides: opts.overrides.clone(),
        limit: opts.limit,
        params: objective.params.iter().map(|p| (p.name.clone(), p.value)).collect(),
        seed: recipe.seed,
        backend: format!("{:?}", opts.backend).to_lowercase(),
        data: data.describe(),
        train_images: n_train,
        test_images: data.test_len(),
        threads: candle_core::utils::get_num_threads(),
        data_sha256: data.fingerprint(),
    };
    if device.is_cpu() {
        super::memory::check(&net, recipe, super::memory::available_bytes())?;
    }
    // Only rank 0 writes the run directory; the others read it to resume.
    let (run, lock) = match (root, opts.resume) {
        (false, _) => (RunDir { path: opts.runs_root.join(&name) }, None),
        (true, true) => resume_dir(opts, &name, &config).map(|(r, l)| (r, Some(l)))?,
        (true, false) => new_dir(opts, &name, &config).map(|(r, l)| (r, Some(l)))?,
    };
    if let Some(warning) = lock.as_ref().and_then(|l| l.unclean_warning(&run)) {
        opts.edge.report(&warning);
    }
    // Every rank takes part in an evaluation (each extracts a block of the features); rank 0 scores and reports.
    let eval = match (&recipe.eval, data.eval_splits()) {
        (Some(k), Ok(_)) => Some(k.clone()),
        (Some(_), Err(e)) => {
            if root {
                println!("note: kNN evaluation is off: {e}");
            }
            None
        }
        (None, _) => None,
    };
    let mut t = Trainer {
        recipe,
        eval,
        plan,
        net,
        target,
        optimizer,
        lr: LrSchedule::from_recipe(recipe, steps_per_epoch),
        state,
        run,
        _lock: lock,
        comm: comm.clone(),
        identity: config.identity_sha256(),
        steps_per_epoch,
        total_steps,
        last_checkpoint: None,
        last_knn: None,
        loader: None,
        collapse: health::CollapseMonitor::default(),
        data: Arc::new(data),
    };
    let mut step = 0;
    if opts.resume {
        step = t.restore(&opts.edge)?;
        if root {
            println!("resumed {} at step {step} of {total_steps}", t.run.path.display());
        }
    } else if root {
        println!(
            "run {} — {} ({} training, {} test images)",
            t.run.path.display(),
            t.data.describe(),
            n_train,
            t.data.test_len()
        );
    }
    if let Some(knn) = t.eval.clone().filter(|_| !opts.resume) {
        let knn_protocol = eval::features::knn_protocol(&knn, &t.data);
        let probe_protocol = LinearProbe::default().protocol(t.recipe.probe.grid);
        // In one process the baselines may come from an earlier run with the same images, protocols and initial
        // encoder (a sweep's cells); over ranks they are computed, every rank extracting a block of the features.
        let key = match ranks {
            1 => Some(super::baseline::key(&config.data_sha256, &[&knn_protocol, &probe_protocol], &t.net)?),
            _ => None,
        };
        let kept = key.as_deref().and_then(|k| super::baseline::read(&opts.runs_root, k));
        let from_cache = kept.is_some();
        let baseline = match kept {
            Some(b) => {
                t.last_knn = Some(b.random_init_knn);
                Some(b)
            }
            None => t.baselines()?,
        };
        if let Some(b) = baseline.filter(|_| root) {
            println!("baseline: raw-pixel kNN {:.2} % ({knn_protocol})", b.raw_pixel_knn * 100.0);
            println!("baseline: random-init encoder kNN {:.2} %", b.random_init_knn * 100.0);
            let linear = |v: Option<f64>| v.unwrap_or(f64::NAN) * 100.0;
            println!("baseline: raw-pixel linear probe {:.2} % ({probe_protocol})", linear(b.raw_pixel_linear));
            println!("baseline: random-init encoder linear probe {:.2} %", linear(b.random_init_linear));
            match (&key, from_cache) {
                (Some(k), true) => println!(
                    "baseline: as an earlier run with the same images, protocols and initial encoder measured ({})",
                    super::baseline::path(&opts.runs_root, k).display()
                ),
                (Some(k), false) => {
                    // Not kept, the next run computes them again: nothing is lost.
                    let _ = super::baseline::write(&opts.runs_root, k, &b);
                }
                (None, _) => {}
            }
            t.run.append_metrics(&Record::Baseline(b))?;
        }
    }

    let stop = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));
    // The linear probe of the finished encoder, on the last evaluation's features (a `--max-steps` stretch is not
    // finished).
    let mut linear = None;
    let started = Instant::now();
    let first = step;
    let progress = if root {
        super::progress::Progress::new(stop as u64, step as u64)
    } else {
        super::progress::Progress::silent()
    };
    while step < stop {
        let asked = opts.stop.load(Ordering::SeqCst);
        let stopping = if ranks > 1 { super::ranks::agree_to_stop(&*comm, asked)? } else { asked };
        if stopping {
            t.checkpoint(step)?;
            progress.finish();
            if root {
                println!("interrupted: checkpoint saved at step {step}; continue with --resume");
            }
            return Ok(TrainSummary {
                run_dir: t.run.path.clone(),
                steps: step,
                knn: t.last_knn,
                linear: None,
                interrupted: true,
            });
        }
        let log = step.is_multiple_of(opts.log_every.max(1)) || step + 1 == stop;
        let record = t.step(step, log)?;
        step += 1;
        if log && ranks > 1 {
            super::ranks::check_replicas(&*comm, t.net.params(), step)?;
        }
        if record.is_none() {
            progress.step(step as u64, None);
        }
        if let Some(mut record) = record.filter(|_| root) {
            let rate = (step - first) as f64 * t.recipe.batch as f64 / started.elapsed().as_secs_f64();
            let eta = (stop - step) as f64 * t.recipe.batch as f64 / rate.max(1e-9);
            record.pairs_per_s = rate;
            let line = format!(
                "epoch {:>3} step {:>6}/{stop}  {}  z-std {:.4}  pairs/s {:.1}  eta {:.0}s",
                step / t.steps_per_epoch,
                step,
                match record.loss {
                    Some(l) => format!("loss {l:.4}"),
                    None => format!("pos-sim {:.4}", record.pos_sim),
                },
                record.z_std_online,
                rate,
                eta
            );
            progress.step(step as u64, Some(&line));
            if let Some(warning) = t.collapse.observe(record.z_std_online, record.z_std_healthy) {
                opts.edge.report(&warning);
            }
            t.run.append_metrics(&Record::Step(record))?;
        }
        let epoch_done = step.is_multiple_of(t.steps_per_epoch);
        let epoch = step / t.steps_per_epoch;
        if epoch_done || step == stop {
            if let Some(knn) = &t.eval.clone() {
                if epoch.is_multiple_of(knn.every) || step == stop {
                    let features = t.features(step == total_steps)?;
                    if root {
                        let top1 = t.knn(&features.knn)?;
                        if step == total_steps {
                            linear = Some(t.linear(features.for_probe())?);
                        }
                        progress.println(&format!(
                            "epoch {epoch:>3}: kNN top-1 {:.2} % ({})",
                            top1 * 100.0,
                            eval::features::knn_protocol(knn, &t.data)
                        ));
                        t.run.append_metrics(&Record::Eval(EvalRecord { epoch, step, knn_top1: top1 }))?;
                    }
                }
            }
            if epoch.is_multiple_of(t.recipe.checkpoint) || step == stop {
                t.checkpoint(step)?;
            }
        }
    }
    progress.finish();
    if let Some(top1) = linear {
        println!("final linear probe {:.2} %", top1 * 100.0);
    }
    if root {
        t.run.append_metrics(&Record::End(EndRecord { step, peak_rss_mb: peak_rss_mb(), linear_top1: linear }))?;
        t.run.plot()?;
    }
    Ok(TrainSummary { run_dir: t.run.path.clone(), steps: step, knn: t.last_knn, linear, interrupted: false })
}

/// A new run's directory, locked, with its `config.json`.
fn new_dir(opts: &TrainOptions, name: &str, config: &RunConfig) -> Result<(RunDir, RunLock), Error> {
    let (run, lock) = RunDir::create(&opts.runs_root, name)?;
    run.write_config(config)?;
    Ok((run, lock))
}

/// The run to resume, locked, after checking that this command computes what the run computed: its objective
/// source, resolved recipe and data must be the run's (`ssl::run::mismatch` names each difference); with
/// `allow_changes` the epochs and evaluation may change, and `config.json` is updated to say so.
fn resume_dir(opts: &TrainOptions, name: &str, config: &RunConfig) -> Result<(RunDir, RunLock), Error> {
    let run = RunDir::open(&opts.runs_root.join(name))?;
    let lock = run.lock()?;
    let saved = run.read_config()?;
    let differences = saved.differences(config, opts.allow_changes);
    if !differences.is_empty() {
        return Err(Error::new(
            ErrorCode::RunMismatch,
            format!(
                "--resume would not continue {}: this command differs from the run's config.json in\n  - {}",
                run.path.display(),
                differences.join("\n  - ")
            ),
        )
        .help(
            "resume with the command that started the run (the same file, --set, --limit and --data; config.json \
             keeps them), or start a new run under another --name; to change only the epochs or the evaluation, add \
             --override",
        ));
    }
    if saved.recipe != config.recipe {
        run.write_config(config)?;
    }
    Ok((run, lock))
}

/// Σ over the batch of ⟨u, g⟩ / B: its gradient at u is g / B, which backward carries into the encoder.
/// `sum(u · g) / N` with N the global batch: its gradient at `u` is `g / N`, and summed over ranks the network's
/// gradients are the single-process ones.
fn surrogate(u: &Tensor, g: &Tensor, global_n: usize) -> candle_core::Result<Tensor> {
    (u * g.detach())?.sum_all()? / global_n as f64
}

impl Trainer<'_> {
    /// One optimisation step; with `log`, the metrics record of the step.
    fn step(&mut self, step: usize, log: bool) -> Result<Option<StepRecord>, Error> {
        let recipe = self.recipe;
        let epoch = step / self.steps_per_epoch;
        let conv_before = self.net.conv_work();
        let mut clock = Phases::start();
        let share = Share { rank: self.comm.rank(), ranks: self.comm.ranks() };
        let loader = match &mut self.loader {
            Some(loader) => loader,
            None => self.loader.insert(Loader::spawn(
                self.data.clone(),
                recipe,
                self.steps_per_epoch,
                step..self.total_steps,
                share,
            )),
        };
        // The clock's augment phase is the time the step waited for its views.
        let made = loader.next_step()?;
        debug_assert_eq!(made.step, step, "the loader runs the steps in order");
        let [v1, v2] = made.views;
        let device = self.net.device();
        // This rank's rows of the batch (their views are the ones one process makes of them).
        let (x1, x2) = (v1.global_tensor(device)?, v2.global_tensor(device)?);
        clock.lap(Phase::Augment);

        let o1 = self.net.forward(&x1, true)?;
        let o2 = self.net.forward(&x2, true)?;
        let head = |o: &Outputs| o.prediction.clone().unwrap_or_else(|| o.projection.clone());
        let (u1, u2) = (l2_normalize(&head(&o1))?, l2_normalize(&head(&o2))?);
        clock.lap(Phase::OnlineForward);
        let (t1, t2) = match &self.target {
            Some(target) => {
                (target.forward_no_grad(&x1, true)?.projection, target.forward_no_grad(&x2, true)?.projection)
            }
            None => (o1.projection.detach(), o2.projection.detach()),
        };
        let (mut t1, mut t2) = (l2_normalize(&t1)?.detach(), l2_normalize(&t2)?.detach());
        // CutMix: a mixed image's partner target is the same mix of the partners' targets.
        if let Some(c) = &v1.cutmix {
            t2 = mix_targets(&t2, &c.perm, c.lambda)?;
        }
        if let Some(c) = &v2.cutmix {
            t1 = mix_targets(&t1, &c.perm, c.lambda)?;
        }
        let features = Features { u1: u1.detach(), u2: u2.detach(), t1, t2 };
        clock.lap(Phase::TargetForward);
        let (z1, z2) = (head(&o1), head(&o2));
        // A queue is empty until its first push: a logsumexp over it is then −inf, which is defined, not a failure.
        let queue_empty = self.state.fifo.iter().zip(&self.plan.objective.states).any(|(rows, s)| {
            matches!(s.kind, StateKind::Fifo { .. }) && rows.as_ref().is_none_or(|t| t.dims()[0] == 0)
        });
        let grads = match recipe.form {
            Form::Loss => self.plan.total_step(&features, [&z1.detach(), &z2.detach()], &mut self.state)?,
            Form::Gradient if log && self.plan.lowered.loss.is_some() => {
                self.plan.step_with_loss(&features, &mut self.state)?
            }
            Form::Gradient => self.plan.step(&features, &mut self.state)?,
        };
        clock.lap(Phase::Plan);
        let n = self.plan.global_n(u1.dims()[0]);
        let mut objective = (surrogate(&u1, &grads.g1, n)? + surrogate(&u2, &grads.g2, n)?)?;
        if let Some([gz1, gz2]) = &grads.gz {
            objective = ((objective + surrogate(&z1, gz1, n)?)? + surrogate(&z2, gz2, n)?)?;
        }
        // Multi-crop: local crops are online views only, each pulled toward both global targets and
        // weighted as one global view (whose gradient carries the ½ of the two view orders).
        let locals = v1.local_tensors(device)?;
        let mut local_outputs = Vec::with_capacity(locals.len());
        for local in &locals {
            let o = self.net.forward(local, true)?;
            let u = l2_normalize(&head(&o))?;
            let g = self.plan.local_gradient(&u.detach(), &features, &self.state)?;
            objective = (objective + surrogate(&u, &(g * 0.5)?, n)?)?;
            local_outputs.push(o);
        }
        let value = objective.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(self.non_finite(step, &format!("the gradient injected at the normalised features ({value})")));
        }
        clock.lap(Phase::LocalCrops);
        let passes: Vec<Outputs> = [o1, o2].into_iter().chain(local_outputs).collect();
        let mut store = self.net.backward(&objective, passes)?;
        if self.comm.ranks() > 1 {
            super::ranks::all_reduce_grads(&*self.comm, self.net.params(), &mut store)?;
        }
        clock.lap(Phase::Backward);
        let lr = self.lr.at(step);
        self.optimizer.step(&store, lr)?;
        clock.lap(Phase::Optimizer);
        let momentum = target_momentum(&recipe.momentum, step, self.total_steps);
        if let (Some(target), Some(m)) = (&mut self.target, momentum) {
            target.ema_update(&self.net, m)?;
        }
        if let Some(name) = self.first_poisoned()? {
            return Err(self.non_finite(step, &format!("`{name}`, after the update,")));
        }
        clock.lap(Phase::Ema);
        let conv = self.net.conv_work();
        if !log {
            return Ok(None);
        }
        let d = features.u1.dims()[1];
        // Health over the global batch: the features' rows of every rank, the plan's means averaged over ranks.
        let (batch_u1, batch_t1, stats) = if self.comm.ranks() > 1 {
            (
                gather_rows(&*self.comm, &features.u1, 1)?,
                gather_rows(&*self.comm, &features.t1, 1)?,
                super::ranks::global_stats(&*self.comm, &grads.stats)?,
            )
        } else {
            (features.u1.clone(), features.t1.clone(), grads.stats.clone())
        };
        let loss = match &grads.loss {
            Some(loss) => {
                let l = if self.comm.ranks() > 1 {
                    super::ranks::global_mean(&*self.comm, loss)?
                } else {
                    loss.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?
                };
                if l == f64::NEG_INFINITY && queue_empty {
                    None
                } else if !l.is_finite() {
                    return Err(self.non_finite(step, &format!("the objective's loss ({l})")));
                } else {
                    Some(l)
                }
            }
            None => None,
        };
        let record = StepRecord {
            // Steps completed, as checkpoints and evaluations count them.
            step: step + 1,
            epoch,
            lr,
            momentum,
            pos_sim: stats.positive_similarity,
            positive_norm: stats.positive_norm,
            push_norm: stats.push_norm,
            z_std_online: health::z_std(&batch_u1)?,
            z_std_target: health::z_std(&batch_t1)?,
            z_std_healthy: 1.0 / (d as f64).sqrt(),
            effective_rank: health::effective_rank(&batch_u1)?,
            phase_ms: clock.laps,
            rss_mb: rss_mb(),
            conv_ms: (conv.seconds - conv_before.seconds) * 1e3,
            conv_gflop: (conv.flops - conv_before.flops) * 1e-9,
            loss,
            // Filled in by the loop, which knows the run's rate.
            pairs_per_s: f64::NAN,
        };
        // The gradient's own statistics overflow before the weights do (a balance of 1e30): stop there, and never
        // log a value JSON cannot hold.
        let [p1, p2] = record.positive_norm;
        let [n1, n2] = record.push_norm;
        for (what, v) in
            [("the positive similarity", record.pos_sim), ("the positive term", p1.max(p2)), ("the push", n1.max(n2))]
        {
            if !v.is_finite() {
                return Err(self.non_finite(step, &format!("{what} ({v})")));
            }
        }
        Ok(Some(record))
    }

    /// The run's error for a NaN or infinity in `what` during step `step` (counted from 0; reported from 1, as the
    /// logs count).
    fn non_finite(&self, step: usize, what: &str) -> Error {
        let kept = match self.last_checkpoint {
            Some(s) => format!("and the last good checkpoint (step {s}) is intact"),
            None => "before any checkpoint was written".to_string(),
        };
        Error::new(
            ErrorCode::TrainNonFinite,
            format!("{what} became NaN or infinite in step {}; the run stopped, {kept}", step + 1),
        )
        .help("usually a learning rate or balance too large for this batch and dimension (try `--set optimizer=sgd(lr = ...)` with a smaller lr, or a smaller lambda), or features collapsing to zero before normalisation")
    }

    /// The checkpoint name of the first weight, statistic, target tensor, optimiser or objective state that holds a
    /// NaN or infinity — checked after every update, so that a poisoned state is never written as a checkpoint.
    fn first_poisoned(&self) -> Result<Option<String>, Error> {
        let mut tensors: Vec<(String, Tensor)> = self.snapshot(0).to_tensors().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in tensors {
            if first_non_finite(&t)?.is_some() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// kNN top-1 on the features `(bank, queries)` (from [`Trainer::features`]), kept as the run's latest.
    fn knn(&mut self, (bank, queries): &(Tensor, Tensor)) -> Result<f64, Error> {
        let Some(k) = &self.eval else { return Ok(f64::NAN) };
        let splits = self.data.eval_splits()?;
        let top1 = eval::knn_accuracy(bank, splits.bank_labels, queries, splits.query_labels, k.k, k.t)?;
        self.last_knn = Some(top1);
        Ok(top1)
    }

    /// The backbone features of the evaluation bank and queries (un-augmented images): the global average kNN
    /// reads, then, with `probe`, those the linear probe reads (the recipe's `probe` grid; the same when it is 1).
    /// Over ranks, each extracts a block with rank 0's running statistics, and every rank gets them all.
    fn features(&self, probe: bool) -> Result<EvalFeatures, Error> {
        let (shape, norm) = (self.data.shape, &self.data.norm);
        let splits = self.data.eval_splits()?;
        if self.comm.ranks() > 1 && !self.recipe.sync_bn {
            super::ranks::share_running_stats(&*self.comm, &self.net)?;
        }
        let grid = self.recipe.probe.grid;
        let grids = if probe && grid != 1 { vec![1, grid] } else { vec![1] };
        let mut bank = pooled_features_over(&*self.comm, &self.net, splits.bank, shape, norm, &grids)?;
        let mut queries = pooled_features_over(&*self.comm, &self.net, splits.queries, shape, norm, &grids)?;
        let knn = (bank.remove(0), queries.remove(0));
        let probe = bank.pop().zip(queries.pop());
        Ok(EvalFeatures { knn, probe })
    }

    /// The baselines, measured: every rank extracts its block of the random-init features; rank 0 scores them
    /// beside the raw pixels and returns them (the others `None`).
    fn baselines(&mut self) -> Result<Option<Baseline>, Error> {
        let init_features = self.features(true)?;
        if self.comm.rank() != 0 {
            return Ok(None);
        }
        let Some(knn) = self.eval.clone() else { return Ok(None) };
        let raw_pixel_knn = eval::raw_pixel_knn(&self.data, knn.k, knn.t)?;
        let random_init_knn = self.knn(&init_features.knn)?;
        let raw_pixel_linear = self.linear(&eval::raw_pixel_features(&self.data)?)?;
        let random_init_linear = self.linear(init_features.for_probe())?;
        Ok(Some(Baseline {
            step: 0,
            raw_pixel_knn,
            random_init_knn,
            raw_pixel_linear: Some(raw_pixel_linear),
            random_init_linear: Some(random_init_linear),
        }))
    }

    /// Linear-probe top-1 on the features `(bank, queries)` (the standard protocol, [`LinearProbe::default`]).
    fn linear(&self, (bank, queries): &(Tensor, Tensor)) -> Result<f64, Error> {
        let splits = self.data.eval_splits()?;
        let probe = LinearProbe::default();
        Ok(eval::linear_probe(bank, splits.bank_labels, queries, splits.query_labels, &probe)?.test_accuracy)
    }

    /// Everything the next step needs: weights, BatchNorm statistics, target, optimiser, states.
    fn snapshot(&self, step: usize) -> Checkpoint {
        let mut states = HashMap::new();
        for (i, s) in self.plan.objective.states.iter().enumerate() {
            if let Some(t) = self.state.ema[i].as_ref().or(self.state.fifo[i].as_ref()) {
                states.insert(s.name.clone(), t.clone());
            }
        }
        Checkpoint {
            meta: Meta {
                step,
                epoch: step / self.steps_per_epoch,
                knn_top1: self.last_knn,
                run_identity: self.identity.clone(),
            },
            // The parameters' own storage, not copies: the snapshot is checked or written before the next update.
            online: self.net.params().iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect(),
            buffers: self.net.buffers().to_map(),
            target: self.target.as_ref().map(Target::to_map).unwrap_or_default(),
            optimizer: self.optimizer.state(),
            states,
        }
    }

    /// Saves the snapshot at `step`. Nothing in it is poisoned: every step checks the state it leaves
    /// ([`Trainer::first_poisoned`]), and a resumed state was checked when its checkpoint was read.
    fn checkpoint(&mut self, step: usize) -> Result<(), Error> {
        let checkpoint = self.snapshot(step);
        if self.comm.rank() == 0 {
            self.run.save_checkpoint(&checkpoint)?;
        }
        self.last_checkpoint = Some(step);
        Ok(())
    }

    /// Loads the latest checkpoint, which must be this run's; returns its step (0 when the run has none yet: it was
    /// stopped before its first checkpoint, and starts again from the beginning).
    fn restore(&mut self, edge: &Edge) -> Result<usize, Error> {
        let root = self.comm.rank() == 0;
        let Some(loaded) = self.run.load_checkpoint()? else {
            if root {
                println!("note: {} has no checkpoint yet; it starts again from step 0", self.run.path.display());
                self.run.truncate_metrics(0)?;
            }
            return Ok(0);
        };
        if let Some(warning) = loaded.fallback_warning() {
            edge.report(&warning);
        }
        let Loaded { checkpoint, file, .. } = loaded;
        if checkpoint.meta.run_identity != self.identity {
            return Err(Error::new(
                ErrorCode::RunMismatch,
                format!(
                    "{} does not belong to run {}: it was written by a run of another objective, recipe or data",
                    file.display(),
                    self.run.path.display()
                ),
            )
            .help("put the run's own checkpoint back, or start a new run under another --name"));
        }
        // Checkpoints are read on the CPU; everything they restore lives where the network does.
        let checkpoint = checkpoint.to_device(self.net.device())?;
        checkpoint.restore_online(&self.net)?;
        if let Some(target) = &mut self.target {
            target.load(&checkpoint.target)?;
        }
        self.optimizer.load_state(&checkpoint.optimizer)?;
        for (i, s) in self.plan.objective.states.iter().enumerate() {
            if let Some(t) = checkpoint.states.get(&s.name) {
                match s.kind {
                    StateKind::Ema { .. } => self.state.ema[i] = Some(t.clone()),
                    StateKind::Fifo { .. } => self.state.fifo[i] = Some(t.clone()),
                }
            }
        }
        let step = checkpoint.meta.step;
        self.last_knn = checkpoint.meta.knn_top1;
        self.last_checkpoint = Some(step);
        if root {
            self.run.truncate_metrics(step)?;
        }
        Ok(step)
    }
}

/// Wall time per phase of a step, for the throughput benchmark and the metrics.
struct Phases {
    last: Instant,
    laps: BTreeMap<Phase, f64>,
}

impl Phases {
    fn start() -> Self {
        Phases { last: Instant::now(), laps: BTreeMap::new() }
    }

    /// Ends `phase`, in ms.
    fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.laps.insert(phase, (now - self.last).as_secs_f64() * 1e3);
        self.last = now;
    }
}

/// Peak resident memory of this process in MB (Linux `VmHWM`), if readable.
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident memory now, in MB (Linux), logged with every step so that growth over a long run shows.
pub fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

fn proc_status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// λ·t + (1 − λ)·t[perm], renormalised.
fn mix_targets(t: &Tensor, perm: &[usize], lambda: f64) -> candle_core::Result<Tensor> {
    let idx = Tensor::from_vec(perm.iter().map(|&i| i as u32).collect::<Vec<_>>(), perm.len(), t.device())?;
    let partner = t.index_select(&idx, 0)?;
    l2_normalize(&((t * lambda)? + (partner * (1.0 - lambda))?)?)
}
