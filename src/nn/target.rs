//! The momentum (EMA) target network.

use super::arch::Arch;
use super::forward::{Ctx, Stats};
use super::params::{load_named, Buffers};
use super::siamese::check_images;
use super::{LayerImpl, Outputs, SiameseNet};
use crate::collective::Comm;
use crate::kernels::conv::WorkCounter;
use candle_core::{bail, DType, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

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
    /// The online network's layer implementation and work counter.
    layers: LayerImpl,
    work: Arc<WorkCounter>,
    /// The online network's BatchNorm synchronisation (the target's train-mode pass normalises the same way).
    sync: Option<Comm>,
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
        Ok(Target {
            arch,
            names,
            tensors,
            buffer_names,
            buffers,
            dtype: online.dtype,
            layers: online.layers,
            work: online.work.clone(),
            sync: online.sync.clone(),
        })
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
        check_images(x, self.dtype, self.arch.input.channels)?;
        let x = x.detach();
        let mut ctx =
            Ctx::new(&self.tensors, Stats::Ref(&self.buffers), train, self.layers, &self.work, self.sync.as_ref());
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
