//! Evaluation of learned features (DESIGN §5): weighted kNN on L2-normalised backbone features and a
//! linear probe on frozen features, plus the raw-pixel baselines to print beside them.

pub mod health;
pub mod knn;
pub mod linear;

pub use knn::{knn_accuracy, knn_predict, raw_pixel_knn};
pub use linear::{linear_probe, LinearProbe, ProbeResult};

use crate::data::DataError;
use candle_core::{DType, Tensor};

/// Why an evaluation could not run; each message starts with a stable code and ends with a help line.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Features or labels do not line up.
    #[error("ssl::eval::shape: {detail}\n  help: {help}")]
    Shape {
        /// What is wrong.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// Nothing to evaluate with: an empty bank or query set, k = 0, or a temperature that is not positive.
    #[error("ssl::eval::empty: {detail}\n  help: {help}")]
    Empty {
        /// What is missing.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// A tensor operation failed.
    #[error(
        "ssl::eval::tensor: {0}\n  help: this is a bug or an out-of-memory condition; try a smaller chunk or batch"
    )]
    Tensor(#[from] candle_core::Error),
    /// The data set could not be turned into features.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Checks that `x` is a 2-D feature matrix with `rows` rows (one per label), and returns it as f32 with its width.
fn features(x: &Tensor, rows: usize, what: &str) -> Result<(Tensor, usize), EvalError> {
    let dims = x.dims();
    if dims.len() != 2 {
        return Err(EvalError::Shape {
            detail: format!("the {what} features have shape {dims:?}, expected [n, d]"),
            help: "flatten each sample's features into one row".into(),
        });
    }
    if dims[0] != rows {
        return Err(EvalError::Shape {
            detail: format!("the {what} features have {} rows but there are {rows} labels", dims[0]),
            help: "pass one label per feature row, in the same order".into(),
        });
    }
    Ok((x.to_dtype(DType::F32)?, dims[1]))
}
