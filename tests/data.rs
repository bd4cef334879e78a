//! Data loading and augmentation: IDX round trips, every coded error, the bundled subset, and the
//! properties of each augmentation on known images.

use rand::rngs::StdRng;
use rand::SeedableRng;
use ssl_lang::check::recipe::{Augment, Data, Recipe};
use ssl_lang::data::augment::{augment, beta, crop_params, view_rng};
use ssl_lang::data::idx::{PIXELS, SHAPE};
use ssl_lang::data::{self, idx, DataError, Source};
use std::fs;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ssl-lang-data-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn code(e: DataError) -> &'static str {
    ssl_lang::error::Error::from(e).code.as_str()
}

/// Three 28×28 images with distinct, known pixels and labels 0, 9, 4.
fn fixture() -> (Vec<u8>, Vec<u8>) {
    let images: Vec<u8> = (0..3 * PIXELS).map(|i| ((i * 7 + i / PIXELS) % 256) as u8).collect();
    (images, vec![0, 9, 4])
}

fn write_split(dir: &Path, images: &[u8], labels: &[u8]) {
    for prefix in ["train", "t10k"] {
        idx::write_images(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), images, true).unwrap();
        idx::write_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), labels, true).unwrap();
    }
}

#[test]
fn idx_round_trip_gzip_and_plain() {
    let dir = temp_dir("round-trip");
    let (images, labels) = fixture();
    for gzip in [true, false] {
        let (pi, pl) = (dir.join(format!("images-{gzip}")), dir.join(format!("labels-{gzip}")));
        idx::write_images(&pi, &images, gzip).unwrap();
        idx::write_labels(&pl, &labels, gzip).unwrap();
        let raw = fs::read(&pi).unwrap();
        assert_eq!(raw[..2] == [0x1f, 0x8b], gzip, "gzip magic iff compressed");
        if !gzip {
            assert_eq!(&raw[..16], &[0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28]);
        }
        assert_eq!(idx::read_images(&pi).unwrap(), images);
        assert_eq!(idx::read_labels(&pl).unwrap(), labels);
        assert_eq!(idx::read_pair(&pi, &pl).unwrap(), (images.clone(), labels.clone()));
    }
}

#[test]
fn a_directory_with_plain_or_gzip_files_loads_and_says_where_from() {
    let dir = temp_dir("load-dir");
    let (images, labels) = fixture();
    write_split(&dir, &images, &labels);
    // Replace one file by its decompressed twin: both forms are found.
    let gz = dir.join("t10k-labels-idx1-ubyte.gz");
    fs::remove_file(&gz).unwrap();
    idx::write_labels(&dir.join("t10k-labels-idx1-ubyte"), &labels, false).unwrap();

    let d = data::load(&Data::FashionMnist, Some(&dir)).unwrap();
    assert_eq!(d.source, Source::Override(dir.clone()));
    assert_eq!((d.train_len(), d.test_len()), (3, 3));
    assert_eq!(d.train_images, images);
    assert_eq!(d.test_labels, Some(labels));
    assert!(d.source.to_string().contains("--data"));

    let d = data::load(&Data::FashionMnistDir(dir.display().to_string()), None).unwrap();
    assert_eq!(d.source, Source::Recipe(dir.clone()));
    let t = d.train_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 1, 28, 28]);
    let first: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert!((first[1] - 7.0 / 255.0).abs() < 1e-7);
}

#[test]
fn missing_file_names_the_file_and_the_three_ways_to_get_data() {
    let dir = temp_dir("missing");
    let e = data::load(&Data::FashionMnistDir(dir.display().to_string()), None).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::missing");
    let msg = format!("{e} {}", e.help.clone().unwrap_or_default());
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.contains("dataset-fashion-mnist") && msg.contains("--data DIR") && msg.contains("bundled"), "{msg}");
    assert!(e.help.is_some(), "{msg}");
}

#[test]
fn truncated_files_are_coded() {
    let dir = temp_dir("truncated");
    let (images, _) = fixture();
    let plain = dir.join("plain");
    idx::write_images(&plain, &images, false).unwrap();
    let raw = fs::read(&plain).unwrap();
    // Data shorter than the header says.
    fs::write(&plain, &raw[..raw.len() - 10]).unwrap();
    let e = idx::read_images(&plain).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::truncated");
    assert!(e.to_string().contains("needs 2352 data bytes, found 2342"), "{e}");
    // Shorter than the header itself.
    fs::write(&plain, &raw[..9]).unwrap();
    assert_eq!(code(idx::read_images(&plain).unwrap_err()), "ssl::data::truncated");
    // A gzip stream cut in half.
    let gz = dir.join("gz");
    idx::write_images(&gz, &images, true).unwrap();
    let raw = fs::read(&gz).unwrap();
    fs::write(&gz, &raw[..raw.len() / 2]).unwrap();
    assert_eq!(code(idx::read_images(&gz).unwrap_err()), "ssl::data::truncated");
    // Extra bytes after the data.
    idx::write_labels(&plain, &[1, 2, 3], false).unwrap();
    let mut long = fs::read(&plain).unwrap();
    long.push(0);
    fs::write(&plain, &long).unwrap();
    let e = idx::read_labels(&plain).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::trailing");
}

#[test]
fn wrong_magic_and_dimensions_are_coded() {
    let dir = temp_dir("magic");
    let labels = dir.join("labels");
    idx::write_labels(&labels, &[1, 2, 3], true).unwrap();
    let e = idx::read_images(&labels).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::magic");
    assert!(e.to_string().contains("0x00000801") && e.to_string().contains("expected 2051"), "{e}");

    let wrong = dir.join("wrong-dims");
    idx::write(&wrong, idx::IMAGES_MAGIC, &[2, 14, 56], &[0; 2 * 784], true).unwrap();
    let e = idx::read_images(&wrong).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::dims");
    assert!(e.to_string().contains("[2, 14, 56]"), "{e}");
}

#[test]
fn count_mismatch_and_bad_labels_are_coded() {
    let dir = temp_dir("count");
    let (images, _) = fixture();
    let (pi, pl) = (dir.join("i"), dir.join("l"));
    idx::write_images(&pi, &images, true).unwrap();
    idx::write_labels(&pl, &[1, 2], true).unwrap();
    let e = idx::read_pair(&pi, &pl).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::count");
    assert!(e.to_string().contains("3 images") && e.to_string().contains("2 labels"), "{e}");

    idx::write_labels(&pl, &[1, 10, 2], true).unwrap();
    let e = idx::read_labels(&pl).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::label");
    assert!(e.to_string().contains("label 10 at index 1"), "{e}");
}

#[test]
fn bundled_subset_is_stratified() {
    let d = data::load_bundled().unwrap();
    assert!(matches!(d.source, Source::Bundled(_)));
    assert_eq!((d.train_len(), d.test_len()), (10_000, 2_000));
    assert_eq!((d.train_images.len(), d.test_images.len()), (10_000 * 784, 2_000 * 784));
    let (train, test) = (d.train_labels.as_ref().unwrap(), d.test_labels.as_ref().unwrap());
    for (labels, per_class) in [(train, 1000), (test, 200)] {
        let mut counts = [0usize; 10];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [per_class; 10]);
    }
    // The first images of Fashion-MNIST's both splits are ankle boots (9); the second test image is a pullover.
    assert_eq!((train[0], test[0], test[1]), (9, 9, 2));
}

#[test]
fn default_source_is_debian_when_installed_else_bundled() {
    let d = data::load(&Data::FashionMnist, None).unwrap();
    if Path::new(data::DEBIAN_DIR).is_dir() {
        assert!(matches!(d.source, Source::Debian(_)));
        assert_eq!((d.train_len(), d.test_len()), (60_000, 10_000));
    } else {
        assert!(matches!(d.source, Source::Bundled(_)));
    }
}

fn first_images(n: usize) -> Vec<u8> {
    let d = data::load_bundled().unwrap();
    d.train_images[..n * PIXELS].to_vec()
}

#[test]
fn augmentation_is_deterministic_and_in_range() {
    let images = first_images(64);
    let mut ops = Recipe::default().augment;
    ops.push(Augment::Noise { std: 0.1, p: 0.5 });
    ops.push(Augment::Blur { sigma: [1.0, 1.0], p: 0.5 });
    ops.push(Augment::Multicrop { local: 2, scale: [0.1, 0.4], size: 14 });
    ops.push(Augment::Cutmix { alpha: 1.0, p: 1.0 });
    let a = augment(&images, SHAPE, &ops, &mut view_rng(7, 3, 0)).unwrap();
    let b = augment(&images, SHAPE, &ops, &mut view_rng(7, 3, 0)).unwrap();
    let other = augment(&images, SHAPE, &ops, &mut view_rng(7, 3, 1)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.global, other.global);
    assert_eq!((a.batch, a.global.len(), a.local_size, a.locals.len()), (64, 64 * 784, 14, 2));
    assert!(a.locals.iter().all(|l| l.len() == 64 * 196));
    assert!(a.global.iter().chain(a.locals.iter().flatten()).all(|x| (0.0..=1.0).contains(x)));
    let t = a.global_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[64, 1, 28, 28]);
    assert_eq!(a.local_tensors(&candle_core::Device::Cpu).unwrap()[1].dims(), &[64, 1, 14, 14]);
    let cut = a.cutmix.as_ref().unwrap();
    let mut sorted = cut.perm.clone();
    sorted.sort();
    assert_eq!(sorted, (0..64).collect::<Vec<_>>());
}

#[test]
fn flip_reverses_every_row_exactly() {
    // An asymmetric image: pixel (r, c) = r * 28 + c scaled into u8.
    let img: Vec<u8> = (0..PIXELS).map(|i| (i % 251) as u8).collect();
    let flipped = augment(&img, SHAPE, &[Augment::Hflip { p: 1.0 }], &mut StdRng::seed_from_u64(0)).unwrap();
    for r in 0..28 {
        for c in 0..28 {
            assert_eq!(flipped.global[r * 28 + c], img[r * 28 + 27 - c] as f32 / 255.0);
        }
    }
    let kept = augment(&img, SHAPE, &[Augment::Hflip { p: 0.0 }], &mut StdRng::seed_from_u64(0)).unwrap();
    assert!(kept.global.iter().zip(&img).all(|(a, &b)| *a == b as f32 / 255.0));
}

#[test]
fn full_crop_is_the_identity() {
    let images = first_images(8);
    let crop = [Augment::Crop { scale: [1.0, 1.0], ratio: [1.0, 1.0] }];
    let out = augment(&images, SHAPE, &crop, &mut StdRng::seed_from_u64(5)).unwrap();
    let max = out.global.iter().zip(&images).map(|(a, &b)| (a - b as f32 / 255.0).abs()).fold(0.0f32, f32::max);
    assert!(max <= 1e-6, "max difference {max}");
    // f32 input too.
    let f: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
    let out = augment(&f, SHAPE, &crop, &mut StdRng::seed_from_u64(5)).unwrap();
    assert!(out.global.iter().zip(&f).all(|(a, b)| (a - b).abs() <= 1e-6));
}

#[test]
fn crop_parameters_follow_torchvision() {
    let mut rng = StdRng::seed_from_u64(0);
    // No aspect ratio in [2, 3] fits a full-area crop: the fall-back is the centre crop of ratio 2.
    assert_eq!(crop_params(28, [1.0, 1.0], [2.0, 3.0], &mut rng), [7, 0, 14, 28]);
    assert_eq!(crop_params(28, [1.0, 1.0], [0.25, 0.5], &mut rng), [0, 7, 28, 14]);
    for _ in 0..1000 {
        let [top, left, h, w] = crop_params(28, [0.3, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert!(h >= 1 && w >= 1 && top + h <= 28 && left + w <= 28);
        let area = (h * w) as f64 / 784.0;
        assert!((0.25..=1.0).contains(&area), "area {area}");
    }
}

#[test]
fn jitter_blur_and_noise_on_known_images() {
    let grey = vec![0.5f32; PIXELS];
    let mut rng = StdRng::seed_from_u64(1);
    // Contrast alone leaves a constant image unchanged (it blends with its own mean).
    let c = augment(
        &grey,
        SHAPE,
        &[Augment::Jitter { brightness: 0.0, contrast: 0.9, p: 1.0, saturation: 0.0, hue: 0.0 }],
        &mut rng,
    )
    .unwrap();
    assert!(c.global.iter().all(|&x| (x - 0.5).abs() < 1e-6));
    // Brightness alone scales it by one factor in [0.6, 1.4].
    let b = augment(
        &grey,
        SHAPE,
        &[Augment::Jitter { brightness: 0.4, contrast: 0.0, p: 1.0, saturation: 0.0, hue: 0.0 }],
        &mut rng,
    )
    .unwrap();
    let v = b.global[0];
    assert!(b.global.iter().all(|&x| x == v) && (0.3..=0.7).contains(&v) && v != 0.5, "{v}");
    // Blur keeps a constant image; noise with std 0 is the identity.
    let blur = augment(&grey, SHAPE, &[Augment::Blur { sigma: [2.0, 2.0], p: 1.0 }], &mut rng).unwrap();
    assert!(blur.global.iter().all(|&x| (x - 0.5).abs() < 1e-6));
    let quiet = augment(&grey, SHAPE, &[Augment::Noise { std: 0.0, p: 1.0 }], &mut rng).unwrap();
    assert_eq!(quiet.global, grey);
    // Blur spreads a single bright pixel symmetrically and keeps its mass away from the borders.
    let mut dot = vec![0.0f32; PIXELS];
    dot[14 * 28 + 14] = 1.0;
    let spread = augment(&dot, SHAPE, &[Augment::Blur { sigma: [1.0, 1.0], p: 1.0 }], &mut rng).unwrap().global;
    assert!((spread.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!((spread[14 * 28 + 13] - spread[14 * 28 + 15]).abs() < 1e-7 && spread[14 * 28 + 14] < 1.0);
    // Noise moves pixels but keeps them in [0, 1].
    let noisy = augment(&grey, SHAPE, &[Augment::Noise { std: 0.5, p: 1.0 }], &mut rng).unwrap().global;
    assert!(noisy.iter().all(|x| (0.0..=1.0).contains(x)) && noisy.iter().any(|&x| x != 0.5));
    // Away from the clamp, the noise is N(0, std²): mean 0.5 and std 0.05 over 64 images.
    let batch = vec![0.5f32; 64 * PIXELS];
    let noisy = augment(&batch, SHAPE, &[Augment::Noise { std: 0.05, p: 1.0 }], &mut rng).unwrap().global;
    let n = noisy.len() as f64;
    let mean = noisy.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (noisy.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let within = noisy.iter().filter(|&&x| (x - 0.5).abs() < 0.05).count() as f64 / n;
    assert!((mean - 0.5).abs() < 1e-3 && (std - 0.05).abs() < 1e-3, "mean {mean}, std {std}");
    assert!((within - 0.6827).abs() < 0.01, "fraction within one std {within}");
}

#[test]
fn cutmix_lambda_is_the_area_kept() {
    let batch = 8;
    // Image i is constant (i + 1) / 10, so every pixel tells which image it came from.
    let images: Vec<f32> = (0..batch * PIXELS).map(|i| (i / PIXELS + 1) as f32 / 10.0).collect();
    let mut nontrivial = 0;
    for seed in 0..50 {
        let v = augment(&images, SHAPE, &[Augment::Cutmix { alpha: 1.0, p: 1.0 }], &mut StdRng::seed_from_u64(seed))
            .unwrap();
        let cut = v.cutmix.unwrap();
        let [top, left, h, w] = cut.bbox;
        assert!((cut.pasted() - (h * w) as f64 / 784.0).abs() < 1e-12);
        for i in 0..batch {
            let own = (i + 1) as f32 / 10.0;
            let partner = (cut.perm[i] + 1) as f32 / 10.0;
            let img = &v.global[i * PIXELS..(i + 1) * PIXELS];
            let from_partner = img.iter().filter(|&&x| x == partner && x != own).count();
            let kept = img.iter().filter(|&&x| x == own).count();
            if cut.perm[i] != i {
                assert!((from_partner as f64 / 784.0 - cut.pasted()).abs() < 1e-12);
                assert!((kept as f64 / 784.0 - cut.lambda).abs() < 1e-12);
                assert_eq!(img[top * 28 + left], if h * w > 0 { partner } else { own });
                nontrivial += usize::from(h * w > 0);
            } else {
                assert_eq!(kept, 784);
            }
        }
    }
    assert!(nontrivial > 100);
    // p = 0 leaves the batch alone.
    let v = augment(&images, SHAPE, &[Augment::Cutmix { alpha: 1.0, p: 0.0 }], &mut StdRng::seed_from_u64(0)).unwrap();
    assert!(v.cutmix.is_none() && v.global == images);
}

#[test]
fn beta_draws_have_the_right_mean_and_spread() {
    let mut rng = StdRng::seed_from_u64(3);
    for (alpha, var) in [(1.0, 1.0 / 12.0), (2.0, 1.0 / 20.0), (0.5, 1.0 / 8.0)] {
        let xs: Vec<f64> = (0..20_000).map(|_| beta(alpha, &mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
        assert!((v - var).abs() < 0.005, "alpha {alpha}: variance {v}, expected {var}");
    }
    assert!((0..100).all(|_| (0.0..=1.0).contains(&beta(1e-4, &mut rng))));
}

#[test]
fn bad_batches_and_parameters_are_coded() {
    let e = augment(&[0u8; 785], SHAPE, &[], &mut StdRng::seed_from_u64(0)).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::shape");
    let bad = [Augment::Crop { scale: [0.5, 0.2], ratio: [1.0, 1.0] }];
    assert_eq!(code(augment(&[0u8; 784], SHAPE, &bad, &mut StdRng::seed_from_u64(0)).unwrap_err()), "ssl::data::shape");
    let bad = [Augment::Multicrop { local: 1, scale: [0.1, 0.4], size: 0 }];
    assert_eq!(code(augment(&[0u8; 784], SHAPE, &bad, &mut StdRng::seed_from_u64(0)).unwrap_err()), "ssl::data::shape");
    let e = data::gather(&[0u8; 784 * 2], SHAPE, &[0, 2]).unwrap_err();
    let e = ssl_lang::error::Error::from(e);
    assert_eq!(e.code.as_str(), "ssl::data::shape");
    // An empty batch is fine.
    let v = augment::<u8>(&[], SHAPE, &Recipe::default().augment, &mut StdRng::seed_from_u64(0)).unwrap();
    assert_eq!((v.batch, v.global.len()), (0, 0));
}

/// `cargo test --release --test data -- --ignored --nocapture augmentation_speed` prints the time per batch.
#[test]
#[ignore = "timing; run in release"]
fn augmentation_speed() {
    let images = first_images(512);
    let default = Recipe::default().augment;
    let mut heavy = default.clone();
    heavy.extend([
        Augment::Noise { std: 0.1, p: 0.5 },
        Augment::Blur { sigma: [1.0, 1.0], p: 0.5 },
        Augment::Cutmix { alpha: 1.0, p: 1.0 },
    ]);
    let mut multicrop = default.clone();
    multicrop.push(Augment::Multicrop { local: 2, scale: [0.1, 0.4], size: 14 });
    for (name, ops) in
        [("default", &default), ("default+noise+blur+cutmix", &heavy), ("default+multicrop(2×14)", &multicrop)]
    {
        let runs = 50;
        let start = std::time::Instant::now();
        for step in 0..runs {
            std::hint::black_box(augment(&images, SHAPE, ops, &mut view_rng(0, step, 0)).unwrap());
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
        println!("augment {name}: {ms:.3} ms per 512 images (one view)");
    }
}

/// Data-parallel shares: rank r of P makes the views of its rows only, and they are exactly one process's views of
/// those rows (global views and multi-crop local crops, both views' lists, several steps), for P = 2 and 4 — an
/// image's random choices are keyed by its index in the global batch, not by who makes it.
#[test]
fn each_ranks_share_of_a_batch_has_the_views_one_process_makes_of_it() {
    use ssl_lang::data::loader::{step_views, Share};
    let mut data = data::load(&Data::FashionMnistDir(data::BUNDLED_DIR.into()), None).unwrap();
    data.limit(64);
    let mut augment = Recipe::default().augment;
    augment.push(Augment::Multicrop { local: 2, scale: [0.1, 0.4], size: 14 });
    let recipe = Recipe {
        batch: 16,
        augment,
        augment2: Some(vec![Augment::Solarize { p: 0.5, threshold: 0.5 }, Augment::Hflip { p: 0.5 }]),
        ..Default::default()
    };
    for step in [0, 3, 5] {
        let whole = step_views(&data, &recipe, 4, step, Share::WHOLE, &mut (None, Vec::new())).unwrap();
        for ranks in [2, 4] {
            let shares: Vec<_> = (0..ranks)
                .map(|rank| {
                    step_views(&data, &recipe, 4, step, Share { rank, ranks }, &mut (None, Vec::new())).unwrap()
                })
                .collect();
            for v in 0..2 {
                let global: Vec<f32> = shares.iter().flat_map(|s| s[v].global.clone()).collect();
                assert!(global == whole[v].global, "step {step}, {ranks} ranks, view {v}: global views differ");
                for l in 0..whole[v].locals.len() {
                    let local: Vec<f32> = shares.iter().flat_map(|s| s[v].locals[l].clone()).collect();
                    assert!(
                        local == whole[v].locals[l],
                        "step {step}, {ranks} ranks, view {v}: local crop {l} differs"
                    );
                }
                assert!(shares.iter().all(|s| s[v].batch == 16 / ranks));
            }
        }
    }
}

/// The loader's worker hands over, in order, exactly the views the step would make itself (across an epoch boundary,
/// from a resumed step on, with both views' lists), each epoch a permutation of the training images; dropping it
/// midway stops its worker instead of hanging.
#[test]
fn the_loader_makes_each_steps_views_ahead_and_in_order() {
    use ssl_lang::data::loader::{epoch_order, step_views, Loader, Share};
    let mut data = data::load(&Data::FashionMnistDir(data::BUNDLED_DIR.into()), None).unwrap();
    data.limit(40);
    let recipe =
        Recipe { batch: 8, augment2: Some(vec![Augment::Solarize { p: 0.5, threshold: 0.5 }]), ..Default::default() };
    let data = std::sync::Arc::new(data);
    let steps_per_epoch = 40 / 8;
    let mut loader = Loader::spawn(data.clone(), &recipe, steps_per_epoch, 3..12, Share::WHOLE);
    let mut order = (None, Vec::new());
    for step in 3..12 {
        let got = loader.next_step().unwrap();
        assert_eq!(got.step, step);
        let want = step_views(&data, &recipe, steps_per_epoch, step, Share::WHOLE, &mut order).unwrap();
        assert!(got.views == want, "step {step}");
        assert_ne!(got.views[0].global, got.views[1].global, "two different views");
    }
    assert!(loader.next_step().is_err(), "no step past the range");
    for epoch in 0..3 {
        let mut o = epoch_order(40, recipe.seed, epoch);
        assert_ne!(o, (0..40).collect::<Vec<_>>(), "shuffled");
        o.sort_unstable();
        assert_eq!(o, (0..40).collect::<Vec<_>>(), "a permutation");
    }
    drop(Loader::spawn(data, &recipe, steps_per_epoch, 0..1000, Share::WHOLE));
}
