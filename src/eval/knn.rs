//! Weighted kNN, exactly as InstDisc (Wu et al. 2018) and the UniGrad repository evaluate features:
//! L2-normalise bank and queries, take the k most cosine-similar bank rows for each query, weight each by
//! exp(sim / t), sum the weights per class, and predict the class with the largest sum.
//!
//! Similarities are one matrix product per chunk of queries (candle, on the features' device); the
//! top-k is a partial selection on the CPU (candle has no top-k), so memory stays at `chunk × n_bank`.

use super::{features, EvalError};
use crate::data::Dataset;
use crate::nn::layers::l2_normalize;
use candle_core::{Device, Tensor};

/// Queries per similarity matrix: bounds memory to `CHUNK × n_bank` f32 (120 MB for 60,000 bank rows).
pub const CHUNK: usize = 500;

/// Predicts a class for every query row from the `bank` rows and their labels (`k` neighbours,
/// temperature `t`). `k` larger than the bank uses the whole bank; ties between equally similar bank rows
/// go to the lower index, ties between class scores to the lower class, so the result is deterministic.
pub fn knn_predict(
    bank: &Tensor,
    bank_labels: &[u8],
    queries: &Tensor,
    k: usize,
    t: f64,
) -> Result<Vec<u8>, EvalError> {
    let (bank, d) = features(bank, bank_labels.len(), "bank")?;
    let n_queries = queries.dims().first().copied().unwrap_or(0);
    let (queries, dq) = features(queries, n_queries, "query")?;
    if d != dq {
        return Err(EvalError::Shape {
            detail: format!("the bank features have {d} columns but the queries have {dq}"),
            help: "embed the bank and the queries with the same model".into(),
        });
    }
    let n = bank_labels.len();
    if n == 0 || k == 0 {
        return Err(EvalError::Empty {
            detail: format!("kNN needs a non-empty bank and k ≥ 1 (bank {n}, k {k})"),
            help: "embed the training set as the bank and use e.g. `knn(k = 200)`".into(),
        });
    }
    if !(t > 0.0 && t.is_finite()) {
        return Err(EvalError::Empty {
            detail: format!("the kNN temperature must be positive and finite, found {t}"),
            help: "use e.g. `knn(t = 0.1)`".into(),
        });
    }
    let k = k.min(n);
    let classes = bank_labels.iter().map(|&l| l as usize + 1).max().unwrap_or(1);
    let bank_t = l2_normalize(&bank)?.t()?;
    let queries = l2_normalize(&queries)?;
    let mut order: Vec<u32> = Vec::with_capacity(n);
    let mut scores = vec![0.0f64; classes];
    let mut predictions = Vec::with_capacity(n_queries);
    for start in (0..n_queries).step_by(CHUNK) {
        let len = CHUNK.min(n_queries - start);
        let sims = queries.narrow(0, start, len)?.matmul(&bank_t)?;
        let sims: Vec<f32> = sims.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        for row in sims.chunks_exact(n) {
            order.clear();
            order.extend(0..n as u32);
            let by_similarity = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k < n {
                order.select_nth_unstable_by(k - 1, by_similarity);
            }
            let top = &order[..k];
            // exp(sim / t) up to a common factor exp(max / t), which leaves the argmax unchanged and
            // keeps small temperatures from overflowing.
            let max = top.iter().map(|&i| row[i as usize]).fold(f32::NEG_INFINITY, f32::max) as f64;
            scores.iter_mut().for_each(|s| *s = 0.0);
            for &i in top {
                scores[bank_labels[i as usize] as usize] += ((row[i as usize] as f64 - max) / t).exp();
            }
            let best = (0..classes).fold(0, |best, c| if scores[c] > scores[best] { c } else { best });
            predictions.push(best as u8);
        }
    }
    Ok(predictions)
}

/// Top-1 accuracy in [0, 1] of [`knn_predict`] on labelled queries.
pub fn knn_accuracy(
    bank: &Tensor,
    bank_labels: &[u8],
    queries: &Tensor,
    query_labels: &[u8],
    k: usize,
    t: f64,
) -> Result<f64, EvalError> {
    if query_labels.is_empty() {
        return Err(EvalError::Empty {
            detail: "there are no queries to score".into(),
            help: "evaluate on the test set".into(),
        });
    }
    let n_queries = queries.dims().first().copied().unwrap_or(0);
    if n_queries != query_labels.len() {
        return Err(EvalError::Shape {
            detail: format!("the query features have {n_queries} rows but there are {} labels", query_labels.len()),
            help: "pass one label per feature row, in the same order".into(),
        });
    }
    let predicted = knn_predict(bank, bank_labels, queries, k, t)?;
    Ok(accuracy(&predicted, query_labels))
}

/// Fraction of predictions equal to the labels.
pub fn accuracy(predicted: &[u8], labels: &[u8]) -> f64 {
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len().max(1) as f64
}

/// The raw-pixel baseline: kNN with each image's C × H × W pixels in [0, 1] (unnormalised) as its features, the
/// evaluation bank (the training set, or STL-10's labelled training split) as the bank and the test set as the
/// queries (78.9 % on the full Fashion-MNIST with k = 200, t = 0.1). Needs labels (`ssl::data::unlabelled`).
pub fn raw_pixel_knn(dataset: &Dataset, k: usize, t: f64) -> Result<f64, EvalError> {
    let (bank, queries) = raw_pixel_features(dataset)?;
    let splits = dataset.eval_splits()?;
    knn_accuracy(&bank, splits.bank_labels, &queries, splits.query_labels, k, t)
}

/// The evaluation bank's and queries' raw pixels in [0, 1], one row per image: the features of the raw-pixel
/// baselines (kNN and the linear probe).
pub fn raw_pixel_features(dataset: &Dataset) -> Result<(Tensor, Tensor), EvalError> {
    let pixels = dataset.shape.pixels();
    let flat = |images: &[u8]| -> Result<Tensor, EvalError> {
        let n = dataset.shape.images_in(images.len())?;
        let x: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
        Ok(Tensor::from_vec(x, (n, pixels), &Device::Cpu)?)
    };
    let splits = dataset.eval_splits()?;
    Ok((flat(splits.bank)?, flat(splits.queries)?))
}
