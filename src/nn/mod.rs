//! Layers with parameters, named and initialised as PyTorch names and initialises them, the reference's UNet, and the
//! MNIST classifier that scores its samples.

mod classifier;
mod layers;
mod unet;

pub use classifier::{argmax, Classifier, Embedding, CLASSES, DEFAULT_WEIGHTS, FEATURE_DIM};
pub use layers::{Conv2d, ConvTranspose2d, GroupNorm, Linear, TimeEmbedding, Timesteps};
pub use unet::{ResBlock, UNet, UNetConfig, UNetDenoiser};
