//! A folder of PNG and JPEG images as a data set (`image_folder("DIR", size = 32, skip_bad = false)`).
//!
//! Layouts, tried in order:
//! - `DIR/train/CLASS/…` with `DIR/val/CLASS/…` (or `DIR/test/CLASS/…`): the two splits, labels from the sorted
//!   class folder names of `train/`;
//! - `DIR/CLASS/…`: one sub-folder per class (labels = sorted folder names, images found at any depth below each);
//!   every tenth image of each class, in file-name order, is held out as the test split;
//! - `DIR/*.png|jpg|jpeg`: a flat folder, no labels — training works, evaluation says it needs labels.
//!
//! Files with other extensions (and hidden files and folders) are ignored. Each image is decoded (in parallel),
//! resized so its shorter side is `size` (bilinear) and centre-cropped to `size`×`size`. The data set has 3
//! channels if any image is in colour (grayscale images then repeat their one channel), else 1. Its normalisation
//! is the per-channel mean and std of the training images. An unreadable file is `ssl::data::decode` naming it,
//! unless `skip_bad`, which skips and counts it.

use super::{DataError, Dataset, Norm, Shape, Source};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Every `HOLD_OUT`-th image of a class (in file-name order) is a test image, where the folder has no split.
pub const HOLD_OUT: usize = 10;
/// Most classes a folder may have: labels are one byte.
const MAX_CLASSES: usize = 256;
const HOW: &str = "write `data = image_folder(\"DIR\")` (or pass `--data DIR`) for an existing folder of PNG or JPEG \
     images: one sub-folder per class, or the images directly in it";

/// Whether `path` names an image this source reads (by extension, any case).
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// The visible entries of `dir`, sorted: (sub-folders, image files).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let read = |e: std::io::Error| DataError::Read { path: dir.display().to_string(), reason: e.to_string() };
    let mut dirs = Vec::new();
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if hidden(&path) {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else if is_image(&path) {
            images.push(path);
        }
    }
    dirs.sort();
    images.sort();
    Ok((dirs, images))
}

/// Every image below `dir`, at any depth, sorted by path.
fn images_below(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let (dirs, mut images) = entries(dir)?;
    for d in dirs {
        images.extend(images_below(&d)?);
    }
    images.sort();
    Ok(images)
}

fn layout(dir: &Path, detail: String, help: &str) -> DataError {
    DataError::Layout { path: dir.display().to_string(), detail, help: help.into() }
}

fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The class folders of `dir` (sorted) and the images of each, or a coded error for loose images beside them, an
/// empty class, or more classes than labels can hold.
fn classes(dir: &Path, folders: Vec<PathBuf>, loose: &[PathBuf]) -> Result<Vec<(String, Vec<PathBuf>)>, DataError> {
    if let Some(first) = loose.first() {
        return Err(layout(
            dir,
            format!("has class sub-folders and also {} loose image(s), e.g. `{}`", loose.len(), name_of(first)),
            "move each image into its class folder, or remove the sub-folders for an unlabelled flat folder",
        ));
    }
    if folders.len() > MAX_CLASSES {
        return Err(layout(
            dir,
            format!("has {} class folders; at most {MAX_CLASSES} classes are supported", folders.len()),
            "merge classes, or use a subset of them",
        ));
    }
    let mut out = Vec::with_capacity(folders.len());
    for f in folders {
        let images = images_below(&f)?;
        if images.is_empty() {
            return Err(layout(
                &f,
                "is a class folder without PNG or JPEG images".into(),
                "add images to it or remove it: every sub-folder is a class",
            ));
        }
        out.push((name_of(&f), images));
    }
    Ok(out)
}

/// A file to decode, with its split and label.
struct Item {
    path: PathBuf,
    test: bool,
    label: Option<u8>,
}

/// One decoded image: `[3, size, size]` bytes and whether it had colour.
struct Decoded {
    rgb: Vec<u8>,
    colour: bool,
}

/// Decodes `path` (format from its content), resizes its shorter side to `size` and centre-crops `size`×`size`.
fn decode(path: &Path, size: usize) -> Result<Decoded, DataError> {
    let bad = |reason: String| DataError::Decode { path: path.display().to_string(), reason };
    let img = image::ImageReader::open(path)
        .map_err(|e| bad(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map_err(|e| bad(e.to_string()))?;
    let colour = img.color().has_color();
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(bad("the image has no pixels".into()));
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * scale).round() as usize).max(size), ((h as f64 * scale).round() as usize).max(size));
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw as u32, nh as u32, FilterType::Triangle)
    };
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let raw = resized.as_raw();
    let mut planes = vec![0u8; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let src = ((y0 + y) * nw + x0 + x) * 3;
            for c in 0..3 {
                planes[(c * size + y) * size + x] = raw[src + c];
            }
        }
    }
    Ok(Decoded { rgb: planes, colour })
}

/// The files of the folder at `root` with their splits and labels, and the class names (none when flat).
fn plan(root: &Path) -> Result<(Vec<Item>, Option<Vec<String>>), DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing { path: root.display().to_string(), how: HOW });
    }
    let (folders, loose) = entries(root)?;
    let split = |name: &str| folders.iter().find(|f| name_of(f) == name).cloned();
    let item = |path: PathBuf, test: bool, label: Option<usize>| Item { path, test, label: label.map(|l| l as u8) };
    if let (Some(train), Some(test)) = (split("train"), split("val").or_else(|| split("test"))) {
        let (train_folders, train_loose) = entries(&train)?;
        let train_classes = classes(&train, train_folders, &train_loose)?;
        let names: Vec<String> = train_classes.iter().map(|(n, _)| n.clone()).collect();
        let (test_folders, test_loose) = entries(&test)?;
        let test_classes = classes(&test, test_folders, &test_loose)?;
        let mut items = Vec::new();
        for (label, (_, images)) in train_classes.into_iter().enumerate() {
            items.extend(images.into_iter().map(|p| item(p, false, Some(label))));
        }
        for (name, images) in test_classes {
            let Some(label) = names.iter().position(|n| *n == name) else {
                return Err(layout(
                    &test,
                    format!("has class folder `{name}`, which `{}` does not have", train.display()),
                    "give both splits the same class folders",
                ));
            };
            items.extend(images.into_iter().map(|p| item(p, true, Some(label))));
        }
        return Ok((items, Some(names)));
    }
    if folders.is_empty() {
        if loose.is_empty() {
            return Err(layout(root, "holds no PNG or JPEG images".into(), HOW));
        }
        return Ok((loose.into_iter().map(|p| item(p, false, None)).collect(), None));
    }
    let all = classes(root, folders, &loose)?;
    let names = all.iter().map(|(n, _)| n.clone()).collect();
    let mut items = Vec::new();
    for (label, (_, images)) in all.into_iter().enumerate() {
        items.extend(images.into_iter().enumerate().map(|(i, p)| item(p, i % HOLD_OUT == HOLD_OUT - 1, Some(label))));
    }
    Ok((items, Some(names)))
}

/// Loads the image folder at `source`'s directory, every image `size`×`size`; with `skip_bad`, unreadable files
/// are skipped and counted in `Dataset::skipped` instead of stopping the load.
pub fn load(source: Source, size: usize, skip_bad: bool) -> Result<Dataset, DataError> {
    let root = source.dir().to_path_buf();
    let (items, class_names) = plan(&root)?;
    let decoded: Vec<Result<Decoded, DataError>> = items.par_iter().map(|it| decode(&it.path, size)).collect();
    let mut kept = Vec::with_capacity(items.len());
    let mut skipped = 0;
    for (it, d) in items.iter().zip(decoded) {
        match d {
            Ok(d) => kept.push((it, d)),
            Err(_) if skip_bad => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    if kept.is_empty() {
        return Err(layout(&root, format!("has no readable image ({skipped} skipped as unreadable)"), HOW));
    }
    let channels = if kept.iter().any(|(_, d)| d.colour) { 3 } else { 1 };
    let shape = Shape::new(channels, size, size);
    let (mut train_images, mut test_images) = (Vec::new(), Vec::new());
    let (mut train_labels, mut test_labels) = (Vec::new(), Vec::new());
    for (it, d) in &kept {
        // A grayscale data set keeps one of the three equal planes.
        let pixels = &d.rgb[..shape.pixels()];
        let (images, labels) =
            if it.test { (&mut test_images, &mut test_labels) } else { (&mut train_images, &mut train_labels) };
        images.extend_from_slice(pixels);
        labels.extend(it.label);
    }
    let labelled = class_names.is_some();
    let norm = Norm::of_images(&train_images, shape);
    Ok(Dataset {
        name: "image folder".into(),
        shape,
        train_images,
        train_labels: labelled.then_some(train_labels),
        bank: None,
        test_images,
        test_labels: labelled.then_some(test_labels),
        classes: class_names.as_ref().map_or(0, Vec::len),
        class_names,
        norm,
        skipped,
        source,
    })
}
