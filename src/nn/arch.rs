//! The architecture as indices into the parameter and buffer lists, and its builder, which draws every initial value
//! from one seeded generator in forward order (torchvision's and torch's init rules).

use super::params::{ParamKind, Params};
use crate::check::recipe::{Encoder as EncoderSpec, Mlp as MlpSpec};
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

#[derive(Clone, Debug)]
pub(super) struct Block {
    pub(super) conv1: Conv,
    pub(super) bn1: Bn,
    pub(super) conv2: Conv,
    pub(super) bn2: Bn,
    pub(super) shortcut: Option<(Conv, Bn)>,
}

#[derive(Clone, Debug)]
pub(super) struct ResNet {
    pub(super) stem: Conv,
    pub(super) stem_bn: Bn,
    pub(super) blocks: Vec<Block>,
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
        for b in &self.blocks {
            let (c1, s1) = out(&b.conv1, size);
            let (c2, s2) = out(&b.conv2, s1);
            total += c1 * s1.0 * s1.1 + c2 * s2.0 * s2.1;
            if let Some((c, _)) = &b.shortcut {
                let (cs, ss) = out(c, size);
                total += cs * ss.0 * ss.1;
            }
            size = s2;
        }
        total
    }
}

#[derive(Clone, Debug)]
pub(super) struct MlpNet {
    pub(super) fc1: Linear,
    pub(super) bn: Bn,
    pub(super) fc2: Linear,
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
        let Some(&stem_width) = spec.widths.first() else { bail!("resnet_mini needs at least one width") };
        if spec.widths.contains(&0) || spec.blocks == 0 {
            bail!("resnet_mini widths and blocks must be positive, got {:?} and {}", spec.widths, spec.blocks);
        }
        let stem = self.conv("encoder.stem.conv", in_channels, stem_width, 3, 1, 1)?;
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

    pub(super) fn mlp(&mut self, name: &str, fan_in: usize, spec: &MlpSpec) -> Result<MlpNet> {
        if spec.hidden == 0 || spec.out == 0 {
            bail!("{name} widths must be positive, got hidden = {} and out = {}", spec.hidden, spec.out);
        }
        let fc1 = self.linear(&format!("{name}.fc1"), fan_in, spec.hidden, false)?;
        let bn = self.bn(&format!("{name}.bn"), spec.hidden)?;
        let fc2 = self.linear(&format!("{name}.fc2"), spec.hidden, spec.out, true)?;
        Ok(MlpNet { fc1, bn, fc2 })
    }
}
