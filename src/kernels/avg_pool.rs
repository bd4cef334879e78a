//! Global average pooling of channels-last maps, [B, H, W, C] → [B, C], and its backward, as candle custom ops:
//! candle's own mean over the middle axis of [B, H·W, C] walks it element by element through strides (5.3 ms
//! against 0.4 ms for the trailing axis of NCHW, on `resnet_mini`'s last map at batch 256).

use super::gemm::Float;
use super::read;
use super::simd::vectorized;
use super::unwritten;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The mean of x [B, H, W, C] over its pixels, [B, C], recording its backward.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Mean)
}

/// The input gradient of [`global_avg_pool`] alone (no graph): every pixel of a `(h, w)` map receives dy [B, C]
/// divided by h·w.
pub fn global_avg_pool_backward(dy: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    dy.apply_op1_no_bwd(&Spread { h, w })
}

fn mean<T: Float>(x: &[T], (b, p, c): (usize, usize, usize)) -> Vec<T> {
    let scale = T::from_f64(1.0 / p as f64);
    // SAFETY: each image's row of C means is zeroed, then accumulated into.
    #[allow(unsafe_code)]
    let mut y = unsafe { unwritten(b * c) };
    y.par_chunks_mut(c.max(1)).zip(x.par_chunks((p * c).max(1))).for_each(|(yi, xi)| {
        vectorized(
            #[inline(always)]
            || {
                yi.fill(T::zero());
                for pixel in xi.chunks_exact(c) {
                    for (s, &v) in yi.iter_mut().zip(pixel) {
                        *s += v;
                    }
                }
                for s in yi.iter_mut() {
                    *s *= scale;
                }
            },
        )
    });
    y
}

fn spread<T: Float>(dy: &[T], (b, p, c): (usize, usize, usize)) -> Vec<T> {
    let scale = T::from_f64(1.0 / p as f64);
    // SAFETY: every pixel of every image is written.
    #[allow(unsafe_code)]
    let mut dx = unsafe { unwritten(b * p * c) };
    dx.par_chunks_mut((p * c).max(1)).zip(dy.par_chunks(c.max(1))).for_each(|(dxi, dyi)| {
        vectorized(
            #[inline(always)]
            || {
                for pixel in dxi.chunks_exact_mut(c) {
                    for (d, &g) in pixel.iter_mut().zip(dyi) {
                        *d = g * scale;
                    }
                }
            },
        )
    });
    dx
}

/// [`global_avg_pool`]'s forward, with its backward.
struct Mean;

impl CustomOp1 for Mean {
    fn name(&self) -> &'static str {
        "ssl-global-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, h, w, c] = l.dims() else { bail!("global_avg_pool expects a [B, H, W, C] map, got {:?}", l.dims()) };
        if h * w == 0 {
            bail!("global_avg_pool: a map of {h}×{w} pixels has no mean");
        }
        let dims = (b, h * w, c);
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(mean(&read(s, l)?, dims)),
            CpuStorage::F64(_) => CpuStorage::F64(mean(&read(s, l)?, dims)),
            _ => bail!("global_avg_pool: f32 or f64 expected"),
        };
        Ok((out, Shape::from_dims(&[b, c])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _) = x.dims4()?;
        Ok(Some(global_avg_pool_backward(dy, (h, w))?))
    }
}

/// [`global_avg_pool_backward`].
struct Spread {
    h: usize,
    w: usize,
}

impl CustomOp1 for Spread {
    fn name(&self) -> &'static str {
        "ssl-global-avg-pool-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, c] = l.dims() else { bail!("global_avg_pool backward expects dy [B, C], got {:?}", l.dims()) };
        let dims = (b, self.h * self.w, c);
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(spread(&read(s, l)?, dims)),
            CpuStorage::F64(_) => CpuStorage::F64(spread(&read(s, l)?, dims)),
            _ => bail!("global_avg_pool backward: f32 or f64 expected"),
        };
        Ok((out, Shape::from_dims(&[b, self.h, self.w, c])))
    }
}
