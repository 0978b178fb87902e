//! Sample quality, measured with the MNIST classifier [`crate::nn::Classifier`] (trained with this crate's own
//! engine): FID in its penultimate features, how confident it is, and how evenly the samples cover the ten digits.
//!
//! FID needs reference statistics from real images. [`Evaluator`] takes them from the MNIST *test* set, in the fixed
//! shuffled order [`real_order`]: its first `n` images are the reference, and up to [`FLOOR_SETS`] further sets of
//! `n` give the real-versus-real score at the same `n` (the floor that sample FIDs at that `n` should be read
//! against; see [`fid`]). One real set is not enough for a floor: at n = 300 the FIDs of 31 disjoint real sets
//! against one reference range over 0.75–1.55x their mean, so the floor is that mean over several sets, and the
//! range is reported with it. The order is shuffled because the test file is not: its first 5000 digits come from different writers
//! than its last 5000 (NIST's SD-3 and SD-1), and a reference drawn from one half alone scores real digits from the
//! other half 3-5x above the floor.

pub mod fid;
pub mod linalg;

use crate::backend::Backend;
use crate::backend::Precision;
use crate::data::{load_dataset, Split};
use crate::error::{Error, Result};
use crate::nn::{argmax, Classifier, CLASSES};
use crate::params::Params;
use crate::tensor::Tensor;
use fid::{frechet_distance, GaussianStats};
use std::path::Path;

/// What the classifier says about a set of images, short of FID.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    /// Mean over images of the largest softmax probability: near 1 when every image is clearly some digit.
    pub confidence: f64,
    /// How many images the classifier assigns to each digit (its argmax).
    pub histogram: [usize; CLASSES],
    /// Entropy of the predicted-class frequencies `p_k = histogram_k / n`: `H = −Σ p_k ln p_k`. `ln 10 ≈ 2.303`
    /// when the digits are equally frequent; lower when the model favours some digits (mode dropping).
    pub entropy: f64,
}

impl ClassStats {
    /// The statistics of softmax outputs `probs`, row-major `[n, 10]`.
    pub fn from_probs(probs: &[f32]) -> Result<Self> {
        if probs.is_empty() || !probs.len().is_multiple_of(CLASSES) {
            return Err(Error::Shape(format!("{} probabilities do not split into rows of {CLASSES}", probs.len())));
        }
        let n = probs.len() / CLASSES;
        let mut histogram = [0usize; CLASSES];
        let mut confidence = 0.0f64;
        for row in probs.chunks_exact(CLASSES) {
            let k = argmax(row);
            histogram[k] += 1;
            confidence += row[k] as f64;
        }
        let entropy = histogram
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n as f64;
                -p * p.ln()
            })
            .sum::<f64>()
            // A single class gives -(1 ln 1) = -0, printed "-0.0000"; adding 0 makes it +0.
            + 0.0;
        Ok(ClassStats { confidence: confidence / n as f64, histogram, entropy })
    }
}

/// The quality report of one set of images.
#[derive(Clone, Debug)]
pub struct Quality {
    /// Images evaluated (and real test images compared against).
    pub n: usize,
    /// FID against the first `n` real test images.
    pub fid: f64,
    /// Mean FID of other sets of `n` real test images against the same reference: what a perfect sampler would
    /// score at `n`, on average.
    pub fid_floor: f64,
    /// The smallest and largest of those real-vs-real FIDs: how far one set of real images strays from the mean.
    pub fid_floor_range: (f64, f64),
    pub classes: ClassStats,
    /// The digit the classifier assigns to each image (its argmax), in order.
    pub predicted: Vec<usize>,
    /// The same statistics on the reference real images, for comparison.
    pub real_classes: ClassStats,
}

/// Scores sets of `n` images against MNIST test images, with a classifier on backend `B`.
pub struct Evaluator<B: Backend> {
    classifier: Classifier,
    params: Params<B>,
    n: usize,
    reference: GaussianStats,
    real_classes: ClassStats,
    fid_floor: f64,
    fid_floor_range: (f64, f64),
}

/// The most real-vs-real sets the floor averages over (fewer when the test set holds fewer).
pub const FLOOR_SETS: usize = 4;

/// A fixed pseudo-random permutation of `0..len` ([`crate::rng::shuffle`], so the same on every machine): the
/// order in which [`Evaluator`] takes real test images.
pub fn real_order(len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    crate::rng::shuffle(REAL_ORDER_SEED, 0, &mut order);
    order
}

/// The Philox seed of [`real_order`].
const REAL_ORDER_SEED: u64 = 0x4d_4e49_5354; // "MNIST"

/// The images `images[order[k]]`, in that order: `[len, ...]` in, `[order.len(), ...]` out.
pub fn gather(images: &Tensor, order: &[usize]) -> Result<Tensor> {
    let per_image = images.shape()[1..].iter().product::<usize>();
    let mut data = Vec::with_capacity(order.len() * per_image);
    for &i in order {
        data.extend_from_slice(&images.data()[i * per_image..(i + 1) * per_image]);
    }
    let mut shape = images.shape().to_vec();
    shape[0] = order.len();
    Tensor::new(&shape, data)
}

/// Images per classifier forward pass: large enough to keep the convolutions efficient, small enough that
/// activations stay in a few tens of MB.
const EMBED_BATCH: usize = 250;

impl<B: Backend> Evaluator<B> {
    /// Prepares to score sets of `n` images: embeds test images `real_order[0..n]` (the reference) and the sets
    /// `real_order[k·n..(k+1)·n]`, `k = 1..=min(FLOOR_SETS, len/n − 1)` (the floor).
    /// `test_images` is the MNIST test set as the model sees it, `[10000, 1, 32, 32]`, so `n ≤ 5000`.
    pub fn new(classifier: Classifier, params: Params<B>, test_images: &Tensor, n: usize) -> Result<Self> {
        let available = test_images.shape()[0];
        if n < 2 || 2 * n > available {
            return Err(Error::Arg(format!(
                "FID at n = {n} needs 2n real test images (the reference and the real-vs-real floor) and the test set has {available}; use 2 <= n <= {}",
                available / 2
            )));
        }
        let order = real_order(available);
        let reference_emb = classifier.embed(&params, &gather(test_images, &order[..n])?, EMBED_BATCH)?;
        let reference = GaussianStats::from_features(&reference_emb.features, reference_emb.dim)?;
        let floors = (1..=FLOOR_SETS.min(available / n - 1))
            .map(|k| {
                let emb = classifier.embed(&params, &gather(test_images, &order[k * n..(k + 1) * n])?, EMBED_BATCH)?;
                frechet_distance(&GaussianStats::from_features(&emb.features, emb.dim)?, &reference)
            })
            .collect::<Result<Vec<f64>>>()?;
        let fid_floor = floors.iter().sum::<f64>() / floors.len() as f64;
        let fid_floor_range =
            floors.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &f| (lo.min(f), hi.max(f)));
        let real_classes = ClassStats::from_probs(&reference_emb.probs)?;
        Ok(Evaluator { classifier, params, n, reference, real_classes, fid_floor, fid_floor_range })
    }

    /// [`Evaluator::new`] with the classifier weights at `classifier` and the MNIST test set in `mnist_dir`, for
    /// each of `ns` (both files are read once). The classifier runs in f32 whatever `backend`'s precision, so that
    /// FIDs of samples drawn in bf16 and in f32 are measured by the same instrument.
    pub fn load_many(backend: &B, classifier: &Path, mnist_dir: &Path, ns: &[usize]) -> Result<Vec<Self>> {
        let backend = &backend.at_precision(Precision::Fp32)?;
        let (model, params) = Classifier::load(classifier)?;
        let test = load_dataset(mnist_dir, Split::Test)?;
        ns.iter().map(|&n| Self::new(model.clone(), params.to_backend(backend)?, &test.images, n)).collect()
    }

    /// [`Evaluator::load_many`] for one `n`.
    pub fn load(backend: &B, classifier: &Path, mnist_dir: &Path, n: usize) -> Result<Self> {
        Ok(Self::load_many(backend, classifier, mnist_dir, &[n])?.remove(0))
    }

    /// The `n` this evaluator compares at.
    pub fn n(&self) -> usize {
        self.n
    }

    /// FID, confidence and class statistics of `images`, which must be exactly `n` images `[n, 1, 32, 32]` in
    /// [-1, 1] (FIDs at different `n` are not comparable, so a mismatch is an error).
    pub fn score(&self, images: &Tensor) -> Result<Quality> {
        match images.shape() {
            &[m, 1, 32, 32] if m == self.n => {}
            s => return Err(Error::Shape(format!("expected {} images of shape [1, 32, 32], got {s:?}", self.n))),
        }
        let emb = self.classifier.embed(&self.params, images, EMBED_BATCH)?;
        let fid = frechet_distance(&GaussianStats::from_features(&emb.features, emb.dim)?, &self.reference)?;
        Ok(Quality {
            n: self.n,
            fid,
            fid_floor: self.fid_floor,
            fid_floor_range: self.fid_floor_range,
            classes: ClassStats::from_probs(&emb.probs)?,
            predicted: emb.probs.chunks_exact(CLASSES).map(argmax).collect(),
            real_classes: self.real_classes.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_stats_of_confident_uniform_and_collapsed_predictions() {
        let one_hot = |k: usize, p: f32| {
            let mut row = [(1.0 - p) / 9.0; CLASSES];
            row[k] = p;
            row
        };
        let uniform: Vec<f32> = (0..100).flat_map(|i| one_hot(i % 10, 0.9)).collect();
        let s = ClassStats::from_probs(&uniform).unwrap();
        assert_eq!(s.histogram, [10; CLASSES]);
        assert!((s.entropy - 10f64.ln()).abs() < 1e-12);
        assert!((s.confidence - 0.9).abs() < 1e-6);
        let collapsed: Vec<f32> = (0..100).flat_map(|_| one_hot(3, 0.5)).collect();
        let s = ClassStats::from_probs(&collapsed).unwrap();
        assert_eq!(s.histogram[3], 100);
        assert_eq!(s.entropy, 0.0);
        assert!(ClassStats::from_probs(&[0.5; 15]).is_err());
    }
}
