//! DDIM inversion (Song et al. 2021, section 4.3; Dhariwal & Nichol 2021, appendix F): deterministic DDIM
//! (η = 0, no clamp) discretises the probability-flow ODE, so taking its steps in the other direction maps a clean
//! image x_0 to a noise x_T from which the same sampler regenerates x_0, up to the discretisation error.
//!
//! The inversion walks the exact reverse of the grid that `SamplerKind::Ddim { steps, eta: 0.0, clamp: false }`
//! samples on, with as many network calls. One step from s up to t (s = "the clean image", ᾱ = 1, for the first) is
//!
//! `x̂0 = (x_s - sqrt(1-ᾱ_s) ε)/sqrt(ᾱ_s)`, `x_t = sqrt(ᾱ_t) x̂0 + sqrt(1-ᾱ_t) ε`, with `ε = ε_θ(x_s, s)`,
//!
//! the forward DDIM step from t to s solved for x_t with ε taken at the step's start instead of its end (the
//! standard approximation; the first step evaluates the network on the clean image at timestep 0). It is the
//! backend's fused `ddim_step` with [`DdimCoefs::inverse`], so every backend runs it with the sampler's kernel, in
//! the samplers' loop (captured as a graph where they are).

use super::sampler::{ddim_timesteps, run_steps, sample, DdimCoefs, Denoiser, SamplerKind, StepCoefs};
use super::schedule::Schedule;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape_err;
use crate::tensor::Tensor;

/// The sampler that regenerates an image from its DDIM inversion with `steps` steps: DDIM, η = 0, no clamp.
pub fn regeneration_kind(steps: usize) -> SamplerKind {
    SamplerKind::Ddim { steps, eta: 0.0, clamp: false }
}

/// The inversion's steps `(s, t)`, from the clean image (`s = None`) up to T - 1: the reverse of the steps of
/// [`regeneration_kind`]`(steps)`, one network call each (at timestep `s`, 0 for the clean image).
pub fn inversion_steps(sched: &Schedule, steps: usize) -> Vec<(Option<usize>, usize)> {
    let grid = ddim_timesteps(sched.t, steps);
    let froms = std::iter::once(None).chain(grid.iter().map(|&s| Some(s)));
    froms.zip(grid.iter().copied()).collect()
}

/// Inverts the clean images `x0` (`[N, C, H, W]`, on the denoiser's backend) with `steps`-step DDIM: returns the
/// x_T from which [`regeneration_kind`]`(steps)` regenerates `x0` approximately. `progress(done, total)` is called
/// after each network call.
pub fn ddim_invert<B: Backend>(
    den: &mut dyn Denoiser<B>,
    sched: &Schedule,
    steps: usize,
    x0: Tensor<B>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor<B>> {
    regeneration_kind(steps).validate(sched.t)?;
    x0.dims4("ddim_invert: x0")?;
    let (updates, ts): (Vec<_>, Vec<_>) = inversion_steps(sched, steps)
        .into_iter()
        .map(|(s, t)| Ok(((StepCoefs::Ddim(DdimCoefs::inverse(sched, s, t)?), None), s.unwrap_or(0))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    // As the samplers run: captured as a graph where the backend and the denoiser allow it.
    run_steps(den, (&updates, &ts), x0, true, &mut |done, total, _| {
        progress(done, total);
        Ok(())
    })
}

/// Inverts `x0` with `steps`-step DDIM and regenerates it from the result with [`regeneration_kind`]`(steps)`:
/// returns `(noise, reconstruction)` on the host, the reconstruction unclamped. `progress(done, total)` counts the
/// network calls of both halves.
pub fn roundtrip<B: Backend>(
    den: &mut dyn Denoiser<B>,
    sched: &Schedule,
    steps: usize,
    x0: Tensor<B>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Tensor)> {
    let noise = ddim_invert(den, sched, steps, x0, &mut |done, calls| progress(done, 2 * calls))?;
    let host = Tensor::new(noise.shape(), noise.to_vec()?)?;
    let recon =
        sample(den, sched, regeneration_kind(steps), noise, 0, &mut |done, calls| progress(calls + done, 2 * calls))?;
    Ok((host, recon))
}

/// The round-trip error of each image: the mean absolute difference between `x0` and its reconstruction clamped
/// to [-1, 1] (the range of the data), in model units.
#[derive(Clone, Debug)]
pub struct RoundTripError {
    pub per_image: Vec<f64>,
}

impl RoundTripError {
    /// Compares `x0` with `recon`, both `[N, C, H, W]` on the host; `Err` if their shapes differ.
    pub fn new(x0: &Tensor, recon: &Tensor) -> Result<Self> {
        if x0.shape() != recon.shape() {
            return shape_err!("round-trip error: images {:?} vs reconstructions {:?}", x0.shape(), recon.shape());
        }
        let (n, ..) = x0.dims4("round-trip error")?;
        let per = x0.numel() / n.max(1);
        let per_image = x0
            .data()
            .chunks_exact(per)
            .zip(recon.data().chunks_exact(per))
            .map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| (a as f64 - b.clamp(-1.0, 1.0) as f64).abs()).sum::<f64>())
            .map(|sum| sum / per as f64)
            .collect();
        Ok(RoundTripError { per_image })
    }

    /// The mean over all pixels of all images.
    pub fn mean(&self) -> f64 {
        self.per_image.iter().sum::<f64>() / self.per_image.len().max(1) as f64
    }

    /// The image with the largest error and that error (`(0, 0.0)` for no images).
    pub fn worst(&self) -> (usize, f64) {
        self.per_image.iter().copied().enumerate().fold((0, 0.0), |w, (i, e)| if e > w.1 { (i, e) } else { w })
    }
}

/// Spherical linear interpolation between the vectors `a` and `b` at `frac` in [0, 1] (Shoemake 1985), as DDIM
/// interpolates between two noises (Song et al. 2021, section 5.3): along the great circle through them, with the
/// angle θ between them, `sin((1-frac)θ)/sin θ · a + sin(frac θ)/sin θ · b`. Gaussian noise of high dimension lies
/// near a sphere, which a straight line would cut through (its midpoint would be too short a vector). Nearly
/// parallel vectors are interpolated linearly. `frac = 0` returns `a` and `frac = 1` returns `b`. In f64.
pub fn slerp(a: &[f32], b: &[f32], frac: f64) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        return Err(Error::Shape(format!("slerp: vectors of {} and {} values", a.len(), b.len())));
    }
    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let norms = (dot(a, a) * dot(b, b)).sqrt();
    let cos = if norms > 0.0 { (dot(a, b) / norms).clamp(-1.0, 1.0) } else { 1.0 };
    let theta = cos.acos();
    let (wa, wb) = if theta.sin() < 1e-6 {
        (1.0 - frac, frac)
    } else {
        (((1.0 - frac) * theta).sin() / theta.sin(), (frac * theta).sin() / theta.sin())
    };
    Ok(a.iter().zip(b).map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32).collect())
}
