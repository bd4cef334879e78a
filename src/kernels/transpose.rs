//! Transposes between channels-first and channels-last data whose rows lie anywhere in their slices: what the
//! Winograd transforms run at either end (an NCHW image into a phase-split channels-last copy, and back).
//!
//! A plain loop moves one element at a time with a strided store (two to three cycles an element measured here); in
//! f32 on a CPU with AVX-512 the transpose goes through registers sixteen by sixteen (sixteen loads, 64 shuffles,
//! sixteen stores), and the scalar loop does the edges and every other type.

use super::gemm::Float;

/// The side of the register-transposed blocks.
const BLOCK: usize = 16;

/// Element types with a fast 16×16 block transpose where the CPU has one.
pub trait BlockTranspose: Copy {
    /// Transposes one 16×16 block: `dst[dst_at[j] + i] = src[src_at[i] + j]` for i, j < 16, returning false (and
    /// writing nothing) when this type or CPU has no fast path. Every offset is in bounds with 16 elements after it.
    fn transpose_block(_src: &[Self], _src_at: &[usize; BLOCK], _dst: &mut [Self], _dst_at: &[usize; BLOCK]) -> bool {
        false
    }
}

impl BlockTranspose for f64 {}

impl BlockTranspose for f32 {
    #[allow(unsafe_code)]
    fn transpose_block(src: &[f32], src_at: &[usize; BLOCK], dst: &mut [f32], dst_at: &[usize; BLOCK]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(src_at.iter().all(|&a| a + BLOCK <= src.len()) && dst_at.iter().all(|&a| a + BLOCK <= dst.len()));
            // SAFETY: AVX-512F was detected just above, and the assert keeps every 16-element row the kernel loads
            // and stores inside its slice; `dst` is borrowed mutably, so it aliases no row of `src`.
            unsafe { avx512::transpose16(src.as_ptr(), src_at, dst.as_mut_ptr(), dst_at) };
            return true;
        }
        false
    }
}

/// `dst[dst_at(j) + i] = src[src_at(i) + j]` for i < `rows`, j < `cols`: row i of the source starts at `src_at(i)`
/// and row j of the destination at `dst_at(j)`.
pub fn transpose<T: Float>(
    src: &[T],
    src_at: impl Fn(usize) -> usize,
    rows: usize,
    cols: usize,
    dst: &mut [T],
    dst_at: impl Fn(usize) -> usize,
) {
    let (full_rows, full_cols) = (rows - rows % BLOCK, cols - cols % BLOCK);
    let scalar = |i: std::ops::Range<usize>, j: std::ops::Range<usize>, dst: &mut [T]| {
        for ii in i {
            let row = &src[src_at(ii)..];
            for jj in j.clone() {
                dst[dst_at(jj) + ii] = row[jj];
            }
        }
    };
    for i0 in (0..full_rows).step_by(BLOCK) {
        let s: [usize; BLOCK] = std::array::from_fn(|k| src_at(i0 + k));
        for j0 in (0..full_cols).step_by(BLOCK) {
            let src_block = s.map(|a| a + j0);
            let dst_block: [usize; BLOCK] = std::array::from_fn(|k| dst_at(j0 + k) + i0);
            if !T::transpose_block(src, &src_block, dst, &dst_block) {
                scalar(i0..i0 + BLOCK, j0..j0 + BLOCK, dst);
            }
        }
        scalar(i0..i0 + BLOCK, full_cols..cols, dst);
    }
    scalar(full_rows..rows, 0..cols, dst);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// The 16×16 transpose in registers: pairs of rows interleaved by element, then by pairs of elements (each
    /// 128-bit lane then holds a transposed 4×4 block), then the lanes exchanged in two rounds.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and every `src + src_at[i]` and `dst + dst_at[j]` must have 16 valid elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const f32, src_at: &[usize; BLOCK], dst: *mut f32, dst_at: &[usize; BLOCK]) {
        // SAFETY (all loads and stores below): the caller guarantees 16 valid elements at every row offset.
        let r: [__m512; BLOCK] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(src_at[i])) });
        let t: [__m512; BLOCK] = std::array::from_fn(|k| {
            let (a, b) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
            if k % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; BLOCK] = std::array::from_fn(|k| {
            let (base, which) = (4 * (k / 4), k % 4);
            let (a, b) = (t[base + which / 2], t[base + 2 + which / 2]);
            if which % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        let v: [__m512; BLOCK] = std::array::from_fn(|k| {
            let (base, which) = (8 * (k / 8), k % 8);
            let (a, b) = (u[base + which % 4], u[base + 4 + which % 4]);
            if which < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        for (j, &at) in dst_at.iter().enumerate() {
            let (a, b) = (v[j % 8], v[8 + j % 8]);
            let row = if j < 8 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xDD>(a, b) };
            unsafe { _mm512_storeu_ps(dst.add(at), row) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;

    /// The register-blocked and the scalar paths agree with the definition on shapes with full blocks, edges, and
    /// rows placed at uneven offsets on both sides, in f32 (blocked where the CPU can) and f64 (scalar).
    #[test]
    fn transposes_match_the_definition() {
        for &(rows, cols) in &[(16, 16), (32, 48), (17, 35), (5, 3), (64, 28), (1, 40)] {
            let src_at = |i: usize| i * (cols + 3) + 1;
            let dst_at = |j: usize| j * (rows + 5) + 2;
            let n_src = src_at(rows) + cols;
            let n_dst = dst_at(cols) + rows;
            let src: Vec<f32> = (0..n_src).map(|k| (k as f32 * 0.37).sin()).collect();
            let mut dst = vec![f32::NAN; n_dst];
            transpose(&src, src_at, rows, cols, &mut dst, dst_at);
            let src64: Vec<f64> = src.iter().map(|&v| f64::from(v)).collect();
            let mut dst64 = vec![f64::NAN; n_dst];
            transpose(&src64, src_at, rows, cols, &mut dst64, dst_at);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[dst_at(j) + i], src[src_at(i) + j], "f32 {rows}×{cols} at ({i}, {j})");
                    assert_eq!(dst64[dst_at(j) + i], src64[src_at(i) + j], "f64 {rows}×{cols} at ({i}, {j})");
                }
            }
            // Nothing outside the destination rows is written.
            let written: std::collections::HashSet<usize> =
                (0..cols).flat_map(|j| (0..rows).map(move |i| dst_at(j) + i)).collect();
            assert!((0..n_dst).filter(|k| !written.contains(k)).all(|k| dst[k].is_nan()));
        }
    }
}
