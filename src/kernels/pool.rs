//! 2-D max pooling with any kernel, stride and padding (torchvision ResNet's 3×3, stride 2, pad 1 after the stem),
//! forward and backward, as a candle `CustomOp1` with its own backward: candle's max-pool has no padding and its
//! backward needs kernel == stride. On a GPU the same ops run the CUDA kernels of `cuda::pool`.
//!
//! Padding counts as −∞ (never chosen). The backward sends each output's gradient to the first maximal input of its
//! window in row-major order (torch's choice), found again from the input and the output, so nothing but the two
//! tensors is kept between the passes.

use super::gemm::Float;
use super::read;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The sizes of one pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Images × channels: the planes pooled independently.
    pub planes: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window side.
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Padding (both axes, both sides), at most k / 2 as torch requires.
    pub pad: usize,
    /// Output height ⌊(H + 2·pad − k) / stride⌋ + 1.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl PoolGeom {
    /// The geometry of pooling x [B, C, H, W]; errors where torch would (a zero stride, padding over half the window,
    /// a window larger than the padded input).
    pub fn new(dims: &[usize], k: usize, stride: usize, pad: usize) -> Result<Self> {
        let &[b, c, h, w] = dims else { bail!("max_pool2d expects a rank-4 input, got {dims:?}") };
        if k == 0 || stride == 0 || 2 * pad > k || h + 2 * pad < k || w + 2 * pad < k {
            bail!("max_pool2d: window {k}, stride {stride}, pad {pad} does not fit an input of {h}×{w}");
        }
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        Ok(PoolGeom { planes: b * c, h, w, k, stride, pad, ho, wo })
    }

    /// The input rows (or columns) of output row `o`'s window inside the image: `[lo, hi)`.
    fn window(&self, o: usize, size: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.k as isize).max(0) as usize).min(size);
        (lo, hi)
    }

    /// Row-major index within the plane of the first maximal input of output (oy, ox)'s window.
    #[inline]
    fn argmax<T: Float>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let ((y0, y1), (x0, x1)) = (self.window(oy, self.h), self.window(ox, self.w));
        let mut best = y0 * self.w + x0;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * self.w + x;
                // A NaN is taken and kept, as torch propagates it.
                if plane[i] > plane[best] || plane[i].is_nan() && !plane[best].is_nan() {
                    best = i;
                }
            }
        }
        best
    }
}

/// Max-pooling forward on a contiguous [B, C, H, W] slice.
pub fn forward<T: Float>(g: &PoolGeom, x: &[T]) -> Vec<T> {
    let (plane_in, plane_out) = (g.h * g.w, g.ho * g.wo);
    let mut y = vec![T::zero(); g.planes * plane_out];
    y.par_chunks_mut(plane_out.max(1)).zip(x.par_chunks(plane_in.max(1))).for_each(|(yp, xp)| {
        for (oy, row) in yp.chunks_exact_mut(g.wo).enumerate() {
            for (ox, out) in row.iter_mut().enumerate() {
                *out = xp[g.argmax(xp, oy, ox)];
            }
        }
    });
    y
}

/// Max-pooling backward: dx from the input x and the output gradient dy, each output's gradient added at the first
/// maximal input of its window (windows overlap when stride < k, so one input may receive several).
pub fn backward<T: Float>(g: &PoolGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let (plane_in, plane_out) = (g.h * g.w, g.ho * g.wo);
    let mut dx = vec![T::zero(); g.planes * plane_in];
    dx.par_chunks_mut(plane_in.max(1))
        .zip(x.par_chunks(plane_in.max(1)))
        .zip(dy.par_chunks(plane_out.max(1)))
        .for_each(|((dxp, xp), dyp)| {
            for (oy, row) in dyp.chunks_exact(g.wo).enumerate() {
                for (ox, &d) in row.iter().enumerate() {
                    dxp[g.argmax(xp, oy, ox)] += d;
                }
            }
        });
    dx
}

/// Max pooling of x [B, C, H, W] with a `k`×`k` window, recording its backward (f32 and f64, on the CPU or, with
/// the `cuda` feature, on a GPU).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { k, stride, pad })
}

/// The input gradient of [`max_pool2d`] alone (no graph), from its input and output gradient.
pub fn max_pool2d_backward(x: &Tensor, dy: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &MaxPoolGrad { k, stride, pad })
}

struct MaxPool {
    k: usize,
    stride: usize,
    pad: usize,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "ssl-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = PoolGeom::new(l.dims(), self.k, self.stride, self.pad)?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward(&g, &read(s, l)?)),
            CpuStorage::F64(_) => CpuStorage::F64(forward(&g, &read(s, l)?)),
            _ => bail!("max_pool2d: f32 or f64 expected"),
        };
        Ok((out, Shape::from_dims(&[l.dims()[0], l.dims()[1], g.ho, g.wo])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = PoolGeom::new(l.dims(), self.k, self.stride, self.pad)?;
        let out = super::cuda::max_pool_forward(&g, s, l)?;
        Ok((out, Shape::from_dims(&[l.dims()[0], l.dims()[1], g.ho, g.wo])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(max_pool2d_backward(x, dy, self.k, self.stride, self.pad)?))
    }
}

struct MaxPoolGrad {
    k: usize,
    stride: usize,
    pad: usize,
}

impl MaxPoolGrad {
    /// The pooling of input `x`, checked against the output gradient's shape.
    fn geometry(&self, x: &Layout, dy: &Layout) -> Result<PoolGeom> {
        let g = PoolGeom::new(x.dims(), self.k, self.stride, self.pad)?;
        let (b, c) = (x.dims()[0], x.dims()[1]);
        if dy.dims() != [b, c, g.ho, g.wo] {
            bail!("max_pool2d backward: dy {:?} does not match the pooling of {:?}", dy.dims(), x.dims());
        }
        Ok(g)
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "ssl-max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(backward(&g, &read(s1, l1)?, &read(s2, l2)?)),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(backward(&g, &read(s1, l1)?, &read(s2, l2)?)),
            _ => bail!("max_pool2d backward: f32 or f64 operands of one dtype expected"),
        };
        Ok((out, Shape::from_dims(l1.dims())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        Ok((super::cuda::max_pool_backward(&g, s1, l1, s2, l2)?, Shape::from_dims(l1.dims())))
    }
}
