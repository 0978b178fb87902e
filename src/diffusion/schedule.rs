//! The linear-beta noise schedule of DDPM and the closed-form forward process `q(x_t | x_0)`.
//!
//! The buffers are bit-exact with the reference's `make_schedule` in torch f32 (see tests/golden/README.md). Only the
//! sqrt buffers can differ by 1 ulp, because torch's vectorised sqrt is not always correctly rounded.

use crate::error::{Error, Result};
use crate::shape_err;
use crate::tensor::Tensor;

/// The precomputed per-timestep buffers, each of length `t`, indexed by the timestep `0..t`.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Number of diffusion steps T.
    pub t: usize,
    /// `beta_t = linspace(beta_start, beta_end, T)[t]`, the variance added at step t.
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
        Ok(Schedule {
            t,
            sqrt_alphas_bar: alphas_bar.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alphas_bar: alphas_bar.iter().map(|a| (1.0 - a).sqrt()).collect(),
            sqrt_recip_alphas: alphas.iter().map(|a| (1.0 / a).sqrt()).collect(),
            betas,
            alphas,
            alphas_bar,
            alphas_bar_prev,
            posterior_variance,
        })
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
