//! Which kernels the network's layers run: ours (convolutions on GEMM and Winograd, fused BatchNorm + ReLU and
//! residual joins, each with its own backward) or candle's own ops and autodiff — the baseline the benchmarks
//! compare against and a cross-check of training results. One process-wide switch, read once per forward pass (and
//! passed down to its layers), so a pass never mixes the two.

use std::sync::atomic::{AtomicU8, Ordering};

/// The implementation of the network's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// `runtime::conv` and `runtime::norm` (the default).
    Ours,
    /// candle's `conv2d` and composable ops, differentiated by candle (`SSL_KERNELS=candle`).
    Candle,
}

/// 0: not read yet, 1: ours, 2: candle.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// The kernels in use: set by [`set_kernels`], else read once from the environment variable `SSL_KERNELS`
/// (`candle` selects candle's ops; anything else, or unset, ours).
pub fn kernels() -> Kernels {
    match CHOICE.load(Ordering::Relaxed) {
        1 => Kernels::Ours,
        2 => Kernels::Candle,
        _ => {
            let candle = std::env::var("SSL_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("candle"));
            let chosen = if candle { Kernels::Candle } else { Kernels::Ours };
            // Keep a value set concurrently by `set_kernels`.
            let _ = CHOICE.compare_exchange(0, code(chosen), Ordering::Relaxed, Ordering::Relaxed);
            kernels()
        }
    }
}

/// Selects the kernels for the whole process (overrides `SSL_KERNELS`).
pub fn set_kernels(choice: Kernels) {
    CHOICE.store(code(choice), Ordering::Relaxed);
}

fn code(choice: Kernels) -> u8 {
    match choice {
        Kernels::Ours => 1,
        Kernels::Candle => 2,
    }
}
