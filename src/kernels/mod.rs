//! Compute kernels on plain slices and their candle `CustomOp` wrappers: the GEMM with an accumulating epilogue,
//! convolution (im2col and Winograd), BatchNorm/ReLU, max pooling, and the contrastive softmax-weighted sum, their loops compiled
//! for the CPU's vector width at run time (`simd`), and the CUDA source of the contrastive kernel (`cuda`). Both the objective's fused backend (`backend::fused`) and the
//! network's layers (`nn`) call these; nothing here knows either of them.

pub mod conv;
pub mod cuda;
pub mod gemm;
pub mod matfn;
pub mod norm;
pub mod pool;
pub mod simd;
pub mod softmax_sum;
pub mod transpose;

use candle_core::{CpuStorage, Layout, Result};
use gemm::Float;
use rayon::prelude::*;
use std::borrow::Cow;

/// Below this many elements [`zeros`] fills on the calling thread.
const PARALLEL_FILL: usize = 1 << 16;

/// `len` zeros, the output buffer of a kernel, filled by all threads when large: a step's activations are hundreds
/// of megabytes, and `vec!` (a single-threaded memset once the allocator reuses freed memory) left the other cores
/// idle for about 4 % of the step.
pub fn zeros<T: Float>(len: usize) -> Vec<T> {
    if len < PARALLEL_FILL {
        return vec![T::zero(); len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::zero(), len));
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
