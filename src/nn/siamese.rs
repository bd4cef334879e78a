//! The online network: encoder, projector and optional predictor, with `Var` parameters that optimisers update.

use super::arch::{Arch, Builder};
use super::forward::{Ctx, EncoderTape, Stats};
use super::layers::{fused_layers, grid_avg_pool};
use super::params::{load_named, Buffers, Params};
use super::LayerImpl;
use crate::check::recipe::{Encoder as EncoderSpec, Mlp as MlpSpec, Recipe};
use crate::collective::Comm;
use crate::data::Shape;
use crate::kernels::conv::{ConvWork, WorkCounter};
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What one forward pass produces.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// Encoder features after global average pooling, [B, the last block's width]: what kNN and the linear probe use.
    pub backbone: Tensor,
    /// Projector output, [B, projector.out].
    pub projection: Tensor,
    /// Predictor output, [B, predictor.out], when the network has a predictor (never for the target).
    pub prediction: Option<Tensor>,
    /// The recorded encoder pass, when our kernels ran it: [`SiameseNet::backward`] differentiates it.
    pub(super) tape: Option<EncoderTape>,
}

/// The online network: encoder, projector and optional predictor, with `Var` parameters that optimisers update.
#[derive(Debug)]
pub struct SiameseNet {
    pub(super) arch: Arch,
    pub(super) params: Params,
    /// The Vars' own tensors (same ids), in parameter order, so the forward pass indexes them directly.
    pub(super) tensors: Vec<Tensor>,
    pub(super) buffer_names: Vec<String>,
    /// Running statistics; a lock because the train-mode forward pass updates them through `&self`.
    pub(super) buffers: Mutex<Vec<Tensor>>,
    pub(super) dtype: DType,
    /// Which implementation the layers run.
    pub(super) layers: LayerImpl,
    /// The convolution work of this network and its target.
    pub(super) work: Arc<WorkCounter>,
    /// The ranks whose shares of the batch train-mode BatchNorm normalises over together (`sync_bn`); `None`:
    /// per process.
    pub(super) sync: Option<Comm>,
}

pub(super) fn check_images(x: &Tensor, dtype: DType, channels: usize) -> Result<()> {
    match *x.dims() {
        [b, c, h, w] if b > 0 && c == channels && h > 0 && w > 0 => {}
        _ => bail!("expected images of shape [B, {channels}, H, W] with B, H, W > 0, got {:?}", x.dims()),
    }
    if x.dtype() != dtype {
        bail!("images are {:?} but the network is {:?}", x.dtype(), dtype);
    }
    Ok(())
}

impl SiameseNet {
    /// Builds the network of the README for `input` images (its stem reads their channels) with every initial
    /// value drawn from `seed`, so runs are reproducible.
    pub fn new(
        input: Shape,
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
        if input.pixels() == 0 {
            bail!("the network needs images with channels and pixels, not {input}");
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
        let enc = b.resnet(encoder, input.channels)?;
        let backbone_dim = enc.out;
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
            input,
        };
        Ok(SiameseNet {
            arch,
            params: b.params,
            tensors: b.tensors,
            buffer_names: b.buffer_names,
            buffers: Mutex::new(b.buffers),
            dtype,
            layers: LayerImpl::default(),
            work: Arc::default(),
            sync: None,
        })
    }

    /// The network a recipe asks for (encoder, projector, predictor, seed) for `input` images.
    pub fn from_recipe(recipe: &Recipe, input: Shape, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(input, &recipe.encoder, &recipe.projector, recipe.predictor.as_ref(), recipe.seed, dtype, device)
    }

    /// The images the network is built for.
    pub fn input(&self) -> Shape {
        self.arch.input
    }

    /// Runs images [B, C, H, W] through encoder, projector and predictor. `train` uses batch statistics in every
    /// BatchNorm and updates the running ones; otherwise the running statistics are used and nothing changes.
    /// Differentiate what it produces with [`SiameseNet::backward`]: with our kernels the encoder is recorded for our
    /// own backward rather than built into candle's graph (which would zero-fill and add every activation gradient).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        check_images(x, self.dtype, self.arch.input.channels)?;
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if !(self.layers == LayerImpl::Ours && fused_layers(x)) {
            let mut ctx =
                Ctx::new(&self.tensors, Stats::Mut(&mut buffers), train, self.layers, &self.work, self.sync.as_ref());
            return ctx.forward(x, &self.arch, true);
        }
        let detached: Vec<Tensor> = self.tensors.iter().map(Tensor::detach).collect();
        let mut encoder =
            Ctx::new(&detached, Stats::Mut(&mut buffers), train, self.layers, &self.work, self.sync.as_ref())
                .recording();
        let backbone = encoder.resnet(&x.detach(), &self.arch.encoder)?;
        let recorded = encoder.tape.take().unwrap_or_default();
        let leaf = Var::from_tensor(&backbone)?;
        let mut heads =
            Ctx::new(&self.tensors, Stats::Mut(&mut buffers), train, self.layers, &self.work, self.sync.as_ref());
        let (projection, prediction) = heads.heads(leaf.as_tensor(), &self.arch, true)?;
        let backbone = leaf.as_tensor().clone();
        Ok(Outputs { backbone, projection, prediction, tape: Some(EncoderTape { recorded, leaf }) })
    }

    /// Eval-mode backbone features [B, widths.last()] with no graph (detached parameters, running statistics): what
    /// kNN and the linear probe read, without paying for the projector or keeping activations alive.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.pooled_features(x, &[1])?.remove(0))
    }

    /// [`Self::features`] with the last feature map pooled to each of `grids` ([`grid_avg_pool`]; 1 is the global
    /// average), from one pass: kNN reads the global average, a probe may read a grid.
    pub fn pooled_features(&self, x: &Tensor, grids: &[usize]) -> Result<Vec<Tensor>> {
        check_images(x, self.dtype, self.arch.input.channels)?;
        let p: Vec<Tensor> = self.tensors.iter().map(Tensor::detach).collect();
        let buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ctx = Ctx::new(&p, Stats::Ref(&buffers), false, self.layers, &self.work, None);
        let map = ctx.resnet_map(&x.detach(), &self.arch.encoder)?;
        grids.iter().map(|&g| grid_avg_pool(&map, g)).collect()
    }

    /// The same network with its layers run by `layers` (benchmarks and cross-checks run candle's).
    pub fn with_layers(mut self, layers: LayerImpl) -> Self {
        self.layers = layers;
        self
    }

    /// The same network with every train-mode BatchNorm synchronised over `ranks` (`sync_bn`): each rank passes
    /// its share of the batch, and all normalise with (and differentiate through) the whole batch's statistics.
    /// Needs our layers on the CPU.
    pub fn with_sync_bn(mut self, ranks: Comm) -> Self {
        self.sync = Some(ranks);
        self
    }

    /// Which implementation the layers run.
    pub fn layers(&self) -> LayerImpl {
        self.layers
    }

    /// The convolution work this network and its target have done so far.
    pub fn conv_work(&self) -> ConvWork {
        self.work.total()
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

    /// Values the encoder's convolutions output for one `h`×`w` image: what a training step keeps alive per image,
    /// scaled by the runtime's memory estimate.
    pub fn conv_output_values(&self, h: usize, w: usize) -> usize {
        self.arch.encoder.conv_output_values(&self.tensors, h, w)
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
