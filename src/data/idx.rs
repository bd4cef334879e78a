//! IDX files (LeCun's MNIST format, which Fashion-MNIST reuses), plain or gzip-compressed.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` for u8), a rank byte, then
//! one u32 per dimension — followed by the data. Images are magic 2051 (`00 00 08 03`, `[n, 28, 28]`),
//! labels magic 2049 (`00 00 08 01`, `[n]`). Compression is detected by the gzip magic bytes, not by the
//! file name, so either form loads. Every way a file can be wrong is a coded [`DataError`]. Both data sets are
//! 28×28 grayscale with 10 classes, so those are the format's constants here, not assumptions of the runtime.

use super::{read_error, DataError, Dataset, Norm, Shape, Source};
use crate::files::{read_all_bounded, read_bounded, ReadError, DATA_LIMIT};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Side of an MNIST or Fashion-MNIST image in pixels.
pub const SIDE: usize = 28;
/// Pixels of one image (28 × 28).
pub const PIXELS: usize = SIDE * SIDE;
/// The shape of an IDX image: one channel, 28×28.
pub const SHAPE: Shape = Shape::new(1, SIDE, SIDE);
/// Classes of both data sets.
pub const CLASSES: usize = 10;
/// The name of the default data set.
pub const FASHION_MNIST: &str = "Fashion-MNIST";
/// The name of the digits data set in the same format.
pub const MNIST: &str = "MNIST";
/// Fashion-MNIST's class names, in label order.
const FASHION_CLASSES: [&str; CLASSES] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The standard file names (each also accepted without `.gz`, i.e. decompressed).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
/// Training labels file name.
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
/// Test images file name.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
/// Test labels file name.
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";

const HOW_TO_GET: &str = "get Fashion-MNIST one of three ways: install the Debian package \
     (`apt-get install dataset-fashion-mnist`, which fills /usr/share/datasets/fashion-mnist/), pass `--data DIR` \
     (or `data = fashion_mnist(\"DIR\")`) for a directory with the four IDX files, or use the subset bundled in \
     the repository (data/fashion-mnist-subset/, the default when neither is there); MNIST (`mnist(\"DIR\")`) is \
     the same four files from http://yann.lecun.com/exdb/mnist/";

/// IDX magic of a u8 rank-3 file: Fashion-MNIST images.
pub const IMAGES_MAGIC: u32 = 2051;
/// IDX magic of a u8 rank-1 file: Fashion-MNIST labels.
pub const LABELS_MAGIC: u32 = 2049;
/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_bounded(path, DATA_LIMIT).map_err(|e| read_error(path, e, HOW_TO_GET))?;
    if raw.len() < 2 || raw[..2] != GZIP_MAGIC {
        return Ok(raw);
    }
    read_all_bounded(GzDecoder::new(raw.as_slice()), DATA_LIMIT, raw.len() * 2).map_err(|e| match e {
        ReadError::Io(e) if e.kind() == ErrorKind::UnexpectedEof => {
            DataError::Truncated { path: path.display().to_string(), detail: "the gzip stream ends early".into() }
        }
        ReadError::Io(e) => DataError::Read { path: path.display().to_string(), reason: format!("bad gzip data: {e}") },
        e => DataError::Read { path: path.display().to_string(), reason: format!("decompressed, it {e}") },
    })
}

/// Parses an IDX byte buffer with the expected magic; returns its dimensions and its data.
pub fn parse(path: &Path, bytes: &[u8], magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let name = || path.display().to_string();
    let truncated = |detail: String| DataError::Truncated { path: name(), detail };
    let Some(head) = bytes.get(..4) else {
        return Err(truncated(format!("{} bytes, shorter than the 4-byte IDX magic", bytes.len())));
    };
    let found = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if found != magic {
        return Err(DataError::Magic { path: name(), found, expected: magic });
    }
    let rank = (magic & 0xff) as usize;
    let header = 4 + 4 * rank;
    let Some(dims) = bytes.get(4..header) else {
        return Err(truncated(format!("{} bytes, shorter than the {header}-byte header", bytes.len())));
    };
    let dims: Vec<usize> =
        dims.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let size = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data = &bytes[header..];
    match size {
        Some(size) if size == data.len() => Ok((dims, data.to_vec())),
        Some(size) if size > data.len() => {
            Err(truncated(format!("the header {dims:?} needs {size} data bytes, found {}", data.len())))
        }
        Some(size) => Err(DataError::Trailing { path: name(), expected: size, found: data.len() }),
        None => Err(DataError::Dims { path: name(), found: dims, expected: "a size that fits in memory".into() }),
    }
}

/// Reads a Fashion-MNIST image file: `n` images of 28×28 u8, row-major, `n × 784` bytes.
pub fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let (dims, data) = parse(path, &read_bytes(path)?, IMAGES_MAGIC)?;
    if dims[1] != SIDE || dims[2] != SIDE {
        return Err(DataError::Dims { path: path.display().to_string(), found: dims, expected: "[n, 28, 28]".into() });
    }
    Ok(data)
}

/// Reads a Fashion-MNIST label file: one class in 0..=9 per image.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let (_, data) = parse(path, &read_bytes(path)?, LABELS_MAGIC)?;
    if let Some((index, &label)) = data.iter().enumerate().find(|(_, &l)| l as usize >= CLASSES) {
        return Err(DataError::Label {
            path: path.display().to_string(),
            index,
            label,
            valid: format!("0..={}", CLASSES - 1),
        });
    }
    Ok(data)
}

/// Reads an image file and its label file and checks that they hold the same number of samples.
pub fn read_pair(images: &Path, labels: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let x = read_images(images)?;
    let y = read_labels(labels)?;
    if x.len() / PIXELS != y.len() {
        return Err(DataError::Count {
            images: images.display().to_string(),
            n_images: x.len() / PIXELS,
            labels: labels.display().to_string(),
            n_labels: y.len(),
        });
    }
    Ok((x, y))
}

/// Writes an IDX file (gzip-compressed when `gzip`), e.g. to make a subset or a test fixture.
pub fn write(path: &Path, magic: u32, dims: &[usize], data: &[u8], gzip: bool) -> Result<(), DataError> {
    let write_err = |reason: String| DataError::Write { path: path.display().to_string(), reason };
    let size = dims.iter().product::<usize>();
    if dims.len() != (magic & 0xff) as usize || size != data.len() || dims.iter().any(|&d| d > u32::MAX as usize) {
        return Err(write_err(format!("dimensions {dims:?} do not describe {} bytes under magic {magic}", data.len())));
    }
    let mut bytes = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    bytes.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let bytes = if gzip {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&bytes).and_then(|_| enc.finish()).map_err(|e| write_err(e.to_string()))?
    } else {
        bytes
    };
    std::fs::write(path, bytes).map_err(|e| write_err(e.to_string()))
}

/// Writes `images.len() / 784` images of 28×28 as an IDX image file (magic 2051).
pub fn write_images(path: &Path, images: &[u8], gzip: bool) -> Result<(), DataError> {
    write(path, IMAGES_MAGIC, &[images.len() / PIXELS, SIDE, SIDE], images, gzip)
}

/// Writes labels as an IDX label file (magic 2049).
pub fn write_labels(path: &Path, labels: &[u8], gzip: bool) -> Result<(), DataError> {
    write(path, LABELS_MAGIC, &[labels.len()], labels, gzip)
}

/// The file `name` in `dir`, or its decompressed twin (name without `.gz`) when only that exists.
fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(name);
    if gz.exists() {
        return gz;
    }
    let plain = dir.join(name.trim_end_matches(".gz"));
    if plain.exists() {
        plain
    } else {
        gz
    }
}

/// Loads the four IDX files of data set `name` ([`FASHION_MNIST`] or [`MNIST`]) from `source`'s directory (gzip
/// or plain, standard names). Pixels stay in [0, 1]: the normalisation is the identity, as it always was.
pub fn load_dir(source: Source, name: &str) -> Result<Dataset, DataError> {
    let dir = source.dir();
    let (train_images, train_labels) = read_pair(&find(dir, TRAIN_IMAGES), &find(dir, TRAIN_LABELS))?;
    let (test_images, test_labels) = read_pair(&find(dir, TEST_IMAGES), &find(dir, TEST_LABELS))?;
    let class_names = if name == FASHION_MNIST {
        FASHION_CLASSES.iter().map(|c| c.to_string()).collect()
    } else {
        (0..CLASSES).map(|d| d.to_string()).collect()
    };
    Ok(Dataset {
        name: name.to_string(),
        shape: SHAPE,
        train_images,
        train_labels: Some(train_labels),
        bank: None,
        test_images,
        test_labels: Some(test_labels),
        classes: CLASSES,
        class_names: Some(class_names),
        norm: Norm::identity(1),
        skipped: 0,
        source,
    })
}
