//! The seed's optimisation step: global gradient-norm clipping, AdamW, and an EMA of the weights, each with
//! PyTorch's semantics and f32 order of operations.

mod adamw;
mod clip;
mod ema;

pub use adamw::{AdamW, AdamWScalars};
pub use clip::clip_grad_norm;
pub use ema::Ema;
