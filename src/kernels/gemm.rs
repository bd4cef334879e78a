//! GEMM with a fused epilogue, on candle's CPU storage: `out = addend + beta · A·B` in one call of
//! the `gemm` crate (the one candle itself uses), reading A and B through their strides so that
//! transposed operands cost no copy. Also used for the ema update `S ← ρ·S + β·TᵀT`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

/// Element types the fused kernels run in.
pub trait Float: WithDType + num_traits::Float + std::ops::AddAssign + std::ops::MulAssign + Send + Sync {}
impl Float for f32 {}
impl Float for f64 {}

/// A rank-2 strided view into a storage: data from the first element, rows, cols, strides.
#[derive(Clone, Copy)]
pub struct Matrix<'a, T> {
    /// Slice starting at the first element.
    pub data: &'a [T],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride in elements.
    pub row_stride: isize,
    /// Column stride in elements.
    pub col_stride: isize,
}

impl<'a, T: Float> Matrix<'a, T> {
    /// Views a rank-2 (or rank-1 as one row) tensor's storage.
    pub fn view(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let data = &storage.as_slice::<T>()?[layout.start_offset()..];
        let (dims, stride) = (layout.dims(), layout.stride());
        Ok(match dims.len() {
            1 => Matrix { data, rows: 1, cols: dims[0], row_stride: dims[0] as isize, col_stride: stride[0] as isize },
            2 => Matrix {
                data,
                rows: dims[0],
                cols: dims[1],
                row_stride: stride[0] as isize,
                col_stride: stride[1] as isize,
            },
            r => candle_core::bail!("fused gemm: expected a matrix, got rank {r}"),
        })
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Matrix { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// How gemm may split work: candle's own rule (all cores when there is more than one).
pub fn parallelism() -> gemm::Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m×n] (row-major, contiguous) ← alpha·dst + beta·a·b` (alpha ignored unless `accumulate`).
pub fn gemm_into<T: Float>(
    dst: &mut [T],
    a: &Matrix<T>,
    b: &Matrix<T>,
    accumulate: bool,
    alpha: T,
    beta: T,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() != m * n {
        candle_core::bail!("fused gemm: shapes [{m}, {k}] x [{}, {n}] into {} elements", b.rows, dst.len());
    }
    gemm_strided(dst, n, *a, *b, accumulate, alpha, beta, parallelism());
    Ok(())
}

/// The one safe entry to the `gemm` crate: `dst[m×n] (row stride dst_rs) ← alpha·dst + beta·a·b`
/// (alpha ignored unless `accumulate`). Shapes and extents are invariants of the callers, asserted.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided<T: Float>(
    dst: &mut [T],
    dst_rs: usize,
    a: Matrix<'_, T>,
    b: Matrix<'_, T>,
    accumulate: bool,
    alpha: T,
    beta: T,
    par: gemm::Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n, "gemm: destination too small");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::zero());
            }
        }
        return;
    }
    let last = |x: &Matrix<'_, T>| {
        assert!(x.row_stride >= 0 && x.col_stride >= 0, "gemm: negative strides");
        (x.rows - 1) * x.row_stride as usize + (x.cols - 1) * x.col_stride as usize
    };
    assert!(last(&a) < a.data.len() && last(&b) < b.data.len(), "gemm: operand out of bounds");
    // SAFETY: the asserts above keep every element gemm reads (a, b) or writes (dst rows of n
    // elements at stride dst_rs ≥ n, so rows do not overlap) inside its slice; strides are
    // non-negative, and `dst` is borrowed mutably, so it aliases neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            alpha,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// `addend + beta · op(A)·op(B)` with `op` an optional transpose, as a candle custom op.
pub struct GemmAccumulate {
    /// The scale of the product.
    pub beta: f64,
    /// The scale of the addend (ρ for an ema update, 1 otherwise).
    pub alpha: f64,
    /// Transpose A.
    pub ta: bool,
    /// Transpose B.
    pub tb: bool,
}

impl GemmAccumulate {
    fn run<T: Float>(&self, s: [&CpuStorage; 3], l: [&Layout; 3]) -> Result<(CpuStorage, Shape)> {
        let mut a = Matrix::<T>::view(s[1], l[1])?;
        let mut b = Matrix::<T>::view(s[2], l[2])?;
        if self.ta {
            a = a.t();
        }
        if self.tb {
            b = b.t();
        }
        let (m, n) = (a.rows, b.cols);
        let mut dst: Vec<T> = match l[0].contiguous_offsets() {
            Some((start, end)) if end - start == m * n => s[0].as_slice::<T>()?[start..end].to_vec(),
            _ => candle_core::bail!("fused gemm: the addend must be a contiguous [{m}, {n}] matrix"),
        };
        let (alpha, beta) = (T::from(self.alpha).unwrap_or(T::one()), T::from(self.beta).unwrap_or(T::zero()));
        gemm_into(&mut dst, &a, &b, true, alpha, beta)?;
        Ok((T::to_cpu_storage_owned(dst), Shape::from((m, n))))
    }
}

impl CustomOp3 for GemmAccumulate {
    fn name(&self) -> &'static str {
        "gemm-accumulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match s1 {
            CpuStorage::F32(_) => self.run::<f32>([s1, s2, s3], [l1, l2, l3]),
            CpuStorage::F64(_) => self.run::<f64>([s1, s2, s3], [l1, l2, l3]),
            _ => candle_core::bail!("fused gemm: only f32 and f64 are supported"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
        s3: &candle_core::cuda_backend::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        super::cuda::gemm_accumulate(self, [s1, s2, s3], [l1, l2, l3])
    }
}

/// `alpha·addend + beta·op(a)·op(b)`: one GEMM, on the CPU (gemm) or a CUDA GPU (cuBLAS, [`super::cuda`]); on
/// other devices candle's matmul and elementwise ops.
pub fn gemm_accumulate(addend: &Tensor, a: &Tensor, b: &Tensor, op: GemmAccumulate) -> Result<Tensor> {
    if addend.device().is_cuda() {
        return addend.contiguous()?.apply_op3_no_bwd(&a.contiguous()?, &b.contiguous()?, &op);
    }
    if !addend.device().is_cpu() {
        let a = if op.ta { a.t()? } else { a.clone() };
        let b = if op.tb { b.t()? } else { b.clone() };
        return addend.affine(op.alpha, 0.0)? + a.matmul(&b)?.affine(op.beta, 0.0)?;
    }
    addend.contiguous()?.apply_op3_no_bwd(a, b, &op)
}
