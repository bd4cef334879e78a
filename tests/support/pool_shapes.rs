//! The pooling shapes the CPU kernel's tests (tests/pool.rs) and the CUDA kernels' (tests/cuda_pool.rs) share.

/// (B, C, H, W, k, stride, pad): torchvision's stem pool on even and odd sizes, windows that overlap and that do
/// not, padding 0 and 1, batch 1, a 1×1 output, and one of several 256-thread blocks of outputs.
pub const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (2, 3, 8, 8, 3, 2, 1),
    (1, 2, 7, 9, 3, 2, 1),
    (3, 1, 6, 6, 2, 2, 0),
    (1, 4, 5, 5, 3, 1, 1),
    (2, 2, 3, 3, 3, 3, 0),
    (1, 1, 1, 1, 3, 2, 1),
    (4, 8, 14, 13, 3, 2, 1),
];
