//! The binary version of STL-10 (https://cs.stanford.edu/~acoates/stl10/): 96×96 colour images, `*_X.bin` files of
//! 27,648-byte records (R, G, B planes, each stored COLUMN-major, as the data set was written from MATLAB) and
//! `*_y.bin` files of one label byte per image, 1 to 10. Images are transposed to our row-major `[C, H, W]` on load
//! and labels shifted to 0..=9. Self-supervised training reads the 100,000 unlabelled images (`unlabeled_X.bin`)
//! when present, else the 5,000 labelled training images; evaluation always uses the labelled splits.

use super::{class_names_file, read_file, unpacked, DataError, Dataset, Labelled, Norm, Shape, Source};
use std::path::Path;

/// The shape of an STL-10 image: 3 channels of 96×96.
pub const SHAPE: Shape = Shape::new(3, 96, 96);
/// Classes.
const CLASSES: usize = 10;
/// The classes in label order (the archive's `class_names.txt`), for copies without that file.
const CLASS_NAMES: [&str; CLASSES] =
    ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"];
/// Per-channel mean of the training images, in [0, 1] (the widely used values).
const MEAN: [f32; 3] = [0.4467, 0.4398, 0.4066];
/// Per-channel standard deviation of the training images.
const STD: [f32; 3] = [0.2603, 0.2566, 0.2713];
const HOW: &str =
    "download the STL-10 binary version (stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/), \
     unpack it, and write `data = stl10(\"DIR\")` (or pass `--data DIR`) for the folder holding train_X.bin, \
     train_y.bin, test_X.bin, test_y.bin (and unlabeled_X.bin for self-supervised training), or the folder above \
     its stl10_binary/";

/// Reads an `*_X.bin` file: images `n × 27,648` bytes, transposed from column-major to row-major planes.
pub fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = read_file(path, HOW)?;
    let record = SHAPE.pixels();
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::Records { path: path.display().to_string(), len: bytes.len(), record });
    }
    let side = SHAPE.height;
    let mut column_major = vec![0u8; side * side];
    for plane in bytes.chunks_exact_mut(side * side) {
        column_major.copy_from_slice(plane);
        for (x, column) in column_major.chunks_exact(side).enumerate() {
            for (y, &v) in column.iter().enumerate() {
                plane[y * side + x] = v;
            }
        }
    }
    Ok(bytes)
}

/// Reads a `*_y.bin` file: labels 1..=10 shifted to 0..=9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_file(path, HOW)?;
    if let Some((index, &label)) = bytes.iter().enumerate().find(|(_, &l)| l == 0 || l as usize > CLASSES) {
        return Err(DataError::Label {
            path: path.display().to_string(),
            index,
            label,
            valid: format!("1..={CLASSES}"),
        });
    }
    Ok(bytes.iter().map(|l| l - 1).collect())
}

/// Reads an images file and its labels and checks that they hold the same number of samples.
fn read_labelled(dir: &Path, split: &str) -> Result<Labelled, DataError> {
    let (xp, yp) = (dir.join(format!("{split}_X.bin")), dir.join(format!("{split}_y.bin")));
    let images = read_images(&xp)?;
    let labels = read_labels(&yp)?;
    let n = images.len() / SHAPE.pixels();
    if n != labels.len() {
        return Err(DataError::Count {
            images: xp.display().to_string(),
            n_images: n,
            labels: yp.display().to_string(),
            n_labels: labels.len(),
        });
    }
    Ok(Labelled { images, labels })
}

/// Loads STL-10 from `source`'s directory (or its `stl10_binary/`): training on `unlabeled_X.bin` when present
/// (then the labelled training split is the evaluation bank), else on `train_X.bin` with its labels.
pub fn load(source: Source) -> Result<Dataset, DataError> {
    let dir = unpacked(source.dir(), "stl10_binary");
    let train = read_labelled(&dir, "train")?;
    let test = read_labelled(&dir, "test")?;
    let unlabeled = dir.join("unlabeled_X.bin");
    let (train_images, train_labels, bank) = if unlabeled.is_file() {
        (read_images(&unlabeled)?, None, Some(train))
    } else {
        (train.images, Some(train.labels), None)
    };
    let class_names = class_names_file(&dir.join("class_names.txt"), CLASSES)
        .unwrap_or_else(|| CLASS_NAMES.iter().map(|c| c.to_string()).collect());
    Ok(Dataset {
        name: "STL-10".into(),
        shape: SHAPE,
        train_images,
        train_labels,
        bank,
        test_images: test.images,
        test_labels: Some(test.labels),
        classes: CLASSES,
        class_names: Some(class_names),
        norm: Norm { mean: MEAN.to_vec(), std: STD.to_vec() },
        skipped: 0,
        source,
    })
}
