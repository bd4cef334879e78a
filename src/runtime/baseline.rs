//! The baselines a run prints before its first step (raw pixels and the random-init encoder, by kNN and by the
//! linear probe), kept under the runs directory by what determines them: the images, the evaluation protocols, the
//! device and the encoder's initial state. Extracting the random-init features of the full Fashion-MNIST and fitting
//! two probes takes about a minute on two cores; the cells of a sweep (files × grid values) mostly share all of
//! that, so they compute the baselines once.

use super::records::Baseline;
use super::run::{write_atomic, RunError};
use crate::nn::SiameseNet;
use candle_core::{DType, Result, Tensor};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The directory, under the runs directory, that holds the baselines.
const DIR: &str = ".baselines";

/// The SHA-256 (hex) of what the baselines depend on: the images (`data_sha256`), the protocols as printed, the
/// device, the layers' implementation, and the encoder's parameters and running statistics (names, shapes and
/// values; the projector and predictor do not enter the backbone's features).
pub fn key(data_sha256: &str, protocols: &[&str], net: &SiameseNet) -> Result<String> {
    let mut h = Sha256::new();
    let (device, layers) = (format!("{:?}", net.device().location()), format!("{:?}", net.layers()));
    for text in [data_sha256, &device, &layers].into_iter().chain(protocols.iter().copied()) {
        h.update(text.len().to_le_bytes());
        h.update(text.as_bytes());
    }
    let buffers = net.buffers();
    let params = net.params().iter().map(|p| (p.name.as_str(), p.var.as_tensor()));
    let mut encoder: Vec<(&str, &Tensor)> =
        params.chain(buffers.iter()).filter(|(name, _)| name.starts_with("encoder.")).collect();
    encoder.sort_by_key(|(name, _)| *name);
    for (name, tensor) in encoder {
        h.update(name.len().to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}", tensor.dims()).as_bytes());
        for x in tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()? {
            h.update(x.to_le_bytes());
        }
    }
    Ok(crate::files::hex(&h.finalize()))
}

/// Where the baselines of `key` are kept under `runs_root`.
pub fn path(runs_root: &Path, key: &str) -> PathBuf {
    runs_root.join(DIR).join(format!("{key}.json"))
}

/// The baselines kept for `key`, if any; a file that does not parse is ignored (they are computed again).
pub fn read(runs_root: &Path, key: &str) -> Option<Baseline> {
    let bytes = crate::files::read_bounded(&path(runs_root, key), crate::files::SOURCE_LIMIT).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps the baselines for `key`; failing to write them only costs the next run the time to compute them again,
/// so the caller may ignore the error.
pub fn write(runs_root: &Path, key: &str, baseline: &Baseline) -> std::result::Result<(), RunError> {
    let dir = runs_root.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::io("create", &dir, e))?;
    let text = serde_json::to_string(baseline).expect("a Baseline serialises");
    write_atomic(&path(runs_root, key), text.as_bytes())
}
