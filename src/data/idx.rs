//! The IDX file format of MNIST: a big-endian header (magic `0x0000_08_NN`: unsigned bytes, NN dimensions, then NN
//! u32 sizes) followed by exactly `prod(sizes)` bytes. Files may be gzipped.

use std::fs;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// Magic of an IDX file of u8 images `[n, rows, cols]`.
const IMAGES_MAGIC: u32 = 2051;
/// Magic of an IDX file of u8 labels `[n]`.
const LABELS_MAGIC: u32 = 2049;

/// Reads `path` and returns `(n, rows, cols, pixels)`, `pixels` row-major `[n, rows, cols]`.
pub(super) fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC, "pixel")?;
    Ok((dims[0], dims[1], dims[2], pixels))
}

/// Reads `path` and returns its labels, each checked to be a digit `0..=9`.
pub(super) fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, labels) = read_idx(path, LABELS_MAGIC, "label")?;
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::file(path, format!("label {l} at index {i} is not a digit 0..=9")));
    }
    Ok(labels)
}

/// The file's bytes, gunzipped when it starts with the gzip magic `1f 8b` (the name is not trusted either way).
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::file(path, format!("corrupt gzip data: {e}")))?;
    Ok(out)
}

/// Reads an IDX file with the given magic; returns its dimensions and its payload of exactly `prod(dims)` bytes.
/// `what` names the payload ("pixel", "label") in error messages.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut bytes = read_bytes(path)?;
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let be_u32 = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if bytes.len() < 4 {
        return Err(Error::file(path, format!("truncated: {} bytes, too short for an IDX header", bytes.len())));
    }
    let found = be_u32(0);
    if found != magic {
        return Err(Error::file(
            path,
            format!("bad magic number {found} (0x{found:08x}), expected {magic} for an IDX {what} file"),
        ));
    }
    if bytes.len() < header {
        return Err(Error::file(path, format!("truncated: expected a {header}-byte header, found {}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be_u32(4 + 4 * d) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::file(path, format!("dimensions {dims:?} overflow")))?;
    let payload = bytes.len() - header;
    if payload < expected {
        return Err(Error::file(path, format!("truncated: expected {expected} bytes of {what} data, found {payload}")));
    }
    if payload > expected {
        return Err(Error::file(
            path,
            format!("{} bytes of trailing garbage after {expected} bytes of {what} data", payload - expected),
        ));
    }
    bytes.drain(..header);
    Ok((dims, bytes))
}
