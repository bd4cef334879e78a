//! Compute kernels on plain slices and their candle `CustomOp` wrappers: the GEMM with an accumulating epilogue,
//! convolution on channels-last maps (im2col patches, Winograd), BatchNorm/ReLU, max and global average pooling, and the contrastive softmax-weighted sum, their loops compiled
//! for the CPU's vector width at run time (`simd`), and the CUDA source of the contrastive kernel (`cuda`). Both the objective's fused backend (`backend::fused`) and the
//! network's layers (`nn`) call these; nothing here knows either of them.

pub mod avg_pool;
pub mod conv;
pub mod cuda;
pub mod gemm;
pub mod matfn;
pub mod norm;
pub mod pool;
pub mod simd;
pub mod softmax_sum;

use candle_core::{CpuStorage, Layout, Result};
use gemm::Float;
use std::borrow::Cow;

/// A kernel's output buffer of `len` elements, not yet written. A step's activations are hundreds of megabytes, and
/// filling each output with zeros that its kernel then overwrites was a whole extra pass through memory for every
/// one of them: 6 % of the training step (`perf` on `bench train`, SimCLR, batch 256).
///
/// # Safety
/// The caller writes every element before any is read or the vector leaves the kernel. (f32 and f64 have neither
/// drop glue nor invalid bit patterns, so a panic half-way through only drops the buffer.)
#[allow(unsafe_code, clippy::uninit_vec)]
pub unsafe fn unwritten<T: Float>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; the caller's contract above covers the elements.
    unsafe { v.set_len(len) };
    v
}

/// A tensor's elements in row-major order: borrowed when contiguous, gathered through its strides otherwise.
pub fn read<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = s.as_slice::<T>()?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    let (dims, strides) = (l.dims(), l.stride());
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; dims.len()];
    let mut off = l.start_offset();
    for _ in 0..count {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
    Ok(Cow::Owned(out))
}
