//! The linear probe: multinomial logistic regression on frozen, standardised features, trained with
//! mini-batch SGD (momentum, cosine-decayed rate, weight decay on the weights) using candle's autodiff.
//! It complements kNN: kNN measures the geometry of normalised features, the probe their linear separability.

use super::knn::accuracy;
use super::{features, EvalError};
use candle_core::{DType, Device, Tensor, Var, D};
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
    /// The protocol, printed with every number.
    pub fn protocol(&self) -> String {
        format!(
            "softmax regression on standardised frozen backbone features, {} epochs, batch {}, SGD lr {} cosine, momentum {}, weight decay {}",
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

    let mut onehot = vec![0.0f32; n * classes];
    for (i, &l) in train_labels.iter().enumerate() {
        onehot[i * classes + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, classes), &device)?;

    let w = Var::zeros((d, classes), DType::F32, &device)?;
    let b = Var::zeros(classes, DType::F32, &device)?;
    let mut vw = Tensor::zeros((d, classes), DType::F32, &device)?;
    let mut vb = Tensor::zeros(classes, DType::F32, &device)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let steps_per_epoch = n.div_ceil(cfg.batch);
    let total = (cfg.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    let mut last_loss = 0.0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for chunk in order.chunks(cfg.batch) {
            let ids = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let x = train.index_select(&ids, 0)?;
            let y = onehot.index_select(&ids, 0)?;
            let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            let loss = cross_entropy(&logits, &y)?;
            epoch_loss += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            let grads = loss.backward()?;
            let lr = cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            if let Some(gw) = grads.get(w.as_tensor()) {
                let g = (gw + (w.as_tensor() * cfg.weight_decay)?)?;
                vw = ((vw * cfg.momentum)? + g)?;
                w.set(&(w.as_tensor() - (&vw * lr)?)?)?;
            }
            if let Some(gb) = grads.get(b.as_tensor()) {
                vb = ((vb * cfg.momentum)? + gb)?;
                b.set(&(b.as_tensor() - (&vb * lr)?)?)?;
            }
            step += 1;
        }
        last_loss = epoch_loss / n as f64;
    }
    let predict = |x: &Tensor| -> Result<Vec<u8>, EvalError> {
        let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        let best: Vec<u32> = logits.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1()?;
        Ok(best.into_iter().map(|c| c as u8).collect())
    };
    Ok(ProbeResult {
        test_accuracy: accuracy(&predict(&test)?, test_labels),
        train_accuracy: accuracy(&predict(&train)?, train_labels),
        loss: last_loss,
    })
}

/// Mean softmax cross-entropy of `logits` `[m, c]` against one-hot `targets`, with a max-shifted
/// log-sum-exp (the max is detached: it cancels in the value and the gradient).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor, EvalError> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    let m = logits.dims().first().copied().unwrap_or(1).max(1) as f64;
    Ok(((log_probs * targets)?.sum_all()? * (-1.0 / m))?)
}
