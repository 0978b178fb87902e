//! `ddpm`: a denoising diffusion model (DDPM, Ho et al. 2020) with DDPM and DDIM (Song et al. 2021) samplers,
//! trained on MNIST, written from scratch: own tensors, own tape autograd, own kernels.
//!
//! Layers, bottom up: [`tensor`] (dense f32 NCHW), [`cpu`] (kernels), [`autograd`] (the tape and its ops),
//! [`params`] (named parameters), [`nn`] (layers and the UNet), [`optim`] (AdamW, clipping, EMA).

pub mod autograd;
pub mod cpu;
pub mod error;
pub mod nn;
pub mod optim;
pub mod params;
pub mod tensor;
pub mod tensor_file;

pub use error::{Error, Result};
pub use tensor::Tensor;
