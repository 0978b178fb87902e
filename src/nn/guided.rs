//! Classifier-free guidance (Ho & Salimans 2022) for a class-conditional UNet, as a [`Denoiser`] the samplers run
//! unchanged: `ε̃ = (1 + w)·ε(x, t, c) - w·ε(x, t, ∅)` (their eq. 6), `∅` the null label the model was trained on
//! for one label in ten. Both terms come from one network call on a doubled batch (the images with their classes,
//! then the same images with the null label), which runs the UNet's kernels once at twice the width instead of
//! twice; the combination is one elementwise pass ([`DiffusionOps::guide`](crate::diffusion::DiffusionOps::guide)).

use super::layers::Timesteps;
use super::unet::UNet;
use crate::autograd::Tape;
use crate::backend::{Backend, Cpu};
use crate::diffusion::{Denoiser, SamplerPlan};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::tensor::Tensor;

/// A class-conditional UNet with fixed weights, guided towards a class per image (inference only).
pub struct GuidedDenoiser<'a, B: Backend = Cpu> {
    model: &'a UNet,
    params: &'a Params<B>,
    /// Image i's class, then as many null labels: the labels of the doubled batch.
    labels: Vec<u32>,
    /// `labels` on the backend, once uploaded.
    uploaded: Option<B::Idx>,
    w: f32,
}

impl<'a, B: Backend> GuidedDenoiser<'a, B> {
    /// Guides image i of every call towards class `classes[i]` with weight `w` (0: the plain conditional model).
    /// `Err` unless the model is conditional, every class is one of its classes, and `w` is finite and >= 0.
    pub fn new(model: &'a UNet, params: &'a Params<B>, classes: &[usize], w: f32) -> Result<Self> {
        let null = model.config.classes;
        if null == 0 {
            return Err(Error::Arg("classifier-free guidance needs a class-conditional model".into()));
        }
        if let Some(bad) = classes.iter().find(|&&c| c >= null) {
            return Err(Error::Arg(format!("class {bad} outside the model's {null} classes")));
        }
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::Arg(format!("the guidance weight must be finite and >= 0, got {w}")));
        }
        let labels = classes.iter().map(|&c| c as u32).chain(classes.iter().map(|_| null as u32)).collect();
        Ok(GuidedDenoiser { model, params, labels, uploaded: None, w })
    }
}

impl<B: Backend> GuidedDenoiser<'_, B> {
    /// ε̃ for `x` (`n` images), the network called on the doubled batch at `t` (2n timesteps).
    fn guide(&mut self, x: &Tensor<B>, n: usize, t: Timesteps<'_, B>) -> Result<Tensor<B>> {
        let len = x.numel();
        if self.labels.len() != 2 * n || x.shape().first() != Some(&n) {
            return Err(Error::Shape(format!(
                "guided denoiser for {} images called on {:?} with {n} timesteps",
                self.labels.len() / 2,
                x.shape()
            )));
        }
        let be = self.params.backend();
        let mut doubled = be.alloc(2 * len)?;
        be.copy_into(x.buf(), &mut doubled, 0)?;
        be.copy_into(x.buf(), &mut doubled, len)?;
        let mut shape = x.shape().to_vec();
        shape[0] = 2 * n;
        let mut tape = Tape::inference(self.params);
        let xv = tape.input(Tensor::from_buf(be.clone(), &shape, doubled)?);
        // Uploaded at the first call and kept (a captured call copies nothing from the host); the model takes
        // them as its own, so each call passes them shared.
        let labels = match &self.uploaded {
            Some(l) => be.share_indices(l)?,
            None => be.share_indices(self.uploaded.insert(be.upload_indices(&self.labels)?))?,
        };
        let eps = self.model.forward_at(&mut tape, xv, t, Some(labels))?;
        let mut out = Tensor::alloc(be, x.shape())?;
        be.guide(tape.value(eps).buf(), len, self.w, out.buf_mut())?;
        Ok(out)
    }
}

impl<B: Backend> Denoiser<B> for GuidedDenoiser<'_, B> {
    fn predict_eps(&mut self, x: &Tensor<B>, t: &[usize]) -> Result<Tensor<B>> {
        let t2 = [t, t].concat();
        self.guide(x, t.len(), Timesteps::Host(&t2))
    }

    fn guided(&self) -> bool {
        true
    }

    fn plan_width(&self) -> Option<usize> {
        Some(self.model.config.t_dim)
    }

    fn predict_eps_planned(&mut self, x: &Tensor<B>, plan: &SamplerPlan<B>) -> Result<Tensor<B>> {
        let n = x.shape().first().copied().unwrap_or(0);
        self.guide(x, n, Timesteps::Planned { plan, n: 2 * n })
    }
}
