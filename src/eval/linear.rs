//! The linear probe: multinomial logistic regression on frozen, standardised features — candle-nn's `Linear` layer
//! and cross-entropy, trained with mini-batch SGD by the runtime's own optimiser and schedule (momentum, cosine-decayed
//! rate, weight decay on the weight only), using candle's autodiff.
//! It complements kNN: kNN measures the geometry of normalised features, the probe their linear separability.

use super::knn::accuracy;
use super::{features, EvalError};
use crate::check::recipe;
use crate::nn::{ParamKind, Params};
use crate::runtime::optim::Optimizer;
use crate::runtime::schedule::warmup_cosine;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{loss::cross_entropy, Linear};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Training settings of the probe; the defaults suit both 128-d learned features and raw pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearProbe {
    /// Passes over the training features.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Peak learning rate (cosine-decayed to zero over training).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 penalty on the weights (not the bias), added to the gradient.
    pub weight_decay: f64,
    /// Seed of the mini-batch order.
    pub seed: u64,
}

impl Default for LinearProbe {
    fn default() -> Self {
        LinearProbe { epochs: 30, batch: 256, lr: 0.1, momentum: 0.9, weight_decay: 1e-3, seed: 0 }
    }
}

impl LinearProbe {
    /// The protocol, printed with every number; `grid` says which backbone features it reads (the recipe's
    /// `probe`).
    pub fn protocol(&self, grid: usize) -> String {
        let backbone = match grid {
            1 => "backbone".to_string(),
            g => format!("backbone's last map averaged over a {g}×{g} grid,"),
        };
        format!(
            "softmax regression on standardised frozen features ({backbone} or pixels), {} epochs, batch {}, SGD lr {} cosine, momentum {}, weight decay {}",
            self.epochs, self.batch, self.lr, self.momentum, self.weight_decay
        )
    }
}

/// What the probe reached.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    /// Top-1 accuracy on the test features, in [0, 1]: the number to report.
    pub test_accuracy: f64,
    /// Top-1 accuracy on the training features (how far the probe fits).
    pub train_accuracy: f64,
    /// Mean cross-entropy over the last epoch.
    pub loss: f64,
}

/// Trains a softmax classifier on `train` features `[n, d]` (standardised with the training mean and
/// standard deviation) and scores it on `test` `[m, d]`. Runs on the features' device; deterministic for a
/// seed on the CPU.
pub fn linear_probe(
    train: &Tensor,
    train_labels: &[u8],
    test: &Tensor,
    test_labels: &[u8],
    cfg: &LinearProbe,
) -> Result<ProbeResult, EvalError> {
    let (train, d) = features(train, train_labels.len(), "training")?;
    let (test, dt) = features(test, test_labels.len(), "test")?;
    if d != dt {
        return Err(EvalError::Shape {
            detail: format!("the training features have {d} columns but the test features have {dt}"),
            help: "embed both splits with the same model".into(),
        });
    }
    let n = train_labels.len();
    if n == 0 || test_labels.is_empty() || cfg.epochs == 0 || cfg.batch == 0 {
        return Err(EvalError::Empty {
            detail: format!(
                "the probe needs training and test samples, epochs ≥ 1 and batch ≥ 1 (train {n}, test {}, epochs {}, batch {})",
                test_labels.len(),
                cfg.epochs,
                cfg.batch
            ),
            help: "pass the embedded training and test sets and the default settings".into(),
        });
    }
    let device = train.device().clone();
    let classes = train_labels.iter().chain(test_labels).map(|&l| l as usize + 1).max().unwrap_or(1);

    // Standardise with the training statistics; constant features keep scale 1 instead of blowing up.
    let mean = train.mean_keepdim(0)?;
    let centred = train.broadcast_sub(&mean)?;
    let std: Vec<f32> = centred.sqr()?.mean(0)?.sqrt()?.to_device(&Device::Cpu)?.to_vec1()?;
    let inv: Vec<f32> = std.iter().map(|&s| if s > 1e-6 { 1.0 / s } else { 1.0 }).collect();
    let inv = Tensor::from_vec(inv, (1, d), &device)?;
    let train = centred.broadcast_mul(&inv)?;
    let test = test.broadcast_sub(&mean)?.broadcast_mul(&inv)?;

    let labels = Tensor::from_vec(train_labels.iter().map(|&l| u32::from(l)).collect::<Vec<_>>(), n, &device)?;

    // Zero-initialised, as the probe is convex: the result depends on the data order only.
    let w = Var::zeros((classes, d), DType::F32, &device)?;
    let b = Var::zeros(classes, DType::F32, &device)?;
    let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    let mut params = Params::new();
    params.push("probe.weight", w, ParamKind::Weight)?;
    params.push("probe.bias", b, ParamKind::Bias)?;
    let sgd = recipe::Optimizer::Sgd {
        lr: Some(cfg.lr),
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        nesterov: false,
    };
    let mut optimizer = Optimizer::new(&sgd, &params)?.exclude_bias_and_norm(true);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let total = cfg.epochs * n.div_ceil(cfg.batch);
    let mut step = 0usize;
    let mut last_loss = 0.0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for chunk in order.chunks(cfg.batch) {
            let ids = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let loss = cross_entropy(&layer.forward(&train.index_select(&ids, 0)?)?, &labels.index_select(&ids, 0)?)?;
            epoch_loss += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            optimizer.step(&loss.backward()?, warmup_cosine(cfg.lr, 0, total, step))?;
            step += 1;
        }
        last_loss = epoch_loss / n as f64;
    }
    let predict = |x: &Tensor| -> Result<Vec<u8>, EvalError> {
        let best: Vec<u32> = layer.forward(x)?.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1()?;
        Ok(best.into_iter().map(|c| c as u8).collect())
    };
    Ok(ProbeResult {
        test_accuracy: accuracy(&predict(&test)?, test_labels),
        train_accuracy: accuracy(&predict(&train)?, train_labels),
        loss: last_loss,
    })
}
