//! Parameters and buffers: named, ordered collections that checkpoints, optimiser state and the EMA target address
//! by name or position.

use candle_core::{bail, Result, Tensor, Var};
use std::collections::HashMap;

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
    pub(super) entries: Vec<(String, Tensor)>,
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

/// Reads `names` from `map`, checking shapes against `current` and converting dtype and device to match.
pub(super) fn load_named(
    names: &[String],
    current: &[Tensor],
    map: &HashMap<String, Tensor>,
    what: &str,
) -> Result<Vec<Tensor>> {
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
