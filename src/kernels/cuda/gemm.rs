//! The GEMM-accumulate op on a GPU: `alpha·addend + beta·op(A)·op(B)` as one cuBLAS GEMM whose C starts as a copy
//! of the addend (cuBLAS computes C ← α·op(A)·op(B) + β·C itself), so an EMA state update ρ·F + (1 − ρ)·zᵀz is one
//! call and one copy instead of a matmul, two scalings and an addition. Built, not yet run on a GPU
//! (`scripts/gpu-check.sh` checks it through `verify --device cuda`).
//!
//! cuBLAS is column-major: a row-major [r, c] matrix is its column-major transpose with leading dimension c. The
//! row-major C[m, n] = op(A)[m, k]·op(B)[k, n] is therefore computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, B's
//! buffer first.

use crate::kernels::gemm::GemmAccumulate;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{DType, Layout, Result, Shape, WithDType};

/// `op` on the GPU: `s` and `l` are the addend, A and B.
pub fn gemm_accumulate(op: &GemmAccumulate, s: [&CudaStorage; 3], l: [&Layout; 3]) -> Result<(CudaStorage, Shape)> {
    match s[0].dtype() {
        DType::F32 => run::<f32>(op, s, l),
        DType::F64 => run::<f64>(op, s, l),
        other => candle_core::bail!("fused gemm: only f32 and f64 are supported, not {other:?}"),
    }
}

/// The elements of a contiguous operand.
fn view<'a, T: CudaDType + DeviceRepr>(storage: &'a CudaStorage, layout: &Layout) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused gemm on CUDA: every operand must be contiguous")
    };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

fn run<T>(op: &GemmAccumulate, s: [&CudaStorage; 3], l: [&Layout; 3]) -> Result<(CudaStorage, Shape)>
where
    T: CudaDType + DeviceRepr + WithDType,
    CudaBlas: Gemm<T>,
{
    let fail = |what: String| candle_core::Error::Msg(format!("fused gemm on CUDA: {what}"));
    let rows_cols = |layout: &Layout, transpose: bool| -> Result<(usize, usize)> {
        let (r, c) = layout.shape().dims2()?;
        Ok(if transpose { (c, r) } else { (r, c) })
    };
    let ((m, k), (kb, n)) = (rows_cols(l[1], op.ta)?, rows_cols(l[2], op.tb)?);
    if kb != k || l[0].dims() != [m, n] {
        return Err(fail(format!("shapes {:?} + {:?} · {:?} do not fit", l[0].dims(), l[1].dims(), l[2].dims())));
    }
    let (addend, a, b) = (view::<T>(s[0], l[0])?, view::<T>(s[1], l[1])?, view::<T>(s[2], l[2])?);
    let device = s[0].device().clone();
    let mut c = device.cuda_stream().clone_dtod(&addend).map_err(|e| fail(format!("copy: {e:?}")))?;
    let op_of =
        |transpose: bool| if transpose { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let dim = |v: usize| i32::try_from(v.max(1)).map_err(|_| fail(format!("dimension {v} exceeds cuBLAS's i32")));
    let config = GemmConfig {
        transa: op_of(op.tb),
        transb: op_of(op.ta),
        m: dim(n)?,
        n: dim(m)?,
        k: i32::try_from(k).map_err(|_| fail(format!("dimension {k} exceeds cuBLAS's i32")))?,
        alpha: T::from_f64(op.beta),
        lda: dim(if op.tb { k } else { n })?,
        ldb: dim(if op.ta { m } else { k })?,
        beta: T::from_f64(op.alpha),
        ldc: dim(n)?,
    };
    if m > 0 && n > 0 {
        // SAFETY: the views cover exactly the contiguous [k, n] (or [n, k]) B, [m, k] (or [k, m]) A and [m, n] C the
        // configuration describes (leading dimensions as derived in the module doc), all on this device's stream.
        #[allow(unsafe_code)]
        unsafe { device.cublas_handle().gemm(config, &b, &a, &mut c) }.map_err(|e| fail(format!("{e:?}")))?;
    }
    Ok((CudaStorage::wrap_cuda_slice(c, device), Shape::from((m, n))))
}
