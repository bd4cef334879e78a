//! The network's layers as functions. Each takes the [`LayerImpl`] of the pass, so the implementation is chosen in
//! one place: ours (the `kernels` CustomOps) or candle's composable ops.
//!
//! The choice also fixes the layout of the encoder's feature maps: channels-last [B, H, W, C] where our kernels run
//! (the layout they are written for: no product transposes), NCHW [B, C, H, W] with candle's ops. Images enter in
//! NCHW and are brought into the pass's layout by [`to_map_layout`]; every layer below then reads and writes that
//! layout, and [`from_map_layout`] gives a map back in NCHW.

use super::LayerImpl;
use crate::collective::Comm;
use crate::kernels::conv::{self, WorkCounter};
use crate::kernels::{avg_pool, norm, pool};
use candle_core::{bail, DType, Result, Tensor};
use std::sync::Arc;

/// BatchNorm running-statistics momentum, as torch's default: running = (1 − m)·running + m·batch.
pub const BN_MOMENTUM: f64 = 0.1;
/// BatchNorm epsilon added to the variance, as torch's default.
pub const BN_EPS: f64 = 1e-5;

/// 2-D convolution of a map in the pass's layout with an [out, in, k, k] kernel, no bias. Every convolution of the
/// model goes through here, so the implementation is chosen in one place: where our kernels run, our channels-last
/// GEMM and Winograd kernels ([`conv::conv2d`], forward and both backward products), otherwise candle's own NCHW
/// conv2d and autodiff ([`conv::candle_conv2d`], with the workaround for its C == H == W bug). Our products count
/// their work in `work`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    layers: LayerImpl,
    work: &Arc<WorkCounter>,
) -> Result<Tensor> {
    if fused(layers, x) {
        conv::conv2d(x, w, stride, pad, work)
    } else {
        conv::candle_conv2d(x, w, stride, pad)
    }
}

/// Images [B, C, H, W] in the layout of a pass with `layers` (see the module's doc).
pub fn to_map_layout(images: &Tensor, layers: LayerImpl) -> Result<Tensor> {
    if fused(layers, images) {
        images.permute((0, 2, 3, 1))?.contiguous()
    } else {
        Ok(images.clone())
    }
}

/// A feature map of a pass with `layers` as [B, C, H, W] (a view of a channels-last map, no copy).
pub fn from_map_layout(map: &Tensor, layers: LayerImpl) -> Result<Tensor> {
    if fused(layers, map) {
        map.permute((0, 3, 1, 2))
    } else {
        Ok(map.clone())
    }
}

/// `x · wᵀ (+ b)` with torch's [out, in] weight layout; the transpose is a free stride change.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Each row divided by its L2 norm, as `F.normalize` with eps 1e-12 (rows of zeros stay zero). The one
/// normalisation of features everywhere: training, evaluation, `grad --normalize` and `verify`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?)
}

/// Mean over the spatial dimensions of a map in the pass's layout: [B, H, W, C] or [B, C, H, W] → [B, C].
pub fn global_avg_pool(x: &Tensor, layers: LayerImpl) -> Result<Tensor> {
    if fused(layers, x) {
        avg_pool::global_avg_pool(x)
    } else {
        spatial_mean(x)
    }
}

/// Mean over the spatial dimensions: [B, C, H, W] → [B, C]. Reduces over one flattened trailing axis, which candle
/// does far faster than over two.
fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(2)
}

/// Average pooling to a `grid`×`grid` grid of bins placed as torch's `adaptive_avg_pool2d` places them (bin i of n
/// spans ⌊i·n/grid⌋..⌈(i+1)·n/grid⌉, so bins overlap when grid does not divide n), flattened channel-major:
/// [B, C, H, W] → [B, C·grid²]. A grid of 1 is the global average. Evaluation only (no tape).
pub fn grid_avg_pool(x: &Tensor, grid: usize) -> Result<Tensor> {
    if grid == 1 {
        return spatial_mean(&x.contiguous()?);
    }
    let (_, _, h, w) = x.dims4()?;
    let bin = |n: usize, i: usize| (i * n / grid, ((i + 1) * n).div_ceil(grid));
    let mut cells = Vec::with_capacity(grid * grid);
    for i in 0..grid {
        let (top, bottom) = bin(h, i);
        for j in 0..grid {
            let (left, right) = bin(w, j);
            let cell = x.narrow(2, top, bottom - top)?.narrow(3, left, right - left)?.contiguous()?;
            cells.push(spatial_mean(&cell)?);
        }
    }
    Tensor::stack(&cells, 2)?.flatten_from(1)
}

/// Max pooling of a map in the pass's layout with a `k`×`k` window (padding never chosen), through our kernel and
/// its backward whatever the [`LayerImpl`]: candle's own has no padding and differentiates only kernel == stride. On
/// the CPU, or on a GPU with the `cuda` feature (the same kernel in CUDA), in f32 or f64. The kernel pools NCHW
/// planes, so a channels-last map is permuted around it (the ImageNet stem's one pooling, at a quarter of the
/// first layer's size).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, pad: usize, layers: LayerImpl) -> Result<Tensor> {
    let device = x.device();
    if !(device.is_cpu() || device.is_cuda()) || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!(
            "max-pooling runs on the CPU or a CUDA GPU in f32 or f64 only, not {:?} on {:?}; a ResNet with \
             `stem = cifar` has none",
            x.dtype(),
            device.location()
        );
    }
    let pooled = pool::max_pool2d(&from_map_layout(x, layers)?, k, stride, pad)?;
    if fused(layers, x) {
        pooled.permute((0, 2, 3, 1))?.contiguous()
    } else {
        Ok(pooled)
    }
}

/// The input gradient of [`max_pool2d`] over a channels-last map `x` alone (no graph), from the output gradient
/// `dy`: what our recorded backward runs.
pub(super) fn max_pool2d_backward(x: &Tensor, dy: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let nchw = |t: &Tensor| t.permute((0, 3, 1, 2));
    pool::max_pool2d_backward(&nchw(x)?, &nchw(dy)?, k, stride, pad)?.permute((0, 2, 3, 1))?.contiguous()
}

/// Whether our kernels can run a tensor: on the CPU, in f32 or f64.
pub(super) fn fused_layers(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether a layer runs our kernels ([`norm`]): when selected and the tensor allows.
fn fused(layers: LayerImpl, x: &Tensor) -> bool {
    layers == LayerImpl::Ours && fused_layers(x)
}

/// The channels of a BatchNorm's input in the pass's layout ([B, C], or a map [B, H, W, C] or [B, C, H, W]) and the
/// values each channel has; errors unless `gamma` has one scale per channel.
fn bn_shape(x: &Tensor, gamma: &Tensor, layers: LayerImpl) -> Result<(usize, usize)> {
    let (c, n) = match (x.dims(), fused(layers, x)) {
        (&[b, c], _) => (c, b),
        (&[b, h, w, c], true) | (&[b, c, h, w], false) => (c, b * h * w),
        (dims, _) => bail!("batch norm expects [B, C] or a [B, C, H, W] map, got {dims:?}"),
    };
    if gamma.dims() != [c] {
        bail!("batch norm over {c} channels got a scale of shape {:?}", gamma.dims());
    }
    Ok((c, n))
}

/// The view candle's composable BatchNorm works on: [B, C] (BatchNorm1d) or [B, C, H, W] (BatchNorm2d) as [B, C, S],
/// S = 1 or H·W. Per-channel statistics are then a sum over the contiguous last axis followed by a small sum over the
/// batch, about 25 times faster in candle than one reduction over (0, 2, 3).
fn bn_view(x: &Tensor, c: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    x.reshape((b, c, x.elem_count() / (b * c).max(1)))
}

/// Per-channel mean of a [B, C, S] view, as [1, C, 1].
fn channel_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    x.sum_keepdim(2)?.sum_keepdim(0)?.affine(1.0 / n as f64, 0.0)
}

fn maybe_relu(y: Tensor, relu: bool) -> Result<Tensor> {
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// BatchNorm in train mode, followed by a ReLU when `relu`: normalises with the batch mean and biased variance, and,
/// when `running` is given, updates the running mean and (unbiased) variance with momentum [`BN_MOMENTUM`]. Works
/// on [B, C] and on maps in the pass's layout; the gradient flows to `x`, `gamma` and `beta` through the batch statistics. Errors
/// (as torch does) when a channel has a single value, whose variance is undefined.
/// With `ranks` (synchronised BatchNorm) x is this rank's share of the batch, and the statistics and their
/// gradient are the whole batch's; our kernels only.
/// Returns the output and, when our kernels ran it, the statistics it normalised with (what our backward reads).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&mut Tensor, &mut Tensor)>,
    relu: bool,
    layers: LayerImpl,
    ranks: Option<&Comm>,
) -> Result<(Tensor, Option<norm::ChannelStats>)> {
    let (c, mut n) = bn_shape(x, gamma, layers)?;
    if n < 2 && ranks.is_none() {
        bail!("batch norm in train mode needs more than one value per channel, got input {:?}", x.dims());
    }
    let (y, batch_mean, batch_var, saved) = if fused(layers, x) {
        let stats = norm::channel_stats(x, ranks)?;
        n = stats.count;
        let y = norm::batch_norm(x, gamma, beta, &stats, BN_EPS, true, relu)?;
        let device = x.device();
        (y, Tensor::new(stats.mean.as_slice(), device)?, Tensor::new(stats.var.as_slice(), device)?, Some(stats))
    } else if ranks.is_some() {
        bail!("synchronised BatchNorm runs on our CPU kernels only, not on {:?}", x.device().location());
    } else {
        let x3 = bn_view(x, c)?;
        let mean = channel_mean(&x3, n)?;
        let centred = x3.broadcast_sub(&mean)?;
        let var = channel_mean(&centred.sqr()?, n)?;
        let scale = (&var + BN_EPS)?.sqrt()?.recip()?.broadcast_mul(&gamma.reshape((1, c, 1))?)?;
        let y = centred.broadcast_mul(&scale)?.broadcast_add(&beta.reshape((1, c, 1))?)?;
        (maybe_relu(y.reshape(x.dims())?, relu)?, mean.detach().flatten_all()?, var.detach().flatten_all()?, None)
    };
    if let Some((rm, rv)) = running {
        let batch_mean = batch_mean.to_dtype(rm.dtype())?;
        let batch_var = batch_var.to_dtype(rv.dtype())?.affine(n as f64 / (n - 1) as f64, 0.0)?;
        *rm = (rm.affine(1.0 - BN_MOMENTUM, 0.0)? + batch_mean.affine(BN_MOMENTUM, 0.0)?)?;
        *rv = (rv.affine(1.0 - BN_MOMENTUM, 0.0)? + batch_var.affine(BN_MOMENTUM, 0.0)?)?;
    }
    Ok((y, saved))
}

/// BatchNorm in eval mode (the running statistics), followed by a ReLU when `relu`. Returns the output and, when our
/// kernels ran it, the statistics it normalised with.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    relu: bool,
    layers: LayerImpl,
) -> Result<(Tensor, Option<norm::ChannelStats>)> {
    let (c, _) = bn_shape(x, gamma, layers)?;
    if fused(layers, x) {
        let mean = mean.to_dtype(DType::F64)?.to_vec1()?;
        let var = var.to_dtype(DType::F64)?.to_vec1()?;
        let stats = norm::ChannelStats::running(mean, var);
        return Ok((norm::batch_norm(x, gamma, beta, &stats, BN_EPS, false, relu)?, Some(stats)));
    }
    let scale = (var + BN_EPS)?.sqrt()?.recip()?.mul(gamma)?;
    let shift = (beta - mean.mul(&scale)?)?;
    let y = bn_view(x, c)?.broadcast_mul(&scale.reshape((1, c, 1))?)?.broadcast_add(&shift.reshape((1, c, 1))?)?;
    Ok((maybe_relu(y.reshape(x.dims())?, relu)?, None))
}

/// The residual join `relu(a + b)`: one fused pass each way with our kernels.
pub fn add_relu(a: &Tensor, b: &Tensor, layers: LayerImpl) -> Result<Tensor> {
    if fused(layers, a) {
        norm::add_relu(a, b)
    } else {
        (a + b)?.relu()
    }
}
