//! One forward pass over the architecture, shared by the online network (Vars, running statistics updated) and the
//! target (plain tensors, statistics read only); with our layers it records what [`super::backward`] needs.

use super::arch::{Arch, Bn, Conv, Linear, MlpNet, ResNet, STEM_POOL};
use super::layers::{
    add_relu, batch_norm_eval, batch_norm_train, conv2d, from_map_layout, global_avg_pool, linear, max_pool2d,
    to_map_layout,
};
use super::siamese::Outputs;
use super::LayerImpl;
use crate::collective::Comm;
use crate::kernels::conv::WorkCounter;
use crate::kernels::norm;
use candle_core::{bail, Result, Tensor, Var};
use std::sync::Arc;

/// Where BatchNorm reads and writes running statistics during one forward pass.
pub(super) enum Stats<'a> {
    /// Updated in train mode (the online network).
    Mut(&'a mut [Tensor]),
    /// Read only (the target network, whose statistics are copied from the online one).
    Ref(&'a [Tensor]),
}

/// What our backward of the encoder needs from one BatchNorm of the forward pass.
#[derive(Clone, Debug)]
pub(super) struct NormSaved {
    pub(super) input: Tensor,
    /// The output, kept only when a ReLU follows: then the backward's mask and the next convolution's input read
    /// it; without one it feeds the residual join alone, and keeping it would hold a batch of activations per
    /// layer to the end of the backward (peak memory at batch 1024: 3,441 → 3,059 MB).
    pub(super) output: Option<Tensor>,
    pub(super) stats: norm::ChannelStats,
    /// Batch statistics (train mode) rather than running ones.
    pub(super) batch: bool,
    pub(super) relu: bool,
}

/// The encoder's forward pass as our backward reads it (every map channels-last): the images as the stem read them,
/// every BatchNorm in forward order (stem, then per block the main path's and the shortcut's), the output of every
/// residual join, and the stem's max-pool output if it has one.
#[derive(Clone, Debug, Default)]
pub(super) struct Recorded {
    pub(super) images: Option<Tensor>,
    pub(super) norms: Vec<NormSaved>,
    pub(super) joins: Vec<Tensor>,
    pub(super) pooled: Option<Tensor>,
}

/// A recorded encoder pass and the leaf its backbone features became, where the heads' graph starts.
#[derive(Clone, Debug)]
pub(super) struct EncoderTape {
    pub(super) recorded: Recorded,
    pub(super) leaf: Var,
}

pub(super) struct Ctx<'a> {
    pub(super) p: &'a [Tensor],
    pub(super) stats: Stats<'a>,
    pub(super) train: bool,
    /// Set when the pass is recorded for our backward instead of candle's graph.
    pub(super) tape: Option<Recorded>,
    /// The layers' implementation, the network's for the whole pass.
    pub(super) layers: LayerImpl,
    /// Where our convolutions count their work.
    pub(super) work: &'a Arc<WorkCounter>,
    /// The ranks train-mode BatchNorm synchronises its statistics over (`sync_bn`), if any.
    pub(super) sync: Option<&'a Comm>,
}

impl<'a> Ctx<'a> {
    /// A pass over parameters `p` with running statistics `stats`, not recorded.
    pub(super) fn new(
        p: &'a [Tensor],
        stats: Stats<'a>,
        train: bool,
        layers: LayerImpl,
        work: &'a Arc<WorkCounter>,
        sync: Option<&'a Comm>,
    ) -> Self {
        Ctx { p, stats, train, tape: None, layers, work, sync }
    }

    /// The same pass, recording what our backward needs.
    pub(super) fn recording(mut self) -> Self {
        self.tape = Some(Recorded::default());
        self
    }

    pub(super) fn conv(&self, x: &Tensor, c: &Conv) -> Result<Tensor> {
        conv2d(x, &self.p[c.w], c.stride, c.pad, self.layers, self.work)
    }

    /// BatchNorm, followed by a ReLU when `relu`.
    pub(super) fn bn(&mut self, x: &Tensor, b: &Bn, relu: bool) -> Result<Tensor> {
        let (gamma, beta, k, sync) = (&self.p[b.gamma], &self.p[b.beta], self.layers, self.sync);
        let (y, stats) = match (&mut self.stats, self.train) {
            (Stats::Mut(s), true) => match &mut s[b.stats..b.stats + 2] {
                [rm, rv] => batch_norm_train(x, gamma, beta, Some((rm, rv)), relu, k, sync)?,
                _ => bail!("internal: running statistics out of range"),
            },
            (Stats::Ref(_), true) => batch_norm_train(x, gamma, beta, None, relu, k, sync)?,
            (Stats::Mut(s), false) => batch_norm_eval(x, gamma, beta, &s[b.stats], &s[b.stats + 1], relu, k)?,
            (Stats::Ref(s), false) => batch_norm_eval(x, gamma, beta, &s[b.stats], &s[b.stats + 1], relu, k)?,
        };
        if let Some(tape) = &mut self.tape {
            let Some(stats) = stats else { bail!("internal: a recorded pass ran candle's BatchNorm") };
            tape.norms.push(NormSaved {
                input: x.clone(),
                output: relu.then(|| y.clone()),
                stats,
                batch: self.train,
                relu,
            });
        }
        Ok(y)
    }

    pub(super) fn linear(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        linear(x, &self.p[l.w], l.b.map(|b| &self.p[b]))
    }

    /// The encoder's features [B, C] of images x [B, C, H, W].
    pub(super) fn resnet(&mut self, x: &Tensor, r: &ResNet) -> Result<Tensor> {
        global_avg_pool(&self.resnet_layers(x, r)?, self.layers)
    }

    /// The encoder's last feature map, [B, C, H', W'], before its global average.
    pub(super) fn resnet_map(&mut self, x: &Tensor, r: &ResNet) -> Result<Tensor> {
        from_map_layout(&self.resnet_layers(x, r)?, self.layers)
    }

    /// The encoder's last feature map in the pass's layout (`layers`' module doc).
    fn resnet_layers(&mut self, x: &Tensor, r: &ResNet) -> Result<Tensor> {
        let x = to_map_layout(x, self.layers)?;
        if let Some(tape) = &mut self.tape {
            tape.images = Some(x.clone());
        }
        let mut h = self.bn(&self.conv(&x, &r.stem)?, &r.stem_bn, true)?;
        if r.pool {
            let (k, s, p) = STEM_POOL;
            h = max_pool2d(&h, k, s, p, self.layers)?;
            if let Some(tape) = &mut self.tape {
                tape.pooled = Some(h.clone());
            }
        }
        for b in &r.blocks {
            let mut out = h.clone();
            for (k, (conv, bn)) in b.main.iter().enumerate() {
                out = self.bn(&self.conv(&out, conv)?, bn, k + 1 < b.main.len())?;
            }
            let short = match &b.shortcut {
                Some((c, n)) => self.bn(&self.conv(&h, c)?, n, false)?,
                None => h,
            };
            h = add_relu(&out, &short, self.layers)?;
            if let Some(tape) = &mut self.tape {
                tape.joins.push(h.clone());
            }
        }
        Ok(h)
    }

    pub(super) fn mlp(&mut self, x: &Tensor, m: &MlpNet) -> Result<Tensor> {
        let mut h = x.clone();
        for (fc, bn) in &m.hidden {
            h = self.bn(&self.linear(&h, fc)?, bn, true)?;
        }
        let y = self.linear(&h, &m.last)?;
        match &m.last_bn {
            Some(bn) => self.bn(&y, bn, false),
            None => Ok(y),
        }
    }

    /// Projector and, when asked and present, predictor on backbone features.
    pub(super) fn heads(
        &mut self,
        backbone: &Tensor,
        arch: &Arch,
        predictor: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let projection = self.mlp(backbone, &arch.projector)?;
        let prediction = match (&arch.predictor, predictor) {
            (Some(m), true) => Some(self.mlp(&projection, m)?),
            _ => None,
        };
        Ok((projection, prediction))
    }

    pub(super) fn forward(&mut self, x: &Tensor, arch: &Arch, predictor: bool) -> Result<Outputs> {
        let backbone = self.resnet(x, &arch.encoder)?;
        let (projection, prediction) = self.heads(&backbone, arch, predictor)?;
        Ok(Outputs { backbone, projection, prediction, tape: None })
    }
}
