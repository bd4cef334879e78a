//! A checkpoint: everything the next step needs — online weights, BatchNorm statistics, the target, the optimiser's
//! state and the objective's states — and where it stands. The tensor names (`online.…`, `buffer.…`, `target.…`,
//! `optim.…`, `state.…`) are built and parsed here only, and so is the file's byte form: safetensors with the
//! [`Meta`] as JSON in its header, so that the hash `checkpoint.json` names covers the step too;
//! [`super::run::RunDir`] writes and reads the files.

use crate::nn::SiameseNet;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a checkpoint stands, written beside its tensors in `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Steps completed.
    pub step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// kNN top-1 of the last evaluation before it, if any.
    pub knn_top1: Option<f64>,
    /// `RunConfig::identity_sha256` of the run that wrote it, so a checkpoint copied from another run is refused.
    pub run_identity: String,
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
/// The safetensors header key under which the meta is stored.
const META_KEY: &str = "ssl-lang.meta";

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

    /// The safetensors bytes of every tensor, with the meta in the header.
    pub fn to_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        let meta = serde_json::to_string(&self.meta).expect("a Meta always serialises");
        let mut tensors: Vec<(String, Tensor)> = self.to_tensors().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::serialize(tensors, Some(HashMap::from([(META_KEY.to_string(), meta)]))).map_err(|e| e.to_string())
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`] (tensors on the CPU); a tensor holding a NaN or an infinity
    /// is refused, so a poisoned checkpoint is never taken for a good one.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| format!("no `{META_KEY}` in its header"))?;
        let meta: Meta =
            serde_json::from_str(meta).map_err(|e| format!("its `{META_KEY}` is not a checkpoint's: {e}"))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        for (name, t) in &tensors {
            if let Some(i) = crate::eval::health::first_non_finite(t).map_err(|e| e.to_string())? {
                return Err(format!("tensor `{name}` holds a NaN or infinity (at flat index {i})"));
            }
        }
        Ok(Checkpoint::from_tensors(tensors, meta))
    }

    /// The same checkpoint with every tensor on `device` (checkpoints are read on the CPU).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let move_all = |part: &HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>> {
            part.iter().map(|(k, v)| Ok((k.clone(), v.to_device(device)?))).collect()
        };
        Ok(Checkpoint {
            meta: self.meta.clone(),
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
