//! The binary versions of CIFAR-10 and CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html): files of
//! fixed-size records, each the label byte(s) then 3072 bytes of a 32×32 image as its R, G and B planes, row-major —
//! already our `[C, H, W]` layout. CIFAR-10 records have one label byte; CIFAR-100 records a coarse and a fine
//! label byte, of which we keep the fine one (100 classes). One reader serves both.

use super::{class_names_file, read_file, unpacked, DataError, Dataset, Norm, Shape, Source};
use std::path::Path;

/// The shape of a CIFAR image: 3 channels of 32×32.
pub const SHAPE: Shape = Shape::new(3, 32, 32);

/// What distinguishes the two CIFAR data sets' binary versions.
#[derive(Debug)]
pub struct Layout {
    /// The data set's name.
    pub name: &'static str,
    /// The folder the official archive unpacks to.
    pub folder: &'static str,
    /// Training files, in order.
    pub train: &'static [&'static str],
    /// Test file.
    pub test: &'static str,
    /// Label bytes before each image.
    pub label_bytes: usize,
    /// Which of them is the label used.
    pub label_at: usize,
    /// Number of classes.
    pub classes: usize,
    /// The file naming the classes, one per line, when the archive has one.
    pub names_file: &'static str,
    /// Published per-channel mean of the training images, in [0, 1].
    pub mean: [f32; 3],
    /// Published per-channel standard deviation of the training images.
    pub std: [f32; 3],
    /// Where to get it.
    pub how: &'static str,
}

/// CIFAR-10: 50,000 training and 10,000 test images in 10 classes.
pub const CIFAR10: Layout = Layout {
    name: "CIFAR-10",
    folder: "cifar-10-batches-bin",
    train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    test: "test_batch.bin",
    label_bytes: 1,
    label_at: 0,
    classes: 10,
    names_file: "batches.meta.txt",
    mean: [0.4914, 0.4822, 0.4465],
    std: [0.2470, 0.2435, 0.2616],
    how: "download the CIFAR-10 binary version (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), \
          unpack it, and write `data = cifar10(\"DIR\")` (or pass `--data DIR`) for the folder holding \
          data_batch_1.bin … data_batch_5.bin and test_batch.bin, or the folder above its cifar-10-batches-bin/",
};

/// CIFAR-100: 50,000 training and 10,000 test images in 100 fine classes.
pub const CIFAR100: Layout = Layout {
    name: "CIFAR-100",
    folder: "cifar-100-binary",
    train: &["train.bin"],
    test: "test.bin",
    label_bytes: 2,
    label_at: 1,
    classes: 100,
    names_file: "fine_label_names.txt",
    mean: [0.5071, 0.4865, 0.4409],
    std: [0.2673, 0.2564, 0.2762],
    how: "download the CIFAR-100 binary version (cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), \
          unpack it, and write `data = cifar100(\"DIR\")` (or pass `--data DIR`) for the folder holding train.bin and \
          test.bin, or the folder above its cifar-100-binary/",
};

/// CIFAR-10's classes, in label order (its `batches.meta.txt`), for copies without that file.
const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Reads one binary file of `layout`'s records: its images (`n × 3072` bytes) and labels.
pub fn read_records(path: &Path, layout: &Layout) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = read_file(path, layout.how)?;
    let record = layout.label_bytes + SHAPE.pixels();
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::Records { path: path.display().to_string(), len: bytes.len(), record });
    }
    let n = bytes.len() / record;
    let mut images = Vec::with_capacity(n * SHAPE.pixels());
    let mut labels = Vec::with_capacity(n);
    for (index, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[layout.label_at];
        if label as usize >= layout.classes {
            return Err(DataError::Label {
                path: path.display().to_string(),
                index,
                label,
                valid: format!("0..={}", layout.classes - 1),
            });
        }
        labels.push(label);
        images.extend_from_slice(&r[layout.label_bytes..]);
    }
    Ok((images, labels))
}

/// Writes records in `layout`'s format (labels placed at the used position, other label bytes 0): test fixtures.
pub fn write_records(path: &Path, layout: &Layout, images: &[u8], labels: &[u8]) -> Result<(), DataError> {
    let write_err = |reason: String| DataError::Write { path: path.display().to_string(), reason };
    if images.len() != labels.len() * SHAPE.pixels() {
        return Err(write_err(format!("{} bytes are not {} images of 3×32×32", images.len(), labels.len())));
    }
    let mut bytes = Vec::with_capacity(labels.len() * (layout.label_bytes + SHAPE.pixels()));
    for (img, &label) in images.chunks_exact(SHAPE.pixels()).zip(labels) {
        let mut head = vec![0u8; layout.label_bytes];
        head[layout.label_at] = label;
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(img);
    }
    std::fs::write(path, bytes).map_err(|e| write_err(e.to_string()))
}

/// Loads CIFAR-10 or CIFAR-100 from `source`'s directory (or its archive sub-folder), with the published
/// per-channel statistics as normalisation.
pub fn load(source: Source, layout: &Layout) -> Result<Dataset, DataError> {
    let dir = unpacked(source.dir(), layout.folder);
    let (mut train_images, mut train_labels) = (Vec::new(), Vec::new());
    for name in layout.train {
        let (x, y) = read_records(&dir.join(name), layout)?;
        train_images.extend_from_slice(&x);
        train_labels.extend_from_slice(&y);
    }
    let (test_images, test_labels) = read_records(&dir.join(layout.test), layout)?;
    let class_names = class_names_file(&dir.join(layout.names_file), layout.classes).or_else(|| {
        (layout.classes == CIFAR10_CLASSES.len()).then(|| CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect())
    });
    Ok(Dataset {
        name: layout.name.to_string(),
        shape: SHAPE,
        train_images,
        train_labels: Some(train_labels),
        bank: None,
        test_images,
        test_labels: Some(test_labels),
        classes: layout.classes,
        class_names,
        norm: Norm { mean: layout.mean.to_vec(), std: layout.std.to_vec() },
        skipped: 0,
        source,
    })
}
