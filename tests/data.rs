//! Data pipeline and image output: parity with the reference pipeline's goldens, and clean errors on bad input.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ddpm::atomic_write::write_atomic;
use ddpm::data::{load_dataset, load_split, resize_bilinear, to_model_range, Split};
use ddpm::image::save_grid_png;
use ddpm::plot::save_curve_png;
use ddpm::{Error, Tensor};
use flate2::write::GzEncoder;
use safetensors::SafeTensors;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist")
}

/// A fresh empty folder under the system temp dir, unique to this process and test, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("ddpm-test-data-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [2051, n, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(pixels);
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [2049, labels.len() as u32] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(labels);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes raw t10k images and labels files with the given contents into a fresh folder.
fn write_test_split(name: &str, images: &[u8], labels: &[u8]) -> TempDir {
    let dir = temp_dir(name);
    fs::write(dir.join("t10k-images-idx3-ubyte"), images).unwrap();
    fs::write(dir.join("t10k-labels-idx1-ubyte"), labels).unwrap();
    dir
}

/// Loads the test split of `dir`, expects an `Error::File` whose message names `file`, and returns the message.
fn expect_file_error(dir: &Path, file: &str) -> String {
    let err = load_split(dir, Split::Test).expect_err("bad input must be an Err");
    assert!(matches!(err, Error::File { .. }), "not a file error: {err:?}");
    let msg = err.to_string();
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    msg
}

fn golden_u8(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name).unwrap().data().to_vec()
}

#[test]
fn golden_resize_matches_pil_bit_for_bit() {
    let bytes = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mnist_resize.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mnist_u8, labels, resized_u8) =
        (golden_u8(&st, "mnist_u8"), golden_u8(&st, "labels"), golden_u8(&st, "resized_u8"));
    let normalized: Vec<f32> = st
        .tensor("normalized")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();

    let m = load_split(&mnist_dir(), Split::Train).unwrap();
    assert_eq!(&m.images[..16 * 28 * 28], &mnist_u8[..], "first 16 train images differ from the golden");
    assert_eq!(&m.labels[..16], &labels[..]);

    let ours: Vec<u8> =
        mnist_u8.chunks_exact(28 * 28).flat_map(|img| resize_bilinear(img, 28, 28, 32, 32).unwrap()).collect();
    let mismatches = ours.iter().zip(&resized_u8).filter(|(a, b)| a != b).count();
    assert_eq!(mismatches, 0, "{mismatches} of {} resized pixels differ from PIL", resized_u8.len());

    // Exact equality: both sides are the same f32 ops in the same order (v / 255, - 0.5, / 0.5), each correctly
    // rounded by IEEE 754, so there is no room for even 1 ulp of difference.
    let ours: Vec<f32> = resized_u8.iter().map(|&v| to_model_range(v)).collect();
    let mismatches = ours.iter().zip(&normalized).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(mismatches, 0, "{mismatches} normalized values differ from torch");

    // load_dataset chains the same steps.
    let ds = load_dataset(&mnist_dir(), Split::Train).unwrap();
    assert_eq!(ds.images.shape(), &[60000, 1, 32, 32]);
    assert_eq!(&ds.images.data()[..normalized.len()], &normalized[..]);
}

#[test]
fn shipped_mnist_loads() {
    let train = load_split(&mnist_dir(), Split::Train).unwrap();
    assert_eq!((train.n, train.rows, train.cols, train.labels.len()), (60000, 28, 28, 60000));
    assert_eq!(train.images.len(), 60000 * 28 * 28);
    let test = load_dataset(&mnist_dir(), Split::Test).unwrap();
    assert_eq!(test.images.shape(), &[10000, 1, 32, 32]);
    assert_eq!(test.labels.len(), 10000);
    assert!(test.images.data().iter().all(|v| (-1.0..=1.0).contains(v)));
    // Every digit occurs: catches a label file read at the wrong offset.
    assert!((0..10u8).all(|d| test.labels.contains(&d)));
}

#[test]
fn resize_of_constant_image_is_constant() {
    // The weights of every output pixel sum to 1 (to within fixed-point rounding), so flat stays flat.
    for v in [0u8, 1, 128, 255] {
        let out = resize_bilinear(&[v; 28 * 28], 28, 28, 32, 32).unwrap();
        assert!(out.iter().all(|&o| o == v), "constant {v} not preserved");
    }
    assert!(resize_bilinear(&[0; 10], 28, 28, 32, 32).is_err());
}

#[test]
fn missing_folder_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("ddpm-test-data-{}-no-such-folder", std::process::id()));
    let msg = expect_file_error(&dir, "no-such-folder");
    assert!(msg.contains("not found"), "{msg}");
}

#[test]
fn missing_file_is_an_error_naming_the_expected_files() {
    let dir = temp_dir("missing-file");
    fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(1, 28, 28, &[0; 784])).unwrap();
    let msg = expect_file_error(&dir, "t10k-labels-idx1-ubyte");
    assert!(msg.contains("t10k-labels-idx1-ubyte.gz"), "{msg}");
}

#[test]
fn truncated_images_file_is_an_error() {
    // A truncated raw copy of the real test images: the header is intact, the pixel data stops short.
    let real = load_split(&mnist_dir(), Split::Test).unwrap();
    let full = idx_images(10000, 28, 28, &real.images);
    let dir = write_test_split("truncated", &full[..full.len() - 1000], &idx_labels(&real.labels));
    let msg = expect_file_error(&dir, "t10k-images-idx3-ubyte");
    assert!(msg.contains("truncated: expected 7840000 bytes of pixel data, found 7839000"), "{msg}");
}

#[test]
fn trailing_garbage_is_an_error() {
    let mut images = idx_images(2, 28, 28, &[0; 2 * 784]);
    images.extend_from_slice(b"junk");
    let dir = write_test_split("trailing", &images, &idx_labels(&[1, 2]));
    let msg = expect_file_error(&dir, "t10k-images-idx3-ubyte");
    assert!(msg.contains("trailing garbage"), "{msg}");
}

#[test]
fn wrong_magic_is_an_error() {
    // A labels file where the images file should be.
    let dir = write_test_split("magic", &idx_labels(&[1, 2]), &idx_labels(&[1, 2]));
    let msg = expect_file_error(&dir, "t10k-images-idx3-ubyte");
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn wrong_image_size_is_an_error() {
    let dir = write_test_split("size", &idx_images(2, 20, 20, &[0; 2 * 400]), &idx_labels(&[1, 2]));
    let msg = expect_file_error(&dir, "t10k-images-idx3-ubyte");
    assert!(msg.contains("20x20"), "{msg}");
}

#[test]
fn label_count_mismatch_is_an_error() {
    let dir = write_test_split("count", &idx_images(3, 28, 28, &[0; 3 * 784]), &idx_labels(&[1, 2]));
    let msg = expect_file_error(&dir, "t10k-labels-idx1-ubyte");
    assert!(msg.contains("2 labels") && msg.contains("3 images"), "{msg}");
}

#[test]
fn label_out_of_range_is_an_error() {
    let dir = write_test_split("label", &idx_images(2, 28, 28, &[0; 2 * 784]), &idx_labels(&[1, 12]));
    let msg = expect_file_error(&dir, "t10k-labels-idx1-ubyte");
    assert!(msg.contains("label 12 at index 1"), "{msg}");
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = temp_dir("gzip");
    let mut gz = gzip(&idx_images(2, 28, 28, &[0; 2 * 784]));
    let mid = gz.len() / 2;
    gz.truncate(mid);
    fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz).unwrap();
    fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gzip(&idx_labels(&[1, 2]))).unwrap();
    let msg = expect_file_error(&dir, "t10k-images-idx3-ubyte.gz");
    assert!(msg.contains("corrupt gzip"), "{msg}");
}

#[test]
fn gzip_is_detected_by_content_and_raw_is_preferred() {
    // Gzipped bytes under the raw name still load: detection is by the 1f 8b magic, not the name.
    let images = idx_images(2, 28, 28, &[7; 2 * 784]);
    let dir = write_test_split("detect", &gzip(&images), &idx_labels(&[3, 4]));
    // A broken .gz next to a good raw file is ignored.
    fs::write(dir.join("t10k-images-idx3-ubyte.gz"), b"\x1f\x8bbroken").unwrap();
    let m = load_split(&dir, Split::Test).unwrap();
    assert_eq!((m.n, m.labels.as_slice()), (2, &[3u8, 4][..]));
    assert!(m.images.iter().all(|&p| p == 7));
}

#[test]
fn write_atomic_commits_on_success_and_leaves_nothing_on_error() {
    let dir = temp_dir("atomic");
    let path = dir.join("sub/out.bin");
    write_atomic(&path, |w| w.write_all(b"hello").map_err(|e| Error::file("out.bin", e.to_string()))).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello");

    let err = write_atomic(&path, |w| {
        w.write_all(b"half").unwrap();
        Err(Error::Arg("boom".into()))
    });
    assert!(err.is_err());
    assert_eq!(fs::read(&path).unwrap(), b"hello", "the old file must survive a failed write");
    let names: Vec<_> = fs::read_dir(dir.join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["out.bin"], "a temporary file was left behind");
}

fn decode_png(path: &Path) -> (png::OutputInfo, Vec<u8>) {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info, buf)
}

#[test]
fn grid_png_has_torchvision_layout_and_values() {
    let dir = temp_dir("grid");
    let (n, h, w) = (10, 32, 32);
    // Image i is the constant (i / 9) * 2 - 1, so it maps to u8(i / 9 * 255 + 0.5).
    let data: Vec<f32> = (0..n).flat_map(|i| vec![i as f32 / 9.0 * 2.0 - 1.0; h * w]).collect();
    let images = Tensor::new(&[n, 1, h, w], data).unwrap();
    let path = dir.join("grid.png");
    save_grid_png(&path, &images, 8).unwrap();
    let (info, rgb) = decode_png(&path);
    assert_eq!((info.width, info.height), (8 * 34 + 2, 2 * 34 + 2));
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    let px = |x: usize, y: usize| &rgb[(y * info.width as usize + x) * 3..][..3];
    assert_eq!(px(0, 0), [0, 0, 0], "padding is 0");
    assert_eq!(px(2, 2), [0, 0, 0], "image 0 is -1 -> 0");
    assert_eq!(px(7 * 34 + 2, 2), [198, 198, 198], "image 7: u8(7/9 * 255 + 0.5) = u8(198.83) = 198");
    assert_eq!(px(34 + 2 + 5, 34 + 2 + 5), [255, 255, 255], "image 9 is +1 -> 255");
    assert_eq!(px(2 * 34 + 2, 34 + 2), [0, 0, 0], "cells past n stay padding");

    // A single image is written alone, without padding, as make_grid does.
    save_grid_png(&path, &Tensor::full(&[1, 1, h, w], 0.0), 8).unwrap();
    let (info, rgb) = decode_png(&path);
    assert_eq!((info.width, info.height, rgb[0]), (32, 32, 128));
    assert!(save_grid_png(&path, &Tensor::zeros(&[2, 2, h, w]), 8).is_err());
}

#[test]
fn curve_png_is_written() {
    let dir = temp_dir("curve");
    let path = dir.join("loss.png");
    let series: Vec<(f64, f64)> = (1..=500).map(|i| (i as f64, 1.0 / i as f64)).collect();
    save_curve_png(&path, &series, "training loss", "step", "loss").unwrap();
    let (info, rgb) = decode_png(&path);
    assert_eq!((info.width, info.height), (640, 400));
    assert!(rgb.chunks_exact(3).any(|p| p == [31, 119, 180]), "no curve drawn");
    // Text is black and drawn outside the axes box: the title in the top rows, the x axis name in the bottom ones.
    let black_in_rows = |rows: std::ops::Range<usize>| {
        rows.flat_map(|y| (0..640).map(move |x| (y * 640 + x) * 3)).any(|at| rgb[at..at + 3] == [0, 0, 0])
    };
    assert!(black_in_rows(0..30), "no title");
    assert!(black_in_rows(380..400), "no x axis name");
    save_curve_png(&path, &[], "empty", "x", "y").unwrap();
}
