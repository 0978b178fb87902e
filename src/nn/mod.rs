//! Layers with parameters, named and initialised as PyTorch names and initialises them, and the seed's UNet.

mod layers;
mod unet;

pub use layers::{Conv2d, ConvTranspose2d, GroupNorm, Linear, TimeEmbedding};
pub use unet::{ResBlock, UNet, UNetConfig, UNetDenoiser};
