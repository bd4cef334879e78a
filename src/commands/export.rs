//! `ssl-lang export RUN --to torchvision|candle OUT`: the latest checkpoint's backbone as a safetensors file, under
//! torchvision's ResNet names or ours (`nn::export`).

use super::{Edge, Failure};
use crate::check::recipe::Encoder;
use crate::error::{Error, ErrorCode};
use crate::nn::export;
use crate::runtime::run::{write_atomic, RunDir};
use std::collections::HashMap;
use std::path::Path;

/// Whose parameter names the file carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Names {
    /// torchvision's ResNet state dict (`conv1.weight`, `layer1.0.bn1.running_mean`, …).
    Torchvision,
    /// ssl-lang's own (`encoder.stem.conv.weight`, …).
    Candle,
}

/// Writes the backbone of the run at `path` to `out`.
pub fn run(path: &Path, to: Names, out: &Path, edge: &Edge) -> Result<(), Failure> {
    let run = RunDir::open(path)?;
    let config = run.read_config()?;
    let (_, _, recipe) = super::saved_objective(&run, &config)?;
    if to == Names::Torchvision && matches!(recipe.encoder, Encoder::Mini { .. }) {
        return Err(Error::new(
            ErrorCode::ExportFormat,
            format!("run {} trains `{}`, which torchvision has no model for", run.path.display(), recipe.encoder),
        )
        .help("export it with `--to candle`, or train `encoder = resnet18` (or resnet50) to load it in torchvision")
        .into());
    }
    let loaded = super::latest_checkpoint(&run, edge)?;
    let (ckpt, step) = (&loaded.checkpoint, loaded.checkpoint.meta.step);
    let tensors = match to {
        Names::Torchvision => export::to_torchvision(&ckpt.online, &ckpt.buffers, step as u64)?,
        Names::Candle => export::encoder_tensors(&ckpt.online, &ckpt.buffers),
    };
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let count = sorted.len();
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("ssl_lang.encoder".to_string(), recipe.encoder.to_string()),
        ("ssl_lang.step".to_string(), step.to_string()),
    ]);
    let written = safetensors::serialize(sorted, Some(metadata))
        .map_err(|e| e.to_string())
        .and_then(|bytes| write_atomic(out, &bytes).map_err(|e| e.to_string()));
    if let Err(why) = written {
        return Err(Error::new(ErrorCode::ExportWrite, format!("cannot write {}: {why}", out.display()))
            .help("check that the directory exists and is writable")
            .into());
    }
    println!("wrote {} tensors of {} at step {step} to {}", count, recipe.encoder, out.display());
    Ok(())
}
