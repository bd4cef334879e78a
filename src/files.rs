//! Reading a file the user named, safely: only a regular file (a FIFO would block forever, `/dev/zero` would grow
//! until memory runs out), and only up to a size bound, checked before reading and enforced while reading (a file
//! that grows meanwhile). Each caller turns a [`ReadError`] into its own coded error.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest `.ssl` source file ssl-lang reads.
pub const SOURCE_LIMIT: u64 = 16 << 20;
/// The largest data file (compressed or decompressed) ssl-lang reads.
pub const DATA_LIMIT: u64 = 8 << 30;
/// The largest file of a run directory or tensor input ssl-lang reads.
pub const TENSOR_LIMIT: u64 = 16 << 30;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing at the path.
    #[error("does not exist")]
    NotFound,
    /// A directory, FIFO, socket or device.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than the bound.
    #[error("is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Bytes in the file (at least; it may still grow).
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The operating system refused.
    #[error("{0}")]
    Io(io::Error),
}

/// Reads the regular file at `path` (symbolic links followed) if it holds at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound,
        _ => ReadError::Io(e),
    })?;
    check_regular(&meta)?;
    if meta.len() > limit {
        return Err(ReadError::TooLarge { size: meta.len(), limit });
    }
    let file = File::open(path).map_err(ReadError::Io)?;
    read_all_bounded(file, limit, meta.len() as usize)
}

/// Reads `reader` to its end, failing once it yields more than `limit` bytes (a decompression bomb, a growing file).
pub fn read_all_bounded(reader: impl Read, limit: u64, size_hint: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::with_capacity(size_hint);
    reader.take(limit + 1).read_to_end(&mut out).map_err(ReadError::Io)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: out.len() as u64, limit });
    }
    Ok(out)
}

fn check_regular(meta: &std::fs::Metadata) -> Result<(), ReadError> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    Err(ReadError::NotRegular(if kind.is_dir() { "a directory" } else { special_kind(kind) }))
}

#[cfg(unix)]
fn special_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: std::fs::FileType) -> &'static str {
    "not a file"
}

/// Lower-case hexadecimal of a digest, as checkpoints and caches name their hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_directories_and_oversized_files() {
        assert!(matches!(read_bounded(Path::new("/dev/zero"), 1 << 20), Err(ReadError::NotRegular("a device"))));
        assert!(matches!(read_bounded(Path::new("/"), 1 << 20), Err(ReadError::NotRegular("a directory"))));
        assert!(matches!(read_bounded(Path::new("/no/such/file"), 1), Err(ReadError::NotFound)));
        let path = std::env::temp_dir().join(format!("ssl-files-{}", std::process::id()));
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert!(matches!(read_bounded(&path, 99), Err(ReadError::TooLarge { size: 100, limit: 99 })));
        assert_eq!(read_bounded(&path, 100).unwrap(), vec![1u8; 100]);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_all_bounded(&[0u8; 10][..], 9, 0), Err(ReadError::TooLarge { size: 10, .. })));
    }
}
