//! `ddpm`: a denoising diffusion model (DDPM, Ho et al. 2020) with DDPM and DDIM (Song et al. 2021) samplers,
//! trained on MNIST, written from scratch: own tensors, own tape autograd, own kernels.
//!
//! Layers, bottom up: [`tensor`] (dense f32 NCHW on a [`backend`]), [`desc`] (shape descriptors), [`backend`]
//! (the one interface the tape, optimiser and samplers call, one trait per op family), [`autograd`] (the tape),
//! [`ops`] (the op families: each one's tape methods, autograd rules, CPU kernels, GPU launchers and CUDA kernels),
//! [`params`] (named parameters), [`plan`] (per-step values on the device, for captured steps), [`nn`] (layers and the UNet), [`optim`] (AdamW, clipping, EMA),
//! [`diffusion`] (schedule, q_sample, samplers), [`eval`] (FID and class statistics from an MNIST classifier),
//! [`rng`] (counter-based Philox noise), [`data`] (MNIST from IDX), [`gpu`] (CUDA kernels, run on a GPU or on the
//! CPU emulator), [`image`] and [`plot`] (PNG output), [`tensor_file`] and [`atomic_write`] (files), [`alloc`]
//! (the caching allocator the binaries install).

pub mod alloc;
pub mod arena;
pub mod atomic_write;
pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod desc;
pub mod diffusion;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod image;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plan;
pub mod plot;
pub mod rng;
pub mod tensor;
pub mod tensor_file;
pub mod train;

pub use error::{Error, Result};
pub use tensor::Tensor;
