//! The Siamese network of DESIGN §5: `resnet_mini` encoder, MLP projector, optional MLP predictor, and the
//! momentum (EMA) target network.
//!
//! Layers are written with composable candle ops so that the gradient flows through every one of them (candle-nn's
//! fused norms have no backward). Parameters are `Var`s held in one named, ordered [`Params`] collection; BatchNorm
//! running statistics are plain tensors in a separate [`Buffers`] collection. The architecture itself is a tree of
//! indices into those collections, so the online network (Vars) and the target network (plain tensors) share one
//! forward pass, and the target's parameters line up one-for-one with a prefix of the online ones.

use crate::check::recipe::{Encoder as EncoderSpec, Mlp as MlpSpec, Recipe};
use crate::runtime::kernels::{self, Kernels};
use crate::runtime::{conv, norm};
use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// BatchNorm running-statistics momentum, as torch's default: running = (1 − m)·running + m·batch.
pub const BN_MOMENTUM: f64 = 0.1;
/// BatchNorm epsilon added to the variance, as torch's default.
pub const BN_EPS: f64 = 1e-5;

/// What a parameter is, so optimisers can exclude biases and norm parameters from weight decay and LARS adaptation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A convolution or linear weight.
    Weight,
    /// A linear layer's bias.
    Bias,
    /// A BatchNorm scale (γ) or shift (β).
    Norm,
}

/// One trainable parameter: its checkpoint name, its value and its kind.
#[derive(Clone, Debug)]
pub struct Param {
    /// Dotted name, unique in its collection (`encoder.stem.conv.weight`).
    pub name: String,
    /// The value; gradients are keyed by it and optimisers update it in place.
    pub var: Var,
    /// Weight, bias or norm parameter.
    pub kind: ParamKind,
}

/// The trainable parameters of a network, in a fixed order (the order of the forward pass), so that checkpoints,
/// optimiser state and the EMA target can all address them by name or position.
#[derive(Clone, Debug, Default)]
pub struct Params {
    entries: Vec<Param>,
}

impl Params {
    /// An empty collection, to build parameters by hand (tests, custom models).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a parameter; a name already present is an error, since names address checkpoints and optimiser state.
    pub fn push(&mut self, name: impl Into<String>, var: Var, kind: ParamKind) -> Result<()> {
        let name = name.into();
        if self.get(&name).is_some() {
            bail!("duplicate parameter name `{name}`");
        }
        self.entries.push(Param { name, var, kind });
        Ok(())
    }

    /// The parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.entries.iter()
    }

    /// How many parameter tensors there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.entries.iter().find(|p| p.name == name)
    }

    /// The total number of scalars, for reports and the architecture test.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|p| p.var.elem_count()).sum()
    }

    /// A copy of every value by name, for checkpoints (copies, so later in-place updates do not change it).
    pub fn to_map(&self) -> Result<HashMap<String, Tensor>> {
        self.entries.iter().map(|p| Ok((p.name.clone(), p.var.as_detached_tensor().copy()?))).collect()
    }

    /// Sets every parameter from `map` (a checkpoint); every name must be present with the same shape, and nothing
    /// is changed unless all are.
    pub fn load(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        let mut values = Vec::with_capacity(self.entries.len());
        for p in &self.entries {
            let Some(t) = map.get(&p.name) else { bail!("checkpoint has no parameter `{}`", p.name) };
            if t.dims() != p.var.dims() {
                bail!(
                    "parameter `{}` has shape {:?} in the checkpoint but {:?} in the model",
                    p.name,
                    t.dims(),
                    p.var.dims()
                );
            }
            values.push(t.to_dtype(p.var.dtype())?.to_device(p.var.device())?);
        }
        for (p, v) in self.entries.iter().zip(&values) {
            p.var.set(v)?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = &'a Param;
    type IntoIter = std::slice::Iter<'a, Param>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// Non-trainable state (BatchNorm running means and variances) by name, in forward order: saved in checkpoints and
/// copied to the target network, never touched by an optimiser.
#[derive(Clone, Debug, Default)]
pub struct Buffers {
    entries: Vec<(String, Tensor)>,
}

impl Buffers {
    /// The buffers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// How many buffers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The buffer called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Every buffer by name, for checkpoints.
    pub fn to_map(&self) -> HashMap<String, Tensor> {
        self.entries.iter().cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Layers as functions.

/// 2-D convolution, NCHW input and [out, in, k, k] kernel, no bias. Every convolution of the model goes through here,
/// so the implementation is chosen in one place: with [`Kernels::Ours`] our GEMM kernels ([`conv::conv2d`], forward
/// and both backward products), with [`Kernels::Candle`] candle's own conv2d and autodiff ([`conv::candle_conv2d`],
/// with the workaround for its C == H == W bug). A forward pass reads [`kernels::kernels`] once and passes it down,
/// so switching the process-wide choice never mixes the two within a pass.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Ours => conv::conv2d(x, w, stride, pad),
        Kernels::Candle => conv::candle_conv2d(x, w, stride, pad),
    }
}

/// `x · wᵀ (+ b)` with torch's [out, in] weight layout; the transpose is a free stride change.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Mean over the spatial dimensions: [B, C, H, W] → [B, C]. Reduces over one flattened trailing axis, which candle
/// does far faster than over two.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(2)
}

/// Whether a tensor runs through our fused kernels ([`norm`]): when selected, on the CPU, in f32 or f64.
fn fused(kernels: Kernels, x: &Tensor) -> bool {
    kernels == Kernels::Ours && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The view candle's composable BatchNorm works on: [B, C] (BatchNorm1d) or [B, C, H, W] (BatchNorm2d) as [B, C, S],
/// S = 1 or H·W. Per-channel statistics are then a sum over the contiguous last axis followed by a small sum over the
/// batch, about 25 times faster in candle than one reduction over (0, 2, 3).
fn bn_view(x: &Tensor, gamma: &Tensor) -> Result<(Tensor, usize, usize)> {
    let dims = x.dims();
    let (b, c, s) = match *dims {
        [b, c] => (b, c, 1),
        [b, c, h, w] => (b, c, h * w),
        _ => bail!("batch norm expects [B, C] or [B, C, H, W], got {dims:?}"),
    };
    if gamma.dims() != [c] {
        bail!("batch norm over {c} channels got a scale of shape {:?}", gamma.dims());
    }
    Ok((x.reshape((b, c, s))?, c, b * s))
}

/// Per-channel mean of a [B, C, S] view, as [1, C, 1].
fn channel_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    x.sum_keepdim(2)?.sum_keepdim(0)?.affine(1.0 / n as f64, 0.0)
}

fn maybe_relu(y: Tensor, relu: bool) -> Result<Tensor> {
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// BatchNorm in train mode, followed by a ReLU when `relu`: normalises with the batch mean and biased variance, and,
/// when `running` is given, updates the running mean and (unbiased) variance with momentum [`BN_MOMENTUM`]. Works
/// on [B, C] and [B, C, H, W]; the gradient flows to `x`, `gamma` and `beta` through the batch statistics. Errors
/// (as torch does) when a channel has a single value, whose variance is undefined.
/// Returns the output and, when our kernels ran it, the statistics it normalised with (what our backward reads).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&mut Tensor, &mut Tensor)>,
    relu: bool,
    kernels: Kernels,
) -> Result<(Tensor, Option<norm::ChannelStats>)> {
    let (x3, c, n) = bn_view(x, gamma)?;
    if n < 2 {
        bail!("batch norm in train mode needs more than one value per channel, got input {:?}", x.dims());
    }
    let (y, batch_mean, batch_var, saved) = if fused(kernels, x) {
        let stats = norm::channel_stats(x)?;
        let y = norm::batch_norm(x, gamma, beta, &stats, BN_EPS, true, relu)?;
        let device = x.device();
        (y, Tensor::new(stats.mean.as_slice(), device)?, Tensor::new(stats.var.as_slice(), device)?, Some(stats))
    } else {
        let mean = channel_mean(&x3, n)?;
        let centred = x3.broadcast_sub(&mean)?;
        let var = channel_mean(&centred.sqr()?, n)?;
        let scale = (&var + BN_EPS)?.sqrt()?.recip()?.broadcast_mul(&gamma.reshape((1, c, 1))?)?;
        let y = centred.broadcast_mul(&scale)?.broadcast_add(&beta.reshape((1, c, 1))?)?;
        (maybe_relu(y.reshape(x.dims())?, relu)?, mean.detach().flatten_all()?, var.detach().flatten_all()?, None)
    };
    if let Some((rm, rv)) = running {
        let batch_mean = batch_mean.to_dtype(rm.dtype())?;
        let batch_var = batch_var.to_dtype(rv.dtype())?.affine(n as f64 / (n - 1) as f64, 0.0)?;
        *rm = (rm.affine(1.0 - BN_MOMENTUM, 0.0)? + batch_mean.affine(BN_MOMENTUM, 0.0)?)?;
        *rv = (rv.affine(1.0 - BN_MOMENTUM, 0.0)? + batch_var.affine(BN_MOMENTUM, 0.0)?)?;
    }
    Ok((y, saved))
}

/// BatchNorm in eval mode (the running statistics), followed by a ReLU when `relu`. Returns the output and, when our
/// kernels ran it, the statistics it normalised with.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    relu: bool,
    kernels: Kernels,
) -> Result<(Tensor, Option<norm::ChannelStats>)> {
    let (x3, c, _) = bn_view(x, gamma)?;
    if fused(kernels, x) {
        let mean = mean.to_dtype(DType::F64)?.to_vec1()?;
        let var = var.to_dtype(DType::F64)?.to_vec1()?;
        let stats = norm::ChannelStats { mean, var };
        return Ok((norm::batch_norm(x, gamma, beta, &stats, BN_EPS, false, relu)?, Some(stats)));
    }
    let scale = (var + BN_EPS)?.sqrt()?.recip()?.mul(gamma)?;
    let shift = (beta - mean.mul(&scale)?)?;
    let y = x3.broadcast_mul(&scale.reshape((1, c, 1))?)?.broadcast_add(&shift.reshape((1, c, 1))?)?;
    Ok((maybe_relu(y.reshape(x.dims())?, relu)?, None))
}

/// The residual join `relu(a + b)`: one fused pass each way with our kernels.
pub fn add_relu(a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if fused(kernels, a) {
        norm::add_relu(a, b)
    } else {
        (a + b)?.relu()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The architecture: indices into the parameter and buffer lists.

#[derive(Clone, Debug)]
struct Conv {
    w: usize,
    stride: usize,
    pad: usize,
}

#[derive(Clone, Debug)]
struct Bn {
    gamma: usize,
    beta: usize,
    /// Index of the running mean; the running variance follows it.
    stats: usize,
}

#[derive(Clone, Debug)]
struct Linear {
    w: usize,
    b: Option<usize>,
}

#[derive(Clone, Debug)]
struct Block {
    conv1: Conv,
    bn1: Bn,
    conv2: Conv,
    bn2: Bn,
    shortcut: Option<(Conv, Bn)>,
}

#[derive(Clone, Debug)]
struct ResNet {
    stem: Conv,
    stem_bn: Bn,
    blocks: Vec<Block>,
}

#[derive(Clone, Debug)]
struct MlpNet {
    fc1: Linear,
    bn: Bn,
    fc2: Linear,
}

#[derive(Clone, Debug)]
struct Arch {
    encoder: ResNet,
    projector: MlpNet,
    predictor: Option<MlpNet>,
    /// Parameters and buffers of encoder + projector: a prefix of each list (the target network's part).
    target_params: usize,
    target_buffers: usize,
    backbone_dim: usize,
    projection_dim: usize,
}

/// Where BatchNorm reads and writes running statistics during one forward pass.
enum Stats<'a> {
    /// Updated in train mode (the online network).
    Mut(&'a mut [Tensor]),
    /// Read only (the target network, whose statistics are copied from the online one).
    Ref(&'a [Tensor]),
}

/// What our backward of the encoder needs from one BatchNorm of the forward pass.
#[derive(Clone, Debug)]
struct NormSaved {
    input: Tensor,
    output: Tensor,
    stats: norm::ChannelStats,
    /// Batch statistics (train mode) rather than running ones.
    batch: bool,
    relu: bool,
}

/// The encoder's forward pass as our backward reads it: the images, every BatchNorm in forward order (stem, then
/// per block bn1, bn2 and the shortcut's), and the output of every residual join.
#[derive(Clone, Debug, Default)]
struct Recorded {
    norms: Vec<NormSaved>,
    joins: Vec<Tensor>,
}

/// A recorded encoder pass and the leaf its backbone features became, where the heads' graph starts.
#[derive(Clone, Debug)]
struct EncoderTape {
    images: Tensor,
    recorded: Recorded,
    leaf: Var,
}

struct Ctx<'a> {
    p: &'a [Tensor],
    stats: Stats<'a>,
    train: bool,
    /// Set when the pass is recorded for our backward instead of candle's graph.
    tape: Option<Recorded>,
    /// The layers' kernels, read once for the whole pass.
    kernels: Kernels,
}

impl Ctx<'_> {
    fn conv(&self, x: &Tensor, c: &Conv) -> Result<Tensor> {
        conv2d(x, &self.p[c.w], c.stride, c.pad, self.kernels)
    }

    /// BatchNorm, followed by a ReLU when `relu`.
    fn bn(&mut self, x: &Tensor, b: &Bn, relu: bool) -> Result<Tensor> {
        let (gamma, beta, k) = (&self.p[b.gamma], &self.p[b.beta], self.kernels);
        let (y, stats) = match (&mut self.stats, self.train) {
            (Stats::Mut(s), true) => match &mut s[b.stats..b.stats + 2] {
                [rm, rv] => batch_norm_train(x, gamma, beta, Some((rm, rv)), relu, k)?,
                _ => bail!("internal: running statistics out of range"),
            },
            (Stats::Ref(_), true) => batch_norm_train(x, gamma, beta, None, relu, k)?,
            (Stats::Mut(s), false) => batch_norm_eval(x, gamma, beta, &s[b.stats], &s[b.stats + 1], relu, k)?,
            (Stats::Ref(s), false) => batch_norm_eval(x, gamma, beta, &s[b.stats], &s[b.stats + 1], relu, k)?,
        };
        if let Some(tape) = &mut self.tape {
            let Some(stats) = stats else { bail!("internal: a recorded pass ran candle's BatchNorm") };
            tape.norms.push(NormSaved { input: x.clone(), output: y.clone(), stats, batch: self.train, relu });
        }
        Ok(y)
    }

    fn linear(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        linear(x, &self.p[l.w], l.b.map(|b| &self.p[b]))
    }

    fn resnet(&mut self, x: &Tensor, r: &ResNet) -> Result<Tensor> {
        let mut h = self.bn(&self.conv(x, &r.stem)?, &r.stem_bn, true)?;
        for b in &r.blocks {
            let out = self.bn(&self.conv(&h, &b.conv1)?, &b.bn1, true)?;
            let out = self.bn(&self.conv(&out, &b.conv2)?, &b.bn2, false)?;
            let short = match &b.shortcut {
                Some((c, n)) => self.bn(&self.conv(&h, c)?, n, false)?,
                None => h,
            };
            h = add_relu(&out, &short, self.kernels)?;
            if let Some(tape) = &mut self.tape {
                tape.joins.push(h.clone());
            }
        }
        global_avg_pool(&h)
    }

    fn mlp(&mut self, x: &Tensor, m: &MlpNet) -> Result<Tensor> {
        let h = self.bn(&self.linear(x, &m.fc1)?, &m.bn, true)?;
        self.linear(&h, &m.fc2)
    }

    /// Projector and, when asked and present, predictor on backbone features.
    fn heads(&mut self, backbone: &Tensor, arch: &Arch, predictor: bool) -> Result<(Tensor, Option<Tensor>)> {
        let projection = self.mlp(backbone, &arch.projector)?;
        let prediction = match (&arch.predictor, predictor) {
            (Some(m), true) => Some(self.mlp(&projection, m)?),
            _ => None,
        };
        Ok((projection, prediction))
    }

    fn forward(&mut self, x: &Tensor, arch: &Arch, predictor: bool) -> Result<Outputs> {
        let backbone = self.resnet(x, &arch.encoder)?;
        let (projection, prediction) = self.heads(&backbone, arch, predictor)?;
        Ok(Outputs { backbone, projection, prediction, tape: None })
    }
}

/// Builds the architecture, drawing every initial value from one seeded generator in forward order.
struct Builder<'d> {
    rng: StdRng,
    dtype: DType,
    device: &'d Device,
    params: Params,
    tensors: Vec<Tensor>,
    buffer_names: Vec<String>,
    buffers: Vec<Tensor>,
}

impl Builder<'_> {
    fn param(&mut self, name: String, data: Vec<f64>, shape: &[usize], kind: ParamKind) -> Result<usize> {
        let t = Tensor::from_vec(data, shape, self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        self.tensors.push(var.as_tensor().clone());
        self.params.push(name, var, kind)?;
        Ok(self.tensors.len() - 1)
    }

    fn normal(&mut self, n: usize, std: f64) -> Vec<f64> {
        // Box–Muller: rand 0.8 has no normal distribution without rand_distr.
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = 1.0 - self.rng.gen::<f64>(); // (0, 1]: log is finite
            let u2: f64 = self.rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let a = std::f64::consts::TAU * u2;
            out.push(r * a.cos());
            out.push(r * a.sin());
        }
        out.truncate(n);
        out
    }

    fn uniform(&mut self, n: usize, bound: f64) -> Vec<f64> {
        (0..n).map(|_| self.rng.gen_range(-bound..=bound)).collect()
    }

    /// Kaiming-normal, fan_out, gain √2: torchvision ResNet's conv init.
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Result<Conv> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let data = self.normal(cout * cin * k * k, std);
        let w = self.param(format!("{name}.weight"), data, &[cout, cin, k, k], ParamKind::Weight)?;
        Ok(Conv { w, stride, pad })
    }

    /// γ = 1, β = 0, running mean 0, running variance 1.
    fn bn(&mut self, name: &str, c: usize) -> Result<Bn> {
        let gamma = self.param(format!("{name}.weight"), vec![1.0; c], &[c], ParamKind::Norm)?;
        let beta = self.param(format!("{name}.bias"), vec![0.0; c], &[c], ParamKind::Norm)?;
        let stats = self.buffers.len();
        for (suffix, value) in [("running_mean", 0.0), ("running_var", 1.0)] {
            self.buffer_names.push(format!("{name}.{suffix}"));
            self.buffers.push(Tensor::full(value, c, self.device)?.to_dtype(self.dtype)?);
        }
        Ok(Bn { gamma, beta, stats })
    }

    /// torch's nn.Linear init: kaiming-uniform with a = √5, i.e. U(−1/√fan_in, 1/√fan_in), bias alike.
    fn linear(&mut self, name: &str, fan_in: usize, fan_out: usize, bias: bool) -> Result<Linear> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let data = self.uniform(fan_in * fan_out, bound);
        let w = self.param(format!("{name}.weight"), data, &[fan_out, fan_in], ParamKind::Weight)?;
        let b = if bias {
            let data = self.uniform(fan_out, bound);
            Some(self.param(format!("{name}.bias"), data, &[fan_out], ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    fn resnet(&mut self, spec: &EncoderSpec) -> Result<ResNet> {
        let Some(&stem_width) = spec.widths.first() else { bail!("resnet_mini needs at least one width") };
        if spec.widths.contains(&0) || spec.blocks == 0 {
            bail!("resnet_mini widths and blocks must be positive, got {:?} and {}", spec.widths, spec.blocks);
        }
        let stem = self.conv("encoder.stem.conv", 1, stem_width, 3, 1, 1)?;
        let stem_bn = self.bn("encoder.stem.bn", stem_width)?;
        let mut blocks = Vec::new();
        let mut cin = stem_width;
        for (i, &w) in spec.widths.iter().enumerate() {
            for j in 0..spec.blocks {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let name = format!("encoder.stage{}.block{}", i + 1, j + 1);
                let conv1 = self.conv(&format!("{name}.conv1"), cin, w, 3, stride, 1)?;
                let bn1 = self.bn(&format!("{name}.bn1"), w)?;
                let conv2 = self.conv(&format!("{name}.conv2"), w, w, 3, 1, 1)?;
                let bn2 = self.bn(&format!("{name}.bn2"), w)?;
                let shortcut = if stride != 1 || cin != w {
                    let c = self.conv(&format!("{name}.shortcut.conv"), cin, w, 1, stride, 0)?;
                    Some((c, self.bn(&format!("{name}.shortcut.bn"), w)?))
                } else {
                    None
                };
                blocks.push(Block { conv1, bn1, conv2, bn2, shortcut });
                cin = w;
            }
        }
        Ok(ResNet { stem, stem_bn, blocks })
    }

    fn mlp(&mut self, name: &str, fan_in: usize, spec: &MlpSpec) -> Result<MlpNet> {
        if spec.hidden == 0 || spec.out == 0 {
            bail!("{name} widths must be positive, got hidden = {} and out = {}", spec.hidden, spec.out);
        }
        let fc1 = self.linear(&format!("{name}.fc1"), fan_in, spec.hidden, false)?;
        let bn = self.bn(&format!("{name}.bn"), spec.hidden)?;
        let fc2 = self.linear(&format!("{name}.fc2"), spec.hidden, spec.out, true)?;
        Ok(MlpNet { fc1, bn, fc2 })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The networks.

/// What one forward pass produces.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// Encoder features after global average pooling, [B, widths.last()]: what kNN and the linear probe use.
    pub backbone: Tensor,
    /// Projector output, [B, projector.out].
    pub projection: Tensor,
    /// Predictor output, [B, predictor.out], when the network has a predictor (never for the target).
    pub prediction: Option<Tensor>,
    /// The recorded encoder pass, when our kernels ran it: [`SiameseNet::backward`] differentiates it.
    tape: Option<EncoderTape>,
}

/// The online network: encoder, projector and optional predictor, with `Var` parameters that optimisers update.
#[derive(Debug)]
pub struct SiameseNet {
    arch: Arch,
    params: Params,
    /// The Vars' own tensors (same ids), in parameter order, so the forward pass indexes them directly.
    tensors: Vec<Tensor>,
    buffer_names: Vec<String>,
    /// Running statistics; a lock because the train-mode forward pass updates them through `&self`.
    buffers: Mutex<Vec<Tensor>>,
    dtype: DType,
}

fn check_images(x: &Tensor, dtype: DType) -> Result<()> {
    match *x.dims() {
        [b, 1, h, w] if b > 0 && h > 0 && w > 0 => {}
        _ => bail!("expected images of shape [B, 1, H, W] with B, H, W > 0, got {:?}", x.dims()),
    }
    if x.dtype() != dtype {
        bail!("images are {:?} but the network is {:?}", x.dtype(), dtype);
    }
    Ok(())
}

impl SiameseNet {
    /// Builds the network of DESIGN §5 with every initial value drawn from `seed`, so runs are reproducible.
    pub fn new(
        encoder: &EncoderSpec,
        projector: &MlpSpec,
        predictor: Option<&MlpSpec>,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            bail!("the network supports f32 and f64, not {dtype:?}");
        }
        let mut b = Builder {
            rng: StdRng::seed_from_u64(seed),
            dtype,
            device,
            params: Params::new(),
            tensors: Vec::new(),
            buffer_names: Vec::new(),
            buffers: Vec::new(),
        };
        let enc = b.resnet(encoder)?;
        let backbone_dim = *encoder.widths.last().unwrap_or(&0);
        let proj = b.mlp("projector", backbone_dim, projector)?;
        let (target_params, target_buffers) = (b.tensors.len(), b.buffers.len());
        let pred = match predictor {
            Some(spec) => Some(b.mlp("predictor", projector.out, spec)?),
            None => None,
        };
        let arch = Arch {
            encoder: enc,
            projector: proj,
            predictor: pred,
            target_params,
            target_buffers,
            backbone_dim,
            projection_dim: projector.out,
        };
        Ok(SiameseNet {
            arch,
            params: b.params,
            tensors: b.tensors,
            buffer_names: b.buffer_names,
            buffers: Mutex::new(b.buffers),
            dtype,
        })
    }

    /// The network a recipe asks for (encoder, projector, predictor, seed).
    pub fn from_recipe(recipe: &Recipe, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(&recipe.encoder, &recipe.projector, recipe.predictor.as_ref(), recipe.seed, dtype, device)
    }

    /// Runs images [B, 1, H, W] through encoder, projector and predictor. `train` uses batch statistics in every
    /// BatchNorm and updates the running ones; otherwise the running statistics are used and nothing changes.
    /// Differentiate what it produces with [`SiameseNet::backward`]: with our kernels the encoder is recorded for our
    /// own backward rather than built into candle's graph (which would zero-fill and add every activation gradient).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        check_images(x, self.dtype)?;
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let kernels = kernels::kernels();
        if !fused(kernels, x) {
            let mut ctx = Ctx { p: &self.tensors, stats: Stats::Mut(&mut buffers), train, tape: None, kernels };
            return ctx.forward(x, &self.arch, true);
        }
        let detached: Vec<Tensor> = self.tensors.iter().map(Tensor::detach).collect();
        let images = x.detach();
        let mut encoder =
            Ctx { p: &detached, stats: Stats::Mut(&mut buffers), train, tape: Some(Recorded::default()), kernels };
        let backbone = encoder.resnet(&images, &self.arch.encoder)?;
        let recorded = encoder.tape.take().unwrap_or_default();
        let leaf = Var::from_tensor(&backbone)?;
        let mut heads = Ctx { p: &self.tensors, stats: Stats::Mut(&mut buffers), train, tape: None, kernels };
        let (projection, prediction) = heads.heads(leaf.as_tensor(), &self.arch, true)?;
        let backbone = leaf.as_tensor().clone();
        Ok(Outputs { backbone, projection, prediction, tape: Some(EncoderTape { images, recorded, leaf }) })
    }

    /// The gradient of `loss` with respect to every parameter, through the forward passes `outputs` it was computed
    /// from: candle differentiates the heads (and any pass run on candle's kernels); each recorded encoder pass is
    /// then differentiated here from the gradient at its backbone features, and its parameter gradients added in.
    pub fn backward(&self, loss: &Tensor, outputs: &[&Outputs]) -> Result<GradStore> {
        let mut store = loss.backward()?;
        for o in outputs {
            let Some(tape) = &o.tape else { continue };
            if let Some(df) = store.remove(tape.leaf.as_tensor()) {
                self.encoder_backward(tape, &df, &mut store)?;
            }
        }
        Ok(store)
    }

    /// The encoder's backward, mirroring [`Ctx::resnet`] in reverse with our kernels.
    fn encoder_backward(&self, tape: &EncoderTape, df: &Tensor, store: &mut GradStore) -> Result<()> {
        let (r, norms, joins) = (&self.arch.encoder, &tape.recorded.norms, &tape.recorded.joins);
        let expected = 1 + r.blocks.iter().map(|b| 2 + usize::from(b.shortcut.is_some())).sum::<usize>();
        let (Some(stem), Some(last)) = (norms.first(), joins.last()) else { bail!("internal: empty encoder tape") };
        if norms.len() != expected || joins.len() != r.blocks.len() {
            bail!("internal: encoder tape does not match the architecture");
        }
        // Global average pooling: every pixel receives df / (H·W).
        let (b, c, h, w) = last.dims4()?;
        let mut dh = (df.reshape((b, c, 1, 1))?.broadcast_as((b, c, h, w))? / (h * w) as f64)?.contiguous()?;
        let mut next = norms.len();
        for (i, block) in r.blocks.iter().enumerate().rev() {
            let first = next - 2 - usize::from(block.shortcut.is_some());
            next = first;
            let input = if i == 0 { &stem.output } else { &joins[i - 1] };
            let dz = norm::relu_backward(&dh, &joins[i])?;
            let (bn1, bn2) = (&norms[first], &norms[first + 1]);
            let dz2 = self.norm_backward(&dz, bn2, &block.bn2, store)?;
            let da1 = self.conv_backward(&dz2, &bn1.output, &block.conv2, store)?;
            let dz1 = self.norm_backward(&da1, bn1, &block.bn1, store)?;
            let dh1 = self.conv_backward(&dz1, input, &block.conv1, store)?;
            let dshort = match &block.shortcut {
                Some((conv, bn)) => {
                    let dzs = self.norm_backward(&dz, &norms[first + 2], bn, store)?;
                    self.conv_backward(&dzs, input, conv, store)?
                }
                None => dz,
            };
            dh = (dh1 + dshort)?;
        }
        let dz0 = self.norm_backward(&dh, stem, &r.stem_bn, store)?;
        let w = &self.tensors[r.stem.w];
        let (_, _, kh, kw) = w.dims4()?;
        accumulate(store, w, conv::conv2d_weight_grad(&tape.images, &dz0, (kh, kw), r.stem.stride, r.stem.pad)?)
    }

    /// One BatchNorm's backward: adds dγ and dβ to the store, returns the gradient at its input.
    fn norm_backward(&self, dy: &Tensor, saved: &NormSaved, bn: &Bn, store: &mut GradStore) -> Result<Tensor> {
        let gamma = &self.tensors[bn.gamma];
        let (dx, dgamma, dbeta) = norm::batch_norm_backward(
            dy,
            &saved.input,
            &saved.output,
            &gamma.detach(),
            &saved.stats,
            BN_EPS,
            saved.batch,
            saved.relu,
        )?;
        accumulate(store, gamma, dgamma)?;
        accumulate(store, &self.tensors[bn.beta], dbeta)?;
        Ok(dx)
    }

    /// One convolution's backward: adds the weight gradient to the store, returns the gradient at its input `x`.
    fn conv_backward(&self, dy: &Tensor, x: &Tensor, c: &Conv, store: &mut GradStore) -> Result<Tensor> {
        let w = &self.tensors[c.w];
        let ((_, _, h, wd), (_, _, kh, kw)) = (x.dims4()?, w.dims4()?);
        accumulate(store, w, conv::conv2d_weight_grad(x, dy, (kh, kw), c.stride, c.pad)?)?;
        conv::conv2d_input_grad(dy, &w.detach(), (h, wd), c.stride, c.pad)
    }

    /// Eval-mode backbone features [B, widths.last()] with no graph (detached parameters, running statistics): what
    /// kNN and the linear probe read, without paying for the projector or keeping activations alive.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_images(x, self.dtype)?;
        let p: Vec<Tensor> = self.tensors.iter().map(Tensor::detach).collect();
        let buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let kernels = kernels::kernels();
        let mut ctx = Ctx { p: &p, stats: Stats::Ref(&buffers), train: false, tape: None, kernels };
        ctx.resnet(&x.detach(), &self.arch.encoder)
    }

    /// The trainable parameters, in forward order.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// A snapshot of the BatchNorm running statistics.
    pub fn buffers(&self) -> Buffers {
        let buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        Buffers { entries: self.buffer_names.iter().cloned().zip(buffers.iter().cloned()).collect() }
    }

    /// Restores the running statistics from a checkpoint; every name must be present with the right shape.
    pub fn load_buffers(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = load_named(&self.buffer_names, &buffers, map, "buffer")?;
        *buffers = loaded;
        Ok(())
    }

    /// Backbone feature width (the last stage width).
    pub fn backbone_dim(&self) -> usize {
        self.arch.backbone_dim
    }

    /// Projector output width.
    pub fn projection_dim(&self) -> usize {
        self.arch.projection_dim
    }

    /// Whether the network has a predictor head.
    pub fn has_predictor(&self) -> bool {
        self.arch.predictor.is_some()
    }

    /// The element type of parameters and inputs.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the parameters live (inputs must be there too).
    pub fn device(&self) -> &Device {
        self.tensors.first().map_or(&Device::Cpu, Tensor::device)
    }
}

/// Adds `grad` to the gradient stored for `param` (several passes share parameters).
fn accumulate(store: &mut GradStore, param: &Tensor, grad: Tensor) -> Result<()> {
    let total = match store.remove(param) {
        Some(g) => (g + grad)?,
        None => grad,
    };
    store.insert(param, total);
    Ok(())
}

/// Reads `names` from `map`, checking shapes against `current` and converting dtype and device to match.
fn load_named(names: &[String], current: &[Tensor], map: &HashMap<String, Tensor>, what: &str) -> Result<Vec<Tensor>> {
    names
        .iter()
        .zip(current)
        .map(|(name, cur)| {
            let Some(t) = map.get(name) else { bail!("checkpoint has no {what} `{name}`") };
            if t.dims() != cur.dims() {
                bail!("{what} `{name}` has shape {:?} in the checkpoint but {:?} in the model", t.dims(), cur.dims());
            }
            t.to_dtype(cur.dtype())?.to_device(cur.device())
        })
        .collect()
}

/// The momentum (EMA) target: a copy of the online encoder and projector whose parameters are plain tensors (no
/// `Var`, no graph), moved toward the online network after each step.
#[derive(Clone, Debug)]
pub struct Target {
    arch: Arch,
    names: Vec<String>,
    tensors: Vec<Tensor>,
    buffer_names: Vec<String>,
    buffers: Vec<Tensor>,
    dtype: DType,
}

impl Target {
    /// A deep copy of `online`'s encoder and projector (the predictor is online-only, as in BYOL).
    pub fn new(online: &SiameseNet) -> Result<Self> {
        let a = &online.arch;
        let mut arch = a.clone();
        arch.predictor = None;
        let names = online.params.iter().take(a.target_params).map(|p| p.name.clone()).collect();
        let tensors = online
            .params
            .iter()
            .take(a.target_params)
            .map(|p| p.var.as_detached_tensor().copy())
            .collect::<Result<_>>()?;
        let buffers = online.buffers.lock().unwrap_or_else(PoisonError::into_inner)[..a.target_buffers].to_vec();
        let buffer_names = online.buffer_names[..a.target_buffers].to_vec();
        Ok(Target { arch, names, tensors, buffer_names, buffers, dtype: online.dtype })
    }

    /// target ← m·target + (1 − m)·online for every parameter, and the BatchNorm running statistics copied from the
    /// online network (as the BYOL and MoCo implementations do). `momentum` must lie in [0, 1].
    pub fn ema_update(&mut self, online: &SiameseNet, momentum: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&momentum) {
            bail!("EMA momentum must lie in [0, 1], got {momentum}");
        }
        let a = &online.arch;
        if a.target_params != self.tensors.len()
            || a.target_buffers != self.buffers.len()
            || online.params.iter().zip(&self.names).any(|(p, n)| &p.name != n)
        {
            bail!("EMA update from a network with a different architecture");
        }
        let mut next = Vec::with_capacity(self.tensors.len());
        for (t, p) in self.tensors.iter().zip(online.params.iter()) {
            let o = p.var.as_detached_tensor();
            if o.dims() != t.dims() {
                bail!("EMA update: `{}` has shape {:?} online but {:?} in the target", p.name, o.dims(), t.dims());
            }
            next.push((t.affine(momentum, 0.0)? + o.affine(1.0 - momentum, 0.0)?)?);
        }
        self.tensors = next;
        let buffers = online.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        self.buffers.clone_from_slice(&buffers[..a.target_buffers]);
        Ok(())
    }

    /// Runs images through the target encoder and projector with no graph. `train` normalises with batch statistics
    /// (as the BYOL/MoCo target does) without touching the running ones, which are copied from the online network;
    /// otherwise the running statistics are used.
    pub fn forward_no_grad(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        check_images(x, self.dtype)?;
        let x = x.detach();
        let kernels = kernels::kernels();
        let mut ctx = Ctx { p: &self.tensors, stats: Stats::Ref(&self.buffers), train, tape: None, kernels };
        ctx.forward(&x, &self.arch, false)
    }

    /// Parameters and running statistics by name, for checkpoints.
    pub fn to_map(&self) -> HashMap<String, Tensor> {
        self.names.iter().cloned().zip(self.tensors.iter().cloned()).chain(self.buffers().to_map()).collect()
    }

    /// Restores parameters and running statistics saved by [`Target::to_map`].
    pub fn load(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        let tensors = load_named(&self.names, &self.tensors, map, "target parameter")?;
        let buffers = load_named(&self.buffer_names, &self.buffers, map, "target buffer")?;
        self.tensors = tensors;
        self.buffers = buffers;
        Ok(())
    }

    /// The parameters by name, in forward order (plain tensors).
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// The running statistics.
    pub fn buffers(&self) -> Buffers {
        Buffers { entries: self.buffer_names.iter().cloned().zip(self.buffers.iter().cloned()).collect() }
    }
}
