//! What a run writes to `metrics.jsonl`: one typed record per line, tagged by `kind`. The training loop writes
//! them; the plots, `bench train` and the tests read them back through the same types, never by string key.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The baselines printed before training: raw pixels and the random-init encoder.
    Baseline(Baseline),
    /// One logged optimisation step.
    Step(StepRecord),
    /// An evaluation at the end of an epoch.
    Eval(EvalRecord),
    /// The end of a run (or of a `--max-steps` stretch of it).
    End(EndRecord),
}

impl Record {
    /// Steps completed when the record was written (0 before training), as checkpoints count them.
    pub fn step(&self) -> usize {
        match self {
            Record::Baseline(b) => b.step,
            Record::Step(s) => s.step,
            Record::Eval(e) => e.step,
            Record::End(e) => e.step,
        }
    }
}

/// The evaluation protocol's baselines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Always 0: before the first step.
    pub step: usize,
    /// kNN top-1 on raw pixels.
    pub raw_pixel_knn: f64,
    /// kNN top-1 of the encoder at initialisation.
    pub random_init_knn: f64,
    /// Linear-probe top-1 on raw pixels (runs from before the probe was a baseline have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_pixel_linear: Option<f64>,
    /// Linear-probe top-1 of the encoder at initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_init_linear: Option<f64>,
}

/// One logged step: schedules, health metrics, timing and memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed, including this one.
    pub step: usize,
    /// The epoch the step belongs to (from 0).
    pub epoch: usize,
    /// Learning rate of the step.
    pub lr: f64,
    /// Target momentum of the step; `None` without a momentum target.
    pub momentum: Option<f64>,
    /// Mean cosine similarity of the positive pairs.
    #[serde(deserialize_with = "nullable")]
    pub pos_sim: f64,
    /// Mean norm of the positive term, per view order.
    pub positive_norm: [f64; 2],
    /// Mean norm of balance · negative, per view order.
    pub push_norm: [f64; 2],
    /// Std of the normalised online features (0: collapse).
    #[serde(deserialize_with = "nullable")]
    pub z_std_online: f64,
    /// Std of the normalised target features.
    #[serde(deserialize_with = "nullable")]
    pub z_std_target: f64,
    /// 1/√D, the std of uniformly spread features.
    pub z_std_healthy: f64,
    /// Effective rank of the batch's online features.
    #[serde(deserialize_with = "nullable")]
    pub effective_rank: f64,
    /// Wall time of each phase of the step, in ms.
    pub phase_ms: BTreeMap<Phase, f64>,
    /// Resident memory after the step, in MB (Linux).
    pub rss_mb: Option<f64>,
    /// Time inside our convolution kernels, in ms.
    pub conv_ms: f64,
    /// Direct-convolution GFLOP they computed.
    pub conv_gflop: f64,
    /// The objective's loss, where it has one.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Pairs per second since training (re)started.
    pub pairs_per_s: f64,
}

impl StepRecord {
    /// The step's wall time: the sum of its phases, in ms.
    pub fn step_ms(&self) -> f64 {
        self.phase_ms.values().sum()
    }
}

/// An evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed.
    pub step: usize,
    /// Weighted kNN top-1 accuracy.
    pub knn_top1: f64,
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndRecord {
    /// Steps completed.
    pub step: usize,
    /// Peak resident memory of the process, in MB (Linux).
    pub peak_rss_mb: Option<f64>,
    /// Linear-probe top-1 of the final encoder, when the run evaluates and trained to its last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_top1: Option<f64>,
}

/// The phases a step is timed in, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Gathering the batch and augmenting both views.
    Augment,
    /// The online network on both views, and normalisation.
    OnlineForward,
    /// The target network on both views (or detaching the online outputs).
    TargetForward,
    /// The objective's plan: the injected gradient and the states.
    Plan,
    /// Multi-crop's local views.
    LocalCrops,
    /// Backward through heads and encoder.
    Backward,
    /// The optimiser update.
    Optimizer,
    /// The EMA target update.
    Ema,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 8] = [
        Phase::Augment,
        Phase::OnlineForward,
        Phase::TargetForward,
        Phase::Plan,
        Phase::LocalCrops,
        Phase::Backward,
        Phase::Optimizer,
        Phase::Ema,
    ];

    /// A short column header.
    pub fn short(self) -> &'static str {
        match self {
            Phase::Augment => "augment",
            Phase::OnlineForward => "online",
            Phase::TargetForward => "target",
            Phase::Plan => "plan",
            Phase::LocalCrops => "local",
            Phase::Backward => "backward",
            Phase::Optimizer => "optim",
            Phase::Ema => "ema",
        }
    }
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`, which reads back as NaN.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}
