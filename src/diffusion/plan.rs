//! A sampler's plan ([`crate::plan`]): the scalars of every step of a sampler run, and the time sinusoid of each
//! step's timestep, uploaded once, so that one captured step (network call and update) replays as every step. A
//! row holds the step's noise stream, whether it draws noise and its update's coefficients (`SAMPLE_*` in
//! src/diffusion/diffusion.cu); the kind of update and its flags (DDIM's clamp and re-derivation) are the run's.

use super::sampler::{check_eps, Denoiser, Observer, SamplerStep, StepCoefs};
use crate::backend::{Backend, Memory};
use crate::error::{Error, Result};
use crate::nn::TimeEmbedding;
use crate::plan::{pair, Plan, ROW};
use crate::tensor::Tensor;

/// A row's words (`SAMPLE_*` in diffusion.cu): the noise stream (2 words, low first), whether the step draws noise,
/// then the coefficients.
const NOISE_STREAM: usize = 0;
const NOISY: usize = 2;
const COEFS: usize = 3;

/// The steps of one sampler run on backend `M`, with their time sinusoids.
pub struct SamplerPlan<M: Memory> {
    rows: Plan<M>,
    /// The first step's scalars: the update every step makes, and its flags.
    first: StepCoefs,
    /// The run's seed, and whether any step draws noise.
    seed: u64,
    noisy: bool,
    /// `[steps, width]`: row k is the sinusoid of step k's timestep, made on the host as an unplanned step's is.
    sinusoids: M::Buf,
    width: usize,
}

impl<M: Memory> SamplerPlan<M> {
    /// The plan of `steps` (each step's scalars and noise `(seed, stream)`, one update kind and seed for all) at
    /// `timesteps`, with their sinusoids of `width`, uploaded to `backend`.
    pub fn new(backend: &M, steps: &[SamplerStep], timesteps: &[usize], width: usize) -> Result<Self> {
        let Some(&(first, _)) = steps.first() else {
            return Err(Error::Arg("a sampler's plan needs at least one step".into()));
        };
        let seeds: Vec<u64> = steps.iter().filter_map(|(_, n)| n.map(|(seed, _)| seed)).collect();
        let kind = |c: &StepCoefs| (std::mem::discriminant(c), c.flags());
        let same_kind = steps.iter().all(|(c, _)| kind(c) == kind(&first));
        if !same_kind
            || seeds.windows(2).any(|w| w[0] != w[1])
            || timesteps.len() != steps.len()
            || !width.is_multiple_of(2)
        {
            return Err(Error::Arg(format!(
                "a sampler's plan of {} steps needs one update kind with one set of flags, one seed, a timestep \
                 per step and an even sinusoid width (got {} timesteps, width {width})",
                steps.len(),
                timesteps.len()
            )));
        }
        let rows: Vec<[f32; ROW]> = steps
            .iter()
            .map(|(c, noise)| {
                let mut row = [0.0; ROW];
                row[NOISE_STREAM..NOISY].copy_from_slice(&pair(noise.map_or(0, |(_, stream)| stream)));
                row[NOISY] = f32::from_bits(noise.is_some() as u32);
                let coefs = c.floats();
                row[COEFS..COEFS + coefs.len()].copy_from_slice(&coefs);
                row
            })
            .collect();
        Ok(SamplerPlan {
            rows: Plan::new(backend, &rows)?,
            first,
            seed: seeds.first().copied().unwrap_or(0),
            noisy: !seeds.is_empty(),
            sinusoids: backend.upload(TimeEmbedding::sinusoid(timesteps, width).into_data())?,
            width,
        })
    }

    /// The rows and how many have been taken.
    pub fn rows(&self) -> &Plan<M> {
        &self.rows
    }

    pub(crate) fn rows_mut(&mut self) -> &mut Plan<M> {
        &mut self.rows
    }

    /// The first step's scalars (their kind and flags are every step's).
    pub fn first(&self) -> &StepCoefs {
        &self.first
    }

    /// The run's seed, and whether any step draws noise.
    pub fn noise(&self) -> (u64, bool) {
        (self.seed, self.noisy)
    }

    /// The steps' sinusoids (`[steps, width]`) and their width.
    pub fn sinusoids(&self) -> (&M::Buf, usize) {
        (&self.sinusoids, self.width)
    }
}

/// Runs the rest of `plan` on `x` in place (and DPM-Solver++'s x̂0 in `x0_prev`): the first step launch by launch
/// from the plan (which leaves the device's cache holding what the step allocates), the second captured and run,
/// every later one a replay; `observe` as in [`super::sample_observed`] after each.
pub(super) fn sample_planned<B: Backend>(
    den: &mut dyn Denoiser<B>,
    plan: &mut SamplerPlan<B>,
    x: &mut Tensor<B>,
    mut x0_prev: Option<&mut Tensor<B>>,
    observe: &mut Observer<B>,
) -> Result<()> {
    let be = x.backend().clone();
    let total = plan.rows.remaining();
    let mut graph = None;
    for k in 0..total {
        match &graph {
            Some(g) => {
                plan.rows.take_row()?;
                be.replay(g)?;
            }
            None if k == 0 => planned_call(den, plan, x, x0_prev.as_deref_mut())?,
            None => {
                let g = be.capture(&mut || planned_call(den, plan, x, x0_prev.as_deref_mut())).map_err(|e| {
                    Error::Device(format!(
                        "capturing a sampler step as a graph failed ({e}); --no-graphs samples step by step"
                    ))
                })?;
                be.replay(graph.insert(g))?;
            }
        }
        observe(k + 1, total, x)?;
    }
    Ok(())
}

/// One step of `plan`: the network at the plan's current step, then the update of `x` in place.
fn planned_call<B: Backend>(
    den: &mut dyn Denoiser<B>,
    plan: &mut SamplerPlan<B>,
    x: &mut Tensor<B>,
    x0_prev: Option<&mut Tensor<B>>,
) -> Result<()> {
    let eps = den.predict_eps_planned(x, plan)?;
    check_eps(&eps, x)?;
    let be = x.backend().clone();
    be.planned_step(plan, x.buf_mut(), eps.buf(), x0_prev.map(Tensor::buf_mut))
}
