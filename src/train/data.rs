//! The training set on the backend: the images uploaded once, the schedule's q_sample tables, and each epoch's
//! permutation (uploaded once per epoch), from which the backend draws every step's batch, its timesteps and its
//! noise, so that a step moves nothing over the bus.

use super::{Batch, Batcher, Drawn};
use crate::backend::Backend;
use crate::diffusion::{Schedule, ScheduleTables};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The training images `[N, C, H, W]` resident on backend `B`, with what the backend needs to draw batches there.
pub struct TrainingSet<B: Backend> {
    images: Tensor<B>,
    /// The class label of each image, for a class-conditional model ([`TrainingSet::with_labels`]).
    labels: Option<B::Idx>,
    tables: ScheduleTables<B>,
    /// The epoch whose permutation is on the backend, and that permutation.
    perm: Option<(u64, B::Idx)>,
}

impl<B: Backend> TrainingSet<B> {
    /// `images` (on the host; moved, not copied, when `backend` is the CPU) and `sched`'s tables put on `backend`.
    pub fn new(backend: &B, images: Tensor, sched: &Schedule) -> Result<Self> {
        if images.shape().len() < 2 {
            return Err(Error::Shape(format!("training images {:?} need a batch dim", images.shape())));
        }
        let images = images.into_backend(backend)?;
        Ok(TrainingSet { images, labels: None, tables: ScheduleTables::new(backend, sched)?, perm: None })
    }

    /// The set with the class label of each image (`labels[i]` of image i, each below `classes`) put on the
    /// backend, for a class-conditional model to train on.
    pub fn with_labels(mut self, labels: &[u8], classes: usize) -> Result<Self> {
        if labels.len() != self.len() {
            return Err(Error::Arg(format!("{} labels for {} training images", labels.len(), self.len())));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::Arg(format!("training label {bad} outside the model's {classes} classes")));
        }
        let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        self.labels = Some(self.images.backend().upload_indices(&labels)?);
        Ok(self)
    }

    /// The images on the backend.
    pub fn images(&self) -> &Tensor<B> {
        &self.images
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.images.shape()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of global step `step` as `batcher` picks it, for the backend to draw: its epoch's permutation is
    /// uploaded at the epoch's first step taken (4 bytes per image), and nothing else crosses the bus.
    pub fn batch(&mut self, batcher: &mut Batcher, step: u64) -> Result<Batch<'_, B>> {
        let (epoch, first) = batcher.position(step);
        if self.perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            // Values below N, which `Batcher` guarantees and the draw checks again from the buffer's bound.
            let perm: Vec<u32> = batcher.permutation(epoch).iter().map(|&i| i as u32).collect();
            self.perm = Some((epoch, self.images.backend().upload_indices(&perm)?));
        }
        let perm = &self.perm.as_ref().expect("just uploaded").1;
        let batch = batcher.batch_size();
        let (images, labels, tables) = (&self.images, self.labels.as_ref(), &self.tables);
        Ok(Batch::Drawn(Drawn { images, labels, tables, perm, first, batch }))
    }
}
