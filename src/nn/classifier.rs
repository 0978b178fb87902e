//! A small CNN that classifies the 32x32, [-1, 1] MNIST digits the diffusion model sees (`crate::data`), made of
//! our own ops; its penultimate features and class probabilities are what sample-quality scores (FID) compare.
//!
//! `conv3x3(1→32) → ReLU → maxpool` (16x16), `conv3x3(32→64) → ReLU → maxpool` (8x8),
//! `conv3x3(64→128) → ReLU → maxpool` (4x4), flatten (2048), `linear(2048→128) → ReLU` (the [`FEATURE_DIM`]
//! features), `linear(128→10)` (the logits). Parameter names are those of the same network as a PyTorch module
//! (`conv1`, `conv2`, `conv3`, `fc1`, `fc2`), initialised as PyTorch initialises them.
//!
//! The shipped weights [`DEFAULT_WEIGHTS`] come from `cargo run --release -- train-classifier` (its defaults: 3
//! epochs of batch 128, AdamW lr 1e-3, seed 0; deterministic for a seed on a given machine); the README's "Sample
//! quality" gives their test accuracy, and `tests/classifier.rs` checks at least 98.5%.

use super::layers::{Conv2d, Linear};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::IMAGE_SIDE;
use crate::error::{Error, Result};
use crate::ops::conv::ConvExtra;
use crate::ops::loss::log_sum_exp;
use crate::params::Params;
use crate::shape_err;
use crate::tensor::Tensor;
use crate::tensor_file::{read_tensors, write_tensors};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::Path;

/// Width of the penultimate features (after `fc1` and its ReLU).
pub const FEATURE_DIM: usize = 128;
/// The ten digits.
pub const CLASSES: usize = 10;
/// Where `ddpm train-classifier` writes the weights by default, and where the shipped ones are.
pub const DEFAULT_WEIGHTS: &str = "data/mnist-classifier.safetensors";

/// Channels of the input and after each of the three conv stages.
const CHANNELS: [usize; 4] = [1, 32, 64, 128];
/// Side of the feature maps after the three 2x2 poolings of a 32x32 image.
const FINAL_SIDE: usize = IMAGE_SIDE / 8;

/// The classifier's layers (its parameters live in a [`Params`]).
#[derive(Clone, Debug)]
pub struct Classifier {
    pub convs: [Conv2d; 3],
    pub fc1: Linear,
    pub fc2: Linear,
}

/// Penultimate features and class probabilities of a batch of images.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// Number of images.
    pub n: usize,
    /// Width of each feature vector ([`FEATURE_DIM`]).
    pub dim: usize,
    /// `[n, dim]`, row-major.
    pub features: Vec<f32>,
    /// `[n, 10]`, each row `softmax(logits)`.
    pub probs: Vec<f32>,
}

/// The index of the largest entry of `row`, the first one on a tie (as `torch.argmax`); 0 for an empty row.
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (j, &p)| if p > row[best] { j } else { best })
}

impl Embedding {
    /// The fraction of images whose most probable class (the first, on a tie) is their label.
    pub fn accuracy(&self, labels: &[u8]) -> Result<f64> {
        if labels.len() != self.n || self.n == 0 {
            return Err(Error::Arg(format!("accuracy: {} labels for {} images", labels.len(), self.n)));
        }
        let hits = self.probs.chunks(CLASSES).zip(labels).filter(|(row, &y)| argmax(row) == y as usize).count();
        Ok(hits as f64 / self.n as f64)
    }
}

impl Classifier {
    /// Registers `conv1..conv3` and `fc1`, `fc2` in `params`, initialised from `rng`.
    pub fn new(params: &mut Params, rng: &mut impl Rng) -> Self {
        let convs = std::array::from_fn(|i| {
            Conv2d::new(params, rng, &format!("conv{}", i + 1), (CHANNELS[i], CHANNELS[i + 1]), (3, 1, 1))
        });
        let fc1 = Linear::new(params, rng, "fc1", CHANNELS[3] * FINAL_SIDE * FINAL_SIDE, FEATURE_DIM);
        let fc2 = Linear::new(params, rng, "fc2", FEATURE_DIM, CLASSES);
        Classifier { convs, fc1, fc2 }
    }

    /// Loads weights written by [`Classifier::save`] (or a PyTorch state dict of the same module saved as
    /// safetensors); a missing, unreadable or corrupt file, or a missing, extra or mis-shaped tensor, is an error
    /// naming the file.
    pub fn load(path: &Path) -> Result<(Self, Params)> {
        let file = read_tensors(path)?;
        let mut params = Params::new();
        // The initial values are overwritten; the seed only has to be some seed.
        let model = Classifier::new(&mut params, &mut StdRng::seed_from_u64(0));
        params.load_from(&file.f32_with_prefix(""), &path.display().to_string())?;
        Ok((model, params))
    }

    /// Writes the model's tensors in `params` to `path` as safetensors, atomically.
    pub fn save(&self, params: &Params, path: &Path) -> Result<()> {
        let ids = self.convs.iter().flat_map(|c| [c.weight, c.bias]).chain([
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
        ]);
        let named: Vec<(String, &Tensor)> = ids.map(|id| (params.name(id).to_string(), params.get(id))).collect();
        write_tensors(path, &named, None)
    }

    /// `(features, logits)` of `x: [n, 1, 32, 32]`: the `[n, 128]` penultimate activations (after their ReLU)
    /// and the `[n, 10]` logits.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var) -> Result<(Var, Var)> {
        let (_, c, h, w) = tape.value(x).dims4("classifier input")?;
        if (c, h, w) != (1, IMAGE_SIDE, IMAGE_SIDE) {
            return shape_err!(
                "classifier: expected images [n, 1, {IMAGE_SIDE}, {IMAGE_SIDE}], got {:?}",
                tape.value(x).shape()
            );
        }
        let mut h = x;
        for conv in &self.convs {
            let y = conv.forward(tape, h, ConvExtra::default())?;
            let y = tape.relu(y)?;
            h = tape.max_pool2d(y)?;
        }
        let flat = tape.flatten(h)?;
        let hidden = self.fc1.forward(tape, flat)?;
        let features = tape.relu(hidden)?;
        let logits = self.fc2.forward(tape, features)?;
        Ok((features, logits))
    }

    /// Features and class probabilities of the host `images: [n, 1, 32, 32]`, run `batch` images at a time on the
    /// backend of `params` (inference only).
    pub fn embed<B: Backend>(&self, params: &Params<B>, images: &Tensor, batch: usize) -> Result<Embedding> {
        let (n, c, h, w) = images.dims4("classifier images")?;
        if batch == 0 {
            return Err(Error::Arg("embed: batch must be at least 1".into()));
        }
        let per = c * h * w;
        let (mut features, mut probs) = (Vec::with_capacity(n * FEATURE_DIM), Vec::with_capacity(n * CLASSES));
        for start in (0..n).step_by(batch) {
            let end = n.min(start + batch);
            let chunk = Tensor::new(&[end - start, c, h, w], images.data()[start * per..end * per].to_vec())?;
            let mut tape = Tape::inference(params);
            let x = tape.input_host(chunk)?;
            let (f, z) = self.forward(&mut tape, x)?;
            features.extend(tape.value(f).to_vec()?);
            for row in tape.value(z).to_vec()?.chunks(CLASSES) {
                let lse = log_sum_exp(row);
                probs.extend(row.iter().map(|&v| (v - lse).exp()));
            }
        }
        Ok(Embedding { n, dim: FEATURE_DIM, features, probs })
    }
}
