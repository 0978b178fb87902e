//! The reference's optimisation step: global gradient-norm clipping, AdamW, and an EMA of the weights, each with
//! PyTorch's semantics and f32 order of operations. The optimiser's state lives in `adamw.rs` and `ema.rs`; its
//! kernels in `cpu.rs`, `gpu.rs` and `optim.cu` behind [`OptimOps`].

mod adamw;
mod clip;
mod cpu;
mod ema;
mod gpu;
#[cfg(test)]
mod tests;

pub use adamw::{AdamW, AdamWScalars};
pub use clip::clip_grad_norm;
pub use ema::Ema;

use crate::backend::Memory;
use crate::error::Result;

/// What a backend offers the optimiser.
pub trait OptimOps: Memory {
    /// `torch.nn.utils.clip_grad_norm_` over all `grads` together: `total = ‖g‖₂`,
    /// `coef = min(1, max_norm/(total + 1e-6))`, `g *= coef` when `coef < 1`. Returns `(total, coef)`.
    fn clip_grad_norm(&self, grads: &mut [&mut Self::Buf], max_norm: f32) -> Result<(f32, f32)>;
    /// One AdamW update of `p` with moments `m`, `v` from gradient `g` (`AdamW::step`'s f32 order).
    fn adamw_step(
        &self,
        s: &AdamWScalars,
        p: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        g: &Self::Buf,
    ) -> Result<()>;
    /// `shadow = shadow·d + alpha·p` (`Ema::update`).
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut Self::Buf, p: &Self::Buf) -> Result<()>;
}
