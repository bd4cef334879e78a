//! Our slice kernels' loops compiled for the vector instructions of the CPU they run on, chosen at run time.
//!
//! A portable build targets x86-64's baseline (SSE2, 4 floats a vector); the loops of our kernels (BatchNorm passes,
//! Winograd transforms, patch building) are written to auto-vectorise, and compiled for AVX2 + FMA (8 floats) they
//! pay (with Winograd's deinterleave made vectorisable at the same time, the SimCLR step went 1.15× faster on a
//! 2-core AVX-512 EPYC; a whole build for `x86-64-v3` gained no more), and for AVX-512 (16 floats) a little more
//! (SimCLR step +0–11 %, median about +4 %, over ten interleaved pairs on a Zen 4 EPYC; bit-identical metrics).
//! [`vectorized`] runs a kernel inside a
//! function compiled with those features when the CPU has them, so one binary is both portable and fast (the `gemm`
//! crate dispatches its own kernels the same way). Results do not depend on the choice: without fast-math the compiler keeps every floating-point
//! operation and its order, and only widens the vectors.
//!
//! For the features to reach a loop, the loop must be inlined into the dispatching function: the kernel closure is
//! marked `#[inline(always)]`, as is every helper it calls that holds a hot loop.

/// Runs `kernel` compiled for AVX-512 (F, BW, VL) when this CPU has it, else for AVX2 + FMA when it has those, as
/// plain x86-64 (or the target's baseline) otherwise. Calling a function compiled for features the CPU may lack is
/// unsafe; it is sound here because they were detected first.
#[inline(always)]
#[allow(unsafe_code)]
pub fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
            // SAFETY: the features `avx512` is compiled for were detected on this CPU just above.
            return unsafe { avx512(kernel) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the features `avx2_fma` is compiled for were detected on this CPU just above.
            return unsafe { avx2_fma(kernel) };
        }
    }
    kernel()
}

/// `kernel()`, compiled with AVX-512 (and AVX2, FMA) enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

/// `kernel()`, compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_fma<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(test)]
mod tests {
    use super::vectorized;

    /// The vectorised and the plain compilation of one kernel give bit-identical results on fresh random data
    /// (including a reduction, whose order the compiler must keep).
    #[test]
    fn same_bits_either_way() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
        let data: Vec<f32> = (0..10_007)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        #[inline(always)]
        fn kernel(v: &[f32]) -> (Vec<f32>, f32) {
            let mapped: Vec<f32> = v.iter().map(|x| x * 1.7 + 0.3).collect();
            let sum = v.iter().fold(0f32, |s, x| s + x * x);
            (mapped, sum)
        }
        let plain = kernel(std::hint::black_box(&data));
        let fast = vectorized(
            #[inline(always)]
            || kernel(&data),
        );
        assert!(plain.0.iter().zip(&fast.0).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(plain.1.to_bits(), fast.1.to_bits());
    }
}
