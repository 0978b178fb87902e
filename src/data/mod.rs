//! MNIST loading: the four IDX files (raw or gzipped), validated, resized 28x28 -> 32x32 exactly as the reference
//! pipeline's `transforms.Resize(32)` and scaled to [-1, 1].

mod idx;
mod resize;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use resize::{resize_bilinear, to_model_range};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Side of the MNIST images in the files.
pub const MNIST_SIDE: usize = 28;
/// Side of the images the model sees, after resizing.
pub const IMAGE_SIDE: usize = 32;

/// Which half of MNIST to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images (`train-*`).
    Train,
    /// The 10,000 test images (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// One MNIST split as stored: `n` u8 images of `rows x cols` and their digit labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// Pixels, row-major `[n, rows, cols]`, 0 = background.
    pub images: Vec<u8>,
    /// Digit of each image, `0..=9`.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image height (28).
    pub rows: usize,
    /// Image width (28).
    pub cols: usize,
}

/// Loads and validates one split from `dir`, which holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each raw or
/// `.gz` (raw preferred when both exist). Every problem is an `Err` naming the folder or file.
pub fn load_split(dir: &Path, split: Split) -> Result<Mnist> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "MNIST folder not found"));
    }
    let images_path = find(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
    let labels_path = find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
    let (n, rows, cols, images) = idx::read_images(&images_path)?;
    if (rows, cols) != (MNIST_SIDE, MNIST_SIDE) {
        return Err(Error::file(
            &images_path,
            format!("images are {rows}x{cols}; the pipeline resizes 28x28 MNIST digits to 32x32 and needs 28x28"),
        ));
    }
    let labels = idx::read_labels(&labels_path)?;
    if labels.len() != n {
        return Err(Error::file(
            &labels_path,
            format!("{} labels, but {} holds {n} images", labels.len(), images_path.display()),
        ));
    }
    Ok(Mnist { images, labels, n, rows, cols })
}

/// `dir/base` if it exists, else `dir/base.gz`, else an `Err` naming both.
fn find(dir: &Path, base: &str) -> Result<PathBuf> {
    let raw = dir.join(base);
    let gz = dir.join(format!("{base}.gz"));
    [raw, gz]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::file(dir, format!("missing MNIST file: expected {base} or {base}.gz")))
}

/// A split ready for the model.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `[n, 1, 32, 32]`, each pixel `to_model_range(resize_bilinear(u8 image))`, in [-1, 1].
    pub images: Tensor,
    /// Digit of each image, `0..=9`.
    pub labels: Vec<u8>,
}

/// Loads a split with [`load_split`] and applies the reference transform to every image (in parallel):
/// PIL bilinear resize 28x28 -> 32x32 on u8, then `(v / 255 - 0.5) / 0.5`.
pub fn load_dataset(dir: &Path, split: Split) -> Result<Dataset> {
    let m = load_split(dir, split)?;
    let out_len = IMAGE_SIDE * IMAGE_SIDE;
    let mut data = vec![0.0f32; m.n * out_len];
    data.par_chunks_mut(out_len).zip(m.images.par_chunks(m.rows * m.cols)).try_for_each(|(out, img)| {
        out.copy_from_slice(&to_model_image(img, m.cols, m.rows)?);
        Ok::<_, Error>(())
    })?;
    Ok(Dataset { images: Tensor::new(&[m.n, 1, IMAGE_SIDE, IMAGE_SIDE], data)?, labels: m.labels })
}

/// The reference transform of one 8-bit gray image of `w x h` (row-major, 0 = background): resized to 32x32 as
/// [`resize_bilinear`] does (not at all when it is 32x32 already) and mapped to [-1, 1] by [`to_model_range`].
pub fn to_model_image(pixels: &[u8], w: usize, h: usize) -> Result<Vec<f32>> {
    let resized = if (w, h) == (IMAGE_SIDE, IMAGE_SIDE) && pixels.len() == w * h {
        pixels.to_vec()
    } else {
        resize_bilinear(pixels, w, h, IMAGE_SIDE, IMAGE_SIDE)?
    };
    Ok(resized.into_iter().map(to_model_range).collect())
}
