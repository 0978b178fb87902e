//! The full sampler loop with the real UNet against the reference: the reference's `sample_ddim(n=2, num_steps=10,
//! eta=0)` with the initial weights (golden `traj.ddim10`). DPM-Solver++ and DDIM inversion against known answers:
//! DPM-Solver++'s first-order step against DDIM's, the inverse DDIM step against the forward one, and the whole
//! sampler and the inversion's round trip on Gaussian data, where the exact noise prediction and the exact
//! endpoint are closed form.

mod common;

use common::uniform;
use common::{compare, golden};
use ddpm::diffusion::dpm_solver::dpm_update;
use ddpm::diffusion::inversion::inversion_steps;
use ddpm::diffusion::sampler::ddim_update;
use ddpm::diffusion::{
    ddim_invert, dpm_timesteps, initial_noise, regeneration_kind, sample, slerp, DdimCoefs, DpmCoefs, RoundTripError,
    SamplerKind, Schedule, Spacing,
};
use ddpm::nn::{UNet, UNetConfig, UNetDenoiser};
use ddpm::params::Params;
use ddpm::Tensor;
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn ddim10_trajectory_matches_pytorch() {
    let mut params = Params::new();
    let model =
        UNet::new(UNetConfig { in_ch: 1, base: 16, t_dim: 32, classes: 0 }, &mut params, &mut StdRng::seed_from_u64(0))
            .unwrap();
    params.load_from(&golden("weights.safetensors").f32_with_prefix(""), "weights.safetensors").unwrap();
    let steps = golden("steps.safetensors");
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let mut calls = Vec::new();
    let mut den = UNetDenoiser { model: &model, params: &params };
    let mut counting = |x: &ddpm::Tensor, t: &[usize]| {
        calls.push(t[0]);
        ddpm::diffusion::Denoiser::predict_eps(&mut den, x, t)
    };
    let xt = steps.f32("traj.ddim10.xT").unwrap().clone();
    let out =
        sample(&mut counting, &sched, SamplerKind::Ddim { steps: 10, eta: 0.0, clamp: true }, xt, 0, &mut |_, _| {})
            .unwrap();
    assert_eq!(calls, vec![999, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
    // README: 5e-4 abs over 11 steps (errors grow by 1/sqrt(alphas_bar) at large t; measured f32-vs-f64 6.7e-5),
    // and if a few pixels on the clamp kink fail, the mean abs error must stay < 2e-5.
    let reference = steps.f32("traj.ddim10.out").unwrap();
    let c = compare(out.data(), reference.data(), 5e-4, 0.0);
    let mean: f32 =
        out.data().iter().zip(reference.data()).map(|(a, b)| (a - b).abs()).sum::<f32>() / out.numel() as f32;
    eprintln!("golden traj.ddim10.out: max abs {:.2e}, mean abs {mean:.2e}, {} over 5e-4", c.max_abs, c.failures);
    assert!(c.failures <= 4 && mean < 2e-5, "{} pixels over 5e-4, mean abs {mean}", c.failures);
}

/// Gaussian data `x0 ~ N(MU, S²)` per pixel, where everything is known in closed form. With `x_t = α_t x0 + σ_t ε`
/// (α_t² = ᾱ_t, σ_t² = 1 - ᾱ_t), `x_t ~ N(α_t μ, α_t² s² + σ_t²)` and the exact noise prediction is
/// `E[ε | x_t] = σ_t (x_t - α_t μ)/(α_t² s² + σ_t²)` (the regression of ε on x_t, Cov(ε, x_t) = σ_t). The
/// probability-flow ODE moves each x_t along the same standardised position ξ, so its exact solution from x_T is
/// `x_t = α_t μ + sqrt(α_t² s² + σ_t²) ξ` with `ξ = (x_T - α_T μ)/sqrt(α_T² s² + σ_T²)`.
const MU: f64 = 0.3;
const S: f64 = 0.5;

/// `(α_t, σ_t)` of the schedule in f64, from its f32 ᾱ_t.
fn alpha_sigma(sched: &Schedule, t: usize) -> (f64, f64) {
    let ab = sched.alphas_bar[t] as f64;
    (ab.sqrt(), (1.0 - ab).sqrt())
}

/// The exact ε(x_t, t) of the Gaussian data, in f64, rounded to f32.
fn gaussian_eps(sched: &Schedule, x: &Tensor, t: &[usize]) -> ddpm::Result<Tensor> {
    let (a, s) = alpha_sigma(sched, t[0]);
    let eps = x.data().iter().map(|&v| (s * (v as f64 - a * MU) / (a * a * S * S + s * s)) as f32).collect();
    Tensor::new(x.shape(), eps)
}

/// The sampler's output for the Gaussian data from `x_t`, and the exact answer: the exact PF-ODE solution at the last
/// timestep the sampler calls the network at (t = 0, where σ > 0), mapped to the clean image by the same final step,
/// x̂0 = (x - σ ε)/α, that the sampler takes.
fn gaussian_run(sched: &Schedule, kind: SamplerKind, x_t: &Tensor, seed: u64) -> (Tensor, Vec<f64>) {
    let ts = kind.timesteps(sched);
    let (first, last) = (ts[0], *ts.last().unwrap());
    let mut den = |x: &Tensor, t: &[usize]| gaussian_eps(sched, x, t);
    let out = sample(&mut den, sched, kind, x_t.clone(), seed, &mut |_, _| {}).unwrap();
    let ((a0, s0), (a1, s1)) = (alpha_sigma(sched, first), alpha_sigma(sched, last));
    let (sd0, sd1) = ((a0 * a0 * S * S + s0 * s0).sqrt(), (a1 * a1 * S * S + s1 * s1).sqrt());
    let exact = x_t
        .data()
        .iter()
        .map(|&v| {
            let x = a1 * MU + sd1 * (v as f64 - a0 * MU) / sd0;
            (x - s1 * s1 * (x - a1 * MU) / (sd1 * sd1)) / a1
        })
        .collect();
    (out, exact)
}

fn max_err(got: &Tensor, want: &[f64]) -> f64 {
    got.data().iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

/// The least-squares slope of log(error) against log(steps): the measured order of convergence.
fn order(ns: &[usize], errs: &[f64]) -> f64 {
    let (lx, ly): (Vec<f64>, Vec<f64>) = ns.iter().zip(errs).map(|(&n, &e)| ((n as f64).ln(), -e.ln())).unzip();
    let (mx, my) = (lx.iter().sum::<f64>() / lx.len() as f64, ly.iter().sum::<f64>() / ly.len() as f64);
    let cov: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    cov / lx.iter().map(|x| (x - mx).powi(2)).sum::<f64>()
}

/// The endpoint error of a deterministic sampler on the Gaussian data at each step count, with the ratios of
/// successive errors (each doubling of the steps).
fn errors(sched: &Schedule, ns: &[usize], make: &dyn Fn(usize) -> SamplerKind) -> (Vec<f64>, Vec<f64>) {
    let x_t = initial_noise(11, 1, 1, 32, 32);
    let errs: Vec<f64> =
        ns.iter().map(|&n| gaussian_run(sched, make(n), &x_t, 0)).map(|(o, e)| max_err(&o, &e)).collect();
    let ratios = errs.windows(2).map(|w| w[0] / w[1]).collect();
    (errs, ratios)
}

/// DPM-Solver++(2M) without the clamp converges to the exact PF-ODE endpoint at second order, DDIM (η = 0, its
/// first-order special case) at first order. The error is affine in ξ per pixel, so the max over 1024 pixels
/// measures the same thing at every step count.
///
/// Bounds, from the measured errors (log-SNR spacing: 0.32, 0.051, 0.024, 0.0061, 0.0015 at 5..80 steps, ratios
/// 6.3, 2.2, 3.9, 4.1, fitted order 1.86; DDIM: ratios 1.83, 1.90, 1.94, 2.05, order 0.95). At 5 and 10 steps a
/// step spans about 2 and 1 units of log-SNR, too long for the asymptotic rate, so the per-doubling ratios
/// scatter there. The test asserts: the fitted order over 5..80 steps is at least 1.7; each doubling from 20
/// steps on shrinks the error at least 3.2-fold (second order gives 4, first order 2); for DDIM every ratio lies
/// in [1.6, 2.5] and the fitted order in [0.8, 1.2]; and 2M at 40 steps beats DDIM at 40 steps tenfold.
///
/// Uniform-t spacing is second order only asymptotically: its last steps before t = 0 are very unequal in log-SNR
/// (at 20 steps, 53 -> 0 spans ~2.9 while the step before spans ~0.7, so D extrapolates x̂0 with weight
/// 1/(2r) ≈ 2.2 across a long step), and its error was 12x larger than log-SNR's at 10 steps and 16x at 20 (why
/// log-SNR is the default). Its ratios from 40 steps on must also be at least 3.2 (measured 3.8, 4.0).
#[test]
fn dpm_solver_converges_at_second_order_on_gaussian_data() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let ns = [5usize, 10, 20, 40, 80];
    let (dpm, dpm_ratios) =
        errors(&sched, &ns, &|steps| SamplerKind::DpmPp2m { steps, spacing: Spacing::LogSnr, clamp: false });
    let (ddim, ddim_ratios) = errors(&sched, &ns, &|steps| SamplerKind::Ddim { steps, eta: 0.0, clamp: false });
    let (p_dpm, p_ddim) = (order(&ns, &dpm), order(&ns, &ddim));
    eprintln!("dpm++2m logsnr: errors {dpm:.3?}, ratios {dpm_ratios:.2?}, order {p_dpm:.2}");
    eprintln!("ddim: errors {ddim:.3?}, ratios {ddim_ratios:.2?}, order {p_ddim:.2}");
    assert!(p_dpm >= 1.7, "DPM-Solver++(2M) order {p_dpm}");
    assert!(dpm_ratios[2..].iter().all(|&r| r >= 3.2), "DPM-Solver++(2M) ratios {dpm_ratios:?}");
    assert!((0.8..=1.2).contains(&p_ddim), "DDIM order {p_ddim}");
    assert!(ddim_ratios.iter().all(|r| (1.6..=2.5).contains(r)), "DDIM ratios {ddim_ratios:?}");
    assert!(dpm[3] * 10.0 < ddim[3], "2M at 40 steps {} vs DDIM {}", dpm[3], ddim[3]);
    let ns = [40usize, 80, 160];
    let (uni, uni_ratios) =
        errors(&sched, &ns, &|steps| SamplerKind::DpmPp2m { steps, spacing: Spacing::UniformT, clamp: false });
    eprintln!("dpm++2m uniform-t: errors {uni:.3?}, ratios {uni_ratios:.2?}");
    assert!(uni_ratios.iter().all(|&r| r >= 3.2), "DPM-Solver++(2M) uniform-t ratios {uni_ratios:?}");
}

/// SDE-DPM-Solver++(2M) on the Gaussian data: over M = 65536 independent pixels (each evolves alone: the denoiser
/// and the noise are per pixel) at 100 steps, the sample mean is within 4.5 standard errors (s/√M) of μ and the
/// sample variance within 4.5 standard errors (s²√(2/M), for normal data) of the output's exact variance
/// `s⁴α₀²/(α₀²s² + σ₀²)` (the output is E[x0 | x_{t=0}], a hair narrower than s²). Measured at 100 steps: within
/// 1 standard error for seeds 5 and 6; at 50 steps the discretisation shows (variance +0.004, ~3 standard errors).
#[test]
fn sde_dpm_solver_samples_the_gaussian_data() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let x_t = initial_noise(5, 64, 1, 32, 32);
    let kind = SamplerKind::DpmPp2mSde { steps: 100, spacing: Spacing::LogSnr, clamp: false };
    let (out, _) = gaussian_run(&sched, kind, &x_t, 5);
    let m = out.numel() as f64;
    let mean = out.data().iter().map(|&v| v as f64).sum::<f64>() / m;
    let var = out.data().iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (m - 1.0);
    let (a0, s0) = alpha_sigma(&sched, 0);
    let want_var = S.powi(4) * a0 * a0 / (a0 * a0 * S * S + s0 * s0);
    eprintln!("sde: mean {mean:.5} (μ {MU}), variance {var:.5} (exact {want_var:.5})");
    assert!((mean - MU).abs() <= 4.5 * S / m.sqrt(), "mean {mean}");
    assert!((var - want_var).abs() <= 4.5 * S * S * (2.0 / m).sqrt(), "variance {var} vs {want_var}");
}

/// A first-order DPM-Solver++ step is DDIM with η = 0: `(σ_t/σ_s) x - α_t (e^{-h} - 1) x̂0 = α_t x̂0 + σ_t ε` once
/// `x = α_s x̂0 + σ_s ε` is substituted, without the clamp (with it, DDIM keeps ε while DPM-Solver++ keeps x, and
/// they differ where the clamp binds). Both compute the same x̂0 bit for bit; the rest is a sum of two products each
/// in another order with coefficients rounded once from f64 (DPM) or formed in f32 (DDIM), so they agree within
/// 16 ulp of the largest term: `1e-6 · (|x_coef x| + |d_coef x̂0| + |α_t x̂0| + |σ_t ε|)`. The final step (to x_0)
/// returns x̂0 in both. Checked over steps from t = 999 to t = 0 of several lengths, on random x and ε.
#[test]
fn first_order_dpm_solver_step_is_ddim() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let n = 4096;
    let mut rng = StdRng::seed_from_u64(3);
    let (x, eps) = (uniform(&mut rng, n, -3.0, 3.0), uniform(&mut rng, n, -3.0, 3.0));
    let mut worst = 0.0f64;
    for (s, t) in [
        (999, Some(998)),
        (999, Some(900)),
        (999, Some(0)),
        (500, Some(480)),
        (500, Some(20)),
        (3, Some(0)),
        (0, None),
        (700, None),
    ] {
        let dpm_c = DpmCoefs::new(&sched, (None, s, t), false, false).unwrap();
        let ddim_c = DdimCoefs { clamp: false, ..DdimCoefs::new(&sched, s, t, 0.0).unwrap() };
        let (mut dpm, mut ddim, mut prev) = (vec![0.0; n], vec![0.0; n], vec![f32::NAN; n]);
        dpm_update(&dpm_c, &x, &eps, &mut prev, None, &mut dpm);
        ddim_update(&ddim_c, &x, &eps, None, &mut ddim);
        for i in 0..n {
            let x0 = prev[i] as f64;
            let scale = (dpm_c.x_coef * x[i]).abs() as f64
                + (dpm_c.d_coef as f64 * x0).abs()
                + (ddim_c.sqrt_ab_prev as f64 * x0).abs()
                + (ddim_c.dir_coef * eps[i]).abs() as f64;
            let diff = (dpm[i] as f64 - ddim[i] as f64).abs();
            worst = worst.max(diff / scale);
            assert!(diff <= 1e-6 * scale, "{s} -> {t:?} [{i}]: DPM {} vs DDIM {} (scale {scale})", dpm[i], ddim[i]);
        }
    }
    eprintln!("first-order DPM-Solver++ vs DDIM: worst {worst:.2e} of the scale");
}

/// The timestep grids: exactly `steps` distinct descending timesteps from T - 1, ending at 0 from 2 steps on, for
/// every step count and both spacings (log-SNR's rounding collides at many steps and is moved apart).
#[test]
fn dpm_timesteps_are_distinct_and_span_the_schedule() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    for spacing in [Spacing::UniformT, Spacing::LogSnr] {
        for steps in (1..=1000).step_by(37).chain([2, 10, 999, 1000]) {
            let ts = dpm_timesteps(&sched, steps, spacing);
            assert_eq!(ts.len(), steps, "{spacing:?} {steps}");
            assert_eq!(ts[0], 999);
            assert!(ts.windows(2).all(|w| w[0] > w[1]), "{spacing:?} {steps}: {ts:?}");
            assert!(steps == 1 || ts[steps - 1] == 0, "{spacing:?} {steps}: {ts:?}");
        }
    }
    assert_eq!(dpm_timesteps(&sched, 5, Spacing::UniformT), vec![999, 749, 500, 250, 0]);
}

/// The inversion walks the DDIM sampler's grid backwards: its steps `(s, t)`, reversed and swapped, are the
/// sampler's steps `(t, t_prev)`, one network call each, for grids with and without the extra T - 1 call.
#[test]
fn inversion_walks_the_ddim_grid_backwards() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    for steps in [1usize, 3, 10, 50, 999, 1000] {
        let ts = regeneration_kind(steps).timesteps(&sched);
        let forward: Vec<(usize, Option<usize>)> =
            ts.iter().enumerate().map(|(k, &t)| (t, ts.get(k + 1).copied())).collect();
        let mut backward: Vec<(usize, Option<usize>)> =
            inversion_steps(&sched, steps).into_iter().map(|(s, t)| (t, s)).collect();
        backward.reverse();
        assert_eq!(backward, forward, "{steps} steps");
    }
    let mut den = |x: &Tensor, _: &[usize]| Ok(x.clone());
    for steps in [0, 1001] {
        assert!(ddim_invert(&mut den, &sched, steps, Tensor::zeros(&[1, 1, 2, 2]), &mut |_, _| {}).is_err());
    }
}

/// One inverse DDIM step from s up to t, then the forward DDIM step (η = 0, no clamp) from t back down to s with
/// the same ε, returns the start up to f32 rounding. The rounding of x_t is divided by sqrt(ᾱ_t) on the way
/// back, so the bound is `1e-6 · (|x_s| + σ_s|ε| + (α_s/α_t)(|x_t| + σ_t|ε|))`; coefficients of the wrong step
/// would be off by O(1). Checked from the clean image (s = None) and across the schedule, on random x and ε.
#[test]
fn inverse_ddim_step_undoes_the_forward_step() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let n = 4096;
    let mut rng = StdRng::seed_from_u64(4);
    let (x, eps) = (uniform(&mut rng, n, -3.0, 3.0), uniform(&mut rng, n, -3.0, 3.0));
    let mut worst = 0.0f64;
    for (s, t) in [(None, 0), (None, 999), (Some(0), 20), (Some(0), 999), (Some(480), 500), (Some(998), 999)] {
        let inv = DdimCoefs::inverse(&sched, s, t).unwrap();
        let fwd = DdimCoefs { clamp: false, ..DdimCoefs::new(&sched, t, s, 0.0).unwrap() };
        let (mut up, mut back) = (vec![0.0; n], vec![0.0; n]);
        ddim_update(&inv, &x, &eps, None, &mut up);
        ddim_update(&fwd, &up, &eps, None, &mut back);
        let (a_s, s_s) = s.map_or((1.0, 0.0), |s| alpha_sigma(&sched, s));
        let (a_t, s_t) = alpha_sigma(&sched, t);
        for i in 0..n {
            let (e, xs, xt) = (eps[i].abs() as f64, x[i].abs() as f64, up[i].abs() as f64);
            let scale = xs + s_s * e + (a_s / a_t) * (xt + s_t * e);
            let diff = (back[i] as f64 - x[i] as f64).abs();
            worst = worst.max(diff / scale);
            assert!(diff <= 1e-6 * scale, "{s:?} -> {t} -> back [{i}]: {} vs {} (scale {scale})", back[i], x[i]);
        }
    }
    eprintln!("inverse then forward DDIM step: worst {worst:.2e} of the scale");
    assert!(DdimCoefs::inverse(&sched, Some(5), 5).is_err() && DdimCoefs::inverse(&sched, None, 1000).is_err());
}

/// DDIM inversion on the Gaussian data `x0 ~ N(MU, S²)` with the exact ε. Inverting and regenerating with the
/// same number of steps returns x0 up to the discretisation error of both halves, which falls at first order: each
/// ratio of successive round-trip errors is within 20% of the ratio of the step counts (measured mean absolute
/// errors 0.175, 0.0985, 0.0426, 0.0219 at 10, 20, 50, 100 steps: ratios 1.78, 2.31, 1.95 for 2, 2.5, 2). The
/// inverted noise approaches the exact probability-flow ODE's x_T, `α_T μ + sqrt(α_T² s² + σ_T²)(x0 - μ)/s`,
/// distributed as N(α_T μ, α_T² s² + σ_T²) ≈ N(0.002, 1): its largest error falls with the steps, and so does its
/// variance's shortfall (each step takes ε at its start, at the lower noise level, and so widens a little too
/// little: measured variance 0.56, 0.75, 0.89, 0.94 of the exact one). At 100 steps, over M = 65536 pixels, its
/// mean is within 0.01 of the exact noise's (sampling error sd/√M ≈ 0.004 cancels, the same x0 feeding both) and
/// its variance is between 0.9 and 1 times the exact noise's.
#[test]
fn ddim_inversion_round_trip_converges_on_gaussian_data() {
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let mut x0 = initial_noise(21, 64, 1, 32, 32);
    x0.data_mut().iter_mut().for_each(|v| *v = (MU + S * *v as f64) as f32);
    let mut den = |x: &Tensor, t: &[usize]| gaussian_eps(&sched, x, t);
    let (a_t, s_t) = alpha_sigma(&sched, 999);
    let sd_t = (a_t * a_t * S * S + s_t * s_t).sqrt();
    let exact: Vec<f64> = x0.data().iter().map(|&v| a_t * MU + sd_t * (v as f64 - MU) / S).collect();
    let m = x0.numel() as f64;
    let stats = |v: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = v.collect();
        let mean = v.iter().sum::<f64>() / m;
        (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (m - 1.0))
    };
    let (exact_mean, exact_var) = stats(&mut exact.iter().copied());
    let (mut maes, mut noise_errs, mut var_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let ns = [10usize, 20, 50, 100];
    for &steps in &ns {
        let noise = ddim_invert(&mut den, &sched, steps, x0.clone(), &mut |_, _| {}).unwrap();
        noise_errs.push(max_err(&noise, &exact));
        let (mean, var) = stats(&mut noise.data().iter().map(|&v| v as f64));
        var_ratios.push(var / exact_var);
        let recon = sample(&mut den, &sched, regeneration_kind(steps), noise, 0, &mut |_, _| {}).unwrap();
        maes.push(x0.data().iter().zip(recon.data()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / m);
        if steps == 100 {
            eprintln!(
                "noise at 100 steps: mean {mean:.5}, variance {var:.5}; exact noise {exact_mean:.5}, {exact_var:.5}"
            );
            assert!((mean - exact_mean).abs() <= 0.01, "noise mean {mean} vs {exact_mean}");
            assert!((0.9..=1.0).contains(&(var / exact_var)), "noise variance {var} vs {exact_var}");
        }
    }
    let sci = |v: &[f64]| v.iter().map(|e| format!("{e:.3e}")).collect::<Vec<_>>().join(", ");
    let ratios: Vec<f64> = maes.windows(2).map(|w| w[0] / w[1]).collect();
    eprintln!(
        "round-trip MAE at {ns:?} steps: {} (ratios {ratios:.2?}); noise: max error {}, variance / exact {var_ratios:.3?}",
        sci(&maes),
        sci(&noise_errs)
    );
    for (k, r) in ratios.iter().enumerate() {
        let want = ns[k + 1] as f64 / ns[k] as f64;
        assert!(
            (0.8..=1.25).contains(&(r / want)),
            "{} -> {} steps: error ratio {r}, first order {want}",
            ns[k],
            ns[k + 1]
        );
    }
    assert!(noise_errs.windows(2).all(|w| w[1] < w[0]), "inversion error does not fall: {noise_errs:?}");
    assert!(var_ratios.windows(2).all(|w| w[1] > w[0]), "noise variance does not approach the exact: {var_ratios:?}");
}

/// Slerp returns its endpoints exactly, keeps the norm of two vectors of equal norm all along the arc (a straight
/// line would shrink it to cos(θ/2) at the midpoint), puts the midpoint of two orthogonal unit vectors at
/// (a + b)/√2, and refuses vectors of different lengths.
#[test]
fn slerp_follows_the_great_circle() {
    let mut rng = StdRng::seed_from_u64(8);
    let (a, b) = (uniform(&mut rng, 1024, -2.0, 2.0), uniform(&mut rng, 1024, -2.0, 2.0));
    assert_eq!(slerp(&a, &b, 0.0).unwrap(), a);
    assert_eq!(slerp(&a, &b, 1.0).unwrap(), b);
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let scale = norm(&a) / norm(&b);
    let b: Vec<f32> = b.iter().map(|&x| (x as f64 * scale) as f32).collect();
    for frac in [0.1, 0.25, 0.5, 0.9] {
        let v = slerp(&a, &b, frac).unwrap();
        assert!((norm(&v) / norm(&a) - 1.0).abs() < 1e-5, "frac {frac}: norm {} vs {}", norm(&v), norm(&a));
    }
    let mid = slerp(&[1.0, 0.0], &[0.0, 1.0], 0.5).unwrap();
    let h = std::f32::consts::FRAC_1_SQRT_2;
    assert!((mid[0] - h).abs() < 1e-6 && (mid[1] - h).abs() < 1e-6, "{mid:?}");
    assert_eq!(slerp(&[1.0, 2.0], &[1.0, 2.0], 0.3).unwrap(), vec![1.0, 2.0], "parallel vectors");
    assert!(slerp(&a, &a[1..], 0.5).is_err());
}

/// The round-trip error compares each image with its reconstruction clamped to [-1, 1], per image, and reports
/// the mean and the worst image.
#[test]
fn round_trip_error_clamps_the_reconstruction_and_finds_the_worst_image() {
    let x0 = Tensor::new(&[2, 1, 1, 2], vec![1.0, -1.0, 0.0, 0.5]).unwrap();
    let recon = Tensor::new(&[2, 1, 1, 2], vec![1.7, -3.0, 0.25, 0.0]).unwrap();
    let e = RoundTripError::new(&x0, &recon).unwrap();
    assert_eq!(e.per_image, vec![0.0, 0.375]);
    assert_eq!((e.mean(), e.worst()), (0.1875, (1, 0.375)));
    assert!(RoundTripError::new(&x0, &Tensor::zeros(&[1, 1, 1, 2])).is_err());
}
