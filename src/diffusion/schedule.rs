//! The noise schedules (DDPM's linear betas, the reference's, and the cosine schedule of Nichol & Dhariwal 2021)
//! and the closed-form forward process `q(x_t | x_0)`.
//!
//! The linear buffers are bit-exact with the reference's `make_schedule` in torch f32 (see tests/golden/README.md).
//! Only the sqrt buffers can differ by 1 ulp, because torch's vectorised sqrt is not always correctly rounded.

use crate::error::{Error, Result};
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;
use std::str::FromStr;

/// Which betas a run trains and samples with (recorded in its checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `beta_t` linear from 1e-4 to 0.02 (DDPM's, and the reference's).
    #[default]
    Linear,
    /// The cosine schedule of Nichol & Dhariwal 2021, eq. 17, with s = 0.008 ([`Schedule::cosine`]).
    Cosine,
}

impl ScheduleKind {
    /// Every kind, in the order `--schedule` lists them.
    pub const ALL: [ScheduleKind; 2] = [ScheduleKind::Linear, ScheduleKind::Cosine];

    /// "linear" or "cosine", as `--schedule` and the checkpoint metadata spell it.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        }
    }

    /// The schedule of this kind over `t` steps.
    pub fn build(self, t: usize) -> Result<Schedule> {
        match self {
            ScheduleKind::Linear => Schedule::linear(t, 1e-4, 2e-2),
            ScheduleKind::Cosine => Schedule::cosine(t),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::Arg(format!("unknown schedule {s:?}: expected linear or cosine")))
    }
}

/// The cosine schedule's offset s, which keeps `beta_t` from being tiny near t = 0 (Nichol & Dhariwal 2021, §3.2).
pub const COSINE_OFFSET: f64 = 0.008;
/// The cosine schedule's cap on `beta_t`, which keeps the last steps from being singular at t = T.
pub const COSINE_MAX_BETA: f64 = 0.999;

/// The precomputed per-timestep buffers, each of length `t`, indexed by the timestep `0..t`.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Number of diffusion steps T.
    pub t: usize,
    /// The variance added at step t, e.g. `linspace(beta_start, beta_end, T)[t]` for the linear schedule.
    pub betas: Vec<f32>,
    /// `alpha_t = 1 - beta_t`.
    pub alphas: Vec<f32>,
    /// `alpha_bar_t = prod_{s<=t} alpha_s`, so that `q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`.
    pub alphas_bar: Vec<f32>,
    /// `alpha_bar_{t-1}`, with `alpha_bar_{-1} = 1`.
    pub alphas_bar_prev: Vec<f32>,
    /// `sqrt(alpha_bar_t)`.
    pub sqrt_alphas_bar: Vec<f32>,
    /// `sqrt(1 - alpha_bar_t)`.
    pub sqrt_one_minus_alphas_bar: Vec<f32>,
    /// `sqrt(1 / alpha_t)`.
    pub sqrt_recip_alphas: Vec<f32>,
    /// `tilde_beta_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`, the variance of `q(x_{t-1} | x_t, x_0)`.
    /// It is 0 at t = 0.
    pub posterior_variance: Vec<f32>,
}

impl Schedule {
    /// The schedule with `beta_t` linear from `beta_start` to `beta_end` over `t` steps.
    ///
    /// It follows torch's f32 arithmetic, so the buffers match the reference's bit for bit:
    /// - `linspace` uses `step = (end - start) / (T - 1)` in f32. Entries `i < T/2` are `start + step*i` and the
    ///   rest are `end - step*(T-1-i)`, each rounded once (an FMA).
    /// - `cumprod` keeps an f64 running product and rounds each output to f32. With an f32 accumulator, 869 of
    ///   1000 entries differ.
    /// - The other buffers are plain f32, evaluated in the reference's order.
    ///
    /// `Err` if `t < 2` or a beta falls outside (0, 1).
    pub fn linear(t: usize, beta_start: f32, beta_end: f32) -> Result<Schedule> {
        if t < 2 {
            return Err(Error::Arg(format!("schedule needs at least 2 timesteps, got {t}")));
        }
        let step = (beta_end - beta_start) / (t - 1) as f32;
        let betas: Vec<f32> = (0..t)
            .map(|i| {
                if i < t / 2 {
                    step.mul_add(i as f32, beta_start)
                } else {
                    (-step).mul_add((t - 1 - i) as f32, beta_end)
                }
            })
            .collect();
        if let Some(b) = betas.iter().find(|&&b| !(b > 0.0 && b < 1.0)) {
            return Err(Error::Arg(format!(
                "betas must lie in (0, 1), got {b} from beta_start {beta_start}, beta_end {beta_end}"
            )));
        }
        Ok(Schedule::from_betas(betas))
    }

    /// The cosine schedule (Nichol & Dhariwal 2021, eq. 17) over `t` steps: `alpha_bar(u) = f(u) / f(0)` with
    /// `f(u) = cos²((u/T + s) / (1 + s) · π/2)`, s = [`COSINE_OFFSET`], and for the step with index i (the paper's
    /// t = i + 1) `beta_i = min(1 - alpha_bar(i+1) / alpha_bar(i), 0.999)`, as in the paper's code
    /// (`betas_for_alpha_bar`). Each beta is computed in f64 and rounded once to f32; the other buffers follow from
    /// the betas exactly as [`Schedule::linear`]'s do, so `alpha_bar_i` is the f64 running product of the f32
    /// `1 - beta`, which matches `f(i+1)/f(0)` to within the rounding of those factors.
    ///
    /// `Err` if `t < 2`, or if T is so large (millions, beyond `train::MAX_TIMESTEPS`) that the first beta vanishes
    /// in `1 - beta` in f32, which would make the first step add no noise and its posterior variance 0/0.
    pub fn cosine(t: usize) -> Result<Schedule> {
        if t < 2 {
            return Err(Error::Arg(format!("schedule needs at least 2 timesteps, got {t}")));
        }
        let f = |u: usize| {
            let x = ((u as f64 / t as f64) + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * std::f64::consts::FRAC_PI_2;
            x.cos().powi(2)
        };
        let betas: Vec<f32> = (0..t).map(|i| (1.0 - f(i + 1) / f(i)).min(COSINE_MAX_BETA) as f32).collect();
        if let Some(b) = betas.iter().find(|&&b| 1.0 - b == 1.0) {
            return Err(Error::Arg(format!("a cosine schedule of {t} steps has beta {b:e}, too small for f32")));
        }
        Ok(Schedule::from_betas(betas))
    }

    /// Every buffer derived from `betas` (each in (0, 1), at least 2 of them) in the reference's f32 arithmetic:
    /// `cumprod` keeps an f64 running product and rounds each output to f32 (as torch does); the rest is plain f32
    /// in the reference's order.
    fn from_betas(betas: Vec<f32>) -> Schedule {
        let t = betas.len();
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut acc = 1.0f64;
        let alphas_bar: Vec<f32> = alphas
            .iter()
            .map(|&a| {
                acc *= a as f64;
                acc as f32
            })
            .collect();
        let alphas_bar_prev: Vec<f32> = std::iter::once(1.0).chain(alphas_bar[..t - 1].iter().copied()).collect();
        let posterior_variance =
            (0..t).map(|i| betas[i] * (1.0 - alphas_bar_prev[i]) / (1.0 - alphas_bar[i])).collect();
        Schedule {
            t,
            sqrt_alphas_bar: alphas_bar.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alphas_bar: alphas_bar.iter().map(|a| (1.0 - a).sqrt()).collect(),
            sqrt_recip_alphas: alphas.iter().map(|a| (1.0 / a).sqrt()).collect(),
            betas,
            alphas,
            alphas_bar,
            alphas_bar_prev,
            posterior_variance,
        }
    }

    /// Samples the forward process in closed form for each batch item b:
    /// `x_t[b] = sqrt(alpha_bar_{t[b]}) x0[b] + sqrt(1 - alpha_bar_{t[b]}) noise[b]`.
    /// `x0` and `noise` have the same shape `[B, ...]`, and `t` has B entries, each below T.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        if x0.shape() != noise.shape() {
            return shape_err!("q_sample: x0 {:?} and noise {:?} differ", x0.shape(), noise.shape());
        }
        let b = x0.shape().first().copied().unwrap_or(0);
        if x0.shape().is_empty() || t.len() != b {
            return shape_err!("q_sample: x0 {:?} needs a batch dim matching {} timesteps", x0.shape(), t.len());
        }
        if let Some(bad) = t.iter().find(|&&ti| ti >= self.t) {
            return Err(Error::Arg(format!("q_sample: timestep {bad} out of range 0..{}", self.t)));
        }
        let per = x0.numel() / b.max(1);
        let mut out = vec![0.0f32; x0.numel()];
        for (bi, &ti) in t.iter().enumerate() {
            let (s, r) = (self.sqrt_alphas_bar[ti], self.sqrt_one_minus_alphas_bar[ti]);
            let range = bi * per..(bi + 1) * per;
            for ((o, &x), &e) in out[range.clone()].iter_mut().zip(&x0.data()[range.clone()]).zip(&noise.data()[range])
            {
                *o = s * x + r * e;
            }
        }
        Tensor::new(x0.shape(), out)
    }
}
