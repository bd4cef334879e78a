//! Where tensors live: `--device cpu|cuda[:N]`. The CPU is always there; CUDA needs a build with the `cuda` feature
//! (see scripts/cuda-env.sh) and a GPU. Asking for what is missing is a coded error that says how to get it.

use crate::error::{Error, ErrorCode};
use candle_core::Device;

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The name is not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{0}`")]
    Name(String),
    /// CUDA was asked of a build without the `cuda` feature.
    #[error("this ssl-lang was built without CUDA, so `{0}` is not available")]
    NotBuilt(String),
    /// The build has CUDA but the GPU could not be opened.
    #[error("cannot open `{name}`: {reason}")]
    Unavailable {
        /// The device asked for.
        name: String,
        /// candle's error.
        reason: String,
    },
}

/// The CUDA ordinal a device name asks for: `None` for `cpu`.
pub fn parse(name: &str) -> Result<Option<usize>, DeviceError> {
    match name {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| DeviceError::Name(name.to_string())),
    }
}

/// Opens the device a name asks for.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    let Some(ordinal) = parse(name)? else { return Ok(Device::Cpu) };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NotBuilt(name.to_string()));
    }
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
        name: name.to_string(),
        // candle appends a backtrace when RUST_BACKTRACE is set: the first line is the reason.
        reason: e.to_string().lines().next().unwrap_or_default().to_string(),
    })
}

impl From<DeviceError> for Error {
    fn from(e: DeviceError) -> Self {
        let (code, help) = match &e {
            DeviceError::Name(..) => (ErrorCode::DeviceName, "use `cpu`, `cuda` or `cuda:N` (N the GPU's index)".to_string()),
            DeviceError::NotBuilt(..) => (ErrorCode::DeviceNotBuilt, "build with `eval \"$(scripts/cuda-env.sh)\" && cargo build --release --features cuda`, or use `--device cpu`".to_string()),
            DeviceError::Unavailable { .. } => (ErrorCode::DeviceUnavailable, "check that the machine has this GPU (`nvidia-smi`), driver R580 or newer, and the CUDA 13 libraries on LD_LIBRARY_PATH".to_string()),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
