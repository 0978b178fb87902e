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

/// The largest ratio of decompressed to compressed size that deflate can reach (a little under 1032:1); a gzipped
/// file whose header claims more data than this allows is rejected before anything is decompressed.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Reads an IDX file with the given magic; returns its dimensions and its payload of exactly `prod(dims)` bytes.
/// `what` names the payload ("pixel", "label") in error messages. A gzipped file (recognised by its magic `1f 8b`,
/// not by its name) is decompressed only as far as the header's size and one byte more, so memory stays bounded
/// by what the header claims and what the file can hold, whatever the stream would expand to.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let gzipped = raw.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> =
        if gzipped { Box::new(MultiGzDecoder::new(&raw[..])) } else { Box::new(&raw[..]) };
    // Up to `n` more bytes of the (decompressed) content; fewer only where it ends.
    let mut read_up_to = |n: usize, out: &mut Vec<u8>| -> Result<()> {
        (&mut reader)
            .take(n as u64)
            .read_to_end(out)
            .map(|_| ())
            .map_err(|e| Error::file(path, format!("corrupt gzip data: {e}")))
    };
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let mut head = Vec::with_capacity(header);
    read_up_to(header, &mut head)?;
    let be_u32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if head.len() < 4 {
        return Err(Error::file(path, format!("truncated: {} bytes, too short for an IDX header", head.len())));
    }
    let found = be_u32(0);
    if found != magic {
        return Err(Error::file(
            path,
            format!("bad magic number {found} (0x{found:08x}), expected {magic} for an IDX {what} file"),
        ));
    }
    if head.len() < header {
        return Err(Error::file(path, format!("truncated: expected a {header}-byte header, found {}", head.len())));
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be_u32(4 + 4 * d) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::file(path, format!("dimensions {dims:?} overflow")))?;
    if gzipped && expected / MAX_DEFLATE_RATIO > raw.len() {
        return Err(Error::file(
            path,
            format!(
                "dimensions {dims:?} claim {expected} bytes of {what} data, more than {} gzipped bytes can hold",
                raw.len()
            ),
        ));
    }
    // The data, and one byte more if there is one (trailing garbage). A raw file's data is already in memory, so
    // its buffer is sized by the file; a gzipped one's grows with what the stream really yields.
    let mut payload = Vec::with_capacity(expected.min(raw.len().saturating_mul(4)));
    read_up_to(expected.saturating_add(1), &mut payload)?;
    if payload.len() < expected {
        let found = payload.len();
        return Err(Error::file(path, format!("truncated: expected {expected} bytes of {what} data, found {found}")));
    }
    if payload.len() > expected {
        let extra = if gzipped { "at least 1".to_string() } else { (raw.len() - header - expected).to_string() };
        return Err(Error::file(
            path,
            format!("{extra} bytes of trailing garbage after {expected} bytes of {what} data"),
        ));
    }
    Ok((dims, payload))
}
