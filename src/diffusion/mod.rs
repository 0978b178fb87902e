//! Diffusion maths: the noise schedule with the forward process ([`schedule`]), the reverse-process samplers
//! ([`sampler`]), and their fused kernels behind [`DiffusionOps`] (`cpu.rs`, `gpu.rs`, `diffusion.cu`).

mod cpu;
mod gpu;
pub mod sampler;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use sampler::{ddim_timesteps, initial_noise, sample, DdimCoefs, DdpmCoefs, Denoiser, SamplerKind};
pub use schedule::Schedule;

use crate::backend::Memory;
use crate::error::Result;

/// What a backend offers the training step and the samplers: each a single fused pass, its noise drawn where
/// it is used (`rng::normal(seed, stream, element)`, the same numbers on every backend).
pub trait DiffusionOps: Memory {
    /// The forward process with its noise drawn here: `noise[e] = rng::normal(seed, stream, e)` and
    /// `x_t[b] = sqrt(ᾱ_{t_b})·x0[b] + sqrt(1-ᾱ_{t_b})·noise[b]` for the `t.len()` items of `x0`. Returns
    /// `(noise, x_t)`; `Err` for a timestep outside the schedule.
    fn q_sample(
        &self,
        sched: &Schedule,
        x0: &Self::Buf,
        t: &[usize],
        noise: (u64, u64),
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// One DDPM step `out = sra·(x - eps_coef·eps) + sigma·z` (`sampler::ddpm_step`), with
    /// `z = rng::normal(seed, stream, ·)` when `noise = Some((seed, stream))`, else no noise term.
    fn ddpm_step(
        &self,
        c: &DdpmCoefs,
        x: &Self::Buf,
        eps: &Self::Buf,
        noise: Option<(u64, u64)>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// One DDIM step (`sampler::ddim_step`), noise as in [`DiffusionOps::ddpm_step`].
    fn ddim_step(
        &self,
        c: &DdimCoefs,
        x: &Self::Buf,
        eps: &Self::Buf,
        noise: Option<(u64, u64)>,
        out: &mut Self::Buf,
    ) -> Result<()>;
}
