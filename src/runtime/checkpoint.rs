//! A checkpoint: everything the next step needs — online weights, BatchNorm statistics, the target, the optimiser's
//! state and the objective's states — and where it stands. The tensor names (`online.…`, `buffer.…`, `target.…`,
//! `optim.…`, `state.…`) are built and parsed here only; [`super::run::RunDir`] writes and reads the files.

use crate::nn::SiameseNet;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a checkpoint stands, written beside its tensors in `checkpoint.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Steps completed.
    pub step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// kNN top-1 of the last evaluation before it, if any.
    pub knn_top1: Option<f64>,
}

/// One checkpoint's tensors, by part, each keyed by its name within the part.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Where it stands.
    pub meta: Meta,
    /// The online network's parameters.
    pub online: HashMap<String, Tensor>,
    /// The online network's BatchNorm running statistics.
    pub buffers: HashMap<String, Tensor>,
    /// The momentum target's parameters and statistics (empty without a target).
    pub target: HashMap<String, Tensor>,
    /// The optimiser's state.
    pub optimizer: HashMap<String, Tensor>,
    /// The objective's ema and fifo states, by state name.
    pub states: HashMap<String, Tensor>,
}

const ONLINE: &str = "online.";
const BUFFER: &str = "buffer.";
const TARGET: &str = "target.";
const OPTIM: &str = "optim.";
const STATE: &str = "state.";

impl Checkpoint {
    /// All tensors under one flat namespace, as the safetensors file holds them.
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let parts = [
            (ONLINE, &self.online),
            (BUFFER, &self.buffers),
            (TARGET, &self.target),
            (OPTIM, &self.optimizer),
            (STATE, &self.states),
        ];
        parts
            .into_iter()
            .flat_map(|(prefix, part)| part.iter().map(move |(name, t)| (format!("{prefix}{name}"), t.clone())))
            .collect()
    }

    /// Splits a safetensors file's tensors into their parts (a name with no known prefix is ignored).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, meta: Meta) -> Self {
        let part = |prefix: &str| -> HashMap<String, Tensor> {
            tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect()
        };
        Checkpoint {
            meta,
            online: part(ONLINE),
            buffers: part(BUFFER),
            target: part(TARGET),
            optimizer: part(OPTIM),
            states: part(STATE),
        }
    }

    /// The same checkpoint with every tensor on `device` (checkpoints are read on the CPU).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let move_all = |part: &HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>> {
            part.iter().map(|(k, v)| Ok((k.clone(), v.to_device(device)?))).collect()
        };
        Ok(Checkpoint {
            meta: self.meta,
            online: move_all(&self.online)?,
            buffers: move_all(&self.buffers)?,
            target: move_all(&self.target)?,
            optimizer: move_all(&self.optimizer)?,
            states: move_all(&self.states)?,
        })
    }

    /// Loads the online network's weights and BatchNorm statistics into `net` (what training and `eval` share).
    pub fn restore_online(&self, net: &SiameseNet) -> Result<()> {
        net.params().load(&self.online)?;
        net.load_buffers(&self.buffers)
    }
}
