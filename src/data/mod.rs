//! The images: a [`Dataset`] of u8 images `[N, C, H, W]` (C = 1 or 3) with optional labels, loaded from the
//! recipe's source — Fashion-MNIST or MNIST IDX files (the default: `--data DIR`, the Debian package, or the subset
//! bundled in the repository), CIFAR-10/100 or STL-10 binaries, or a folder of PNG/JPEG images — plus the
//! augmentations that make a Siamese pair of views.
//!
//! Images stay u8 in memory (47 MB for the full Fashion-MNIST training set instead of 188 MB as f32); [`to_tensor`]
//! and [`augment::augment`] turn a batch into f32 in [0, 1] when it is needed, and [`Norm`] then normalises it per
//! channel.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod stl10;

use crate::check::recipe::{Data, Normalize, Recipe};
use crate::error::{Error, ErrorCode};
use candle_core::{Device, Tensor};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs the data set.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The subset bundled in the repository: 1,000 training and 200 test images per class.
pub const BUNDLED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist-subset");

/// Why images could not be loaded or augmented; the message says what and where, and `Error::from` adds its code and help.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data file does not exist.
    #[error("cannot find `{path}`")]
    Missing {
        /// The file looked for.
        path: String,
        /// Where the data set comes from and how to point ssl-lang at it.
        how: &'static str,
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
    /// A label is not one of the data set's classes.
    #[error("`{path}` has label {label} at index {index}, outside {valid}")]
    Label {
        /// The file.
        path: String,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
        /// The labels the format allows, e.g. `0..=9`.
        valid: String,
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
    /// A binary file (CIFAR, STL-10) is not a whole number of fixed-size records.
    #[error("`{path}` holds {len} bytes, not a whole number of {record}-byte records")]
    Records {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
        /// The size of one record.
        record: usize,
    },
    /// An image file cannot be decoded (corrupt, truncated, or not the format its name says).
    #[error("cannot decode image `{path}`: {reason}")]
    Decode {
        /// The file.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// An image folder whose layout ssl-lang cannot read as a data set.
    #[error("`{path}`: {detail}")]
    Layout {
        /// The folder.
        path: String,
        /// What is wrong.
        detail: String,
        /// How to fix it.
        help: String,
    },
    /// Evaluation needs labels the data set does not have.
    #[error("{data} has no labels, and evaluation (kNN, linear probe) needs them")]
    Unlabelled {
        /// The data set.
        data: String,
    },
    /// A normalisation whose mean or std does not match the images' channels, or a std that is not positive.
    #[error("{detail}")]
    Norm {
        /// What is wrong.
        detail: String,
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
    /// The recipe's directory (`data = cifar10("DIR")`, …).
    Recipe(PathBuf),
    /// The Debian package's directory (Fashion-MNIST only).
    Debian(PathBuf),
    /// The subset bundled in the repository (Fashion-MNIST only).
    Bundled(PathBuf),
}

impl Source {
    /// The directory the files came from.
    pub fn dir(&self) -> &Path {
        match self {
            Source::Override(d) | Source::Recipe(d) | Source::Debian(d) | Source::Bundled(d) => d,
        }
    }

    /// The data set `name` from this place, in words.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Source::Override(d) => format!("{name} from --data {}", d.display()),
            Source::Recipe(d) => format!("{name} from the recipe's directory {}", d.display()),
            Source::Debian(d) => format!("{name} from the Debian package (dataset-fashion-mnist) in {}", d.display()),
            Source::Bundled(d) => format!(
                "the bundled {name} subset (1,000 train / 200 test images per class) in {}; \
                 install dataset-fashion-mnist for the full data set",
                d.display()
            ),
        }
    }
}

impl fmt::Display for Source {
    /// The Fashion-MNIST wording, which the Debian package and the bundled subset are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(idx::FASHION_MNIST))
    }
}

/// The shape of one image: channels (1 grayscale or 3 RGB planes), height and width; images are stored `[C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Channels: 1 or 3.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Shape {
    /// A `[channels, height, width]` image.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Shape { channels, height, width }
    }

    /// Values of one image (C × H × W bytes).
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// How many images `len` values hold, or a coded error when they are not a whole number of them.
    pub fn images_in(&self, len: usize) -> Result<usize, DataError> {
        let pixels = self.pixels();
        if pixels == 0 || !len.is_multiple_of(pixels) {
            return Err(DataError::Shape {
                detail: format!("{len} values are not a whole number of {self} images"),
                help: format!("pass images as a flat row-major buffer of n × {pixels} values ([n, C, H, W])"),
            });
        }
        Ok(len / pixels)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// Per-channel normalisation of values in [0, 1]: `(x − mean[c]) / std[c]`, applied after augmentation and to the
/// evaluation images alike. Fashion-MNIST and MNIST keep the identity (mean 0, std 1), as before data sets had
/// statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    /// Mean of each channel.
    pub mean: Vec<f32>,
    /// Standard deviation of each channel.
    pub std: Vec<f32>,
}

impl Norm {
    /// Mean 0, std 1 on every channel: values stay in [0, 1].
    pub fn identity(channels: usize) -> Self {
        Norm { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    /// Whether it leaves values unchanged.
    pub fn is_identity(&self) -> bool {
        self.mean.iter().all(|&m| m == 0.0) && self.std.iter().all(|&s| s == 1.0)
    }

    /// Normalises `[B, C, plane]` values in place (`plane` = H × W), channel `i % C` for the `i`-th plane.
    pub fn apply(&self, values: &mut [f32], plane: usize) {
        if self.is_identity() || plane == 0 {
            return;
        }
        let c = self.mean.len();
        for (i, p) in values.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[i % c], self.std[i % c]);
            p.iter_mut().for_each(|x| *x = (*x - m) / s);
        }
    }

    /// The mean and std of each channel of u8 images `[n, C, H, W]`, as values in [0, 1] (image folders).
    pub fn of_images(images: &[u8], shape: Shape) -> Self {
        let (c, plane) = (shape.channels, shape.height * shape.width);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for (i, p) in images.chunks_exact(plane.max(1)).enumerate() {
            let (s, q) = p.iter().fold((0u64, 0u64), |(s, q), &x| (s + x as u64, q + (x as u64) * (x as u64)));
            sum[i % c] += s as f64;
            sq[i % c] += q as f64;
        }
        let count = (images.len() / c.max(1)).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count / 255.0).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / count / (255.0 * 255.0) - m * m).max(0.0).sqrt().max(1e-3)) as f32)
            .collect();
        Norm { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }
}

/// Labelled images for evaluation that are not the training images (STL-10 trains on its unlabelled split).
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Images, `n × C × H × W` bytes.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

/// The labelled images evaluation reads: the bank (kNN neighbours, the probe's training set) and the queries.
#[derive(Clone, Copy, Debug)]
pub struct EvalSplits<'a> {
    /// Bank images.
    pub bank: &'a [u8],
    /// Their labels.
    pub bank_labels: &'a [u8],
    /// Query (test) images.
    pub queries: &'a [u8],
    /// Their labels.
    pub query_labels: &'a [u8],
}

/// A loaded data set: u8 images row-major `[n, C, H, W]`, labels where the source has them, and what a run needs
/// to know about it (classes, per-channel statistics, where it came from).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The data set's name ("Fashion-MNIST", "CIFAR-10", "image folder", …).
    pub name: String,
    /// The shape of every image.
    pub shape: Shape,
    /// Training images, `n_train × C × H × W` bytes.
    pub train_images: Vec<u8>,
    /// Training labels, `n_train`, when the source has them.
    pub train_labels: Option<Vec<u8>>,
    /// Labelled images for the evaluation bank when they are not the training images (STL-10's `train_X.bin`).
    pub bank: Option<Labelled>,
    /// Test images, `n_test × C × H × W` bytes.
    pub test_images: Vec<u8>,
    /// Test labels, when the source has them.
    pub test_labels: Option<Vec<u8>>,
    /// Number of classes (0 when unlabelled).
    pub classes: usize,
    /// Class names, in label order, where the source names them.
    pub class_names: Option<Vec<String>>,
    /// The normalisation the network sees the images with.
    pub norm: Norm,
    /// Unreadable files skipped (`image_folder(.., skip_bad = true)`).
    pub skipped: usize,
    /// Where they came from.
    pub source: Source,
}

impl Dataset {
    /// The data set in words: its name and where it came from (and how many files were skipped).
    pub fn describe(&self) -> String {
        let mut s = self.source.describe(&self.name);
        if self.skipped > 0 {
            s.push_str(&format!(" ({} unreadable files skipped)", self.skipped));
        }
        s
    }

    /// Keeps only the first `limit` training, bank and test images (quick experiments, `--limit`).
    pub fn limit(&mut self, limit: usize) {
        let pixels = self.shape.pixels();
        let keep = |images: &mut Vec<u8>, labels: Option<&mut Vec<u8>>| {
            let n = limit.min(images.len() / pixels.max(1));
            images.truncate(n * pixels);
            if let Some(labels) = labels {
                labels.truncate(n);
            }
        };
        keep(&mut self.train_images, self.train_labels.as_mut());
        keep(&mut self.test_images, self.test_labels.as_mut());
        if let Some(bank) = &mut self.bank {
            keep(&mut bank.images, Some(&mut bank.labels));
        }
    }

    /// SHA-256 of the images and labels (train then test, each length-prefixed; absent labels as length 2⁶⁴ − 1;
    /// then the separate evaluation bank, if any): the data's identity, which `--resume` compares with the run's
    /// and which keys `eval`'s feature cache, so other data is never mistaken for the run's. A labelled data set
    /// without a separate bank hashes exactly as before sources other than IDX existed.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut part = |bytes: Option<&[u8]>| match bytes {
            Some(b) => {
                hasher.update((b.len() as u64).to_le_bytes());
                hasher.update(b);
            }
            None => hasher.update(u64::MAX.to_le_bytes()),
        };
        part(Some(&self.train_images));
        part(self.train_labels.as_deref());
        part(Some(&self.test_images));
        part(self.test_labels.as_deref());
        if let Some(bank) = &self.bank {
            part(Some(&bank.images));
            part(Some(&bank.labels));
        }
        crate::files::hex(&hasher.finalize())
    }

    /// Training images.
    pub fn train_len(&self) -> usize {
        self.train_images.len() / self.shape.pixels().max(1)
    }

    /// Test images.
    pub fn test_len(&self) -> usize {
        self.test_images.len() / self.shape.pixels().max(1)
    }

    /// The bank and query images with their labels, or `ssl::data::unlabelled` when the source has none (a flat
    /// image folder): evaluation never invents classes.
    pub fn eval_splits(&self) -> Result<EvalSplits<'_>, DataError> {
        let (bank, bank_labels) = match &self.bank {
            Some(b) => (b.images.as_slice(), Some(b.labels.as_slice())),
            None => (self.train_images.as_slice(), self.train_labels.as_deref()),
        };
        match (bank_labels, self.test_labels.as_deref()) {
            (Some(bank_labels), Some(query_labels)) => {
                Ok(EvalSplits { bank, bank_labels, queries: &self.test_images, query_labels })
            }
            _ => Err(DataError::Unlabelled { data: self.describe() }),
        }
    }

    /// The training images as f32 `[n, C, H, W]`, normalised as the network sees them (in [0, 1] for IDX).
    pub fn train_tensor(&self, device: &Device) -> Result<Tensor, DataError> {
        to_tensor(&self.train_images, self.shape, &self.norm, device)
    }

    /// The test images as f32 `[n, C, H, W]`, normalised as the network sees them.
    pub fn test_tensor(&self, device: &Device) -> Result<Tensor, DataError> {
        to_tensor(&self.test_images, self.shape, &self.norm, device)
    }

    /// Replaces the data set's own normalisation as the recipe's `normalize` says; a mean or std with another
    /// number of values than the images have channels is `ssl::data::norm`.
    pub fn set_normalize(&mut self, normalize: &Normalize) -> Result<(), DataError> {
        let c = self.shape.channels;
        match normalize {
            Normalize::Dataset => {}
            Normalize::None => self.norm = Norm::identity(c),
            Normalize::MeanStd { mean, std } => {
                if mean.len() != c || std.len() != c {
                    return Err(DataError::Norm {
                        detail: format!(
                            "`normalize` gives {} means and {} stds, but the images ({}) have {c} channel{}",
                            mean.len(),
                            std.len(),
                            self.describe(),
                            if c == 1 { "" } else { "s" }
                        ),
                    });
                }
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(DataError::Norm { detail: format!("`normalize` has std {s}, not positive") });
                }
                self.norm = Norm {
                    mean: mean.iter().map(|&m| m as f32).collect(),
                    std: std.iter().map(|&s| s as f32).collect(),
                };
            }
        }
        Ok(())
    }
}

/// Converts u8 images (`n × C × H × W` bytes of `shape`) to an f32 tensor `[n, C, H, W]`: values in [0, 1],
/// then `norm`.
pub fn to_tensor(images: &[u8], shape: Shape, norm: &Norm, device: &Device) -> Result<Tensor, DataError> {
    let n = shape.images_in(images.len())?;
    let mut x: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
    norm.apply(&mut x, shape.height * shape.width);
    Ok(Tensor::from_vec(x, (n, shape.channels, shape.height, shape.width), device)?)
}

/// Copies the images at `indices` (e.g. a shuffled mini-batch) of `shape` into one contiguous buffer.
pub fn gather(images: &[u8], shape: Shape, indices: &[usize]) -> Result<Vec<u8>, DataError> {
    let n = shape.images_in(images.len())?;
    let pixels = shape.pixels();
    let mut out = Vec::with_capacity(indices.len() * pixels);
    for &i in indices {
        let Some(img) = images.get(i * pixels..(i + 1) * pixels) else {
            return Err(DataError::Shape {
                detail: format!("index {i} is outside the {n} images"),
                help: "draw indices from 0..n".into(),
            });
        };
        out.extend_from_slice(img);
    }
    Ok(out)
}

/// Loads the subset bundled in the repository, whatever else is installed (tests, quick runs).
pub fn load_bundled() -> Result<Dataset, DataError> {
    idx::load_dir(Source::Bundled(PathBuf::from(BUNDLED_DIR)), idx::FASHION_MNIST)
}

/// Loads the recipe's data source. `dir_override` (`--data DIR`) replaces its directory. For Fashion-MNIST
/// without a directory the order is: the Debian package's directory when it exists, else the bundled subset.
/// A chosen directory with missing or bad files is an error, never a silent fall-back. `dataset.source` says
/// which was used. The data set's own normalisation applies (see [`load_recipe`] for the recipe's override).
pub fn load(data: &Data, dir_override: Option<&Path>) -> Result<Dataset, DataError> {
    let place = |dir: &str| match dir_override {
        Some(d) => Source::Override(d.to_path_buf()),
        None => Source::Recipe(PathBuf::from(dir)),
    };
    match data {
        Data::FashionMnist => {
            let source = match dir_override {
                Some(d) => Source::Override(d.to_path_buf()),
                None if Path::new(DEBIAN_DIR).is_dir() => Source::Debian(PathBuf::from(DEBIAN_DIR)),
                None => Source::Bundled(PathBuf::from(BUNDLED_DIR)),
            };
            idx::load_dir(source, idx::FASHION_MNIST)
        }
        Data::FashionMnistDir(d) => {
            let source = place(d);
            idx::load_dir(source, idx::FASHION_MNIST)
        }
        Data::Mnist(d) => {
            let source = place(d);
            idx::load_dir(source, idx::MNIST)
        }
        Data::Cifar10(d) => cifar::load(place(d), &cifar::CIFAR10),
        Data::Cifar100(d) => cifar::load(place(d), &cifar::CIFAR100),
        Data::Stl10(d) => stl10::load(place(d)),
        Data::ImageFolder { dir, size, skip_bad } => folder::load(place(dir), *size, *skip_bad),
    }
}

/// Loads the recipe's data (see [`load`]) and applies its `normalize`.
pub fn load_recipe(recipe: &Recipe, dir_override: Option<&Path>) -> Result<Dataset, DataError> {
    let mut data = load(&recipe.data, dir_override)?;
    data.set_normalize(&recipe.normalize)?;
    Ok(data)
}

/// Reads a whole binary data file (CIFAR, STL-10); a missing one says `how` to get the data set.
pub(crate) fn read_file(path: &Path, how: &'static str) -> Result<Vec<u8>, DataError> {
    crate::files::read_bounded(path, crate::files::DATA_LIMIT).map_err(|e| read_error(path, e, how))
}

/// The coded error for a failed read of `path`.
pub(crate) fn read_error(path: &Path, e: crate::files::ReadError, how: &'static str) -> DataError {
    match e {
        crate::files::ReadError::NotFound => DataError::Missing { path: path.display().to_string(), how },
        e => DataError::Read { path: path.display().to_string(), reason: format!("it {e}") },
    }
}

/// The class names in the file at `path`, one per line, when it exists and names exactly `classes` classes.
pub(crate) fn class_names_file(path: &Path, classes: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    (names.len() == classes).then_some(names)
}

/// `dir/sub` when that folder exists (the layout an archive unpacks to), else `dir`.
pub(crate) fn unpacked(dir: &Path, sub: &str) -> PathBuf {
    let inner = dir.join(sub);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

impl From<DataError> for Error {
    fn from(e: DataError) -> Self {
        if let DataError::Tensor(inner) = e {
            return inner.into();
        }
        let (code, help) = match &e {
            DataError::Missing { how, .. } => (ErrorCode::DataMissing, how.to_string()),
            DataError::Read { .. } => (ErrorCode::DataRead, "check the file's permissions, or replace it with a fresh copy (`apt-get install --reinstall dataset-fashion-mnist` for the packaged Fashion-MNIST)".to_string()),
            DataError::Truncated { .. } => (ErrorCode::DataTruncated, "the file was cut short (an interrupted download or copy); replace it with a complete copy".to_string()),
            DataError::Trailing { .. } => (ErrorCode::DataTrailing, "the file is not a well-formed IDX file; replace it with an original copy".to_string()),
            DataError::Magic { .. } => (ErrorCode::DataMagic, "image files have magic 2051 and label files 2049; check that the files are IDX files and are not swapped".to_string()),
            DataError::Dims { .. } => (ErrorCode::DataDims, "IDX images must be 28×28 grayscale (Fashion-MNIST, MNIST); for other images use `image_folder(\"DIR\")`".to_string()),
            DataError::Count { .. } => (ErrorCode::DataCount, "the image and label files must come from the same split and the same copy of the data set".to_string()),
            DataError::Label { .. } => (ErrorCode::DataLabel, "the file is damaged or from another data set; replace it with an original copy".to_string()),
            DataError::Write { .. } => (ErrorCode::DataWrite, "check the directory exists and is writable, and that the dimensions match the data".to_string()),
            DataError::Shape { help, .. } => (ErrorCode::DataShape, help.clone()),
            DataError::Records { .. } => (ErrorCode::DataRecords, "the file was cut short or is not from the binary version of the data set; replace it with a complete copy of the official archive".to_string()),
            DataError::Decode { .. } => (ErrorCode::DataDecode, "replace or remove the file, or add `skip_bad = true` to `image_folder(...)` to skip unreadable files".to_string()),
            DataError::Layout { help, .. } => (ErrorCode::DataLayout, help.clone()),
            DataError::Unlabelled { .. } => (ErrorCode::DataUnlabelled, "put the images into one sub-folder per class (`DIR/cat/…`, `DIR/dog/…`) to evaluate; training works without labels".to_string()),
            DataError::Norm { .. } => (ErrorCode::DataNorm, "give one mean and one positive std per channel (3 for colour images, 1 for grayscale), e.g. `normalize = mean_std(mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25])`, or `normalize = dataset`".to_string()),
            DataError::Tensor(_) => unreachable!("converted above"),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
