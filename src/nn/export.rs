//! The trained backbone under another framework's names: torchvision's ResNet state dict (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, `layer2.0.downsample.0.weight`, …) for `resnet18` and `resnet50`, so that
//! `torchvision.models.resnet18().load_state_dict(..., strict=False)` misses only the classifier `fc.*`.

use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

/// torchvision's name for one of our encoder tensors (`encoder.stage2.block1.shortcut.bn.running_mean` →
/// `layer2.0.downsample.1.running_mean`); `None` for anything outside the encoder or not of its layout.
pub fn torchvision_name(ours: &str) -> Option<String> {
    let rest = ours.strip_prefix("encoder.")?;
    if let Some(leaf) = rest.strip_prefix("stem.conv.") {
        return Some(format!("conv1.{leaf}"));
    }
    if let Some(leaf) = rest.strip_prefix("stem.bn.") {
        return Some(format!("bn1.{leaf}"));
    }
    let (stage, rest) = rest.strip_prefix("stage")?.split_once('.')?;
    let (block, layer) = rest.strip_prefix("block")?.split_once('.')?;
    let (stage, block): (usize, usize) = (stage.parse().ok()?, block.parse().ok()?);
    let layer = if let Some(leaf) = layer.strip_prefix("shortcut.conv.") {
        format!("downsample.0.{leaf}")
    } else if let Some(leaf) = layer.strip_prefix("shortcut.bn.") {
        format!("downsample.1.{leaf}")
    } else {
        layer.to_string()
    };
    Some(format!("layer{stage}.{}.{layer}", block.checked_sub(1)?))
}

/// The encoder's parameters and BatchNorm statistics (`online` and `buffers` as a checkpoint holds them) under
/// torchvision's names, with each BatchNorm's `num_batches_tracked` set to `steps` (the training steps it saw).
pub fn to_torchvision(
    online: &HashMap<String, Tensor>,
    buffers: &HashMap<String, Tensor>,
    steps: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, tensor) in online.iter().chain(buffers) {
        let Some(theirs) = torchvision_name(name) else { continue };
        if let Some(bn) = theirs.strip_suffix(".running_mean") {
            out.insert(format!("{bn}.num_batches_tracked"), Tensor::new(steps as i64, &Device::Cpu)?);
        }
        out.insert(theirs, tensor.to_device(&Device::Cpu)?);
    }
    Ok(out)
}

/// The encoder's tensors under our own names (`--to candle`).
pub fn encoder_tensors(online: &HashMap<String, Tensor>, buffers: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    online
        .iter()
        .chain(buffers)
        .filter(|(n, _)| n.starts_with("encoder."))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect()
}
