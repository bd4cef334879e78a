//! IDX files (LeCun's MNIST format, which Fashion-MNIST reuses), plain or gzip-compressed.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` for u8), a rank byte, then
//! one u32 per dimension — followed by the data. Images are magic 2051 (`00 00 08 03`, `[n, 28, 28]`),
//! labels magic 2049 (`00 00 08 01`, `[n]`). Compression is detected by the gzip magic bytes, not by the
//! file name, so either form loads. Every way a file can be wrong is a coded [`DataError`].

use super::{DataError, CLASSES, PIXELS, SIDE};
use crate::files::{read_all_bounded, read_bounded, ReadError, DATA_LIMIT};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{ErrorKind, Write};
use std::path::Path;

/// IDX magic of a u8 rank-3 file: Fashion-MNIST images.
pub const IMAGES_MAGIC: u32 = 2051;
/// IDX magic of a u8 rank-1 file: Fashion-MNIST labels.
pub const LABELS_MAGIC: u32 = 2049;
/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_bounded(path, DATA_LIMIT).map_err(|e| read_error(path, e))?;
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

fn read_error(path: &Path, e: ReadError) -> DataError {
    match e {
        ReadError::NotFound => DataError::Missing { path: path.display().to_string() },
        e => DataError::Read { path: path.display().to_string(), reason: format!("it {e}") },
    }
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
        return Err(DataError::Label { path: path.display().to_string(), index, label });
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
