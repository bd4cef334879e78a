//! The architecture as indices into the parameter and buffer lists, and its builder, which draws every initial value
//! from one seeded generator in forward order (torchvision's and torch's init rules).

use super::params::{ParamKind, Params};
use crate::check::recipe::{Depth, Encoder as EncoderSpec, Mlp as MlpSpec, Stem};
use crate::data::Shape;
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::Distribution;

#[derive(Clone, Debug)]
pub(super) struct Conv {
    pub(super) w: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
}

#[derive(Clone, Debug)]
pub(super) struct Bn {
    pub(super) gamma: usize,
    pub(super) beta: usize,
    /// Index of the running mean; the running variance follows it.
    pub(super) stats: usize,
}

#[derive(Clone, Debug)]
pub(super) struct Linear {
    pub(super) w: usize,
    pub(super) b: Option<usize>,
}

/// A residual block: `relu(main(x) + shortcut(x))`.
#[derive(Clone, Debug)]
pub(super) struct Block {
    /// The main path's convolutions, each followed by its BatchNorm and, but for the last, a ReLU: 3×3, 3×3 for a
    /// BasicBlock; 1×1, 3×3 (the stride), 1×1 for a Bottleneck.
    pub(super) main: Vec<(Conv, Bn)>,
    /// A 1×1 convolution and BatchNorm where the block changes the width or the resolution; the identity otherwise.
    pub(super) shortcut: Option<(Conv, Bn)>,
}

/// A stem's convolution (width, kernel, stride, padding) and whether [`STEM_POOL`] follows it.
struct StemLayout {
    width: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    pool: bool,
}

/// The max-pool after the ImageNet stem: window, stride, padding (torchvision's).
pub(super) const STEM_POOL: (usize, usize, usize) = (3, 2, 1);

#[derive(Clone, Debug)]
pub(super) struct ResNet {
    pub(super) stem: Conv,
    pub(super) stem_bn: Bn,
    /// Whether the stem ends with [`STEM_POOL`].
    pub(super) pool: bool,
    pub(super) blocks: Vec<Block>,
    /// Channels of the last block's output: the backbone features' width.
    pub(super) out: usize,
}

impl ResNet {
    /// Values every convolution of the encoder outputs for one `h`×`w` image (weights `[out, in, k, k]` in
    /// `tensors`): the size of what a training step keeps per image, for the memory estimate.
    pub(super) fn conv_output_values(&self, tensors: &[Tensor], h: usize, w: usize) -> usize {
        let out = |c: &Conv, (h, w): (usize, usize)| {
            let dims = tensors[c.w].dims();
            let (channels, k) = (dims[0], dims[2]);
            let side = |x: usize| (x + 2 * c.pad).saturating_sub(k) / c.stride + 1;
            (channels, (side(h), side(w)))
        };
        let (stem, mut size) = out(&self.stem, (h, w));
        let mut total = stem * size.0 * size.1;
        if self.pool {
            let (k, s, p) = STEM_POOL;
            size = ((size.0 + 2 * p - k) / s + 1, (size.1 + 2 * p - k) / s + 1);
            total += stem * size.0 * size.1;
        }
        for b in &self.blocks {
            if let Some((c, _)) = &b.shortcut {
                let (cs, ss) = out(c, size);
                total += cs * ss.0 * ss.1;
            }
            for (c, _) in &b.main {
                let (channels, s) = out(c, size);
                total += channels * s.0 * s.1;
                size = s;
            }
        }
        total
    }
}

#[derive(Clone, Debug)]
pub(super) struct MlpNet {
    /// The hidden layers: Linear, BatchNorm, ReLU.
    pub(super) hidden: Vec<(Linear, Bn)>,
    /// The output Linear.
    pub(super) last: Linear,
    /// A BatchNorm after it (no ReLU), when asked.
    pub(super) last_bn: Option<Bn>,
}

#[derive(Clone, Debug)]
pub(super) struct Arch {
    pub(super) encoder: ResNet,
    pub(super) projector: MlpNet,
    pub(super) predictor: Option<MlpNet>,
    /// Parameters and buffers of encoder + projector: a prefix of each list (the target network's part).
    pub(super) target_params: usize,
    pub(super) target_buffers: usize,
    pub(super) backbone_dim: usize,
    pub(super) projection_dim: usize,
    /// The images the network is built for: the stem reads `input.channels`; the size sets the memory estimate.
    pub(super) input: Shape,
}

/// Builds the architecture, drawing every initial value from one seeded generator in forward order.
pub(super) struct Builder<'d> {
    pub(super) rng: StdRng,
    pub(super) dtype: DType,
    pub(super) device: &'d Device,
    pub(super) params: Params,
    pub(super) tensors: Vec<Tensor>,
    pub(super) buffer_names: Vec<String>,
    pub(super) buffers: Vec<Tensor>,
}

impl Builder<'_> {
    pub(super) fn param(&mut self, name: String, data: Vec<f64>, shape: &[usize], kind: ParamKind) -> Result<usize> {
        let t = Tensor::from_vec(data, shape, self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        self.tensors.push(var.as_tensor().clone());
        self.params.push(name, var, kind)?;
        Ok(self.tensors.len() - 1)
    }

    pub(super) fn normal(&mut self, n: usize, std: f64) -> Result<Vec<f64>> {
        let normal = rand_distr::Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((0..n).map(|_| normal.sample(&mut self.rng)).collect())
    }

    pub(super) fn uniform(&mut self, n: usize, bound: f64) -> Vec<f64> {
        (0..n).map(|_| self.rng.gen_range(-bound..=bound)).collect()
    }

    /// Kaiming-normal, fan_out, gain √2: torchvision ResNet's conv init.
    pub(super) fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Conv> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let data = self.normal(cout * cin * k * k, std)?;
        let w = self.param(format!("{name}.weight"), data, &[cout, cin, k, k], ParamKind::Weight)?;
        Ok(Conv { w, stride, pad })
    }

    /// γ = 1, β = 0, running mean 0, running variance 1.
    pub(super) fn bn(&mut self, name: &str, c: usize) -> Result<Bn> {
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
    pub(super) fn linear(&mut self, name: &str, fan_in: usize, fan_out: usize, bias: bool) -> Result<Linear> {
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

    /// The encoder for images of `in_channels` channels.
    pub(super) fn resnet(&mut self, spec: &EncoderSpec, in_channels: usize) -> Result<ResNet> {
        // The stem, the stages' (width, blocks), bottlenecks.
        let (stem, stages, bottleneck): (StemLayout, Vec<(usize, usize)>, bool) = match spec {
            EncoderSpec::Mini { widths, blocks } => {
                let Some(&stem_width) = widths.first() else { bail!("resnet_mini needs at least one width") };
                if widths.contains(&0) || *blocks == 0 {
                    bail!("resnet_mini widths and blocks must be positive, got {widths:?} and {blocks}");
                }
                let stem = StemLayout { width: stem_width, kernel: 3, stride: 1, pad: 1, pool: false };
                (stem, widths.iter().map(|&w| (w, *blocks)).collect(), false)
            }
            EncoderSpec::Standard { depth, stem } => {
                let stem = match stem {
                    Stem::Imagenet => StemLayout { width: 64, kernel: 7, stride: 2, pad: 3, pool: true },
                    Stem::Cifar => StemLayout { width: 64, kernel: 3, stride: 1, pad: 1, pool: false },
                };
                let (blocks, bottleneck) = match depth {
                    Depth::Resnet18 => ([2, 2, 2, 2], false),
                    Depth::Resnet50 => ([3, 4, 6, 3], true),
                };
                (stem, [64, 128, 256, 512].into_iter().zip(blocks).collect(), bottleneck)
            }
        };
        let StemLayout { width, kernel, stride, pad, pool } = stem;
        let stem = self.conv("encoder.stem.conv", in_channels, width, kernel, stride, pad)?;
        let stem_bn = self.bn("encoder.stem.bn", width)?;
        let mut blocks = Vec::new();
        let mut cin = width;
        for (i, &(w, count)) in stages.iter().enumerate() {
            for j in 0..count {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let name = format!("encoder.stage{}.block{}", i + 1, j + 1);
                // (in, out, kernel, stride) of each main-path convolution.
                let shapes = if bottleneck {
                    vec![(cin, w, 1, 1), (w, w, 3, stride), (w, 4 * w, 1, 1)]
                } else {
                    vec![(cin, w, 3, stride), (w, w, 3, 1)]
                };
                let mut main = Vec::new();
                for (n, &(c_in, c_out, k, s)) in shapes.iter().enumerate() {
                    let conv = self.conv(&format!("{name}.conv{}", n + 1), c_in, c_out, k, s, k / 2)?;
                    main.push((conv, self.bn(&format!("{name}.bn{}", n + 1), c_out)?));
                }
                let out = shapes.last().map_or(w, |s| s.1);
                let shortcut = if stride != 1 || cin != out {
                    let c = self.conv(&format!("{name}.shortcut.conv"), cin, out, 1, stride, 0)?;
                    Some((c, self.bn(&format!("{name}.shortcut.bn"), out)?))
                } else {
                    None
                };
                blocks.push(Block { main, shortcut });
                cin = out;
            }
        }
        Ok(ResNet { stem, stem_bn, pool, blocks, out: cin })
    }

    pub(super) fn mlp(&mut self, name: &str, fan_in: usize, spec: &MlpSpec) -> Result<MlpNet> {
        if spec.hidden == 0 || spec.out == 0 {
            bail!("{name} widths must be positive, got hidden = {} and out = {}", spec.hidden, spec.out);
        }
        // Names: fc1, bn (as before 3-layer heads), then fc2, bn2, …; the last BatchNorm is `bn_out`.
        let mut hidden = Vec::new();
        let mut width = fan_in;
        for i in 1..spec.layers.max(2) {
            let fc = self.linear(&format!("{name}.fc{i}"), width, spec.hidden, false)?;
            let bn_name = if i == 1 { format!("{name}.bn") } else { format!("{name}.bn{i}") };
            hidden.push((fc, self.bn(&bn_name, spec.hidden)?));
            width = spec.hidden;
        }
        let last = self.linear(&format!("{name}.fc{}", spec.layers.max(2)), width, spec.out, !spec.last_bn)?;
        let last_bn = if spec.last_bn { Some(self.bn(&format!("{name}.bn_out"), spec.out)?) } else { None };
        Ok(MlpNet { hidden, last, last_bn })
    }
}
