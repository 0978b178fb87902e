//! Reverse-process samplers. DDPM is Ho et al. 2020, Algorithm 2. DDIM is Song et al. 2021, eq. (12).
//! DPM-Solver++(2M) and its SDE variant are in [`super::dpm_solver`].
//!
//! Every sampler has one shape: a list of steps `(t, t_prev)`, one network call per step, and a pure elementwise
//! update `x_t -> x_{t_prev}`. The per-step scalars are computed once on the host ([`DdpmCoefs`], [`DdimCoefs`],
//! [`DpmCoefs`]), so a fused CUDA kernel takes the same scalars and mirrors the elementwise functions here. The scalar arithmetic follows
//! the reference's f32 operation order, because torch evaluates those scalars as 0-d f32 tensors.

use super::dpm_solver::{dpm_timesteps, DpmCoefs, Spacing};
use super::plan::{sample_planned, SamplerPlan};
use super::schedule::Schedule;
use crate::backend::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::shape_err;
use crate::tensor::Tensor;

/// A noise-prediction network `eps_theta(x_t, t)` on backend `B`.
pub trait Denoiser<B: Backend = Cpu> {
    /// Predicts the noise in `x` (`[N, C, H, W]`) at timesteps `t` (N entries). The result has the shape of `x`.
    fn predict_eps(&mut self, x: &Tensor<B>, t: &[usize]) -> Result<Tensor<B>>;

    /// Whether the prediction is a guided one (classifier-free guidance), which a clamping DDIM step follows with
    /// the noise re-derived from its clamped x̂0 ([`DdimCoefs::rederive`]).
    fn guided(&self) -> bool {
        false
    }

    /// The width of the time sinusoid the network reads when it can run from a sampler's plan
    /// ([`Denoiser::predict_eps_planned`]), so that the samplers capture one step and replay it; `None` (the
    /// default) when it cannot, and the samplers call [`Denoiser::predict_eps`] step by step.
    fn plan_width(&self) -> Option<usize> {
        None
    }

    /// [`Denoiser::predict_eps`] at the current step of `plan` (every image at that step's timestep), with
    /// nothing read from or copied to the host, so that the call can be captured: the time sinusoid is read from
    /// the plan on the backend ([`super::DiffusionOps::plan_sinusoid`]).
    fn predict_eps_planned(&mut self, x: &Tensor<B>, plan: &SamplerPlan<B>) -> Result<Tensor<B>> {
        let _ = (x, plan);
        Err(Error::Arg("this denoiser runs step by step, not from a sampler's plan".into()))
    }
}

impl<F: FnMut(&Tensor, &[usize]) -> Result<Tensor>> Denoiser for F {
    fn predict_eps(&mut self, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        self(x, t)
    }
}

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// Ancestral DDPM over all T steps.
    Ddpm,
    /// DDIM on the grid [`ddim_timesteps`]`(T, steps)`. `eta = 0` is deterministic, and `eta = 1` on the full grid is
    /// DDPM. `clamp` clamps x̂0 to [-1, 1] at every step and the output at the end (the reference does both).
    Ddim { steps: usize, eta: f32, clamp: bool },
    /// DPM-Solver++(2M) ([`super::dpm_solver`]) on `steps` timesteps spaced by `spacing`; `clamp` as for DDIM.
    DpmPp2m { steps: usize, spacing: Spacing, clamp: bool },
    /// SDE-DPM-Solver++(2M) ([`super::dpm_solver`]), otherwise as [`SamplerKind::DpmPp2m`].
    DpmPp2mSde { steps: usize, spacing: Spacing, clamp: bool },
}

impl SamplerKind {
    /// `Err(Error::Arg)` unless `1 <= steps <= t_total` and, for DDIM, `eta` is finite and `>= 0`.
    pub fn validate(&self, t_total: usize) -> Result<()> {
        let (name, steps) = match *self {
            SamplerKind::Ddpm => return Ok(()),
            SamplerKind::Ddim { eta, .. } if !(eta.is_finite() && eta >= 0.0) => {
                return Err(Error::Arg(format!("DDIM eta must be finite and >= 0, got {eta}")))
            }
            SamplerKind::Ddim { steps, .. } => ("DDIM", steps),
            SamplerKind::DpmPp2m { steps, .. } | SamplerKind::DpmPp2mSde { steps, .. } => ("DPM-Solver++", steps),
        };
        if steps == 0 || steps > t_total {
            return Err(Error::Arg(format!("{name} steps must be in 1..={t_total}, got {steps}")));
        }
        Ok(())
    }

    /// The timesteps of the network calls on `sched`, in the order they are made (descending). Its length is the
    /// number of network calls.
    pub fn timesteps(&self, sched: &Schedule) -> Vec<usize> {
        match *self {
            SamplerKind::Ddpm => (0..sched.t).rev().collect(),
            SamplerKind::Ddim { steps, .. } => ddim_timesteps(sched.t, steps).into_iter().rev().collect(),
            SamplerKind::DpmPp2m { steps, spacing, .. } | SamplerKind::DpmPp2mSde { steps, spacing, .. } => {
                dpm_timesteps(sched, steps, spacing)
            }
        }
    }

    /// Whether x̂0 and the output are clamped to [-1, 1]. DDPM has no x̂0, and its output is always clamped.
    pub fn clamps(&self) -> bool {
        match *self {
            SamplerKind::Ddpm => true,
            SamplerKind::Ddim { clamp, .. }
            | SamplerKind::DpmPp2m { clamp, .. }
            | SamplerKind::DpmPp2mSde { clamp, .. } => clamp,
        }
    }
}

/// The reference's `make_ddim_timesteps`: `stride = max(1, T / steps)` and the grid is `range(0, T, stride)`, with
/// `T-1` appended if it is missing. The result is ascending and starts at 0. `steps = 0` is treated as 1. That case is
/// unreachable through a validated [`SamplerKind`], and in the reference it would divide by zero.
pub fn ddim_timesteps(t_total: usize, steps: usize) -> Vec<usize> {
    let stride = (t_total / steps.max(1)).max(1);
    let mut ts: Vec<usize> = (0..t_total).step_by(stride).collect();
    if ts.last().is_some_and(|&l| l != t_total - 1) {
        ts.push(t_total - 1);
    }
    ts
}

/// Scalars of one DDPM step at timestep t.
#[derive(Clone, Copy, Debug)]
pub struct DdpmCoefs {
    /// `sqrt(1 / alpha_t)`.
    pub sqrt_recip_alpha: f32,
    /// `beta_t / sqrt(1 - alpha_bar_t)`.
    pub eps_coef: f32,
    /// `sqrt(tilde_beta_t)`. It is 0 at t = 0, where no noise is added.
    pub sigma: f32,
}

impl DdpmCoefs {
    /// The coefficients at timestep `t`; `Err` if `t >= T`.
    pub fn new(sched: &Schedule, t: usize) -> Result<Self> {
        check_t(sched, t)?;
        Ok(DdpmCoefs {
            sqrt_recip_alpha: sched.sqrt_recip_alphas[t],
            eps_coef: sched.betas[t] / sched.sqrt_one_minus_alphas_bar[t],
            sigma: if t > 0 { sched.posterior_variance[t].sqrt() } else { 0.0 },
        })
    }
}

/// One DDPM step:
/// `x_{t-1} = sqrt(1/alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sqrt(tilde_beta_t) z`.
/// At t = 0 the noise term is dropped. `z = None` means `z = 0` (the posterior mean). There is no clamp.
pub fn ddpm_step(sched: &Schedule, t: usize, x: &[f32], eps: &[f32], z: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
    check_lens(x, eps, z, out)?;
    ddpm_update(&DdpmCoefs::new(sched, t)?, x, eps, z.filter(|_| t > 0), out);
    Ok(())
}

/// The elementwise body of [`ddpm_step`] with its scalars given (lengths checked by the caller):
/// `out = sra·(x - eps_coef·eps) + sigma·z`, the noise term only when `z` is given.
pub fn ddpm_update(c: &DdpmCoefs, x: &[f32], eps: &[f32], z: Option<&[f32]>, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        // Reference order: mean = sra * (x - coef*eps), then x = mean + sigma*z, each op rounded separately.
        let mean = c.sqrt_recip_alpha * (x[i] - c.eps_coef * eps[i]);
        *o = match z {
            Some(z) => mean + c.sigma * z[i],
            None => mean,
        };
    }
}

/// Scalars of one DDIM step from t to t_prev. `alpha_bar_prev = alpha_bar_{t_prev}`, or 1 when there is no t_prev
/// (the final step).
#[derive(Clone, Copy, Debug)]
pub struct DdimCoefs {
    /// `sqrt(1 - alpha_bar_t)`.
    pub sqrt_one_minus_ab: f32,
    /// `sqrt(alpha_bar_t)`.
    pub sqrt_ab: f32,
    /// `sqrt(alpha_bar_prev)`.
    pub sqrt_ab_prev: f32,
    /// `sigma^2 = eta^2 (1 - alpha_bar_prev)/(1 - alpha_bar_t) (1 - alpha_bar_t/alpha_bar_prev)`, unclamped as in the
    /// seed. With eta = 1 it equals `tilde_beta_t` when t_prev = t - 1.
    pub sigma_sq: f32,
    /// `sigma = sqrt(max(sigma^2, 0))`.
    pub sigma: f32,
    /// `sqrt(max(1 - alpha_bar_prev - sigma^2, 0))`, the weight of the predicted noise (the "direction to x_t").
    pub dir_coef: f32,
    /// Whether x̂0 is clamped to [-1, 1], as the reference does. [`DdimCoefs::new`] sets it.
    pub clamp: bool,
    /// Whether the direction term uses the noise re-derived from the clamped x̂0, `(x_t - sqrt(alpha_bar_t) x̂0) /
    /// sqrt(1 - alpha_bar_t)`, instead of the network's. GLIDE does so for guided sampling (Nichol et al. 2022; the
    /// `use_clipped_model_output` of diffusers' DDIM): a guided ε overshoots, its x̂0 is clamped, and without this
    /// the step moves x_t along the unclamped ε and the samples fall apart at w >= 2. [`DdimCoefs::new`] leaves it
    /// off, as the reference has it; [`sample`] sets it for a guided [`Denoiser`].
    pub rederive: bool,
}

impl DdimCoefs {
    /// The coefficients for the step t to t_prev, with the reference's clamp of x̂0; `Err` if `t >= T` or
    /// `t_prev >= t`.
    pub fn new(sched: &Schedule, t: usize, t_prev: Option<usize>, eta: f32) -> Result<Self> {
        check_t(sched, t)?;
        if let Some(p) = t_prev.filter(|&p| p >= t) {
            return Err(Error::Arg(format!("DDIM t_prev {p} must be below t {t}")));
        }
        let ab = sched.alphas_bar[t];
        let ab_prev = t_prev.map_or(1.0, |p| sched.alphas_bar[p]);
        // Reference: (eta ** 2) * ((1.0 - ab_prev) / (1.0 - ab_t)) * (1.0 - ab_t / ab_prev), left to right in f32.
        let sigma_sq = (eta * eta) * ((1.0 - ab_prev) / (1.0 - ab)) * (1.0 - ab / ab_prev);
        Ok(DdimCoefs {
            sqrt_one_minus_ab: (1.0 - ab).sqrt(),
            sqrt_ab: ab.sqrt(),
            sqrt_ab_prev: ab_prev.sqrt(),
            sigma_sq,
            sigma: sigma_sq.max(0.0).sqrt(),
            dir_coef: (1.0 - ab_prev - sigma_sq).max(0.0).sqrt(),
            clamp: true,
            rederive: false,
        })
    }

    /// The coefficients of one DDIM inversion step (η = 0, no clamp) from `s` up to `t > s`, `s = None` being the
    /// clean image (ᾱ = 1): x̂0 = (x_s - sqrt(1-ᾱ_s) ε)/sqrt(ᾱ_s) and x_t = sqrt(ᾱ_t) x̂0 + sqrt(1-ᾱ_t) ε. It is the
    /// forward step from t to s with the roles swapped, so [`ddim_update`] and every backend's `ddim_step` run it
    /// unchanged: the fields named for "t" describe s, those named "prev" describe t. `Err` if `t >= T` or
    /// `s >= t`.
    pub fn inverse(sched: &Schedule, s: Option<usize>, t: usize) -> Result<Self> {
        check_t(sched, t)?;
        if let Some(s) = s.filter(|&s| s >= t) {
            return Err(Error::Arg(format!("DDIM inversion step {s} -> {t}: it must go up, to a later timestep")));
        }
        let ab_s = s.map_or(1.0, |s| sched.alphas_bar[s]);
        let ab_t = sched.alphas_bar[t];
        Ok(DdimCoefs {
            sqrt_one_minus_ab: (1.0 - ab_s).sqrt(),
            sqrt_ab: ab_s.sqrt(),
            sqrt_ab_prev: ab_t.sqrt(),
            sigma_sq: 0.0,
            sigma: 0.0,
            dir_coef: (1.0 - ab_t).sqrt(),
            clamp: false,
            rederive: false,
        })
    }
}

/// One sampler step: its update's scalars, and its noise `(seed, stream)` when it draws any.
pub type SamplerStep = (StepCoefs, Option<(u64, u64)>);

/// The scalars of one sampler step, of whichever update it is.
#[derive(Clone, Copy, Debug)]
pub enum StepCoefs {
    Ddpm(DdpmCoefs),
    Ddim(DdimCoefs),
    Dpm(DpmCoefs),
}

impl StepCoefs {
    /// The float scalars in the order the step kernels take them (and a plan's row holds them).
    pub fn floats(&self) -> Vec<f32> {
        match self {
            StepCoefs::Ddpm(c) => vec![c.sqrt_recip_alpha, c.eps_coef, c.sigma],
            StepCoefs::Ddim(c) => vec![c.sqrt_one_minus_ab, c.sqrt_ab, c.sqrt_ab_prev, c.dir_coef, c.sigma],
            StepCoefs::Dpm(c) => vec![c.sigma, c.alpha, c.x_coef, c.d_coef, c.prev_coef, c.noise_coef],
        }
    }

    /// The update's flags, in the order the step kernels take them after the floats: DDIM's clamp and
    /// re-derivation, DPM-Solver++'s clamp.
    pub fn flags(&self) -> Vec<bool> {
        match self {
            StepCoefs::Ddpm(_) => vec![],
            StepCoefs::Ddim(c) => vec![c.clamp, c.rederive],
            StepCoefs::Dpm(c) => vec![c.clamp],
        }
    }
}

/// One DDIM step from `t` to `t_prev` with noise scale `eta`:
/// `x0 = clamp((x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), -1, 1)`, then
/// `x_{t_prev} = sqrt(alpha_bar_prev) x0 + dir_coef eps + sigma z`, with the scalars of [`DdimCoefs`].
/// `z = None` means `z = 0`. The reference uses `z = 0` at the final step and whenever `eta = 0`. There is no final
/// clamp.
pub fn ddim_step(
    sched: &Schedule,
    (t, t_prev, eta): (usize, Option<usize>, f32),
    x: &[f32],
    eps: &[f32],
    z: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    check_lens(x, eps, z, out)?;
    ddim_update(&DdimCoefs::new(sched, t, t_prev, eta)?, x, eps, z, out);
    Ok(())
}

/// The elementwise body of [`ddim_step`] with its scalars given (lengths checked by the caller); x̂0 is clamped only
/// when `c.clamp`, and the direction's noise re-derived from it when `c.rederive`.
pub fn ddim_update(c: &DdimCoefs, x: &[f32], eps: &[f32], z: Option<&[f32]>, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        // Reference order: a true division by sqrt(ab_t), not a multiply by its reciprocal (they differ in the last
        // bit).
        let x0 = (x[i] - c.sqrt_one_minus_ab * eps[i]) / c.sqrt_ab;
        let x0 = if c.clamp { x0.clamp(-1.0, 1.0) } else { x0 };
        let e = if c.rederive { (x[i] - c.sqrt_ab * x0) / c.sqrt_one_minus_ab } else { eps[i] };
        let det = c.sqrt_ab_prev * x0 + c.dir_coef * e;
        *o = match z {
            Some(z) => det + c.sigma * z[i],
            None => det,
        };
    }
}

fn check_t(sched: &Schedule, t: usize) -> Result<()> {
    if t >= sched.t {
        return Err(Error::Arg(format!("timestep {t} out of range 0..{}", sched.t)));
    }
    Ok(())
}

fn check_lens(x: &[f32], eps: &[f32], z: Option<&[f32]>, out: &[f32]) -> Result<()> {
    let n = x.len();
    if eps.len() != n || out.len() != n || z.is_some_and(|z| z.len() != n) {
        return shape_err!(
            "sampler step: lengths differ: x {n}, eps {}, z {:?}, out {}",
            eps.len(),
            z.map(<[f32]>::len),
            out.len()
        );
    }
    Ok(())
}

/// The RNG stream of the initial noise x_T.
pub const INIT_STREAM: u64 = 0;

/// The RNG stream of the noise z drawn by the step that starts at timestep t. Each step gets its own stream, and
/// none of them collides with [`INIT_STREAM`].
pub fn noise_stream(t: usize) -> u64 {
    1 + t as u64
}

/// `x_T ~ N(0, I)` of shape `[n, c, h, w]`, drawn as `rng::fill_normal(seed, INIT_STREAM)`. Element i is
/// `normal(seed, 0, i)`, so image k is the same whatever the batch size n.
pub fn initial_noise(seed: u64, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    let mut t = Tensor::zeros(&[n, c, h, w]);
    crate::rng::fill_normal(seed, INIT_STREAM, t.data_mut());
    t
}

/// Runs the reverse process from `x_t` (`[N, C, H, W]`, usually [`initial_noise`], on the denoiser's backend)
/// and returns x_0 on the host, clamped to [-1, 1] when [`SamplerKind::clamps`]. The network is called at
/// [`SamplerKind::timesteps`]; the step from t draws its noise `rng::normal(seed, noise_stream(t), ·)` on the
/// backend, inside the fused step. No noise is drawn for the last step, for DDIM with eta = 0, or for
/// DPM-Solver++(2M). `progress(done, total)` is called after each network call. Captured as a graph where it can
/// be ([`sample_observed`] with graphs).
pub fn sample<B: Backend>(
    den: &mut dyn Denoiser<B>,
    sched: &Schedule,
    kind: SamplerKind,
    x_t: Tensor<B>,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    sample_observed(den, sched, kind, x_t, (seed, true), &mut |done, total, _| {
        progress(done, total);
        Ok(())
    })
}

/// What [`sample_observed`] calls after each network call: `(done, total, x)`.
pub type Observer<'a, B> = dyn FnMut(usize, usize, &Tensor<B>) -> Result<()> + 'a;

/// [`sample`], calling `observe(done, total, x)` after each network call with the x the step has just made (on
/// the backend; x_0 unclamped after the last call), so that a caller can record the trajectory. An `Err` from
/// `observe` stops the run.
///
/// With `graphs`, on a backend that records graphs ([`crate::backend::Memory::has_graphs`]) and a denoiser that
/// runs from a plan ([`Denoiser::plan_width`]), the steps' scalars are uploaded once as a [`SamplerPlan`], the
/// first step runs from it launch by launch, the second is captured and every later one is a replay: the same
/// bits as step by step, with no host work per kernel and nothing copied per step.
pub fn sample_observed<B: Backend>(
    den: &mut dyn Denoiser<B>,
    sched: &Schedule,
    kind: SamplerKind,
    x_t: Tensor<B>,
    (seed, graphs): (u64, bool),
    observe: &mut Observer<B>,
) -> Result<Tensor> {
    kind.validate(sched.t)?;
    x_t.dims4("sample: x_t")?;
    let ts = kind.timesteps(sched);
    let guided = den.guided();
    let steps = (0..ts.len()).map(|k| step_coefs(sched, kind, &ts, k, guided, seed)).collect::<Result<Vec<_>>>()?;
    let x = run_steps(den, (&steps, &ts), x_t, graphs, observe)?;
    let mut x = x.to_host()?;
    if kind.clamps() {
        x.data_mut().iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    }
    Ok(x)
}

/// Runs `steps` (each step's scalars and noise) from `x`, the network called at `ts` (a timestep per step, the same
/// for every image), and returns the last x on the backend: from a plan, captured, where `graphs` and the backend
/// and denoiser allow it (see [`sample_observed`]), else step by step; `observe` as for [`sample_observed`].
pub(super) fn run_steps<B: Backend>(
    den: &mut dyn Denoiser<B>,
    (steps, ts): (&[SamplerStep], &[usize]),
    x: Tensor<B>,
    graphs: bool,
    observe: &mut Observer<B>,
) -> Result<Tensor<B>> {
    let (n, ..) = x.dims4("sampler input x")?;
    if ts.len() != steps.len() {
        return Err(Error::Arg(format!("{} sampler steps with {} timesteps", steps.len(), ts.len())));
    }
    let be = x.backend().clone();
    // DPM-Solver++'s x̂0 of the previous step, kept for its second-order steps.
    let mut x0_prev = match steps.first() {
        Some((StepCoefs::Dpm(_), _)) => Some(Tensor::alloc(&be, x.shape())?),
        _ => None,
    };
    if let Some(width) = den.plan_width().filter(|_| graphs && be.has_graphs() && steps.len() >= 2) {
        let mut plan = SamplerPlan::new(&be, steps, ts, width)?;
        let mut x = x;
        sample_planned(den, &mut plan, &mut x, x0_prev.as_mut(), observe)?;
        return Ok(x);
    }
    let mut next = Tensor::alloc(&be, x.shape())?;
    let mut x = x;
    for (k, (&t, (c, noise))) in ts.iter().zip(steps).enumerate() {
        let eps = den.predict_eps(&x, &vec![t; n])?;
        check_eps(&eps, &x)?;
        let (x_buf, eps, out) = (x.buf(), eps.buf(), next.buf_mut());
        match (c, x0_prev.as_mut()) {
            (StepCoefs::Ddpm(c), _) => be.ddpm_step(c, x_buf, eps, *noise, out)?,
            (StepCoefs::Ddim(c), _) => be.ddim_step(c, x_buf, eps, *noise, out)?,
            (StepCoefs::Dpm(c), Some(prev)) => be.dpm_step(c, x_buf, eps, prev.buf_mut(), *noise, out)?,
            (StepCoefs::Dpm(_), None) => return Err(Error::Arg("a DPM-Solver++ step after another kind".into())),
        }
        std::mem::swap(&mut x, &mut next);
        observe(k + 1, steps.len(), &x)?;
    }
    Ok(x)
}

/// The scalars and noise of call `k` of `kind` at timesteps `ts`: the step from `ts[k]` to the next call's
/// timestep, or to x_0 after the last call.
fn step_coefs(
    sched: &Schedule,
    kind: SamplerKind,
    ts: &[usize],
    k: usize,
    guided: bool,
    seed: u64,
) -> Result<SamplerStep> {
    let (t, t_prev) = (ts[k], ts.get(k + 1).copied());
    let noisy = match kind {
        SamplerKind::Ddpm | SamplerKind::DpmPp2mSde { .. } => true,
        SamplerKind::Ddim { eta, .. } => eta > 0.0,
        SamplerKind::DpmPp2m { .. } => false,
    };
    let noise = (noisy && t_prev.is_some()).then_some((seed, noise_stream(t)));
    let c = match kind {
        SamplerKind::Ddpm => StepCoefs::Ddpm(DdpmCoefs::new(sched, t)?),
        SamplerKind::Ddim { eta, clamp, .. } => {
            // A clamping DDIM step after a guided prediction re-derives its noise from the clamped x̂0.
            let rederive = clamp && guided;
            StepCoefs::Ddim(DdimCoefs { clamp, rederive, ..DdimCoefs::new(sched, t, t_prev, eta)? })
        }
        SamplerKind::DpmPp2m { clamp, .. } | SamplerKind::DpmPp2mSde { clamp, .. } => {
            let sde = matches!(kind, SamplerKind::DpmPp2mSde { .. });
            let before = k.checked_sub(1).map(|j| ts[j]);
            StepCoefs::Dpm(DpmCoefs::new(sched, (before, t, t_prev), sde, clamp)?)
        }
    };
    Ok((c, noise))
}

/// `Err` unless the denoiser's ε has the shape of its input x.
pub(super) fn check_eps<B: Backend>(eps: &Tensor<B>, x: &Tensor<B>) -> Result<()> {
    if eps.shape() != x.shape() {
        return shape_err!("sample: denoiser returned {:?} for input {:?}", eps.shape(), x.shape());
    }
    Ok(())
}
