//! Every data source on small files the test writes itself (no data set can be downloaded here): CIFAR-10/100
//! records round-trip pixel for pixel, STL-10's column-major images are transposed, image folders give labels from
//! sorted class folders (or none when flat), bad files are coded errors naming the file, colour images augment per
//! channel, and a tiny CIFAR-format set trains and evaluates end to end.

use rand::rngs::StdRng;
use rand::SeedableRng;
use ssl_lang::check::recipe::{Augment, Data, Normalize, Recipe};
use ssl_lang::data::augment::augment;
use ssl_lang::data::{self, cifar, Dataset, Shape};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ssl-lang-sources-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn code(e: data::DataError) -> ssl_lang::error::Error {
    ssl_lang::error::Error::from(e)
}

/// The value written at channel `c`, row `y`, column `x` of image `i`: different across all four.
fn pixel(i: usize, c: usize, y: usize, x: usize) -> u8 {
    ((i * 31 + c * 97 + y * 7 + x * 3) % 256) as u8
}

/// `n` 3×`side`×`side` images of [`pixel`], from image number `first`, row-major planes.
fn images(first: usize, n: usize, side: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + n {
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    out.push(pixel(i, c, y, x));
                }
            }
        }
    }
    out
}

fn at(d: &[u8], shape: Shape, i: usize, c: usize, y: usize, x: usize) -> u8 {
    d[i * shape.pixels() + (c * shape.height + y) * shape.width + x]
}

/// A CIFAR-10 directory: 5 training batches of `per_batch` images and a test batch of `test` images.
fn write_cifar10(dir: &Path, per_batch: usize, test: usize) {
    fs::create_dir_all(dir).unwrap();
    for b in 0..5 {
        let labels: Vec<u8> = (0..per_batch).map(|i| ((b * per_batch + i) % 10) as u8).collect();
        let x = images(b * per_batch, per_batch, 32);
        cifar::write_records(&dir.join(format!("data_batch_{}.bin", b + 1)), &cifar::CIFAR10, &x, &labels).unwrap();
    }
    let labels: Vec<u8> = (0..test).map(|i| (i % 10) as u8).collect();
    cifar::write_records(&dir.join("test_batch.bin"), &cifar::CIFAR10, &images(1000, test, 32), &labels).unwrap();
}

#[test]
fn cifar10_records_round_trip_from_the_archive_folder() {
    let root = temp_dir("cifar10");
    write_cifar10(&root.join("cifar-10-batches-bin"), 3, 4);
    let d = data::load(&Data::Cifar10(root.display().to_string()), None).unwrap();
    assert_eq!((d.shape, d.train_len(), d.test_len(), d.classes), (Shape::new(3, 32, 32), 15, 4, 10));
    for (i, c, y, x) in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7), (7, 2, 1, 30)] {
        assert_eq!(at(&d.train_images, d.shape, i, c, y, x), pixel(i, c, y, x), "train ({i}, {c}, {y}, {x})");
    }
    assert_eq!(at(&d.test_images, d.shape, 3, 2, 17, 9), pixel(1003, 2, 17, 9));
    assert_eq!(d.train_labels.as_deref().unwrap(), (0..15).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    assert_eq!(d.class_names.as_ref().unwrap()[0], "airplane");
    assert_eq!(d.norm.mean, vec![0.4914, 0.4822, 0.4465]);
    // The files directly in the directory load the same.
    let flat = data::load(&Data::Cifar10(root.join("cifar-10-batches-bin").display().to_string()), None).unwrap();
    assert_eq!(flat.train_images, d.train_images);
    assert_eq!(flat.fingerprint(), d.fingerprint());
    // `--data DIR` replaces the recipe's directory.
    let over = data::load(&Data::Cifar10("/nonexistent".into()), Some(&root)).unwrap();
    assert_eq!(over.source, data::Source::Override(root.clone()));
    assert!(over.describe().starts_with("CIFAR-10 from --data"), "{}", over.describe());
}

#[test]
fn cifar100_uses_the_fine_label() {
    let root = temp_dir("cifar100");
    let dir = root.join("cifar-100-binary");
    fs::create_dir_all(&dir).unwrap();
    // Records written by hand: coarse label byte, fine label byte, 3072 pixels.
    let mut bytes = Vec::new();
    for (i, (coarse, fine)) in [(3u8, 99u8), (19, 0), (0, 42)].into_iter().enumerate() {
        bytes.extend_from_slice(&[coarse, fine]);
        bytes.extend_from_slice(&images(i, 1, 32));
    }
    fs::write(dir.join("train.bin"), &bytes).unwrap();
    fs::write(dir.join("test.bin"), &bytes[..2 * (2 + 3072)]).unwrap();
    fs::write(dir.join("fine_label_names.txt"), (0..100).map(|i| format!("class{i}\n")).collect::<String>()).unwrap();
    let d = data::load(&Data::Cifar100(root.display().to_string()), None).unwrap();
    assert_eq!((d.classes, d.train_len(), d.test_len()), (100, 3, 2));
    assert_eq!(d.train_labels.as_deref().unwrap(), [99, 0, 42]);
    assert_eq!(d.test_labels.as_deref().unwrap(), [99, 0]);
    assert_eq!(at(&d.train_images, d.shape, 2, 1, 30, 2), pixel(2, 1, 30, 2));
    assert_eq!(d.class_names.as_ref().unwrap()[99], "class99");
}

#[test]
fn truncated_or_mislabelled_cifar_files_are_coded_and_named() {
    let root = temp_dir("cifar-bad");
    write_cifar10(&root, 2, 2);
    let batch = root.join("data_batch_3.bin");
    let bytes = fs::read(&batch).unwrap();
    fs::write(&batch, &bytes[..bytes.len() - 100]).unwrap();
    let e = code(data::load(&Data::Cifar10(root.display().to_string()), None).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::records");
    assert!(e.message.contains("data_batch_3.bin") && e.message.contains("3073-byte records"), "{}", e.message);

    let mut bad = bytes.clone();
    bad[3073] = 10; // the second record's label: CIFAR-10 has classes 0..=9
    fs::write(&batch, &bad).unwrap();
    let e = code(data::load(&Data::Cifar10(root.display().to_string()), None).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::label");
    assert!(e.message.contains("data_batch_3.bin") && e.message.contains("label 10 at index 1"), "{}", e.message);

    fs::remove_file(&batch).unwrap();
    let e = code(data::load(&Data::Cifar10(root.display().to_string()), None).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::missing");
    assert!(e.help.as_deref().unwrap().contains("cifar-10-binary.tar.gz"), "{e:?}");
}

/// STL-10's layout: each channel plane stored column-major, `stored[c][x * 96 + y]` = pixel (c, y, x).
fn stl_bytes(first: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + n {
        for c in 0..3 {
            for x in 0..96 {
                for y in 0..96 {
                    out.push(pixel(i, c, y, x));
                }
            }
        }
    }
    out
}

#[test]
fn stl10_is_transposed_to_row_major_and_trains_on_the_unlabelled_split() {
    let root = temp_dir("stl10");
    let dir = root.join("stl10_binary");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("train_X.bin"), stl_bytes(0, 2)).unwrap();
    fs::write(dir.join("train_y.bin"), [1u8, 10]).unwrap();
    fs::write(dir.join("test_X.bin"), stl_bytes(10, 1)).unwrap();
    fs::write(dir.join("test_y.bin"), [4u8]).unwrap();
    let d = data::load(&Data::Stl10(root.display().to_string()), None).unwrap();
    assert_eq!((d.shape, d.train_len(), d.test_len()), (Shape::new(3, 96, 96), 2, 1));
    // pixel() is asymmetric in (y, x): a missing or doubled transposition fails here.
    assert_ne!(pixel(1, 2, 3, 80), pixel(1, 2, 80, 3));
    for (i, c, y, x) in [(0, 0, 0, 1), (1, 2, 3, 80), (1, 1, 95, 0)] {
        assert_eq!(at(&d.train_images, d.shape, i, c, y, x), pixel(i, c, y, x), "({i}, {c}, {y}, {x})");
    }
    assert_eq!(at(&d.test_images, d.shape, 0, 1, 40, 2), pixel(10, 1, 40, 2));
    assert_eq!((d.train_labels.as_deref(), d.test_labels.as_deref()), (Some(&[0u8, 9][..]), Some(&[3u8][..])));
    assert!(d.bank.is_none());

    fs::write(dir.join("unlabeled_X.bin"), stl_bytes(20, 3)).unwrap();
    let d = data::load(&Data::Stl10(dir.display().to_string()), None).unwrap();
    assert_eq!((d.train_len(), d.train_labels.is_none()), (3, true));
    assert_eq!(at(&d.train_images, d.shape, 2, 0, 9, 90), pixel(22, 0, 9, 90));
    let splits = d.eval_splits().unwrap();
    assert_eq!((splits.bank.len() / d.shape.pixels(), splits.bank_labels), (2, &[0u8, 9][..]));

    fs::write(dir.join("test_y.bin"), [0u8]).unwrap();
    let e = code(data::load(&Data::Stl10(dir.display().to_string()), None).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::label");
    assert!(e.message.contains("test_y.bin") && e.message.contains("1..=10"), "{}", e.message);
    fs::write(dir.join("test_X.bin"), &stl_bytes(10, 1)[..1000]).unwrap();
    let e = code(data::load(&Data::Stl10(dir.display().to_string()), None).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::records");
    assert!(e.message.contains("test_X.bin"), "{}", e.message);
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

fn save_grey(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

fn folder(dir: &Path, size: usize, skip_bad: bool) -> Result<Dataset, data::DataError> {
    data::load(&Data::ImageFolder { dir: dir.display().to_string(), size, skip_bad }, None)
}

#[test]
fn image_folder_labels_come_from_sorted_class_folders() {
    let root = temp_dir("folder-classes");
    for class in ["zebra", "ant"] {
        fs::create_dir_all(root.join(class)).unwrap();
    }
    // "ant" (label 0): ten 8×8 colour PNGs, the tenth held out; "zebra" (label 1): one 16×8 JPEG.
    for i in 0..10u32 {
        save_rgb(&root.join(format!("ant/{i:02}.png")), 8, 8, |x, y| [(x * 30) as u8, (y * 30) as u8, i as u8]);
    }
    save_rgb(&root.join("zebra/a.jpg"), 16, 8, |_, _| [200, 100, 50]);
    fs::write(root.join("notes.txt"), "ignored").unwrap();
    let d = folder(&root, 8, false).unwrap();
    assert_eq!((d.shape, d.classes), (Shape::new(3, 8, 8), 2));
    assert_eq!(d.class_names.as_deref().unwrap(), ["ant", "zebra"]);
    assert_eq!((d.train_len(), d.test_len()), (10, 1));
    assert_eq!(d.train_labels.as_deref().unwrap(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(d.test_labels.as_deref().unwrap(), [0]);
    // An 8×8 PNG is already its size: the pixels are exact, planes R, G, B.
    assert_eq!(at(&d.train_images, d.shape, 3, 0, 2, 5), 150);
    assert_eq!(at(&d.train_images, d.shape, 3, 1, 2, 5), 60);
    assert_eq!(at(&d.train_images, d.shape, 3, 2, 2, 5), 3);
    assert_eq!(at(&d.test_images, d.shape, 0, 2, 0, 0), 9, "the tenth ant is the test image");
    // The normalisation is the training images' own: blue is 0..=8 in the nine ants, about 50 in the zebra.
    assert!((d.norm.mean[2] - (36.0 + 50.0) / 10.0 / 255.0).abs() < 0.005, "{:?}", d.norm);
    assert!(d.eval_splits().is_ok());

    // A grayscale image among colour ones becomes three equal planes.
    save_grey(&root.join("zebra/grey.png"), 8, 8, |x, _| (x * 10) as u8);
    let d = folder(&root, 8, false).unwrap();
    assert_eq!(d.shape.channels, 3);
    let grey = 10; // "ant" has 10 images (one held out), zebra: a.jpg, grey.png
    for c in 0..3 {
        assert_eq!(at(&d.train_images, d.shape, grey, c, 4, 6), 60);
    }
}

#[test]
fn image_folder_resizes_the_shorter_side_and_centre_crops() {
    let root = temp_dir("folder-resize");
    // 12 wide, 4 high: the shorter side is already 4, so no resampling, and the crop keeps columns 4..8.
    save_grey(&root.join("wide.png"), 12, 4, |x, y| (x * 20 + y) as u8);
    // 8×8 down to 4×4: a 2×2 box average of a constant stays constant.
    save_grey(&root.join("square.png"), 8, 8, |_, _| 77);
    let d = folder(&root, 4, false).unwrap();
    assert_eq!(d.shape, Shape::new(1, 4, 4), "all grayscale: one channel");
    assert!(d.train_labels.is_none() && d.test_labels.is_none() && d.class_names.is_none());
    let wide = 1; // sorted: square.png, wide.png
    for (y, x) in [(0, 0), (3, 3), (2, 1)] {
        assert_eq!(at(&d.train_images, d.shape, wide, 0, y, x), ((x + 4) * 20 + y) as u8);
    }
    assert!(d.train_images[..16].iter().all(|&p| p == 77));
}

#[test]
fn a_flat_folder_trains_but_evaluation_needs_labels() {
    let root = temp_dir("folder-flat");
    for i in 0..3u32 {
        save_rgb(&root.join(format!("{i}.png")), 8, 8, |x, _| [x as u8, 0, i as u8]);
    }
    let d = folder(&root, 8, false).unwrap();
    assert_eq!((d.train_len(), d.test_len(), d.classes), (3, 0, 0));
    let e = code(d.eval_splits().unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::unlabelled");
    assert!(e.help.as_deref().unwrap().contains("sub-folder per class"), "{e:?}");
    let e = ssl_lang::error::Error::from(ssl_lang::eval::raw_pixel_knn(&d, 1, 0.1).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::unlabelled");
}

#[test]
fn a_corrupt_image_is_named_or_skipped_and_counted() {
    let root = temp_dir("folder-corrupt");
    for i in 0..2u32 {
        save_rgb(&root.join(format!("{i}.png")), 8, 8, |_, _| [i as u8, 1, 2]);
    }
    let good = fs::read(root.join("0.png")).unwrap();
    fs::write(root.join("broken.png"), &good[..good.len() / 2]).unwrap();
    fs::write(root.join("junk.jpg"), b"not a jpeg").unwrap();
    let e = code(folder(&root, 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::decode");
    assert!(e.message.contains("broken.png"), "the first bad file in name order is named: {}", e.message);
    let d = folder(&root, 8, true).unwrap();
    assert_eq!((d.train_len(), d.skipped), (2, 2));
    assert!(d.describe().contains("2 unreadable files skipped"), "{}", d.describe());
}

#[test]
fn folder_layouts_that_are_not_data_sets_are_coded() {
    let root = temp_dir("folder-layout");
    let e = code(folder(&root, 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::layout");
    assert!(e.message.contains("no PNG or JPEG"), "{}", e.message);

    fs::create_dir_all(root.join("cat")).unwrap();
    save_rgb(&root.join("cat/a.png"), 8, 8, |_, _| [1, 2, 3]);
    save_rgb(&root.join("loose.png"), 8, 8, |_, _| [1, 2, 3]);
    let e = code(folder(&root, 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::layout");
    assert!(e.message.contains("loose.png"), "{}", e.message);

    fs::remove_file(root.join("loose.png")).unwrap();
    fs::create_dir_all(root.join("dog")).unwrap();
    let e = code(folder(&root, 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::layout");
    assert!(e.message.contains("dog") && e.message.contains("without PNG or JPEG"), "{}", e.message);

    let e = code(folder(&root.join("absent"), 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::missing");
}

#[test]
fn train_and_val_folders_are_the_two_splits() {
    let root = temp_dir("folder-split");
    for (split, class, n) in [("train", "b", 2), ("train", "a", 1), ("val", "b", 1)] {
        fs::create_dir_all(root.join(split).join(class)).unwrap();
        for i in 0..n {
            save_grey(&root.join(format!("{split}/{class}/{i}.png")), 8, 8, |_, _| 9);
        }
    }
    let d = folder(&root, 8, false).unwrap();
    assert_eq!((d.train_len(), d.test_len()), (3, 1));
    assert_eq!(d.train_labels.as_deref().unwrap(), [0, 1, 1]);
    assert_eq!(d.test_labels.as_deref().unwrap(), [1], "`b` is label 1 in both splits");

    fs::create_dir_all(root.join("val/c")).unwrap();
    save_grey(&root.join("val/c/0.png"), 8, 8, |_, _| 9);
    let e = code(folder(&root, 8, false).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::layout");
}

#[test]
fn normalisation_is_per_channel_and_overridable() {
    let root = temp_dir("norm");
    write_cifar10(&root, 2, 2);
    let mut d = data::load(&Data::Cifar10(root.display().to_string()), None).unwrap();
    let t = d.test_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 3, 32, 32]);
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let expect = |c: usize, y: usize, x: usize, mean: f32, std: f32| (pixel(1001, c, y, x) as f32 / 255.0 - mean) / std;
    let i = 3 * 1024 + 2 * 1024 + 5 * 32 + 6; // image 1, channel 2, (5, 6)
    assert!((v[i] - expect(2, 5, 6, 0.4465, 0.2616)).abs() < 1e-5);

    d.set_normalize(&Normalize::MeanStd { mean: vec![0.5; 3], std: vec![0.25; 3] }).unwrap();
    let v: Vec<f32> = d.test_tensor(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!((v[i] - expect(2, 5, 6, 0.5, 0.25)).abs() < 1e-5);
    d.set_normalize(&Normalize::None).unwrap();
    assert!(d.norm.is_identity());
    let e = code(d.set_normalize(&Normalize::MeanStd { mean: vec![0.5], std: vec![0.25] }).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::norm");
    assert!(e.message.contains("3 channels"), "{}", e.message);
}

#[test]
fn colour_augmentation_treats_each_channel_alike() {
    let shape = Shape::new(3, 8, 8);
    let img = images(0, 1, 8);
    let flipped = augment(&img, shape, &[Augment::Hflip { p: 1.0 }], &mut StdRng::seed_from_u64(0)).unwrap();
    assert_eq!((flipped.channels, flipped.side, flipped.global.len()), (3, 8, 192));
    for (c, y, x) in [(0, 0, 0), (1, 3, 2), (2, 7, 7)] {
        assert_eq!(flipped.global[(c * 8 + y) * 8 + x], pixel(0, c, y, 7 - x) as f32 / 255.0);
    }
    // Constant planes of different values stay constant and distinct through crop, flip, blur and multicrop.
    let planes: Vec<u8> = (0..3).flat_map(|c| vec![40 + 80 * c as u8; 64]).collect();
    let ops = [
        Augment::Crop { scale: [0.2, 0.6], ratio: [0.75, 1.33] },
        Augment::Hflip { p: 0.5 },
        Augment::Blur { sigma: [1.0, 1.0], p: 1.0 },
        Augment::Multicrop { local: 1, scale: [0.1, 0.4], size: 4 },
    ];
    let v = augment(&planes, shape, &ops, &mut StdRng::seed_from_u64(3)).unwrap();
    for (buf, plane) in [(&v.global, 64), (&v.locals[0], 16)] {
        for (c, p) in buf.chunks_exact(plane).enumerate() {
            let want = (40 + 80 * c) as f32 / 255.0;
            assert!(p.iter().all(|x| (x - want).abs() < 1e-6), "channel {c}");
        }
    }
    // CutMix pastes the same box through every channel.
    let two: Vec<u8> = [planes.clone(), vec![250; 192]].concat();
    let v = augment(&two, shape, &[Augment::Cutmix { alpha: 1.0, p: 1.0 }], &mut StdRng::seed_from_u64(1)).unwrap();
    let cut = v.cutmix.unwrap();
    let [top, left, h, w] = cut.bbox;
    if h * w > 0 && cut.perm[0] == 1 {
        for c in 0..3 {
            assert_eq!(v.global[(c * 8 + top) * 8 + left], 250.0 / 255.0, "channel {c} has the partner's box");
        }
    }
    let pasted = (0..3).map(|c| v.global[c * 64..(c + 1) * 64].iter().filter(|&&x| x == 250.0 / 255.0).count());
    let counts: Vec<usize> = pasted.collect();
    assert!(counts.iter().all(|&n| n == counts[0]), "{counts:?}");
    // Normalisation after augmentation, per channel.
    let mut n = flipped.clone();
    n.normalise(&data::Norm { mean: vec![0.0, 0.5, 1.0], std: vec![1.0, 0.5, 2.0] });
    assert!((n.global[64 + 9] - (flipped.global[64 + 9] - 0.5) / 0.5).abs() < 1e-6);
    assert!((n.global[128] - (flipped.global[128] - 1.0) / 2.0).abs() < 1e-6);
    // Non-square images are refused, not misread.
    let e = code(augment(&[0u8; 24], Shape::new(3, 2, 4), &[], &mut StdRng::seed_from_u64(0)).unwrap_err());
    assert_eq!(e.code.as_str(), "ssl::data::shape");
}

/// Two steps of resnet_mini on a generated CIFAR-format set (3 channels, 32×32), then `eval --knn` on its
/// checkpoint; and a flat image folder trains with kNN off and `eval` refuses it for want of labels.
#[test]
fn a_cifar_format_set_trains_and_evaluates_end_to_end() {
    let root = temp_dir("e2e");
    let cifar = root.join("cifar");
    write_cifar10(&cifar, 8, 16);
    let objective = format!("{}/objectives/moco.ssl", env!("CARGO_MANIFEST_DIR"));
    let runs = root.join("runs");
    let train = |name: &str, data: &str, extra: &[&str]| {
        let mut args = vec!["train", objective.as_str(), "--runs", runs.to_str().unwrap(), "--name", name];
        args.extend_from_slice(&[
            "--set",
            data,
            "--set",
            "batch=8",
            "--set",
            "encoder=resnet_mini(widths = [8, 16])",
            "--set",
            "projector=mlp(hidden = 32, out = 16)",
            "--set",
            "epochs=1",
            "--set",
            "eval=knn(k = 5)",
            "--max-steps",
            "2",
        ]);
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(&args).output().unwrap()
    };
    let out = train("cifar", &format!("data=cifar10({:?})", cifar.display().to_string()), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("CIFAR-10 from the recipe's directory"), "{stdout}");
    let metrics = fs::read_to_string(runs.join("cifar/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<f64> = records.iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64().unwrap()).collect();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|l| l.is_finite()));
    let knn = records.iter().rfind(|r| r["kind"] == "eval").unwrap()["knn_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&knn));
    let eval = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["eval", runs.join("cifar").to_str().unwrap(), "--knn"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&eval.stdout);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    assert!(report.contains(&format!("kNN top-1 {:.2} %", knn * 100.0)), "{report}");

    let flat = root.join("flat");
    fs::create_dir_all(&flat).unwrap();
    for i in 0..8u32 {
        save_rgb(&flat.join(format!("{i}.png")), 12, 12, |x, y| [(x * 20) as u8, (y * 20) as u8, (i * 30) as u8]);
    }
    let out = train("flat", &format!("data=image_folder({:?}, size = 8)", flat.display().to_string()), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("kNN evaluation is off"), "{stdout}");
    let eval = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["eval", runs.join("flat").to_str().unwrap(), "--knn", "--format", "json"])
        .output()
        .unwrap();
    assert!(!eval.status.success());
    assert!(String::from_utf8_lossy(&eval.stderr).contains("ssl::data::unlabelled"));
}

#[test]
fn mnist_reads_the_same_idx_files_under_its_own_name() {
    let root = temp_dir("mnist");
    let images: Vec<u8> = (0..2 * data::idx::PIXELS).map(|i| (i % 256) as u8).collect();
    for prefix in ["train", "t10k"] {
        data::idx::write_images(&root.join(format!("{prefix}-images-idx3-ubyte")), &images, false).unwrap();
        data::idx::write_labels(&root.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[3, 7], true).unwrap();
    }
    let d = data::load(&Data::Mnist(root.display().to_string()), None).unwrap();
    assert_eq!((d.name.as_str(), d.shape, d.classes), ("MNIST", data::idx::SHAPE, 10));
    assert_eq!(d.class_names.as_ref().unwrap()[7], "7");
    assert!(d.norm.is_identity(), "IDX data keeps pixels in [0, 1]");
    assert!(d.describe().starts_with("MNIST from the recipe's directory"), "{}", d.describe());
    let fashion = data::load(&Data::FashionMnistDir(root.display().to_string()), None).unwrap();
    assert_eq!((&fashion.train_images, fashion.fingerprint()), (&d.train_images, d.fingerprint()));
    assert_eq!(fashion.class_names.as_ref().unwrap()[9], "Ankle boot");
}

/// The hue of an RGB triple as a fraction of a turn (None for a grey), written independently of the kernel.
fn hue_of(r: f32, g: f32, b: f32) -> Option<f64> {
    let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max - min < 1e-6 {
        return None;
    }
    // atan2 form of the hue angle: the hexagonal hue agrees with it at the six primaries and secondaries only, so
    // the test uses exactly those colours.
    let h = (3f64.sqrt() * (g - b)).atan2(2.0 * r - g - b) / std::f64::consts::TAU;
    Some(h.rem_euclid(1.0))
}

#[test]
fn colour_jitter_grayscale_solarize_and_blur_ranges() {
    let shape = Shape::new(3, 4, 4);
    let planes = |f: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
        (0..3).flat_map(|c| (0..16).map(move |i| (c, i))).map(|(c, i)| f(c, i)).collect()
    };
    let colourful = planes(&|c, i| 0.1 + 0.05 * ((c * 7 + i * 3) % 17) as f32);
    let jitter =
        |saturation: f64, hue: f64| Augment::Jitter { brightness: 0.0, contrast: 0.0, p: 1.0, saturation, hue };
    let luma = |img: &[f32], i: usize| 0.299 * img[i] + 0.587 * img[16 + i] + 0.114 * img[32 + i];

    // Grayscale: every channel is the ITU-R 601 luma; a one-channel image is left alone.
    let g = augment(&colourful, shape, &[Augment::Grayscale { p: 1.0 }], &mut StdRng::seed_from_u64(0)).unwrap();
    for i in 0..16 {
        let want = luma(&colourful, i);
        assert!((0..3).all(|c| (g.global[c * 16 + i] - want).abs() < 1e-6), "pixel {i}");
    }
    let grey: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    let one = Shape::new(1, 4, 4);
    for op in [Augment::Grayscale { p: 1.0 }, jitter(0.8, 0.5)] {
        let v = augment(&grey, one, std::slice::from_ref(&op), &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(v.global, grey, "{op:?} must not change a one-channel image");
    }

    // Solarize inverts exactly the values at or above the threshold.
    let s = augment(&grey, one, &[Augment::Solarize { p: 1.0, threshold: 0.5 }], &mut StdRng::seed_from_u64(2))
        .unwrap()
        .global;
    for (x, y) in grey.iter().zip(&s) {
        assert_eq!(*y, if *x >= 0.5 { 1.0 - x } else { *x });
    }

    // Saturation blends with the grayscale by one factor in [0, 2] for the whole image: luma is kept, every
    // channel's distance from it scales alike (where no channel of the pixel was clamped to [0, 1]).
    for seed in 0..5 {
        let v = augment(&colourful, shape, &[jitter(1.0, 0.0)], &mut StdRng::seed_from_u64(seed)).unwrap().global;
        let unclamped = |i: usize| (0..3).all(|c| v[16 * c + i] > 0.0 && v[16 * c + i] < 1.0);
        let factors: Vec<f32> = (0..48)
            .filter(|&k| unclamped(k % 16) && (colourful[k] - luma(&colourful, k % 16)).abs() > 0.02)
            .map(|k| (v[k] - luma(&colourful, k % 16)) / (colourful[k] - luma(&colourful, k % 16)))
            .collect();
        assert!(factors.len() > 24, "most pixels unclamped: {factors:?}");
        assert!(factors.iter().all(|f| (f - factors[0]).abs() < 1e-3 && (0.0..=2.0).contains(f)), "{factors:?}");
        assert!((0..16).filter(|&i| unclamped(i)).all(|i| (luma(&v, i) - luma(&colourful, i)).abs() < 1e-5));
    }

    // Hue rotates every colour by one shift within [−h, h], keeping each pixel's max and min: on the primaries and
    // secondaries (red, yellow, green, cyan, blue, magenta at half strength over 0.2) the shift is measurable.
    let wheel = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]];
    let hex = planes(&|c, i| 0.2 + 0.5 * wheel[i % 6][c] as f32);
    let mut shifts_seen = Vec::new();
    for seed in 0..20 {
        let v = augment(&hex, shape, &[jitter(0.0, 1.0 / 6.0)], &mut StdRng::seed_from_u64(seed)).unwrap().global;
        let mut shifts = Vec::new();
        for i in 0..16 {
            let (a, b) = ([hex[i], hex[16 + i], hex[32 + i]], [v[i], v[16 + i], v[32 + i]]);
            let range =
                |p: [f32; 3]| (p.iter().copied().fold(f32::MIN, f32::max), p.iter().copied().fold(f32::MAX, f32::min));
            let ((amax, amin), (bmax, bmin)) = (range(a), range(b));
            assert!((amax - bmax).abs() < 1e-6 && (amin - bmin).abs() < 1e-6, "value and chroma kept");
            // Hexagonal and circular hue agree where the shift lands on a primary or secondary; compare at the
            // shift only through the sector structure: the rotated sextant colours stay a rotation of each other.
            if let (Some(ha), Some(hb)) = (hue_of(a[0], a[1], a[2]), hue_of(b[0], b[1], b[2])) {
                shifts.push(((hb - ha + 0.5).rem_euclid(1.0)) - 0.5);
            }
        }
        // Circular hue of a hexagonally rotated colour is within 0.02 turn of the hexagonal shift, one shift for all.
        assert!(shifts.iter().all(|s| (s - shifts[0]).abs() < 0.04 && s.abs() <= 1.0 / 6.0 + 0.02), "{shifts:?}");
        shifts_seen.push(shifts[0]);
    }
    assert!(shifts_seen.iter().any(|s| *s > 0.05) && shifts_seen.iter().any(|s| *s < -0.05), "{shifts_seen:?}");

    // Blur with a σ range: each image draws its own σ, between the narrowest and the widest blur of the range.
    let side = 16;
    let mut dots = vec![0u8; 8 * side * side];
    for img in dots.chunks_exact_mut(side * side) {
        img[8 * side + 8] = 255;
    }
    let centre = |sigma: [f64; 2]| -> Vec<f32> {
        let ops = [Augment::Blur { sigma, p: 1.0 }];
        let v = augment(&dots, Shape::new(1, side, side), &ops, &mut StdRng::seed_from_u64(4)).unwrap();
        v.global.chunks_exact(side * side).map(|img| img[8 * side + 8]).collect()
    };
    let (sharp, wide, drawn) = (centre([0.5, 0.5]), centre([2.0, 2.0]), centre([0.5, 2.0]));
    assert!(drawn.iter().all(|c| *c <= sharp[0] + 1e-6 && *c >= wide[0] - 1e-6), "{drawn:?}");
    assert!(drawn.iter().any(|c| (c - drawn[0]).abs() > 1e-3), "one σ per image: {drawn:?}");
}

/// `augment2` gives the second view its own list (with the first list's CutMix; local crops stay the first view's),
/// `explain` shows both, and batch-level augmentations in `augment2` are a coded error at the item.
#[test]
fn asymmetric_views_take_augment2() {
    let source = "objective o { positive = -t2 negative = sum(v for v in targets) balance = 1.0 }\n\
        train o {\n\
          augment = [crop, blur(sigma = [0.1, 2.0], p = 1.0), cutmix(p = 0.3), multicrop(local = 2)]\n\
          augment2 = [crop, blur(sigma = [0.1, 2.0], p = 0.1), solarize(p = 0.2), \
                      jitter(brightness = 0.4, saturation = 0.2, hue = 0.1), grayscale(0.2)]\n\
        }\n";
    let (program, diagnostics) = ssl_lang::compile(source);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let r = &program.recipe;
    assert_eq!(r.view_augment(0), r.augment);
    let second = r.view_augment(1);
    assert_eq!(second.len(), 6);
    assert!(matches!(second[2], Augment::Solarize { p, threshold } if p == 0.2 && threshold == 0.5));
    assert!(matches!(second[3], Augment::Jitter { saturation, hue, .. } if saturation == 0.2 && hue == 0.1));
    assert!(matches!(second[5], Augment::Cutmix { p, .. } if p == 0.3));
    assert!(!second.iter().any(|a| matches!(a, Augment::Multicrop { .. })));
    let shown = r.to_string();
    assert!(shown.contains("augment2   = [crop(scale = [0.3, 1], ratio = [0.75, 1.3333333333333333]), blur(sigma = [0.1, 2], p = 0.1), solarize(p = 0.2, threshold = 0.5), jitter(brightness = 0.4, contrast = 0.4, saturation = 0.2, hue = 0.1, p = 0.8), grayscale(0.2)]"), "{shown}");
    // Without augment2 both views get the per-image list, and only the first its local crops.
    let plain = Recipe { augment2: None, ..r.clone() };
    assert_eq!(plain.view_augment(1).len(), 3);
    let bad = source.replace("grayscale(0.2)]", "grayscale(0.2), multicrop(local = 1)]");
    let (_, diagnostics) = ssl_lang::compile(&bad);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].code.as_str(), "ssl::recipe::value");
    assert!(diagnostics[0].message.contains("on the pair"), "{}", diagnostics[0].message);
    let hue = source.replace("hue = 0.1", "hue = 0.7");
    assert_eq!(ssl_lang::compile(&hue).1[0].code.as_str(), "ssl::recipe::value");
}
