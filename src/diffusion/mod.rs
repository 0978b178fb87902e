//! Diffusion maths: the noise schedule with the forward process ([`schedule`]), and the reverse-process
//! samplers ([`sampler`]).

pub mod sampler;
pub mod schedule;

pub use sampler::{ddim_timesteps, initial_noise, sample, Denoiser, SamplerKind};
pub use schedule::Schedule;
