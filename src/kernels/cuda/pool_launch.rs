//! Running the max-pooling kernels ([`super::pool`]) on a GPU: NVRTC compiles the module the first time a device
//! needs it, then one launch computes a whole pass. Built, not yet run on a GPU (`scripts/gpu-check.sh`).

use super::launch::function;
use super::pool::{max_pool_names, max_pool_source, POOL_BLOCK};
use super::Float;
use crate::kernels::pool::PoolGeom;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{DType, Layout, Result};

/// Max-pooling forward of the contiguous x (its geometry `g`): y [B, C, Ho, Wo].
pub fn max_pool_forward(g: &PoolGeom, x: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    let (input, output) = (g.planes * g.h * g.w, g.planes * g.ho * g.wo);
    let operands = [(x, layout, input)];
    match x.dtype() {
        DType::F32 => run::<f32>(g, Float::F32, &operands, output, true),
        DType::F64 => run::<f64>(g, Float::F64, &operands, output, true),
        other => candle_core::bail!("max_pool2d on CUDA: only f32 and f64 are supported, not {other:?}"),
    }
}

/// Max-pooling backward from the contiguous input x and output gradient dy: dx [B, C, H, W].
pub fn max_pool_backward(
    g: &PoolGeom,
    x: &CudaStorage,
    x_layout: &Layout,
    dy: &CudaStorage,
    dy_layout: &Layout,
) -> Result<CudaStorage> {
    let (input, output) = (g.planes * g.h * g.w, g.planes * g.ho * g.wo);
    let operands = [(x, x_layout, input), (dy, dy_layout, output)];
    match (x.dtype(), dy.dtype()) {
        (DType::F32, DType::F32) => run::<f32>(g, Float::F32, &operands, input, false),
        (DType::F64, DType::F64) => run::<f64>(g, Float::F64, &operands, input, false),
        (a, b) => candle_core::bail!("max_pool2d backward on CUDA: f32 or f64 of one dtype expected, not {a:?}, {b:?}"),
    }
}

/// One launch of the forward (`forward`) or backward kernel on `operands` (storage, layout, elements), writing
/// `len` elements, one thread each.
fn run<T: CudaDType + DeviceRepr>(
    g: &PoolGeom,
    float: Float,
    operands: &[(&CudaStorage, &Layout, usize)],
    len: usize,
    forward: bool,
) -> Result<CudaStorage> {
    let views = operands
        .iter()
        .map(|&(storage, layout, elems)| match layout.contiguous_offsets() {
            Some((start, end)) if end - start == elems => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
            _ => candle_core::bail!("max_pool2d on CUDA: operands must be contiguous [B, C, H, W] tensors"),
        })
        .collect::<Result<Vec<CudaView<'_, T>>>>()?;
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("max_pool2d on CUDA: size {v} over 2^31")))
    };
    let dims = [g.planes, g.h, g.w, g.k, g.stride, g.pad, g.ho, g.wo].map(int);
    let dims: Vec<i32> = dims.into_iter().collect::<Result<_>>()?;
    let blocks = u32::try_from(len.div_ceil(POOL_BLOCK as usize))
        .map_err(|_| candle_core::Error::Msg(format!("max_pool2d on CUDA: {len} elements is too many")))?;
    let device = operands[0].0.device().clone();
    let (module, fwd, bwd) = max_pool_names(float);
    let func = function(&device, &module, if forward { &fwd } else { &bwd }, || max_pool_source(float))?;
    // SAFETY: the kernel writes every element of `out` before anything reads it.
    #[allow(unsafe_code)]
    let mut out: CudaSlice<T> = unsafe { device.alloc::<T>(len) }?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&func);
    for view in &views {
        args.arg(view);
    }
    args.arg(&mut out);
    for d in &dims {
        args.arg(d);
    }
    let config = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (POOL_BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments are pushed in the order and with the types of the kernel's signature
    // (`max_pool_source`: its inputs, the output, eight ints), every view covers the elements the kernel indexes
    // (checked against the geometry above), and threads past `len` return at once.
    #[allow(unsafe_code)]
    unsafe { args.launch(config) }
        .map_err(|e| candle_core::Error::Msg(format!("max_pool2d on CUDA, launch: {e:?}")))?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}
