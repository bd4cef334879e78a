//! `ssl-lang grad`: one step of an objective on tensors from a file, for debugging an objective or
//! comparing with another framework. Shape and name problems are coded errors, not panics.

use super::{Edge, Failure};
use crate::backend::Backend;
use crate::check::typed::{Objective, StateKind};
use crate::error::{Error, ErrorCode};
use crate::eval::health::first_non_finite;
use crate::ir::cost::Sizes;
use crate::plan::{Features, Plan};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Why a `grad` run failed; the message says what and where, and `Error::from` adds its code and help.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The input file could not be read as safetensors.
    #[error("cannot read `{path}` as safetensors: {reason}")]
    Read {
        /// File.
        path: String,
        /// Underlying error.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("the inputs have no tensor `{name}` (found: {found})")]
    Missing {
        /// Missing tensor.
        name: String,
        /// What the file holds.
        found: String,
    },
    /// A tensor has the wrong shape or type.
    #[error("tensor `{name}` is {found}, expected {expected}")]
    Shape {
        /// Tensor.
        name: String,
        /// Its shape and dtype.
        found: String,
        /// What was expected.
        expected: String,
        /// How to fix it.
        help: String,
    },
    /// A tensor names no input and no state.
    #[error("the inputs hold `{name}`, which is neither u1 u2 t1 t2 nor a state of the objective ({states})")]
    Unknown {
        /// Tensor.
        name: String,
        /// The objective's states.
        states: String,
    },
    /// An input holds a NaN or an infinity: every gradient it touches would be NaN.
    #[error("tensor `{name}` holds a NaN or infinity at flat index {index}")]
    NonFinite {
        /// Tensor.
        name: String,
        /// Row-major index of the first bad value.
        index: usize,
    },
    /// The results could not be written.
    #[error("cannot write `{path}`: {reason}")]
    Write {
        /// File.
        path: String,
        /// Underlying error.
        reason: String,
    },
    /// Evaluation failed.
    #[error("{0}")]
    Eval(#[from] candle_core::Error),
}

/// `ssl-lang grad FILE --inputs … --out …`: compiles the file, runs one step and prints the summary.
pub fn command(
    file: &Path,
    objective: Option<&str>,
    io: (&Path, &Path),
    normalize: bool,
    backend: Backend,
    device_name: &str,
    edge: &Edge,
) -> Result<(), Failure> {
    let device = super::device::open(device_name)?;
    let (source, program) = super::compile_file(file, edge)?;
    let (o, _) = super::select(&program, objective, &source.name)?;
    println!("{}", run(&o, io.0, io.1, normalize, backend, &device)?);
    Ok(())
}

/// Runs one step on `device` and writes the results; returns a one-line summary. The fused kernels are CPU-only, so
/// elsewhere the reference backend (candle's ops) runs.
pub fn run(
    o: &Objective,
    inputs: &Path,
    out: &Path,
    normalize: bool,
    backend: Backend,
    device: &Device,
) -> Result<String, GradError> {
    let backend = if device.is_cpu() { backend } else { Backend::Reference };
    let read = |reason: String| GradError::Read { path: inputs.display().to_string(), reason };
    let bytes = crate::files::read_bounded(inputs, crate::files::TENSOR_LIMIT).map_err(|e| read(format!("it {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| read(e.to_string()))?;
    drop(bytes);
    for (name, t) in &tensors {
        if let Some(index) = first_non_finite(t)? {
            return Err(GradError::NonFinite { name: name.clone(), index });
        }
    }
    let found = || {
        let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        names.sort();
        names.join(", ")
    };
    let get = |name: &str| -> Result<Tensor, GradError> {
        let t = tensors.get(name).ok_or_else(|| GradError::Missing { name: name.into(), found: found() })?;
        let shape = t.dims();
        if shape.len() != 2 || shape.contains(&0) || !matches!(t.dtype(), DType::F32 | DType::F64) {
            return Err(GradError::Shape {
                name: name.into(),
                found: format!("{:?} {:?}", shape, t.dtype()),
                expected: "[N, D] f32 or f64 with N ≥ 1 and D ≥ 1".into(),
                help: "store each feature matrix as a 2-D float tensor, one row per sample".into(),
            });
        }
        let t = t.to_dtype(DType::F64)?;
        Ok(if normalize { crate::nn::layers::l2_normalize(&t)? } else { t })
    };
    let f = Features { u1: get("u1")?, u2: get("u2")?, t1: get("t1")?, t2: get("t2")? };
    let (n, d) = (f.u1.dims()[0], f.u1.dims()[1]);
    for (name, t) in [("u2", &f.u2), ("t1", &f.t1), ("t2", &f.t2)] {
        if t.dims() != [n, d] {
            return Err(GradError::Shape {
                name: name.into(),
                found: format!("{:?}", t.dims()),
                expected: format!("[{n}, {d}] like u1"),
                help: "all four feature matrices share N and D".into(),
            });
        }
    }
    let fifo =
        o.states.iter().map(|s| tensors.get(&s.name).map_or(0, |t| t.dims().first().copied().unwrap_or(0))).collect();
    let plan = Plan::with_backend(o, backend, &Sizes { n, d, fifo });
    let mut state = plan.initial_state();
    let state_names: Vec<&str> = o.states.iter().map(|s| s.name.as_str()).collect();
    for (name, t) in &tensors {
        if ["u1", "u2", "t1", "t2"].contains(&name.as_str()) {
            continue;
        }
        let Some(i) = o.states.iter().position(|s| &s.name == name) else {
            return Err(GradError::Unknown { name: name.clone(), states: state_names.join(", ") });
        };
        let t = t.to_dtype(DType::F64)?;
        let expected: Vec<usize> = match (&o.states[i].kind, o.states[i].ty) {
            (StateKind::Fifo { size, .. }, _) => vec![t.dims().first().copied().unwrap_or(0).min(*size), d],
            (_, crate::check::types::Type::Mat) => vec![d, d],
            (_, crate::check::types::Type::Vec) => vec![d],
            _ => vec![],
        };
        if t.dims() != expected.as_slice() {
            return Err(GradError::Shape {
                name: name.clone(),
                found: format!("{:?}", t.dims()),
                expected: format!("{expected:?}"),
                help: "a fifo is [rows ≤ capacity, D], a matrix ema [D, D], a vector ema [D], a scalar ema []".into(),
            });
        }
        match o.states[i].kind {
            StateKind::Fifo { .. } => state.fifo[i] = Some(t),
            StateKind::Ema { .. } => state.ema[i] = Some(t),
        }
    }
    let g = plan.step_with_loss(&f, &mut state)?;
    let mut outputs: HashMap<String, Tensor> = HashMap::new();
    outputs.insert("g1".into(), g.g1.to_dtype(DType::F32)?);
    outputs.insert("g2".into(), g.g2.to_dtype(DType::F32)?);
    if let Some(l) = &g.loss {
        outputs.insert("loss".into(), l.to_dtype(DType::F32)?);
    }
    for (i, s) in o.states.iter().enumerate() {
        if let Some(t) = state.ema[i].as_ref().or(state.fifo[i].as_ref()) {
            outputs.insert(s.name.clone(), t.to_dtype(DType::F32)?);
        }
    }
    candle_core::safetensors::save(&outputs, out)
        .map_err(|e| GradError::Write { path: out.display().to_string(), reason: e.to_string() })?;
    let mut names: Vec<&String> = outputs.keys().collect();
    names.sort();
    Ok(format!(
        "{}: N = {n}, D = {d}; wrote {} to {} (mean positive similarity {:.4})",
        o.name,
        names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
        out.display(),
        g.stats.positive_similarity
    ))
}

impl From<GradError> for Error {
    fn from(e: GradError) -> Self {
        if let GradError::Eval(inner) = e {
            return inner.into();
        }
        let (code, help) = match &e {
            GradError::Read { .. } => (
                ErrorCode::GradRead,
                "write the inputs with safetensors (e.g. `safetensors.torch.save_file`)".to_string(),
            ),
            GradError::Missing { .. } => (ErrorCode::GradMissing, "provide u1, u2, t1 and t2, each [N, D]".to_string()),
            GradError::Shape { help, .. } => (ErrorCode::GradShape, help.clone()),
            GradError::Unknown { .. } => (ErrorCode::GradUnknown, "remove it or rename it after a state".to_string()),
            GradError::NonFinite { .. } => (
                ErrorCode::GradNonFinite,
                "features must be finite: check the code that produced them (a division by a zero norm, say)"
                    .to_string(),
            ),
            GradError::Write { .. } => (
                ErrorCode::GradWrite,
                "check that the directory exists and is writable, and that the disk is not full".to_string(),
            ),
            GradError::Eval(_) => unreachable!("converted above"),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
