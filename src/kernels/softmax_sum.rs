//! The contrastive negative without the [N, K] similarity matrix: for each sample,
//! `Σ_v softmax_v(s · u·v) · v` over a set made of parts (rows of a matrix, or one vector per
//! sample), computed as a tiled online softmax. Each tile of `TILE` candidate rows costs one GEMM
//! for the logits, one pass of exponentials (rows split across threads), and one GEMM that
//! accumulates the weighted rows; a running maximum and sum per sample rescale what came before.
//! Memory is O(N·TILE + N·D) whatever the number of candidates, so a queue of 65,536 fits.

use super::gemm::{gemm_into, Float, Matrix};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Candidate rows per tile: the logits tile is N × TILE.
pub const TILE: usize = 512;

/// How a part of the candidate set is laid out: decided once, from the IR's axes (`backend::fused::part_kinds`), and
/// read by the CPU kernel and the CUDA one alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartKind {
    /// K rows shared by every sample, [K, D] (a queue, the batch's targets).
    Rows,
    /// One row per sample, [N, D] (the positive).
    PerSample,
    /// One vector shared by every sample, [D].
    Shared,
}

/// One part of the candidate set: its values and their layout.
#[derive(Clone, Debug)]
pub struct Part {
    /// How `values` is laid out.
    pub kind: PartKind,
    /// The candidates.
    pub values: Tensor,
}

/// The op: applied to U [N, D]; the parts and the logit scale are its fields.
pub struct SoftmaxSum {
    /// The logit scale (1/τ).
    pub scale: f64,
    /// The candidate set, part by part.
    pub parts: Vec<Part>,
}

/// Running state of the online softmax for one sample.
struct Row<'a, T> {
    max: &'a mut T,
    sum: &'a mut T,
    acc: &'a mut [T],
}

impl<T: Float> Row<'_, T> {
    /// Moves the running maximum to `new_max`, rescaling what was accumulated.
    fn rescale(&mut self, new_max: T) -> T {
        if new_max > *self.max {
            let c = if *self.max == T::neg_infinity() { T::zero() } else { (*self.max - new_max).exp() };
            *self.sum *= c;
            self.acc.iter_mut().for_each(|a| *a *= c);
            *self.max = new_max;
        }
        *self.max
    }
}

impl SoftmaxSum {
    fn run<T: Float>(&self, u_storage: &CpuStorage, u_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if !u_layout.is_contiguous() {
            candle_core::bail!("fused softmax-sum: features must be contiguous");
        }
        let u = Matrix::<T>::view(u_storage, u_layout)?;
        let (n, d) = (u.rows, u.cols);
        let scale = T::from(self.scale).unwrap_or(T::one());
        let mut max = vec![T::neg_infinity(); n];
        let mut sum = vec![T::zero(); n];
        let mut acc = vec![T::zero(); n * d];
        let mut logits: Vec<T> = Vec::new();
        for part in &self.parts {
            match part.kind {
                PartKind::PerSample | PartKind::Shared => with_matrix(&part.values, |item: Matrix<T>| {
                    let shared = part.kind == PartKind::Shared;
                    if (item.rows, item.cols) != (if shared { 1 } else { n }, d) {
                        candle_core::bail!(
                            "fused softmax-sum: a {:?} part of shape {}×{} does not fit features [{n}, {d}]",
                            part.kind,
                            item.rows,
                            item.cols
                        );
                    }
                    for i in 0..n {
                        let v_row = if shared { 0 } else { i };
                        let v = &item.data[v_row * d..(v_row + 1) * d];
                        let ui = &u.data[i * d..(i + 1) * d];
                        let x = scale * ui.iter().zip(v).fold(T::zero(), |s, (a, b)| s + *a * *b);
                        let mut r = Row { max: &mut max[i], sum: &mut sum[i], acc: &mut acc[i * d..(i + 1) * d] };
                        let m = r.rescale(x);
                        let p = (x - m).exp();
                        *r.sum += p;
                        r.acc.iter_mut().zip(v).for_each(|(a, b)| *a += p * *b);
                    }
                    Ok(())
                })?,
                PartKind::Rows => with_matrix(&part.values, |rows: Matrix<T>| {
                    if rows.cols != d {
                        candle_core::bail!("fused softmax-sum: candidates have {} columns, features {d}", rows.cols);
                    }
                    let mut k0 = 0;
                    while k0 < rows.rows {
                        let kt = TILE.min(rows.rows - k0);
                        let tile = Matrix { data: &rows.data[k0 * d..], rows: kt, ..rows };
                        logits.resize(n * kt, T::zero());
                        gemm_into(&mut logits, &u, &tile.t(), false, T::zero(), scale)?;
                        // Exponentials, row by row, in parallel: the tile becomes P = exp(S − max).
                        logits
                            .par_chunks_mut(kt)
                            .zip(max.par_iter_mut())
                            .zip(sum.par_iter_mut())
                            .zip(acc.par_chunks_mut(d))
                            .for_each(|(((l, m), s), a)| {
                                let tile_max = l.iter().copied().fold(T::neg_infinity(), num_traits::Float::max);
                                let mut r = Row { max: m, sum: s, acc: a };
                                let m = r.rescale(tile_max);
                                let mut total = T::zero();
                                for x in l.iter_mut() {
                                    *x = (*x - m).exp();
                                    total += *x;
                                }
                                *r.sum += total;
                            });
                        let p = Matrix { data: &logits, rows: n, cols: kt, row_stride: kt as isize, col_stride: 1 };
                        gemm_into(&mut acc, &p, &tile, true, T::one(), T::one())?;
                        k0 += kt;
                    }
                    Ok(())
                })?,
            }
        }
        acc.par_chunks_mut(d).zip(sum.par_iter()).for_each(|(a, s)| {
            let inv = if *s > T::zero() { T::one() / *s } else { T::zero() };
            a.iter_mut().for_each(|x| *x *= inv);
        });
        Ok((T::to_cpu_storage_owned(acc), Shape::from((n, d))))
    }
}

/// Runs `f` on a CPU tensor's data viewed as a matrix (made contiguous first).
fn with_matrix<T: Float, R>(t: &Tensor, f: impl FnOnce(Matrix<T>) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (guard, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*guard else { candle_core::bail!("fused: CPU tensors only") };
    f(Matrix::view(storage, layout)?)
}

impl CustomOp1 for SoftmaxSum {
    fn name(&self) -> &'static str {
        "softmax-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(_) => self.run::<f32>(storage, layout),
            CpuStorage::F64(_) => self.run::<f64>(storage, layout),
            _ => candle_core::bail!("fused softmax-sum: only f32 and f64 are supported"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::cuda_backend::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        super::cuda::launch_softmax_sum(self, storage, layout)
    }
}

/// Σ_v softmax_v(scale · u·v) v for every row of `u`.
pub fn softmax_sum(u: &Tensor, scale: f64, parts: Vec<Part>) -> Result<Tensor> {
    u.contiguous()?.apply_op1_no_bwd(&SoftmaxSum { scale, parts })
}
