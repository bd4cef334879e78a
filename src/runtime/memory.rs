//! The memory guard: an estimate of what one training step holds, checked against the memory the machine has free
//! before the first step, so that `--set batch=10000` is refused with a message instead of the kernel killing the
//! process at the limit.

use crate::check::recipe::{Augment, Recipe};
use crate::error::{Error, ErrorCode};
use crate::nn::SiameseNet;

/// Bytes a step holds per value a convolution outputs for one image of one view: the recorded activations kept for
/// the backward pass (convolution output, the BatchNorm outputs a ReLU follows, the joins), the target's forward,
/// and the gradients and transforms alive at the backward's peak (the backward frees the tape as it goes).
/// Measured: peak resident memory at batch 256 and 1024 on `resnet_mini` (SimCLR, `bench train`: 675 and 2,571
/// MB), whose difference is 9.4 bytes per value of the 768 pairs between them, rounded up.
pub const BYTES_PER_VALUE: u64 = 10;

/// What one step at the recipe's batch is expected to hold on top of what the process holds already, in bytes, for
/// the images the network is built for.
pub fn step_bytes(net: &SiameseNet, recipe: &Recipe) -> u64 {
    let input = net.input();
    let mut values = 2 * net.conv_output_values(input.height, input.width);
    for a in &recipe.augment {
        if let Augment::Multicrop { local, size, .. } = a {
            values += local * net.conv_output_values(*size, *size);
        }
    }
    recipe.batch as u64 * values as u64 * BYTES_PER_VALUE
}

/// Memory this process may still take, in bytes: the system's available memory, or the cgroup's remaining limit
/// where one is set and lower. `None` where neither can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    });
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<u64>().ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(current)) => Some(max.saturating_sub(current)),
        _ => None,
    };
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuses a step that cannot fit: `ssl::train::memory`, with the largest batch that would.
pub fn check(net: &SiameseNet, recipe: &Recipe, available: Option<u64>) -> Result<(), Error> {
    let Some(available) = available else { return Ok(()) };
    let need = step_bytes(net, recipe);
    if need <= available {
        return Ok(());
    }
    let per_pair = need / recipe.batch.max(1) as u64;
    let fits = available / per_pair.max(1);
    let gb = |b: u64| b as f64 / 1e9;
    Err(Error::new(
        ErrorCode::TrainMemory,
        format!(
            "a step at batch {} needs about {:.1} GB ({:.1} MB per pair of views), but {:.1} GB of memory is available",
            recipe.batch,
            gb(need),
            per_pair as f64 / 1e6,
            gb(available)
        ),
    )
    .help(format!("lower the batch: `--set batch={}` or less fits now", fits.max(2))))
}
