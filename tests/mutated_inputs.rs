//! Mutation tests of every reader of untrusted files: thousands of IDX, gzip and safetensors files derived from real
//! ones (the shipped MNIST test split, the shipped classifier, a checkpoint and small files written by our writer)
//! by a fixed-seed RNG — flipped bits and bytes, truncations, junk appended or inserted, header fields set to huge or
//! inconsistent values, edited JSON headers, damaged gzip headers and trailers — are handed to the public readers.
//! Each one must load or return an error: a panic fails the test, and so does an abort, since it kills the whole
//! test binary. A reader that believed a header's size claim and asked for a huge buffer would abort too: this
//! binary's allocator refuses any single allocation above `ALLOC_CAP`, far above what any of these small files
//! needs, so such an attempt aborts here whether or not the machine could have satisfied it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ddpm::checkpoint::{load_for_sampling, load_train_state, save};
use ddpm::data::{load_dataset, Split};
use ddpm::nn::{Classifier, UNetConfig};
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::train::{RunConfig, TrainState};
use ddpm::Tensor;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// The largest single allocation this test binary grants (256 MiB); every legitimate load here needs a few MB.
const ALLOC_CAP: usize = 256 << 20;

/// The system allocator, refusing requests above [`ALLOC_CAP`] (the refusal aborts with "memory allocation of N
/// bytes failed").
struct CappedAlloc;

unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Images taken from the real test split for the small IDX files.
const IDX_IMAGES: usize = 20;

/// Outcomes of one kind of input.
struct Tally {
    kind: &'static str,
    tried: usize,
    loaded: usize,
    errors: usize,
    /// Description of each input that panicked, with the panic's message.
    panics: Vec<String>,
    start: Instant,
}

impl Tally {
    fn new(kind: &'static str) -> Self {
        Tally { kind, tried: 0, loaded: 0, errors: 0, panics: Vec::new(), start: Instant::now() }
    }

    /// Runs one reader call on one mutated input, counting its outcome.
    fn run(&mut self, what: &str, read: impl FnOnce() -> ddpm::Result<()>) {
        self.tried += 1;
        match catch_unwind(AssertUnwindSafe(read)) {
            Ok(Ok(())) => self.loaded += 1,
            Ok(Err(_)) => self.errors += 1,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.panics.push(format!("{what}: {msg}"));
            }
        }
    }

    /// Prints the summary line and fails on any panic.
    fn finish(self) {
        eprintln!(
            "mutated {}: {} files tried, {} loaded, {} errors, {} panics ({:.1} s)",
            self.kind,
            self.tried,
            self.loaded,
            self.errors,
            self.panics.len(),
            self.start.elapsed().as_secs_f64()
        );
        assert!(self.panics.is_empty(), "{} readers panicked on:\n{}", self.kind, self.panics.join("\n"));
    }
}

/// A fresh scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ddpm-mutated-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Values that break size arithmetic: zero, one, the extremes of u32 and of its sign bit.
const SPECIAL_U32: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// A position in `0..len`, in the first `hot` bytes (the header) seven times in ten.
fn pos(rng: &mut StdRng, len: usize, hot: usize) -> usize {
    if hot > 0 && hot < len && rng.random_bool(0.7) {
        rng.random_range(0..hot)
    } else {
        rng.random_range(0..len.max(1))
    }
}

/// One format-blind mutation of `b` (with `hot` the length of its header), described.
fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>, hot: usize) -> String {
    if b.is_empty() {
        b.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>()));
        return "junk from nothing".into();
    }
    let len = b.len();
    match rng.random_range(0..8) {
        0 => {
            let k = rng.random_range(1..=8);
            let at: Vec<(usize, u8)> = (0..k).map(|_| (pos(rng, len, hot), rng.random_range(0..8))).collect();
            at.iter().for_each(|&(p, bit)| b[p] ^= 1 << bit);
            format!("bits flipped at {at:?}")
        }
        1 => {
            let k = rng.random_range(1..=8);
            let at: Vec<(usize, u8)> = (0..k).map(|_| (pos(rng, len, hot), rng.random())).collect();
            at.iter().for_each(|&(p, v)| b[p] = v);
            format!("bytes set {at:?}")
        }
        2 => {
            let to =
                if rng.random_bool(0.5) { rng.random_range(0..(hot + 16).min(len)) } else { rng.random_range(0..len) };
            b.truncate(to);
            format!("truncated to {to} of {len} bytes")
        }
        3 => {
            let k = rng.random_range(1..=64);
            b.extend((0..k).map(|_| rng.random::<u8>()));
            format!("{k} junk bytes appended")
        }
        4 => {
            let p = pos(rng, len, hot);
            let k = rng.random_range(1..=16).min(len - p);
            b.drain(p..p + k);
            format!("{k} bytes deleted at {p}")
        }
        5 => {
            let p = pos(rng, len, hot);
            let k = rng.random_range(1..=16);
            let junk: Vec<u8> = (0..k).map(|_| rng.random()).collect();
            b.splice(p..p, junk);
            format!("{k} junk bytes inserted at {p}")
        }
        6 => {
            let p = pos(rng, len, hot).min(len.saturating_sub(4));
            let v = SPECIAL_U32[rng.random_range(0..SPECIAL_U32.len())];
            let bytes = if rng.random_bool(0.5) { v.to_be_bytes() } else { v.to_le_bytes() };
            let end = (p + 4).min(len);
            b[p..end].copy_from_slice(&bytes[..end - p]);
            format!("u32 {v:#x} written at {p}")
        }
        _ => {
            let a = mutate_bytes(rng, b, hot);
            let c = mutate_bytes(rng, b, hot);
            format!("{a}, then {c}")
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// IDX and gzip

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
    b.extend_from_slice(payload);
    b
}

/// One IDX-aware mutation: the magic (element type, dimension count), a dimension, or a format-blind one.
fn mutate_idx(rng: &mut StdRng, b: &mut Vec<u8>) -> String {
    let ndims = (b[3] as usize).min(3);
    let header = 4 + 4 * ndims;
    match rng.random_range(0..4) {
        0 => {
            let magic = match rng.random_range(0..4) {
                0 => 0x0000_0800 | rng.random_range(0..=255u32),
                1 => [2049, 2051, 0x0000_0903, 0x0000_0d03, 0x0803_0000][rng.random_range(0..5)],
                2 => SPECIAL_U32[rng.random_range(0..SPECIAL_U32.len())],
                _ => rng.random(),
            };
            b[..4].copy_from_slice(&magic.to_be_bytes());
            format!("magic set to {magic:#010x}")
        }
        1 | 2 => {
            let d = rng.random_range(0..ndims.max(1));
            let old = u32::from_be_bytes(b[4 + 4 * d..8 + 4 * d].try_into().unwrap());
            let v = match rng.random_range(0..4) {
                0 => SPECIAL_U32[rng.random_range(0..SPECIAL_U32.len())],
                1 => old.wrapping_add(1),
                2 => old.wrapping_sub(1),
                _ => rng.random_range(0..100_000),
            };
            b[4 + 4 * d..8 + 4 * d].copy_from_slice(&v.to_be_bytes());
            format!("dimension {d} set from {old} to {v}")
        }
        _ => mutate_bytes(rng, b, header),
    }
}

/// One mutation of a gzip stream: its header (magic, method, flags, so that the deflate data is read as an
/// extra field, a name or a header CRC), its trailer (CRC, length), its deflate data, or what follows it.
fn mutate_gzip(rng: &mut StdRng, gz: &mut Vec<u8>, member: &[u8]) -> String {
    let len = gz.len();
    match rng.random_range(0..8) {
        0 => {
            let (p, v) = (rng.random_range(0..10), rng.random::<u8>());
            gz[p] = v;
            format!("gzip header byte {p} set to {v:#04x}")
        }
        1 => {
            let flags = rng.random_range(0..32u8);
            gz[3] = flags;
            format!("gzip flags set to {flags:#04x}")
        }
        2 => {
            let p = len - 8 + rng.random_range(0..4);
            gz[p] ^= 1 << rng.random_range(0..8);
            format!("gzip CRC bit flipped at {p}")
        }
        3 => {
            let v = SPECIAL_U32[rng.random_range(0..SPECIAL_U32.len())];
            gz[len - 4..].copy_from_slice(&v.to_le_bytes());
            format!("gzip length field set to {v:#x}")
        }
        4 => {
            let to = rng.random_range(len.saturating_sub(12)..len);
            gz.truncate(to);
            format!("gzip truncated in its trailer, to {to} of {len}")
        }
        5 => {
            gz.extend_from_slice(member);
            "a second gzip member appended".into()
        }
        6 => {
            let empty = gzip(&[]);
            gz.extend_from_slice(&empty);
            "an empty gzip member appended".into()
        }
        _ => {
            let hot = 10.min(len);
            mutate_bytes(rng, gz, hot)
        }
    }
}

const IMAGES: &str = "t10k-images-idx3-ubyte";
const LABELS: &str = "t10k-labels-idx1-ubyte";

/// Writes the two files of the test split into `dir` under their raw or `.gz` names, removing the others.
fn write_split(dir: &Path, images: (&[u8], bool), labels: (&[u8], bool)) {
    for (base, (bytes, gz)) in [(IMAGES, images), (LABELS, labels)] {
        let (raw_name, gz_name) = (dir.join(base), dir.join(format!("{base}.gz")));
        let _ = fs::remove_file(&raw_name);
        let _ = fs::remove_file(&gz_name);
        fs::write(if gz { gz_name } else { raw_name }, bytes).unwrap();
    }
}

#[test]
fn mutated_idx_and_gzip_files_load_or_fail_cleanly() {
    let mnist = common::repo_path("data/mnist");
    let real_images = gunzip(&fs::read(mnist.join(format!("{IMAGES}.gz"))).unwrap());
    let real_labels_gz = fs::read(mnist.join(format!("{LABELS}.gz"))).unwrap();
    let real_labels = gunzip(&real_labels_gz);
    let n = IDX_IMAGES as u32;
    let images = idx(2051, &[n, 28, 28], &real_images[16..16 + IDX_IMAGES * 784]);
    let labels = idx(2049, &[n], &real_labels[8..8 + IDX_IMAGES]);
    let (images_gz, labels_gz) = (gzip(&images), gzip(&labels));
    let scratch = Scratch::new("idx");
    let dir = scratch.0.as_path();
    write_split(dir, (&images, false), (&labels_gz, true));
    assert!(load_dataset(dir, Split::Test).is_ok(), "the unmutated small split must load");

    let mut rng = StdRng::seed_from_u64(0x1d8);
    let mut tally = Tally::new("IDX/gzip (MNIST test split: 20 images, raw and gzipped, and the shipped labels .gz)");
    for case in 0..4000 {
        // Which file is mutated, and how: 0/1 raw images/labels, 2/3 gzipped ones mutated before compression,
        // 4/5 gzipped ones with a damaged gzip stream, 6 the shipped 10000-label file's gzip stream.
        let target = rng.random_range(0..7);
        let is_images = target % 2 == 0 && target < 6;
        let (raw, raw_gz) = if is_images { (&images, &images_gz) } else { (&labels, &labels_gz) };
        let (bytes, gz, what) = match target {
            0 | 1 => {
                let mut b = raw.clone();
                let what = mutate_idx(&mut rng, &mut b);
                (b, false, what)
            }
            2 | 3 => {
                let mut b = raw.clone();
                let what = mutate_idx(&mut rng, &mut b);
                (gzip(&b), true, format!("{what}, gzipped"))
            }
            4 | 5 => {
                let mut b = raw_gz.clone();
                let what = mutate_gzip(&mut rng, &mut b, raw_gz);
                (b, true, what)
            }
            _ => {
                let mut b = real_labels_gz.clone();
                let what = mutate_gzip(&mut rng, &mut b, &real_labels_gz);
                (b, true, format!("shipped labels: {what}"))
            }
        };
        if is_images {
            write_split(dir, (&bytes, gz), (&labels, false));
        } else {
            write_split(dir, (&images, false), (&bytes, gz));
        }
        let file = if is_images { IMAGES } else { LABELS };
        tally.run(&format!("case {case}, {file}: {what}"), || load_dataset(dir, Split::Test).map(|_| ()));
    }
    tally.finish();
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors

/// `(header JSON, data)` of a well-formed safetensors file.
fn split_safetensors(b: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (String::from_utf8(b[8..8 + n].to_vec()).unwrap(), b[8 + n..].to_vec())
}

fn join_safetensors(len_field: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = len_field.to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

/// Replaces the value that follows one occurrence (chosen by `rng`) of `key` in `header` up to `end`.
fn replace_after(rng: &mut StdRng, header: &str, key: &str, end: char, value: &str) -> Option<String> {
    let starts: Vec<usize> = header.match_indices(key).map(|(i, _)| i + key.len()).collect();
    let &start = starts.get(rng.random_range(0..starts.len().max(1)))?;
    let stop = start + header[start..].find(end)?;
    Some(format!("{}{value}{}", &header[..start], &header[stop..]))
}

const DTYPES: [&str; 12] = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "I8", "BOOL", "F8_E4M3", "F4", "XYZ"];

/// Shapes whose element counts overflow, are huge or negative, or are not integers.
const SHAPES: [&str; 12] = [
    "[]",
    "[0]",
    "[1000000000000]",
    "[4294967296,4294967296,4294967296]",
    "[18446744073709551615,2]",
    "[0,18446744073709551615]",
    "[18446744073709551616]",
    "[-1]",
    "[1.5]",
    "[\"8\"]",
    "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]",
    "[3,0,3]",
];

/// Metadata values of a checkpoint, per key. The model's sizes only take small values: loading builds a model of
/// the sizes the metadata claims before comparing it with the tensors (see the report in README).
fn metadata_values(key: &str) -> &'static [&'static str] {
    match key {
        "in_ch" | "base" | "t_dim" => &["", "0", "1", "2", "3", "7", "8", "9", "16", "-8", "8.0", "x"],
        "schedule" => &["", "linear", "cosine", "Cosine", "none", "x"],
        "classes" => &["", "0", "1", "3", "10", "11", "65536", "65537", "-1", "x"],
        _ => &[
            "",
            "0",
            "1",
            "-1",
            "2",
            "1e-3",
            "NaN",
            "inf",
            "-0",
            "1e400",
            "none",
            "true",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "\\u0000",
        ],
    }
}

const CHECKPOINT_KEYS: [&str; 17] = [
    "format",
    "in_ch",
    "base",
    "t_dim",
    "classes",
    "timesteps",
    "schedule",
    "epochs",
    "batch",
    "lr",
    "ema_decay",
    "ema_warmup",
    "seed",
    "max_steps",
    "step",
    "adam_step",
    "ema_updates",
];

/// One safetensors-aware mutation of `file`: its length field, its JSON header (dtypes, shapes, offsets, names,
/// metadata, structure), or a format-blind one concentrated on the header.
fn mutate_safetensors(rng: &mut StdRng, file: &[u8]) -> (Vec<u8>, String) {
    let (header, data) = split_safetensors(file);
    let hot = 8 + header.len();
    let n = header.len() as u64;
    let op = rng.random_range(0..12);
    let edited: Option<(String, String)> = match op {
        0 => {
            let v = [
                0,
                1,
                7,
                n - 1,
                n + 1,
                n + 8,
                file.len() as u64,
                100_000_000,
                100_000_001,
                1 << 32,
                1 << 63,
                u64::MAX,
                rng.random(),
            ][rng.random_range(0..13)];
            return (join_safetensors(v, header.as_bytes(), &data), format!("header length field set to {v}"));
        }
        1 => {
            let d = DTYPES[rng.random_range(0..DTYPES.len())];
            replace_after(rng, &header, "\"dtype\":\"", '"', d).map(|h| (h, format!("a dtype set to {d}")))
        }
        2 => {
            let s = if rng.random_bool(0.7) {
                SHAPES[rng.random_range(0..SHAPES.len())].to_string()
            } else {
                let dims: Vec<String> =
                    (0..rng.random_range(0..5)).map(|_| rng.random_range(0..9).to_string()).collect();
                format!("[{}]", dims.join(","))
            };
            replace_after(rng, &header, "\"shape\":", ']', &s[..s.len() - 1])
                .map(|h| (h, format!("a shape set to {s}")))
        }
        3 => {
            let big = data.len() as u64;
            let (a, b) = match rng.random_range(0..7) {
                0 => (0, 0),
                1 => (0, big),
                2 => (big, big + 4),
                3 => (16, 8),
                4 => (0, u64::MAX),
                5 => (u64::MAX - 3, u64::MAX),
                _ => (rng.random_range(0..big + 8), rng.random_range(0..big + 8)),
            };
            let v = format!("[{a},{b}]");
            replace_after(rng, &header, "\"data_offsets\":", ']', &v[..v.len() - 1])
                .map(|h| (h, format!("a data_offsets set to {v}")))
        }
        4 => {
            // Two tensors' offsets swapped: overlapping or out-of-order ranges.
            let offsets: Vec<(usize, usize)> = header
                .match_indices("\"data_offsets\":[")
                .filter_map(|(i, k)| {
                    let s = i + k.len();
                    header[s..].find(']').map(|e| (s, s + e))
                })
                .collect();
            (offsets.len() >= 2).then(|| {
                let i = rng.random_range(0..offsets.len() - 1);
                let j = rng.random_range(i + 1..offsets.len());
                let (a, b) = (offsets[i], offsets[j]);
                let h = format!(
                    "{}{}{}{}{}",
                    &header[..a.0],
                    &header[b.0..b.1],
                    &header[a.1..b.0],
                    &header[a.0..a.1],
                    &header[b.1..]
                );
                (h, format!("data_offsets of tensors {i} and {j} swapped"))
            })
        }
        5 => {
            let key = CHECKPOINT_KEYS[rng.random_range(0..CHECKPOINT_KEYS.len())];
            let values = metadata_values(key);
            let v = values[rng.random_range(0..values.len())];
            replace_after(rng, &header, &format!("\"{key}\":\""), '"', v)
                .map(|h| (h, format!("metadata `{key}` set to {v:?}")))
        }
        6 => {
            let replacement = ["", "\"__metadata__\":{\"format\":1},", "\"__metadata__\":{\"a\":{\"b\":\"c\"}},"]
                [rng.random_range(0..3)];
            header.find("\"__metadata__\":{").and_then(|s| {
                let e = s + header[s..].find("},")? + 2;
                Some((
                    format!("{}{replacement}{}", &header[..s], &header[e..]),
                    format!("metadata replaced by {replacement:?}"),
                ))
            })
        }
        7 => {
            // A tensor's entry repeated (a duplicate key) or its name changed.
            let starts: Vec<usize> = header.match_indices("\":{\"dtype\"").map(|(i, _)| i).collect();
            let repeat = rng.random_bool(0.5);
            starts.get(rng.random_range(0..starts.len().max(1))).and_then(|&at| {
                let name_start = header[..at].rfind('"')?;
                let entry_end = at + header[at..].find('}')? + 1;
                if repeat {
                    let entry = &header[name_start..entry_end];
                    Some((
                        format!("{},{entry}{}", &header[..entry_end], &header[entry_end..]),
                        "a tensor entry repeated".into(),
                    ))
                } else {
                    let mut h = header.clone().into_bytes();
                    if at > name_start + 1 {
                        h[at - 1] ^= 1;
                    }
                    String::from_utf8(h).ok().map(|h| (h, "a tensor renamed".into()))
                }
            })
        }
        8 => {
            let h = [
                "",
                "{}",
                "[]",
                "null",
                "{\"a\":null}",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000000000],\"data_offsets\":[0,4000000000000]}}",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
            ][rng.random_range(0..7)];
            Some((h.to_string(), format!("header replaced by {h:?}")))
        }
        9 => {
            let depth = [64, 1000, 100_000][rng.random_range(0..3)];
            Some(("[".repeat(depth) + &"]".repeat(depth), format!("header of {depth} nested arrays")))
        }
        _ => {
            let mut b = file.to_vec();
            let what = mutate_bytes(rng, &mut b, hot);
            return (b, what);
        }
    };
    match edited {
        Some((h, what)) => {
            // Usually with a consistent length field (padded to 8 as writers do), sometimes with the old one.
            if rng.random_bool(0.8) {
                let mut h = h.into_bytes();
                h.resize(h.len().next_multiple_of(8), b' ');
                (join_safetensors(h.len() as u64, &h, &data), what)
            } else {
                (join_safetensors(n, h.as_bytes(), &data), format!("{what}, old length field"))
            }
        }
        None => {
            let mut b = file.to_vec();
            let what = mutate_bytes(rng, &mut b, hot);
            (b, what)
        }
    }
}

/// Mutates `sources` (name, bytes) `cases` times and hands each result, written to a file, to `read`.
fn run_safetensors(
    tally: &mut Tally,
    seed: u64,
    cases: usize,
    sources: &[(&str, Vec<u8>)],
    read: impl Fn(&Path, usize) -> ddpm::Result<()>,
) {
    let scratch = Scratch::new(&format!("st-{seed}"));
    let path = scratch.0.join("file.safetensors");
    for (name, bytes) in sources {
        fs::write(&path, bytes).unwrap();
        read(&path, 0).unwrap_or_else(|e| panic!("the unmutated {name} must load: {e}"));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..cases {
        let (name, source) = &sources[rng.random_range(0..sources.len())];
        let (bytes, what) = mutate_safetensors(&mut rng, source);
        fs::write(&path, &bytes).unwrap();
        tally.run(&format!("case {case}, {name}: {what}"), || read(&path, case));
    }
}

/// A small file of f32, i64 and u8 tensors with metadata, as the `safetensors` crate writes it.
fn mixed_dtypes_file() -> Vec<u8> {
    let f: Vec<u8> = (0..12).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let l: Vec<u8> = (0..5i64).flat_map(|i| (i - 2).to_le_bytes()).collect();
    let u: Vec<u8> = (0..16).collect();
    let views = vec![
        ("x".to_string(), TensorView::new(Dtype::F32, vec![3, 4], &f).unwrap()),
        ("t".to_string(), TensorView::new(Dtype::I64, vec![5], &l).unwrap()),
        ("labels".to_string(), TensorView::new(Dtype::U8, vec![2, 8], &u).unwrap()),
    ];
    let meta = [("note".to_string(), "golden".to_string())].into_iter().collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn mutated_safetensors_files_load_or_fail_cleanly() {
    let scratch = Scratch::new("st-sources");
    let written = scratch.0.join("written.safetensors");
    let a = Tensor::new(&[2, 3, 4], (0..24).map(|i| i as f32 - 7.5).collect()).unwrap();
    let b = Tensor::new(&[4], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE]).unwrap();
    let c = Tensor::zeros(&[0, 3]);
    let named = [("noise".to_string(), &a), ("b.bias".to_string(), &b), ("empty".to_string(), &c)];
    let meta = [("format", "test"), ("step", "12"), ("lr", "0.001")].map(|(k, v)| (k.to_string(), v.to_string()));
    write_tensors(&written, &named, Some(meta.into_iter().collect())).unwrap();
    let sources = [("tensor_file output", fs::read(&written).unwrap()), ("mixed dtypes", mixed_dtypes_file())];

    let mut tally = Tally::new("safetensors (read_tensors: our writer's output and f32/i64/u8 with metadata)");
    run_safetensors(&mut tally, 0x57, 4000, &sources, |p, _| {
        let f = read_tensors(p)?;
        // The accessors the CLI uses on files it is given.
        let _ = (f.f32("noise"), f.i64("t"), f.f32_with_prefix("b."));
        Ok(())
    });
    tally.finish();
}

#[test]
fn mutated_classifier_files_load_or_fail_cleanly() {
    let shipped = fs::read(common::repo_path("data/mnist-classifier.safetensors")).unwrap();
    let mut tally = Tally::new("classifier (Classifier::load on the shipped weights)");
    run_safetensors(&mut tally, 0xc1, 300, &[("shipped classifier", shipped)], |p, _| Classifier::load(p).map(|_| ()));
    tally.finish();
}

#[test]
fn mutated_checkpoints_load_or_fail_cleanly() {
    let scratch = Scratch::new("ckpt-sources");
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 8, classes: 0 },
        timesteps: 10,
        schedule: ddpm::diffusion::ScheduleKind::Cosine,
        epochs: 1,
        batch: 2,
        lr: 1e-3,
        ema_decay: 0.9,
        ema_warmup: true,
        seed: 3,
        max_steps: Some(4),
    };
    let state = TrainState::new(config).unwrap();
    let ckpt = scratch.0.join("checkpoint.safetensors");
    save(&state, &ckpt).unwrap();
    // The same weights as a plain PyTorch state dict (no prefix, no metadata), the other format sampling reads.
    let plain = scratch.0.join("plain.safetensors");
    let named: Vec<(String, &Tensor)> = state.params.iter().map(|(n, t)| (n.to_string(), t)).collect();
    write_tensors(&plain, &named, None).unwrap();
    let sources = [("checkpoint", fs::read(&ckpt).unwrap()), ("plain state dict", fs::read(&plain).unwrap())];

    let mut tally = Tally::new("checkpoint (load_train_state, load_for_sampling; ours and a plain state dict)");
    run_safetensors(&mut tally, 0xcc, 600, &sources, |p, case| {
        if case % 2 == 0 {
            load_for_sampling(p, case % 4 == 0).map(|_| ())
        } else {
            load_train_state(p).map(|_| ())
        }
    });
    tally.finish();
}

#[test]
fn gzip_bomb_behind_a_small_idx_header_is_not_decompressed() {
    // A valid gzipped labels file of 20 labels followed by 300 more gzip members of 1 MiB of zeros each: 300 MiB
    // of trailing garbage in a file of about 300 KB. The reader must stop after the 20 labels and one byte more;
    // decompressing it all would pass `ALLOC_CAP` and abort this binary.
    let labels = idx(2049, &[IDX_IMAGES as u32], &[3; IDX_IMAGES]);
    let images = idx(2051, &[IDX_IMAGES as u32, 28, 28], &[0; IDX_IMAGES * 784]);
    let zeros = gzip(&vec![0; 1 << 20]);
    let mut bomb = gzip(&labels);
    (0..300).for_each(|_| bomb.extend_from_slice(&zeros));
    let scratch = Scratch::new("bomb");
    write_split(&scratch.0, (&images, false), (&bomb, true));
    let err = load_dataset(&scratch.0, Split::Test).unwrap_err().to_string();
    assert!(err.contains("trailing garbage"), "{err}");
    // A header that claims more than its gzipped file could ever expand to is refused before decompressing.
    let claim = idx(2051, &[0x00ff_ffff, 28, 28], &[]);
    write_split(&scratch.0, (&gzip(&claim), true), (&labels, false));
    let err = load_dataset(&scratch.0, Split::Test).unwrap_err().to_string();
    assert!(err.contains("more than"), "{err}");
}
