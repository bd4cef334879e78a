//! Evaluation of learned features: weighted kNN on L2-normalised backbone features and a
//! linear probe on frozen features, plus the raw-pixel baselines to print beside them.

pub mod features;
pub mod health;
pub mod knn;
pub mod linear;

pub use knn::{knn_accuracy, knn_predict, raw_pixel_features, raw_pixel_knn};
pub use linear::{linear_probe, LinearProbe, ProbeResult};

use crate::data::DataError;
use crate::error::{Error, ErrorCode};
use candle_core::{DType, Tensor};

/// Why an evaluation could not run; the message says what and where, and `Error::from` adds its code and help.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Features or labels do not line up.
    #[error("{detail}")]
    Shape {
        /// What is wrong.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// Nothing to evaluate with: an empty bank or query set, k = 0, or a temperature that is not positive.
    #[error("{detail}")]
    Empty {
        /// What is missing.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// A tensor operation failed.
    #[error("{0}")]
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

impl From<EvalError> for Error {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::Tensor(inner) => return inner.into(),
            EvalError::Data(inner) => return inner.into(),
            _ => {}
        }
        let (code, help) = match &e {
            EvalError::Shape { help, .. } => (ErrorCode::EvalShape, help.clone()),
            EvalError::Empty { help, .. } => (ErrorCode::EvalEmpty, help.clone()),
            EvalError::Tensor(_) | EvalError::Data(_) => unreachable!("converted above"),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
