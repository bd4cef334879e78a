//! `ssl-lang eval`: kNN and a linear probe on the frozen backbone of a saved run. The run's own config (objective
//! source, overrides, data limit) rebuilds the network; features are computed once per checkpoint and cached in the
//! run directory.

use super::{device, select, Failure};
use crate::check::recipe::Knn;
use crate::data;
use crate::error::{Error, ErrorCode};
use crate::eval::features::{backbone_features, knn_protocol};
use crate::eval::{self, LinearProbe};
use crate::nn::SiameseNet;
use crate::runtime::overrides;
use crate::runtime::run::RunDir;
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::path::Path;

/// Which evaluations to run.
#[derive(Clone, Copy, Debug)]
pub struct Protocols {
    /// Weighted kNN (also the default when neither is asked for).
    pub knn: bool,
    /// A linear probe.
    pub linear: bool,
}

/// Evaluates the latest checkpoint of the run at `path` and prints the report.
pub fn run(path: &Path, protocols: Protocols, data_dir: Option<&Path>, device_name: &str) -> Result<(), Failure> {
    let device = device::open(device_name)?;
    let run = RunDir::open(path)?;
    let config = run.read_config()?;
    let stale = |why: String| {
        Error::new(ErrorCode::RunStale, format!("run {}: {why}", run.path.display()))
            .help("evaluate it with the ssl-lang version that wrote it (config.json names it), or train it again")
    };
    let (program, diagnostics) = crate::compile(&config.source);
    if crate::diagnostic::has_errors(&diagnostics) {
        return Err(stale("its saved objective no longer checks".into()).into());
    }
    let (mut objective, mut recipe) = select(&program, Some(&config.objective), "config.json")
        .map_err(|e| stale(format!("its saved source has no objective `{}` ({})", config.objective, e.message)))?;
    let sets: Vec<String> = config.overrides.iter().map(|s| s.replacen(" = ", "=", 1)).collect();
    overrides::apply(&mut recipe, &mut objective, &sets)
        .map_err(|_| stale("its saved overrides no longer apply".into()))?;
    let Some(checkpoint) = run.load_checkpoint()? else {
        return Err(Error::new(
            ErrorCode::RunNoCheckpoint,
            format!("run {} has no checkpoint yet", run.path.display()),
        )
        .help("let the run reach its first checkpoint (every `checkpoint` epochs, and at the end)")
        .into());
    };
    let step = checkpoint.meta.step;
    let net = SiameseNet::from_recipe(&recipe, DType::F32, &device)?;
    checkpoint.to_device(&device)?.restore_online(&net)?;

    let mut data = data::load(&recipe.data, data_dir)?;
    if let Some(limit) = config.limit {
        data.limit(limit);
    }
    let cache = run.path.join(format!("features-step{step}-{}-{}.safetensors", data.train_len(), data.test_len()));
    let (bank, queries) = match candle_core::safetensors::load(&cache, &Device::Cpu) {
        Ok(mut m) if m.contains_key("bank") && m.contains_key("queries") => {
            (m.remove("bank").expect("checked"), m.remove("queries").expect("checked"))
        }
        _ => {
            let bank = backbone_features(&net, &data.train_images)?.to_device(&Device::Cpu)?;
            let queries = backbone_features(&net, &data.test_images)?.to_device(&Device::Cpu)?;
            let map = HashMap::from([("bank".to_string(), bank.clone()), ("queries".to_string(), queries.clone())]);
            candle_core::safetensors::save(&map, &cache)?;
            (bank, queries)
        }
    };
    println!("run {} — checkpoint at step {step}; data: {}", run.path.display(), data.source);
    if protocols.knn || !protocols.linear {
        let k = recipe.eval.clone().unwrap_or(Knn { k: 200, t: 0.1, every: 1 });
        let top1 = eval::knn_accuracy(&bank, &data.train_labels, &queries, &data.test_labels, k.k, k.t)?;
        println!("kNN top-1 {:.2} %  ({})", top1 * 100.0, knn_protocol(&k, &data));
    }
    if protocols.linear {
        let probe = LinearProbe::default();
        let result = eval::linear_probe(&bank, &data.train_labels, &queries, &data.test_labels, &probe)?;
        println!(
            "linear probe top-1 {:.2} % (train {:.2} %)  ({})",
            result.test_accuracy * 100.0,
            result.train_accuracy * 100.0,
            probe.protocol()
        );
    }
    Ok(())
}
