//! `ssl-lang eval`: kNN and a linear probe on the frozen backbone of a saved run. The run's own
//! config (objective source, overrides, data limit) rebuilds the network; features are computed
//! once per checkpoint and cached in the run directory.

use super::model::SiameseNet;
use super::run::RunDir;
use super::train::{backbone_features, knn_protocol, limit_dataset, TrainError};
use crate::data;
use crate::eval::{self, LinearProbe};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

/// Evaluates the latest checkpoint of the run at `path`, computing features on `device`; returns the report.
pub fn evaluate(
    path: &Path,
    knn: bool,
    linear: bool,
    data_dir: Option<&Path>,
    device: &Device,
) -> Result<String, TrainError> {
    let run = RunDir::open(path)?;
    let config = run.read_config()?;
    let source = config["source"].as_str().unwrap_or_default();
    let (program, diagnostics) = crate::compile(source);
    if crate::diagnostic::has_errors(&diagnostics) {
        return Err(TrainError::Config(
            "the run's saved objective no longer checks; it was written by another version".into(),
        ));
    }
    let name = config["objective"].as_str().unwrap_or_default();
    let mut objective = program.objective(Some(name)).cloned().ok_or_else(|| {
        TrainError::Config(format!("the run's config names objective `{name}`, which its source lacks"))
    })?;
    let mut recipe =
        if program.recipe_target.as_deref() == Some(name) { program.recipe.clone() } else { Default::default() };
    let overrides: Vec<String> = config["overrides"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(|s| s.replace(" = ", "="))).collect())
        .unwrap_or_default();
    super::overrides::apply(&mut recipe, &mut objective, &overrides).map_err(TrainError::Config)?;
    let Some((tensors, meta)) = run.load_checkpoint()? else {
        return Err(TrainError::Config(format!("run {} has no checkpoint yet", run.path.display())));
    };
    let step = meta["step"].as_u64().unwrap_or(0);
    let net = SiameseNet::from_recipe(&recipe, DType::F32, device)?;
    let part = |prefix: &str| -> HashMap<String, Tensor> {
        tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect()
    };
    net.params().load(&part("online."))?;
    net.load_buffers(&part("buffer."))?;

    let mut data = data::load(&recipe.data, data_dir)?;
    limit_dataset(&mut data, config["limit"].as_u64().map(|l| l as usize));
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
    let mut out = String::new();
    let _ = writeln!(out, "run {} — checkpoint at step {step}; data: {}", run.path.display(), data.source);
    if knn || !linear {
        let k = recipe.eval.clone().unwrap_or(crate::check::recipe::Knn { k: 200, t: 0.1, every: 1 });
        let mut with_knn = recipe.clone();
        with_knn.eval = Some(k.clone());
        let top1 = eval::knn_accuracy(&bank, &data.train_labels, &queries, &data.test_labels, k.k, k.t)?;
        let _ = writeln!(out, "kNN top-1 {:.2} %  ({})", top1 * 100.0, knn_protocol(&with_knn, &data));
    }
    if linear {
        let probe = LinearProbe::default();
        let result = eval::linear_probe(&bank, &data.train_labels, &queries, &data.test_labels, &probe)?;
        let _ = writeln!(
            out,
            "linear probe top-1 {:.2} % (train {:.2} %)  (softmax regression on standardised frozen backbone features, {} epochs, batch {}, SGD lr {} cosine, momentum {}, weight decay {})",
            result.test_accuracy * 100.0,
            result.train_accuracy * 100.0,
            probe.epochs,
            probe.batch,
            probe.lr,
            probe.momentum,
            probe.weight_decay
        );
    }
    Ok(out)
}
