//! Data benchmark: how fast images are read (PNG folder and CIFAR binaries, decoded into memory on load) and how
//! fast the loader makes a step's two views (the default Fashion-MNIST recipe at 28×28×1 and SimCLR's colour recipe
//! at 32×32×3), in one run on files this benchmark writes (no data set is downloaded here).
//!
//! `cargo bench --bench data [-- quick]`

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::check::recipe::{Augment, Data, Recipe};
use ssl_lang::data::{self, loader, Dataset};
use std::path::Path;
use std::time::Instant;

/// Median seconds of `f` over `reps` runs after one warm-up.
fn median<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A 32×32 colour picture: a smooth gradient with a little noise, so PNG compresses it as it would a photograph's
/// patch rather than pure noise.
fn picture(rng: &mut StdRng) -> Vec<u8> {
    let (a, b): (f32, f32) = (rng.gen_range(0.0..255.0), rng.gen_range(0.0..8.0));
    (0..32 * 32 * 3).map(|i| (a + b * (i % 96) as f32 / 3.0 + rng.gen_range(0.0..24.0)).min(255.0) as u8).collect()
}

fn write_folder(dir: &Path, n: usize, rng: &mut StdRng) {
    for i in 0..n {
        let class = dir.join(format!("class{}", i % 10));
        std::fs::create_dir_all(&class).unwrap();
        let img = image::RgbImage::from_raw(32, 32, picture(rng)).unwrap();
        img.save(class.join(format!("{i:05}.png"))).unwrap();
    }
}

fn write_cifar(dir: &Path, per_file: usize, rng: &mut StdRng) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        let mut bytes = Vec::with_capacity(per_file * 3073);
        for i in 0..per_file {
            bytes.push((i % 10) as u8);
            let rgb = picture(rng);
            // CIFAR stores planes (R, G, B), the picture is interleaved.
            for c in 0..3 {
                bytes.extend((0..1024).map(|p| rgb[3 * p + c]));
            }
        }
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

fn views_per_s(data: &Dataset, recipe: &Recipe, reps: usize) -> f64 {
    let steps = data.train_len() / recipe.batch;
    let mut step = 0;
    let mut order = (None, Vec::new());
    let s = median(reps, || {
        step = (step + 1) % steps;
        loader::step_views(data, recipe, steps, step, loader::Share::WHOLE, &mut order).unwrap()
    });
    2.0 * recipe.batch as f64 / s
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (reps, png_count, cifar_per_file) = if quick { (3, 1000, 2000) } else { (5, 5000, 10000) };
    let root = std::env::temp_dir().join(format!("ssl-bench-data-{}", std::process::id()));
    let mut rng = StdRng::seed_from_u64(0);
    println!(
        "data benchmark: {} — {} rayon threads, medians of {reps} runs",
        ssl_lang::commands::bench::torch::cpu_model(),
        rayon::current_num_threads()
    );

    let folder = root.join("folder");
    write_folder(&folder, png_count, &mut rng);
    let source = Data::ImageFolder { dir: folder.display().to_string(), size: 32, skip_bad: false };
    let s = median(reps, || data::load(&source, None).unwrap());
    println!(
        "image folder, {png_count} PNG files 32×32 RGB: load {:.0} images/s (decoded in parallel)",
        png_count as f64 / s
    );

    let cifar = root.join("cifar");
    write_cifar(&cifar, cifar_per_file, &mut rng);
    let source = Data::Cifar10(cifar.display().to_string());
    let s = median(reps, || data::load(&source, None).unwrap());
    let n = 6 * cifar_per_file;
    println!("CIFAR-10 binaries, {n} records: load {:.0} images/s", n as f64 / s);

    let colour = data::load(&source, None).unwrap();
    let simclr = Recipe {
        augment: vec![
            Augment::Crop { scale: [0.08, 1.0], ratio: [0.75, 4.0 / 3.0] },
            Augment::Hflip { p: 0.5 },
            Augment::Jitter { brightness: 0.4, contrast: 0.4, p: 0.8, saturation: 0.4, hue: 0.1 },
            Augment::Grayscale { p: 0.2 },
        ],
        ..Recipe::default()
    };
    println!(
        "views, SimCLR colour recipe, 32×32×3, batch 256: {:.0} views/s (one loader thread)",
        views_per_s(&colour, &simclr, reps)
    );
    let fashion = data::load(&Data::FashionMnistDir(data::BUNDLED_DIR.into()), None).unwrap();
    println!(
        "views, default recipe, 28×28×1, batch 256: {:.0} views/s (one loader thread)",
        views_per_s(&fashion, &Recipe::default(), reps)
    );
    let _ = std::fs::remove_dir_all(&root);
}
