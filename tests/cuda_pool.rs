//! The CUDA max-pooling kernels (src/kernels/cuda/pool.rs) run on the CPU: their source is compiled as C++ with the
//! CUDA qualifiers defined away and every block and thread of the launch run in turn, then compared bit for bit
//! with the CPU kernel (src/kernels/pool.rs, itself tested against its definition in tests/pool.rs) on fresh random
//! inputs with ties and NaNs. This checks the kernels' index arithmetic, windows and gather order on any machine;
//! what it cannot check (the launch itself, on a GPU) is `scripts/gpu-check.sh`'s.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::kernels::cuda::{max_pool_names, max_pool_source, Float, POOL_BLOCK};
use ssl_lang::kernels::pool::{self, PoolGeom};
use std::path::Path;
use std::process::Command;

/// What makes CUDA C++ plain C++: qualifiers defined away, the thread indices as globals the driver sets.
const PRELUDE: &str = r#"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
using std::isnan; using std::max; using std::min;
#define __device__
#define __global__
#define __launch_bounds__(n)
struct Dim { unsigned x; };
static Dim blockIdx, threadIdx, blockDim;
"#;

/// Reads `int dims[8]`, x, dy from the file argv[1]; writes y then dx to argv[2], running every block and thread.
fn driver(float: Float) -> String {
    let t = float.name();
    let (_, fwd, bwd) = max_pool_names(float);
    format!(
        r#"
int main(int argc, char** argv) {{
    FILE* in = fopen(argv[1], "rb");
    int d[8];
    if (fread(d, sizeof(int), 8, in) != 8) return 2;
    const long long nx = (long long)d[0] * d[1] * d[2], ny = (long long)d[0] * d[6] * d[7];
    {t}* x = ({t}*)malloc(sizeof({t}) * nx);
    {t}* dy = ({t}*)malloc(sizeof({t}) * ny);
    {t}* y = ({t}*)malloc(sizeof({t}) * ny);
    {t}* dx = ({t}*)malloc(sizeof({t}) * nx);
    if (fread(x, sizeof({t}), nx, in) != (size_t)nx || fread(dy, sizeof({t}), ny, in) != (size_t)ny) return 3;
    fclose(in);
    blockDim.x = {POOL_BLOCK};
    for (long long b = 0; b * {POOL_BLOCK} < ny; ++b)
        for (unsigned i = 0; i < {POOL_BLOCK}; ++i) {{
            blockIdx.x = (unsigned)b; threadIdx.x = i;
            {fwd}(x, y, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
        }}
    for (long long b = 0; b * {POOL_BLOCK} < nx; ++b)
        for (unsigned i = 0; i < {POOL_BLOCK}; ++i) {{
            blockIdx.x = (unsigned)b; threadIdx.x = i;
            {bwd}(x, dy, dx, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
        }}
    FILE* out = fopen(argv[2], "wb");
    fwrite(y, sizeof({t}), ny, out);
    fwrite(dx, sizeof({t}), nx, out);
    fclose(out);
    return 0;
}}
"#
    )
}

/// Compiles the kernels of `float` with their driver into `dir`, or says why it cannot (no C++ compiler).
fn build(dir: &Path, float: Float) -> Option<std::path::PathBuf> {
    let (module, _, _) = max_pool_names(float);
    let (src, exe) = (dir.join(format!("{module}.cpp")), dir.join(&module));
    std::fs::write(&src, format!("{PRELUDE}{}{}", max_pool_source(float), driver(float))).unwrap();
    let out = match Command::new("c++").args(["-O1", "-std=c++17", "-o"]).arg(&exe).arg(&src).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no C++ compiler (`c++`: {e})");
            return None;
        }
    };
    assert!(out.status.success(), "{module} does not compile as C++:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

#[path = "support/pool_shapes.rs"]
mod pool_shapes;
use pool_shapes::SHAPES;

/// Values on a coarse grid (so windows have tied maxima), a few NaNs, and gradients in (−1, 1).
fn inputs(rng: &mut StdRng, g: &PoolGeom) -> (Vec<f64>, Vec<f64>) {
    let x = (0..g.planes * g.h * g.w)
        .map(|_| if rng.gen_bool(0.02) { f64::NAN } else { f64::from(rng.gen_range(-4i32..4)) * 0.25 })
        .collect();
    let dy = (0..g.planes * g.ho * g.wo).map(|_| rng.gen_range(-1.0..1.0)).collect();
    (x, dy)
}

trait Elem: Copy + PartialEq + std::fmt::Debug + ssl_lang::kernels::gemm::Float {
    const FLOAT: Float;
    fn of(v: f64) -> Self;
    fn bytes(v: &[Self]) -> Vec<u8>;
    fn parse(b: &[u8]) -> Vec<Self>;
    fn bits(self) -> u64;
}

impl Elem for f32 {
    const FLOAT: Float = Float::F32;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn bytes(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }
    fn parse(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect()
    }
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

impl Elem for f64 {
    const FLOAT: Float = Float::F64;
    fn of(v: f64) -> Self {
        v
    }
    fn bytes(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }
    fn parse(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().unwrap())).collect()
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
}

/// Runs every shape through the emulated CUDA kernels in `T` and the CPU kernel, and compares them bit for bit.
fn agrees_with_the_cpu_kernel<T: Elem>() {
    let dir = std::env::temp_dir().join(format!("ssl-cuda-pool-{:?}-{}", T::FLOAT, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(exe) = build(&dir, T::FLOAT) else { return };
    let mut rng = StdRng::seed_from_u64(std::process::id() as u64);
    for &(b, c, h, w, k, s, p) in SHAPES {
        let g = PoolGeom::new(&[b, c, h, w], k, s, p).unwrap();
        let (x, dy) = inputs(&mut rng, &g);
        let (x, dy): (Vec<T>, Vec<T>) = (x.into_iter().map(T::of).collect(), dy.into_iter().map(T::of).collect());
        let dims = [g.planes, g.h, g.w, g.k, g.stride, g.pad, g.ho, g.wo].map(|v| i32::try_from(v).unwrap());
        let mut file: Vec<u8> = dims.iter().flat_map(|d| d.to_ne_bytes()).collect();
        file.extend(T::bytes(&x));
        file.extend(T::bytes(&dy));
        let (input, output) = (dir.join("in.bin"), dir.join("out.bin"));
        std::fs::write(&input, file).unwrap();
        let run = Command::new(&exe).arg(&input).arg(&output).status().unwrap();
        assert!(run.success(), "the emulated kernels failed on {:?}", (b, c, h, w, k, s, p));
        let out = T::parse(&std::fs::read(&output).unwrap());
        let (y, dx) = out.split_at(dy.len());
        let bits = |v: &[T]| v.iter().map(|e| e.bits()).collect::<Vec<_>>();
        assert_eq!(bits(y), bits(&pool::forward(&g, &x)), "forward, shape {:?}", (b, c, h, w, k, s, p));
        assert_eq!(bits(dx), bits(&pool::backward(&g, &x, &dy)), "backward, shape {:?}", (b, c, h, w, k, s, p));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cuda_kernels_agree_with_the_cpu_kernel_in_f32() {
    agrees_with_the_cpu_kernel::<f32>();
}

#[test]
fn the_cuda_kernels_agree_with_the_cpu_kernel_in_f64() {
    agrees_with_the_cpu_kernel::<f64>();
}
