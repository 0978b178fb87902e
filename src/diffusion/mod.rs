//! Diffusion maths: the noise schedule with the forward process ([`schedule`]), the reverse-process samplers
//! ([`sampler`]) and DDIM inversion ([`inversion`]), and their fused kernels behind [`DiffusionOps`] (`cpu.rs`,
//! `gpu.rs`, `diffusion.cu`).

mod cpu;
pub mod dpm_solver;
mod gpu;
pub mod inversion;
mod plan;
pub mod sampler;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use dpm_solver::{dpm_timesteps, DpmCoefs, Spacing};
pub use inversion::{ddim_invert, regeneration_kind, roundtrip, slerp, RoundTripError};
pub use plan::SamplerPlan;
pub use sampler::{
    ddim_timesteps, initial_noise, sample, sample_observed, DdimCoefs, DdpmCoefs, Denoiser, SamplerKind, SamplerStep,
    StepCoefs,
};
pub use schedule::{Schedule, ScheduleKind};

use crate::backend::{ConvOps, Memory};
use crate::error::{Error, Result};
use crate::train::StepPlan;

/// What a backend offers the training step and the samplers: each a single fused pass, its noise drawn where
/// it is used (`rng::normal(seed, stream, element)`, the same numbers on every backend).
pub trait DiffusionOps: ConvOps {
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
    /// The training step's batch drawn on the backend in one pass (see [`BatchDraw`]): item i is image
    /// `perm[first + i]` of the resident training set, with `t_i = rng::uniform_below(seed, t_stream, i, T)` and
    /// its noise and x_t as [`DiffusionOps::q_sample`] makes them. Returns `(noise, x_t, t)`, `t` holding the
    /// `batch` timesteps for the time embedding ([`DiffusionOps::time_sinusoid`]), and x_t's operand when
    /// `d.operand_channels` asks for it and the backend has operands.
    fn draw_batch(&self, tables: &ScheduleTables<Self>, d: &BatchDraw<'_, Self>) -> Result<Drawn<Self>>;
    /// The class labels of a training batch drawn on the backend (see [`LabelDraw`]): item i gets the label of
    /// image `perm[first + i]`, or the null label when [`drops_label`] says so. Returns the `batch` labels.
    fn draw_labels(&self, d: &LabelDraw<'_, Self>) -> Result<Self::Idx>;
    /// Classifier-free guidance (Ho & Salimans 2022, eq. 6) of a network output over a doubled batch, the
    /// conditional half first: `out[e] = (1 + w)·eps[e] - w·eps[half + e]` for `e < half`, `out: [half]`.
    fn guide(&self, eps: &Self::Buf, half: usize, w: f32, out: &mut Self::Buf) -> Result<()>;
    /// The time embedding's sinusoid (`TimeEmbedding::sinusoid`, `[n, dim]`) of the first `n` timesteps in `t`, with
    /// its operand (for the linear layer that reads it) when `operand` and the backend has operands.
    fn time_sinusoid(&self, t: &Self::Idx, n: usize, dim: usize, operand: bool) -> Result<WithOperand<Self>>;
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
    /// One DPM-Solver++ step (`dpm_solver::dpm_update`): reads the previous step's x̂0 from `x0_prev` (second-order
    /// steps only) and writes this step's into it; noise as in [`DiffusionOps::ddpm_step`].
    fn dpm_step(
        &self,
        c: &DpmCoefs,
        x: &Self::Buf,
        eps: &Self::Buf,
        x0_prev: &mut Self::Buf,
        noise: Option<(u64, u64)>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// The time sinusoid of the current step of `plan` for `n` images (`[n, width]`, row by row the plan's
    /// host-made sinusoid of that step), with its operand when `operand` and the backend has operands: what
    /// [`DiffusionOps::time_sinusoid`] is to the training step, for a captured sampler step. Only where there are
    /// graphs.
    fn plan_sinusoid(&self, plan: &SamplerPlan<Self>, n: usize, operand: bool) -> Result<WithOperand<Self>> {
        let _ = (plan, n, operand);
        Err(Error::Device(format!("{} runs no sampler plans", self.describe())))
    }
    /// The current step of `plan` applied to `x` in place, with `eps` the network's output (DPM-Solver++ reads and
    /// writes its previous x̂0 in `x0_prev`), then the plan moved on a row. Only where there are graphs.
    fn planned_step(
        &self,
        plan: &mut SamplerPlan<Self>,
        x: &mut Self::Buf,
        eps: &Self::Buf,
        x0_prev: Option<&mut Self::Buf>,
    ) -> Result<()> {
        let _ = (plan, x, eps, x0_prev);
        Err(Error::Device(format!("{} runs no sampler plans", self.describe())))
    }
}

/// The schedule's q_sample tables `sqrt(ᾱ_t)` and `sqrt(1-ᾱ_t)` on a backend: uploaded once and held for a run's
/// training steps.
pub struct ScheduleTables<M: Memory> {
    /// T, the length of each table.
    pub timesteps: usize,
    pub sqrt_alphas_bar: M::Buf,
    pub sqrt_one_minus_alphas_bar: M::Buf,
}

impl<M: Memory> ScheduleTables<M> {
    /// `sched`'s tables uploaded to `backend`.
    pub fn new(backend: &M, sched: &Schedule) -> Result<Self> {
        Ok(ScheduleTables {
            timesteps: sched.t,
            sqrt_alphas_bar: backend.upload(sched.sqrt_alphas_bar.clone())?,
            sqrt_one_minus_alphas_bar: backend.upload(sched.sqrt_one_minus_alphas_bar.clone())?,
        })
    }
}

/// A value and, where the backend has them and it was asked for, its operand (see [`ConvOps::Operand`]).
pub type WithOperand<B> = (<B as Memory>::Buf, Option<<B as ConvOps>::Operand>);

/// A drawn batch: `(noise, x_t, t, x_t's operand)`.
pub type Drawn<B> = (<B as Memory>::Buf, <B as Memory>::Buf, <B as Memory>::Idx, Option<<B as ConvOps>::Operand>);

/// One training batch for [`DiffusionOps::draw_batch`] to draw on the backend: `batch` images picked by an epoch's
/// permutation out of the training set, with the step's t and noise streams.
pub struct BatchDraw<'a, M: Memory> {
    /// The training set `[N, per_item]`, resident on the backend.
    pub images: &'a M::Buf,
    /// Words per image.
    pub per_item: usize,
    /// The epoch's permutation of the N images; the batch is its values `first..first + batch`.
    pub perm: &'a M::Idx,
    pub first: usize,
    pub batch: usize,
    /// The run's seed, and the Philox streams of the step's timesteps and noise.
    pub seed: u64,
    pub t_stream: u64,
    pub noise_stream: u64,
    /// `Some(c)`: also write x_t's operand, each item being `[c, per_item / c]` (the first conv reads it).
    pub operand_channels: Option<usize>,
    /// A plan whose current row's first position and streams the kernel reads instead (a captured step; not on
    /// the CPU, which has no graphs).
    pub plan: Option<&'a StepPlan<M>>,
}

impl<M: Memory> BatchDraw<'_, M> {
    /// `Err` unless the batch lies inside the permutation (`perm_len` values, all below `perm_bound`), each value
    /// picks an image of the training set, and the tables cover T. Checked on the host, since the kernel indexes
    /// memory with these values.
    fn check(&self, tables: &ScheduleTables<M>, perm_len: usize, perm_bound: Option<u64>) -> Result<()> {
        let n_images = M::buf_len(self.images) / self.per_item.max(1);
        let bad = |m: String| Err(Error::Arg(format!("draw_batch: {m}")));
        if self.per_item == 0 || self.batch == 0 || M::buf_len(self.images) != n_images * self.per_item {
            return bad(format!("{} words of training set for images of {}", M::buf_len(self.images), self.per_item));
        }
        let first = self.plan.map_or(self.first, |p| p.max_first().max(self.first));
        if first + self.batch > perm_len {
            return bad(format!("batch {}..{} outside a permutation of {perm_len}", first, first + self.batch));
        }
        if perm_bound.is_none_or(|b| b > n_images as u64) {
            return bad(format!("permutation values {perm_bound:?} (bound) do not all index the {n_images} images"));
        }
        let t = tables.timesteps;
        if t == 0 || t > i32::MAX as usize {
            return bad(format!("{t} timesteps"));
        }
        if M::buf_len(&tables.sqrt_alphas_bar) < t || M::buf_len(&tables.sqrt_one_minus_alphas_bar) < t {
            return bad(format!("schedule tables shorter than T = {t}"));
        }
        Ok(())
    }
}

/// A training label is replaced by the null label with probability one in this many (0.1, Ho & Salimans 2022's
/// p_uncond), so that one network learns both the conditional and the unconditional ε.
pub const LABEL_DROP_ONE_IN: u32 = 10;

/// Whether item `i` of a batch trains unconditionally: `rng::uniform_below(seed, stream, i, 10) == 0`, an integer
/// draw that every backend makes bit for bit alike (probability 1/10, up to Lemire's bias of 10/2^32).
pub fn drops_label(seed: u64, stream: u64, i: u64) -> bool {
    crate::rng::uniform_below(seed, stream, i, LABEL_DROP_ONE_IN) == 0
}

/// The class labels of one training batch for [`DiffusionOps::draw_labels`] to draw on the backend.
pub struct LabelDraw<'a, M: Memory> {
    /// The label of each of the N training images (each below `null`), resident on the backend.
    pub labels: &'a M::Idx,
    /// The epoch's permutation of the N images; the batch is its values `first..first + batch`.
    pub perm: &'a M::Idx,
    pub first: usize,
    pub batch: usize,
    /// The null label (the number of classes).
    pub null: u32,
    /// The run's seed and the Philox stream of the step's label drops.
    pub seed: u64,
    pub stream: u64,
    /// A plan whose current row's first position and label stream the kernel reads instead (not on the CPU).
    pub plan: Option<&'a StepPlan<M>>,
}

impl<M: Memory> LabelDraw<'_, M> {
    /// `Err` unless the batch lies inside the permutation (`perm_len` values, all below `perm_bound`), each value
    /// picks one of the `n_labels` labels, and the labels lie below the null label (`label_bound`). Checked on
    /// the host, since the kernel indexes memory with these values.
    fn check(&self, perm_len: usize, perm_bound: Option<u64>, n_labels: usize, label_bound: Option<u64>) -> Result<()> {
        let bad = |m: String| Err(Error::Arg(format!("draw_labels: {m}")));
        let first = self.plan.map_or(self.first, |p| p.max_first().max(self.first));
        if self.batch == 0 || first + self.batch > perm_len {
            return bad(format!("batch {}..{} outside a permutation of {perm_len}", first, first + self.batch));
        }
        if perm_bound.is_none_or(|b| b > n_labels as u64) {
            return bad(format!("permutation values {perm_bound:?} (bound) do not all index the {n_labels} labels"));
        }
        if label_bound.is_none_or(|b| b > self.null as u64) || self.null > i32::MAX as u32 {
            return bad(format!("labels {label_bound:?} (bound) not all below the null label {}", self.null));
        }
        Ok(())
    }
}
