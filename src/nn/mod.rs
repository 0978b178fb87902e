//! Layers with parameters, named and initialised as PyTorch names and initialises them, the reference's UNet (with
//! its classifier-free guided form for a class-conditional model), and the MNIST classifier that scores its samples.

mod classifier;
mod guided;
mod layers;
mod unet;

pub use classifier::{argmax, Classifier, Embedding, CLASSES, DEFAULT_WEIGHTS, FEATURE_DIM};
pub use guided::GuidedDenoiser;
pub use layers::{Conv2d, ConvTranspose2d, GroupNorm, LabelEmbedding, Linear, TimeEmbedding, Timesteps};
pub use unet::{ResBlock, UNet, UNetConfig, UNetDenoiser, MAX_CLASSES};
