//! Which training images make up each step's batch.

use super::STREAM_SHUFFLE;
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::Tensor;

/// Which images make up each batch: a fresh seeded permutation every epoch, full batches only (`drop_last`).
pub struct Batcher {
    n_images: usize,
    batch: usize,
    seed: u64,
    /// The epoch whose permutation is cached, and the permutation.
    cached: Option<(u64, Vec<usize>)>,
}

impl Batcher {
    /// Batches of `batch` out of `n_images` (which must hold at least one full batch).
    pub fn new(n_images: usize, batch: usize, seed: u64) -> Result<Self> {
        if batch == 0 || n_images < batch {
            return Err(Error::Arg(format!(
                "batch size {batch} needs at least that many images, the data has {n_images}"
            )));
        }
        Ok(Batcher { n_images, batch, seed, cached: None })
    }

    /// Full batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.n_images / self.batch) as u64
    }

    /// The epoch of global step `step`, and where its batch starts in that epoch's permutation.
    pub fn position(&self, step: u64) -> (u64, usize) {
        let (epoch, j) = (step / self.steps_per_epoch(), (step % self.steps_per_epoch()) as usize);
        (epoch, j * self.batch)
    }

    /// The permutation of the images that epoch `epoch` takes its batches from, in order.
    pub fn permutation(&mut self, epoch: u64) -> &[usize] {
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..self.n_images).collect();
            rng::shuffle(self.seed, STREAM_SHUFFLE | epoch, &mut perm);
            self.cached = Some((epoch, perm));
        }
        &self.cached.as_ref().expect("just filled").1
    }

    /// The image indices of global step `step`.
    pub fn indices(&mut self, step: u64) -> &[usize] {
        let (epoch, first) = self.position(step);
        let batch = self.batch;
        &self.permutation(epoch)[first..first + batch]
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The batch of step `step` gathered from `images` (`[N, C, H, W]`).
    pub fn batch(&mut self, images: &Tensor, step: u64) -> Tensor {
        let per: usize = images.shape()[1..].iter().product();
        let mut data = Vec::with_capacity(self.batch * per);
        for &i in self.indices(step) {
            data.extend_from_slice(&images.data()[i * per..(i + 1) * per]);
        }
        let mut shape = images.shape().to_vec();
        shape[0] = self.batch;
        Tensor::new(&shape, data).expect("batch shape")
    }
}
