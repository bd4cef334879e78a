//! `ssl-lang eval`: kNN and a linear probe on the frozen backbone of a saved run. The run's own config (objective
//! source, overrides, data limit) rebuilds the network; features are computed once per checkpoint and data set and
//! cached in the run directory.

use super::{device, Edge, Failure};
use crate::check::recipe::Knn;
use crate::data;
use crate::data::Dataset;
use crate::error::{Error, ErrorCode};
use crate::eval::features::{knn_protocol, pooled_features};
use crate::eval::{self, linear::ProbeResult, LinearProbe};
use crate::files::hex;
use crate::nn::SiameseNet;
use crate::runtime::run::RunDir;
use candle_core::Tensor;
use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Which evaluations to run.
#[derive(Clone, Copy, Debug)]
pub struct Protocols {
    /// Weighted kNN (also the default when neither is asked for).
    pub knn: bool,
    /// A linear probe.
    pub linear: bool,
}

/// What `eval` measured on a run's latest checkpoint.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The checkpoint's step.
    pub step: usize,
    /// Where the data came from.
    pub source: String,
    /// kNN top-1 in [0, 1] and its protocol, when asked for.
    pub knn: Option<(f64, String)>,
    /// The effective rank of kNN's features of the test images, and their width: how many directions the backbone
    /// uses (training's health monitor reads the projector's output, which may use far fewer).
    pub backbone_rank: Option<(f64, usize)>,
    /// The linear probe's result and its protocol, when asked for.
    pub linear: Option<(ProbeResult, String)>,
}

/// Evaluates the latest checkpoint of the run at `path` and prints the report.
pub fn run(
    path: &Path,
    protocols: Protocols,
    data_dir: Option<&Path>,
    device_name: &str,
    edge: &Edge,
) -> Result<(), Failure> {
    let e = evaluate(path, protocols, data_dir, device_name, edge)?;
    println!("run {} — checkpoint at step {}; data: {}", path.display(), e.step, e.source);
    if let Some((top1, protocol)) = &e.knn {
        println!("kNN top-1 {:.2} %  ({protocol})", top1 * 100.0);
    }
    if let Some((rank, width)) = e.backbone_rank {
        println!("backbone features: effective rank {rank:.1} of {width} (the test images' kNN features)");
    }
    if let Some((result, protocol)) = &e.linear {
        println!(
            "linear probe top-1 {:.2} % (train {:.2} %)  ({protocol})",
            result.test_accuracy * 100.0,
            result.train_accuracy * 100.0,
        );
    }
    Ok(())
}

/// Evaluates the latest checkpoint of the run at `path` (kNN when neither protocol is asked for).
pub fn evaluate(
    path: &Path,
    protocols: Protocols,
    data_dir: Option<&Path>,
    device_name: &str,
    edge: &Edge,
) -> Result<Evaluation, Failure> {
    let device = device::open(device_name)?;
    let run = RunDir::open(path)?;
    let config = run.read_config()?;
    let (_, _, recipe) = super::saved_objective(&run, &config)?;
    let loaded = super::latest_checkpoint(&run, edge)?;
    let step = loaded.checkpoint.meta.step;
    let mut data = data::load_recipe(&recipe, data_dir)?;
    if let Some(limit) = config.limit {
        data.limit(limit);
    }
    // One hash of the images serves the check against the run's and the feature cache's name.
    let data_sha256 = data.fingerprint();
    if !config.data_sha256.is_empty() && data_sha256 != config.data_sha256 {
        edge.report(
            &Error::new(
                ErrorCode::EvalData,
                format!("evaluating on {}, not on the data the run trained on ({})", data.describe(), config.data),
            )
            .help("pass the run's data with `--data` to evaluate on them; the evaluation goes on with these"),
        );
    }
    let splits = data.eval_splits()?;
    let net = SiameseNet::from_recipe(&recipe, data.shape, DType::F32, &device)?;
    loaded.checkpoint.to_device(&device)?.restore_online(&net)?;
    let features = |grid| cached_features(&run, &loaded.sha256, &net, &data, &data_sha256, grid, edge);
    let mut out = Evaluation { step, source: data.describe(), knn: None, backbone_rank: None, linear: None };
    if protocols.knn || !protocols.linear {
        let (bank, queries) = features(1)?;
        let k = recipe.eval.clone().unwrap_or(Knn { k: 200, t: 0.1, every: 1 });
        let top1 = eval::knn_accuracy(&bank, splits.bank_labels, &queries, splits.query_labels, k.k, k.t)?;
        out.knn = Some((top1, knn_protocol(&k, &data)));
        out.backbone_rank = Some((eval::health::effective_rank(&queries)?, queries.dim(1)?));
    }
    if protocols.linear {
        let (bank, queries) = features(recipe.probe.grid)?;
        let probe = LinearProbe::default();
        let result = eval::linear_probe(&bank, splits.bank_labels, &queries, splits.query_labels, &probe)?;
        out.linear = Some((result, probe.protocol(recipe.probe.grid)));
    }
    Ok(out)
}

/// The backbone features of the training (bank) and test (query) images under `checkpoint` (its SHA-256), pooled
/// to a `grid`×`grid` grid (1: the global average), read from the run's cache when one was computed for this
/// checkpoint, these data (`data`, whose SHA-256 is `data_sha256`) and this grid and is intact (it holds the
/// SHA-256 of its features), else computed and cached. A cache that cannot be written (a read-only run) is reported
/// and skipped.
fn cached_features(
    run: &RunDir,
    checkpoint: &str,
    net: &SiameseNet,
    data: &Dataset,
    data_sha256: &str,
    grid: usize,
    edge: &Edge,
) -> Result<(Tensor, Tensor), Error> {
    let cache = cache_path(run, checkpoint, data_sha256, grid);
    let cached = crate::files::read_bounded(&cache, crate::files::TENSOR_LIMIT)
        .ok()
        .and_then(|bytes| candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).ok());
    if let Some(mut m) = cached {
        if let (Some(bank), Some(queries), Some(sum)) = (m.remove("bank"), m.remove("queries"), m.remove("sha256")) {
            if sum.to_vec1::<u8>().ok() == Some(features_sha256(&bank, &queries)?) {
                return Ok((bank, queries));
            }
        }
    }
    let splits = data.eval_splits()?;
    let pooled = |images| -> Result<Tensor, Error> {
        Ok(pooled_features(net, images, data.shape, &data.norm, &[grid])?.remove(0).to_device(&Device::Cpu)?)
    };
    let (bank, queries) = (pooled(splits.bank)?, pooled(splits.queries)?);
    let sum = Tensor::new(features_sha256(&bank, &queries)?, &Device::Cpu)?;
    let tensors = [("bank", &bank), ("queries", &queries), ("sha256", &sum)];
    let written = safetensors::serialize(tensors, None)
        .map_err(|e| e.to_string())
        .and_then(|bytes| crate::runtime::run::write_atomic(&cache, &bytes).map_err(|e| e.to_string()));
    if let Err(reason) = written {
        edge.report(
            &Error::new(ErrorCode::EvalCache, format!("the features are not cached: {reason}"))
                .help("evaluation goes on; the next `eval` of this checkpoint computes them again"),
        );
    }
    Ok((bank, queries))
}

/// Where the features of the checkpoint with SHA-256 `checkpoint` on the data with SHA-256 `data_sha256`
/// ([`Dataset::fingerprint`]), pooled to a `grid`×`grid` grid, are cached: a name made of the hash of all three
/// (the grid left out when it is 1, as before grids existed), so other data, another checkpoint or another pooling
/// never reads them.
pub fn cache_path(run: &RunDir, checkpoint: &str, data_sha256: &str, grid: usize) -> std::path::PathBuf {
    let pooling = if grid == 1 { String::new() } else { format!(" grid {grid}") };
    let key = Sha256::digest(format!("{checkpoint} {data_sha256}{pooling}").as_bytes());
    run.file(&format!("features-{}.safetensors", &hex(&key)[..32]))
}

/// SHA-256 of the features' f32 values, stored beside them so that a damaged cache is recomputed, not used.
fn features_sha256(bank: &Tensor, queries: &Tensor) -> Result<Vec<u8>, Error> {
    let mut hasher = Sha256::new();
    for t in [bank, queries] {
        hasher.update(format!("{:?}", t.dims()).as_bytes());
        let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_vec())
}
