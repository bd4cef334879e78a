//! Which implementation the network's layers run: ours (convolutions on GEMM and Winograd, fused BatchNorm + ReLU
//! and residual joins, each with its own backward) or candle's own ops and autodiff — the baseline the benchmarks
//! compare against and a cross-check of training results. A value held by the network (its target copies it) and
//! passed down to every layer of a forward pass, so a pass never mixes the two.

/// The implementation of the network's layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerImpl {
    /// `kernels::conv` and `kernels::norm`, differentiated by our recorded backward (the default).
    #[default]
    Ours,
    /// candle's `conv2d` and composable ops, differentiated by candle.
    Candle,
}
