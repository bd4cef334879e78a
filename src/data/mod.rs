//! The images: Fashion-MNIST from the recipe's directory, `--data DIR`, the Debian package, or the subset
//! bundled in the repository, plus the augmentations that make a Siamese pair of views.
//!
//! Images stay u8 in memory (47 MB for the full training set instead of 188 MB as f32); [`to_tensor`] and
//! [`augment::augment`] turn a batch into f32 in [0, 1] when it is needed.

pub mod augment;
pub mod idx;

use crate::check::recipe::Data;
use crate::error::{Error, ErrorCode};
use candle_core::{Device, Tensor};
use std::fmt;
use std::path::{Path, PathBuf};

/// Side of a Fashion-MNIST image in pixels.
pub const SIDE: usize = 28;
/// Pixels of one image (28 × 28).
pub const PIXELS: usize = SIDE * SIDE;
/// Fashion-MNIST classes (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot).
pub const CLASSES: usize = 10;
/// Where the Debian package `dataset-fashion-mnist` installs the data set.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The subset bundled in the repository: 1,000 training and 200 test images per class.
pub const BUNDLED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist-subset");

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
     the repository (data/fashion-mnist-subset/, the default when neither is there)";

/// Why images could not be loaded or augmented; the message says what and where, and `Error::from` adds its code and help.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data file does not exist.
    #[error("cannot find `{path}`")]
    Missing {
        /// The file looked for.
        path: String,
    },
    /// A data file exists but could not be read (permissions, corrupt gzip).
    #[error("cannot read `{path}`: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// The file ends before the data its header announces.
    #[error("`{path}` is truncated: {detail}")]
    Truncated {
        /// The file.
        path: String,
        /// What is short.
        detail: String,
    },
    /// More bytes follow the data the header announces.
    #[error("`{path}` has {found} data bytes where its header announces {expected}")]
    Trailing {
        /// The file.
        path: String,
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The file does not start with the expected IDX magic number.
    #[error("`{path}` starts with magic {found:#010x}, expected {expected} ({expected:#010x})")]
    Magic {
        /// The file.
        path: String,
        /// The first four bytes, big-endian.
        found: u32,
        /// The magic expected.
        expected: u32,
    },
    /// The header's dimensions are not those of Fashion-MNIST.
    #[error("`{path}` has dimensions {found:?}, expected {expected}")]
    Dims {
        /// The file.
        path: String,
        /// Dimensions in the header.
        found: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// The image and label files hold different numbers of samples.
    #[error("`{images}` holds {n_images} images but `{labels}` holds {n_labels} labels")]
    Count {
        /// Image file.
        images: String,
        /// Images in it.
        n_images: usize,
        /// Label file.
        labels: String,
        /// Labels in it.
        n_labels: usize,
    },
    /// A label is not a Fashion-MNIST class.
    #[error("`{path}` has label {label} at index {index}, outside 0..=9")]
    Label {
        /// The file.
        path: String,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
    },
    /// An IDX file could not be written.
    #[error("cannot write `{path}`: {reason}")]
    Write {
        /// The file.
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// A batch or an augmentation parameter does not have the required shape.
    #[error("{detail}")]
    Shape {
        /// What is wrong.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// Making a tensor failed.
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

/// Where a data set was loaded from, so a run can say so (and warn when it is only the bundled subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--data DIR` on the command line.
    Override(PathBuf),
    /// `data = fashion_mnist("DIR")` in the recipe.
    Recipe(PathBuf),
    /// The Debian package's directory.
    Debian(PathBuf),
    /// The subset bundled in the repository.
    Bundled(PathBuf),
}

impl Source {
    /// The directory the files came from.
    pub fn dir(&self) -> &Path {
        match self {
            Source::Override(d) | Source::Recipe(d) | Source::Debian(d) | Source::Bundled(d) => d,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Override(d) => write!(f, "Fashion-MNIST from --data {}", d.display()),
            Source::Recipe(d) => write!(f, "Fashion-MNIST from the recipe's directory {}", d.display()),
            Source::Debian(d) => {
                write!(f, "Fashion-MNIST from the Debian package (dataset-fashion-mnist) in {}", d.display())
            }
            Source::Bundled(d) => write!(
                f,
                "the bundled Fashion-MNIST subset (1,000 train / 200 test images per class) in {}; \
                 install dataset-fashion-mnist for the full data set",
                d.display()
            ),
        }
    }
}

/// A loaded data set: u8 images, row-major `[n, 28, 28]` (`n × 784` bytes), and their labels 0..=9.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Training images, `n_train × 784` bytes.
    pub train_images: Vec<u8>,
    /// Training labels, `n_train`.
    pub train_labels: Vec<u8>,
    /// Test images, `n_test × 784` bytes.
    pub test_images: Vec<u8>,
    /// Test labels, `n_test`.
    pub test_labels: Vec<u8>,
    /// Where they came from.
    pub source: Source,
}

impl Dataset {
    /// Keeps only the first `limit` training and test images (quick experiments, `--limit`).
    pub fn limit(&mut self, limit: usize) {
        let keep = |images: &mut Vec<u8>, labels: &mut Vec<u8>| {
            let n = limit.min(labels.len());
            images.truncate(n * 784);
            labels.truncate(n);
        };
        keep(&mut self.train_images, &mut self.train_labels);
        keep(&mut self.test_images, &mut self.test_labels);
    }

    /// SHA-256 of the images and labels (train then test, each length-prefixed): the data's identity, which
    /// `--resume` compares with the run's and which keys `eval`'s feature cache, so other data is never mistaken
    /// for the run's.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [&self.train_images, &self.train_labels, &self.test_images, &self.test_labels] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        crate::files::hex(&hasher.finalize())
    }

    /// Training images.
    pub fn train_len(&self) -> usize {
        self.train_labels.len()
    }

    /// Test images.
    pub fn test_len(&self) -> usize {
        self.test_labels.len()
    }

    /// The training images as f32 `[n, 1, 28, 28]` in [0, 1], e.g. to embed the kNN bank.
    pub fn train_tensor(&self, device: &Device) -> Result<Tensor, DataError> {
        to_tensor(&self.train_images, device)
    }

    /// The test images as f32 `[n, 1, 28, 28]` in [0, 1].
    pub fn test_tensor(&self, device: &Device) -> Result<Tensor, DataError> {
        to_tensor(&self.test_images, device)
    }
}

/// Converts u8 images (`n × 784` bytes) to an f32 tensor `[n, 1, 28, 28]` in [0, 1].
pub fn to_tensor(images: &[u8], device: &Device) -> Result<Tensor, DataError> {
    let n = batch_len(images.len())?;
    let x: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(x, (n, 1, SIDE, SIDE), device)?)
}

/// Copies the images at `indices` (e.g. a shuffled mini-batch) into one contiguous buffer.
pub fn gather(images: &[u8], indices: &[usize]) -> Result<Vec<u8>, DataError> {
    let n = batch_len(images.len())?;
    let mut out = Vec::with_capacity(indices.len() * PIXELS);
    for &i in indices {
        let Some(img) = images.get(i * PIXELS..(i + 1) * PIXELS) else {
            return Err(DataError::Shape {
                detail: format!("index {i} is outside the {n} images"),
                help: "draw indices from 0..n".into(),
            });
        };
        out.extend_from_slice(img);
    }
    Ok(out)
}

fn batch_len(len: usize) -> Result<usize, DataError> {
    if !len.is_multiple_of(PIXELS) {
        return Err(DataError::Shape {
            detail: format!("{len} values are not a whole number of 28×28 images"),
            help: "pass images as a flat row-major buffer of n × 784 values".into(),
        });
    }
    Ok(len / PIXELS)
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

/// Loads the four Fashion-MNIST IDX files from a directory (gzip or plain, standard names).
pub fn load_dir(dir: &Path, source: Source) -> Result<Dataset, DataError> {
    let (train_images, train_labels) = idx::read_pair(&find(dir, TRAIN_IMAGES), &find(dir, TRAIN_LABELS))?;
    let (test_images, test_labels) = idx::read_pair(&find(dir, TEST_IMAGES), &find(dir, TEST_LABELS))?;
    Ok(Dataset { train_images, train_labels, test_images, test_labels, source })
}

/// Loads the subset bundled in the repository, whatever else is installed (tests, quick runs).
pub fn load_bundled() -> Result<Dataset, DataError> {
    load_dir(Path::new(BUNDLED_DIR), Source::Bundled(PathBuf::from(BUNDLED_DIR)))
}

/// Loads the recipe's data, choosing in order: `dir_override` (`--data DIR`); the recipe's directory
/// (`fashion_mnist("DIR")`); the Debian package's directory when it exists; the bundled subset.
/// A chosen directory with missing or bad files is an error, never a silent fall-back.
/// `dataset.source` says which was used.
pub fn load(source: &Data, dir_override: Option<&Path>) -> Result<Dataset, DataError> {
    let source = match (dir_override, source) {
        (Some(d), _) => Source::Override(d.to_path_buf()),
        (None, Data::FashionMnistDir(d)) => Source::Recipe(PathBuf::from(d)),
        (None, Data::FashionMnist) if Path::new(DEBIAN_DIR).is_dir() => Source::Debian(PathBuf::from(DEBIAN_DIR)),
        (None, Data::FashionMnist) => Source::Bundled(PathBuf::from(BUNDLED_DIR)),
    };
    let dir = source.dir().to_path_buf();
    load_dir(&dir, source)
}

impl From<DataError> for Error {
    fn from(e: DataError) -> Self {
        if let DataError::Tensor(inner) = e {
            return inner.into();
        }
        let (code, help) = match &e {
            DataError::Missing { .. } => (ErrorCode::DataMissing, HOW_TO_GET.to_string()),
            DataError::Read { .. } => (ErrorCode::DataRead, "check the file's permissions, or replace it with a fresh copy (`apt-get install --reinstall dataset-fashion-mnist`)".to_string()),
            DataError::Truncated { .. } => (ErrorCode::DataTruncated, "the file was cut short (an interrupted download or copy); replace it with a complete copy".to_string()),
            DataError::Trailing { .. } => (ErrorCode::DataTrailing, "the file is not a well-formed IDX file; replace it with an original copy".to_string()),
            DataError::Magic { .. } => (ErrorCode::DataMagic, "image files have magic 2051 and label files 2049; check that the files are IDX files and are not swapped".to_string()),
            DataError::Dims { .. } => (ErrorCode::DataDims, "ssl-lang reads 28×28 grayscale images (Fashion-MNIST); convert other data to that shape".to_string()),
            DataError::Count { .. } => (ErrorCode::DataCount, "the image and label files must come from the same split and the same copy of the data set".to_string()),
            DataError::Label { .. } => (ErrorCode::DataLabel, "Fashion-MNIST has 10 classes numbered 0 to 9; the file is damaged or from another data set".to_string()),
            DataError::Write { .. } => (ErrorCode::DataWrite, "check the directory exists and is writable, and that the dimensions match the data".to_string()),
            DataError::Shape { help, .. } => (ErrorCode::DataShape, help.clone()),
            DataError::Tensor(_) => unreachable!("converted above"),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
