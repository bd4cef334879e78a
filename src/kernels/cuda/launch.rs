//! Running the generated contrastive kernel on a GPU: NVRTC compiles its source the first time a device needs it
//! and the device keeps the module (candle's per-device module table, keyed by the kernel's name); one launch of
//! `n` blocks then computes the whole [n, d] result. Built, not yet run on a GPU (`scripts/gpu-check.sh`).

use super::{softmax_sum_name, softmax_sum_source, Float, PartKind, BLOCK};
use crate::kernels::softmax_sum::SoftmaxSum;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::compile_ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};

/// Entry point `name` of `module` on `device`, compiling `source()` with NVRTC only the first time the device needs
/// the module: asked with an empty image, candle returns a module it loaded already, and only a device that lacks it
/// fails the (empty) load, which sends us to NVRTC.
pub(super) fn function(
    device: &CudaDevice,
    module: &str,
    name: &str,
    source: impl FnOnce() -> String,
) -> Result<CudaFunction> {
    if let Ok(func) = device.get_or_load_custom_func(name, module, "") {
        return Ok(func.into_cuda_function());
    }
    let ptx = compile_ptx(source())
        .map(|ptx| ptx.to_src())
        .map_err(|e| candle_core::Error::Msg(format!("NVRTC cannot compile {module}: {e:?}")))?;
    Ok(device.get_or_load_custom_func(name, module, &ptx)?.into_cuda_function())
}

/// `op` on the GPU for features `u` (contiguous [n, d]); the parts must be CUDA tensors of `u`'s type.
pub fn launch_softmax_sum(op: &SoftmaxSum, u: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
    match u.dtype() {
        DType::F32 => launch::<f32>(op, u, layout, Float::F32, op.scale as f32),
        DType::F64 => launch::<f64>(op, u, layout, Float::F64, op.scale),
        other => candle_core::bail!("fused softmax-sum: only f32 and f64 are supported, not {other:?}"),
    }
}

fn launch<T: CudaDType + DeviceRepr>(
    op: &SoftmaxSum,
    u: &CudaStorage,
    layout: &Layout,
    float: Float,
    scale: T,
) -> Result<(CudaStorage, Shape)> {
    let (Some((start, end)), [n, d]) = (layout.contiguous_offsets(), layout.dims()) else {
        candle_core::bail!("fused softmax-sum: features must be a contiguous matrix")
    };
    let (n, d) = (*n, *d);
    // The parts, contiguous, each with the kind the IR gave it.
    let tensors: Vec<(PartKind, Tensor)> =
        op.parts.iter().map(|p| Ok((p.kind, p.values.contiguous()?))).collect::<Result<_>>()?;
    let guards: Vec<_> = tensors.iter().map(|(_, t)| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(guards.len());
    for ((kind, t), (storage, part_layout)) in tensors.iter().zip(&guards) {
        let Storage::Cuda(storage) = &**storage else {
            candle_core::bail!("fused softmax-sum: a part is not on the GPU")
        };
        let (lo, hi) = part_layout.contiguous_offsets().expect("made contiguous above");
        let len = hi - lo;
        let fits = match kind {
            PartKind::Rows => d > 0 && len % d == 0,
            PartKind::PerSample => len == n * d,
            PartKind::Shared => len == d,
        };
        if !fits {
            candle_core::bail!("fused softmax-sum: a part of shape {:?} does not fit features [{n}, {d}]", t.dims());
        }
        views.push((*kind, storage.as_cuda_slice::<T>()?.slice(lo..hi), (len / d.max(1)) as i32));
    }
    let device = u.device().clone();
    let kinds: Vec<PartKind> = views.iter().map(|(k, ..)| *k).collect();
    let name = softmax_sum_name(&kinds, float);
    let func = function(&device, &name, &name, || softmax_sum_source(&kinds, float))?;
    let u_view = u.as_cuda_slice::<T>()?.slice(start..end);
    // SAFETY: the kernel writes every element of `out` before anything reads it.
    #[allow(unsafe_code)]
    let mut out: CudaSlice<T> = unsafe { device.alloc::<T>(n * d) }?;
    let (n_arg, d_arg) = (n as i32, d as i32);
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&func);
    args.arg(&u_view).arg(&mut out).arg(&n_arg).arg(&d_arg).arg(&scale);
    for (kind, view, rows) in &views {
        args.arg(view);
        if *kind == PartKind::Rows {
            args.arg(rows);
        }
    }
    let config = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments are pushed in the order and with the types of the generated signature
    // (`softmax_sum_source`), every pointer covers the extent the kernel reads, and the grid is one block per row.
    #[allow(unsafe_code)]
    unsafe { args.launch(config) }
        .map_err(|e| candle_core::Error::Msg(format!("fused softmax-sum on CUDA, launch: {e:?}")))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((n, d))))
}
