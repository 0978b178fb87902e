//! The kernels outside the tape against their definitions, evaluated independently here in f64, on the CPU backend
//! and on the CUDA kernels in the emulator: AdamW, the EMA update, gradient-norm clipping, the DDPM and DDIM steps
//! (host coefficients and device update together), q_sample, and the schedule they all read.
//!
//! The f64 references start from the same f32 inputs and derive every schedule quantity from β_t alone
//! (`linspace`, `cumprod`), so a wrong constant shared by the CPU and the CUDA code fails here. Tolerances are
//! `abs + rel·|ref|`, u = 2⁻²⁴ ≈ 6e-8 the f32 unit roundoff, each argued where it is set.

#[macro_use]
mod common;

use common::{assert_formula, assert_within, uniform, uniform_tensor};
use ddpm::backend::{Backend, DiffusionOps};
use ddpm::diffusion::sampler::{DdimCoefs, DdpmCoefs};
use ddpm::diffusion::Schedule;
use ddpm::optim::{clip_grad_norm, AdamW, Ema};
use ddpm::params::{Grads, Params};
use ddpm::Tensor;
use rand::{rngs::StdRng, SeedableRng};

/// Three parameter tensors (sizes 1, 37 and 300) of values uniform in [-1, 1).
fn params(rng: &mut StdRng) -> Params {
    let mut p = Params::new();
    for (i, n) in [1usize, 37, 300].into_iter().enumerate() {
        p.add(&format!("p{i}"), uniform_tensor(rng, &[n], -1.0, 1.0));
    }
    p
}

fn host(ts: &[Tensor<impl Backend>]) -> Vec<Vec<f32>> {
    ts.iter().map(|t| t.to_vec().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// AdamW, EMA, clipping

/// `torch.optim.AdamW` (Loshchilov & Hutter), in f64: `p ← p(1 - lr·wd)`, `m ← β₁m + (1-β₁)g`,
/// `v ← β₂v + (1-β₂)g²`, `p ← p - lr/(1-β₁ᵏ) · m / (√v/√(1-β₂ᵏ) + eps)`, at steps k = 6, 7, 8 from moments that
/// are not zero. A tenth of the elements have gradients and second moments so small (|g| ~ 1e-8, v ~ 1e-16) that
/// eps = 1e-8 is of the size of √v̂: eps's placement (outside the square root) shows there.
///
/// Tolerance, each step from the previous step's f32 state: m 2u relative plus the lerp's rounding of g - m (below);
/// v rel 2.4e-7 (4u: two products and a sum of non-negative terms, each within u/2, plus β₂ and 1-β₂ rounded);
/// p: `|p|·2u` from the decay product plus the update's own relative error (≈ 5 roundings of a quotient, 3e-7) on
/// its size ≤ lr/(1-β₁ᵏ) ≈ 0.05: 1e-8 abs + 3e-7 rel covers both (|p| < 1.2). A 10% wrong bias correction, eps
/// under the square root or weight decay applied to the gradient are all ≥ 1e-4 off.
fn adamw<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(11);
    let host_params = params(&mut rng);
    let mut opt = AdamW::new(&host_params, 1e-2);
    opt.weight_decay = 0.1;
    opt.step = 5;
    let tiny = |i: usize| i % 10 == 3;
    for (m, v) in opt.exp_avg.iter_mut().zip(opt.exp_avg_sq.iter_mut()) {
        let n = m.numel();
        let (mv, vv) = (uniform(&mut rng, n, -0.1, 0.1), uniform(&mut rng, n, 0.0, 0.01));
        *m = Tensor::new(&[n], (0..n).map(|i| if tiny(i) { mv[i] * 1e-7 } else { mv[i] }).collect()).unwrap();
        *v = Tensor::new(&[n], (0..n).map(|i| if tiny(i) { vv[i] * 1e-14 } else { vv[i] }).collect()).unwrap();
    }
    let mut params = host_params.to_backend(be).unwrap();
    let mut opt = opt.to_backend(be, &host_params.placement()).unwrap();
    for k in 6..=8u64 {
        let (p0, m0, v0) = (host(params.tensors()), host(&opt.exp_avg), host(&opt.exp_avg_sq));
        let g: Vec<Vec<f32>> = p0
            .iter()
            .map(|p| {
                let g = uniform(&mut rng, p.len(), -1.0, 1.0);
                g.iter().enumerate().map(|(i, &g)| if tiny(i) { g * 1e-8 } else { g }).collect()
            })
            .collect();
        let grads =
            Grads(g.iter().map(|g| Tensor::new(&[g.len()], g.clone()).unwrap().to_backend(be).unwrap()).collect());
        opt.step(&mut params, &grads).unwrap();
        let (lr, b1, b2, eps, wd) = (1e-2f64, 0.9f64, 0.999f64, 1e-8f64, 0.1f64);
        let (bc1, bc2) = (1.0 - b1.powi(k as i32), 1.0 - b2.powi(k as i32));
        let (p1, m1, v1) = (host(params.tensors()), host(&opt.exp_avg), host(&opt.exp_avg_sq));
        for t in 0..p0.len() {
            let (mut pw, mut mw, mut vw) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..p0[t].len() {
                let (p, m, v, g) = (p0[t][i] as f64, m0[t][i] as f64, v0[t][i] as f64, g[t][i] as f64);
                let m = b1 * m + (1.0 - b1) * g;
                let v = b2 * v + (1.0 - b2) * g * g;
                pw.push(p * (1.0 - lr * wd) - lr / bc1 * m / ((v / bc2).sqrt() + eps));
                mw.push(m);
                vw.push(v);
            }
            // The lerp `m + (1-β₁)(g - m)` rounds g - m before scaling it by 0.1: 1e-8·|g - m| on top of 2u·|m|.
            let m_tol = |i: usize| 1.2e-7 * mw[i].abs() + 1e-8 * (g[t][i] as f64 - m0[t][i] as f64).abs();
            assert_within(&format!("adamw step {k} exp_avg[{t}]"), &m1[t], &mw, &m_tol);
            assert_formula(&format!("adamw step {k} exp_avg_sq[{t}]"), &v1[t], &vw, 0.0, 2.4e-7);
            assert_formula(&format!("adamw step {k} param[{t}]"), &p1[t], &pw, 1e-8, 3e-7);
        }
    }
}
on_both!(adamw);

/// EMA `s ← d·s + (1-d)·p` with the warm-up decay `min(d, (1+k)/(10+k))` at updates k = 0, 1, 2 and then, without
/// warm-up, the reference's d = 0.9999. Tolerance 1.2e-7 abs (|s|, |p| < 1): two products and a sum, each rounded
/// (≤ 1.5u·1 each), plus d and 1-d rounded to f32; swapping d and 1-d or a wrong warm-up is ≥ 1e-2 off.
fn ema<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(12);
    let host_params = params(&mut rng);
    for (warmup, decay) in [(true, 0.999f64), (false, 0.9999)] {
        let mut ema = Ema::new(&params(&mut rng), decay, warmup).to_backend(be, &host_params.placement()).unwrap();
        let p = host_params.to_backend(be).unwrap();
        for k in 0..3u64 {
            let s0 = host(&ema.shadow);
            ema.update(&p).unwrap();
            let d = if warmup { decay.min((1.0 + k as f64) / (10.0 + k as f64)) } else { decay };
            for (t, s1) in host(&ema.shadow).iter().enumerate() {
                let pt = host_params.tensors()[t].data();
                let want: Vec<f64> = s0[t].iter().zip(pt).map(|(&s, &p)| d * s as f64 + (1.0 - d) * p as f64).collect();
                assert_formula(&format!("ema warmup={warmup} update {k} [{t}]"), s1, &want, 1.2e-7, 0.0);
            }
        }
    }
}
on_both!(ema);

/// `clip_grad_norm_`: `total = ‖g‖₂` over all tensors, `coef = min(1, max_norm/(total + 1e-6))`, g scaled by coef
/// when below 1. Three regimes: total ≈ 10 ≫ max_norm; total ≈ 1e-4 with max_norm 5e-5, where the 1e-6 is 1% of
/// the denominator (so a wrong eps shows); and total < max_norm (nothing changes).
///
/// Tolerance: total and coef rel 2e-6 (the GPU sums 338 squares in f32 in two passes: ≲ 338·u·‖g‖² relative before
/// the square root halves it, ≈ 1e-5 worst case, ~1e-6 in practice; the CPU's f64 sum is exact to 1 ulp); the
/// scaled gradients rel 2e-6 as well (the coefficient's error carries over, plus one rounding).
fn clip<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(13);
    for (scale, max_norm) in [(1.0f32, 1.0f32), (1e-5, 5e-5), (1e-2, 1.0)] {
        let g0: Vec<Vec<f32>> = [1usize, 37, 300]
            .iter()
            .map(|&n| uniform(&mut rng, n, -1.0, 1.0).iter().map(|v| v * scale).collect())
            .collect();
        let mut grads =
            Grads(g0.iter().map(|g| Tensor::new(&[g.len()], g.clone()).unwrap().to_backend(be).unwrap()).collect());
        let (total, coef) = clip_grad_norm(&mut grads, max_norm).unwrap();
        let want_total = g0.iter().flatten().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        let want_coef = (max_norm as f64 / (want_total + 1e-6)).min(1.0);
        let what = format!("clip total {want_total:.1e} max_norm {max_norm:e}");
        assert_formula(&format!("{what}: total"), &[total], &[want_total], 0.0, 2e-6);
        assert_formula(&format!("{what}: coef"), &[coef], &[want_coef], 0.0, 2e-6);
        for (t, g) in host(&grads.0).iter().enumerate() {
            let want: Vec<f64> = g0[t].iter().map(|&v| v as f64 * want_coef).collect();
            assert_formula(&format!("{what}: grad[{t}]"), g, &want, 0.0, 2e-6);
        }
    }
}
on_both!(clip);

// ---------------------------------------------------------------------------------------------------------------
// The schedule, q_sample, DDPM and DDIM steps

/// β_t = linspace(1e-4, 0.02, T), α_t = 1 - β_t and ᾱ_t = ∏_{s≤t} α_s, in f64.
fn schedule_f64(t: usize) -> (Vec<f64>, Vec<f64>) {
    let betas: Vec<f64> = (0..t).map(|i| 1e-4 + (0.02 - 1e-4) * i as f64 / (t - 1) as f64).collect();
    let ab = betas.iter().scan(1.0f64, |acc, b| {
        *acc *= 1.0 - b;
        Some(*acc)
    });
    let ab = ab.collect();
    (betas, ab)
}

/// The schedule's own buffers, derived as in Ho et al. Tolerance: β_t is torch's f32 linspace (the step
/// `(end-start)/(T-1)` rounded, then one FMA: ≤ 3 roundings, rel 2.4e-7); ᾱ_t multiplies t+1 f32-rounded α_s (each off by ≤ u/2, random in sign) in f64: ≈ √t·u/2 ≲ 1e-6
/// relative, hence 2e-6. β̃_t = β_t(1-ᾱ_{t-1})/(1-ᾱ_t) forms 1 - ᾱ_{t-1} in f32 (the reference's order), which turns
/// that error into ≈ (2+√t)·u/(1 - ᾱ_{t-1}) relative: 3e-4 at t = 2, below 1e-5 from t = 100 on.
#[test]
fn schedule_buffers() {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (betas, ab) = schedule_f64(1000);
    assert_formula("betas", &sched.betas, &betas, 0.0, 2.4e-7);
    assert_formula("alphas", &sched.alphas, &betas.iter().map(|b| 1.0 - b).collect::<Vec<_>>(), 0.0, 1.2e-7);
    assert_formula("alphas_bar", &sched.alphas_bar, &ab, 0.0, 2e-6);
    let prev: Vec<f64> = std::iter::once(1.0).chain(ab[..999].iter().copied()).collect();
    assert_formula("alphas_bar_prev", &sched.alphas_bar_prev, &prev, 0.0, 2e-6);
    let post: Vec<f64> = (0..1000).map(|t| betas[t] * (1.0 - prev[t]) / (1.0 - ab[t])).collect();
    let u = f32::EPSILON as f64 / 2.0;
    let post_tol = |t: usize| post[t] * (2e-6 + 4.0 * (2.0 + (t as f64).sqrt()) * u / (1.0 - prev[t]).max(1e-4));
    assert_within("posterior_variance", &sched.posterior_variance, &post, &post_tol);
    let sqrt = |v: &[f64], f: fn(f64) -> f64| v.iter().map(|&x| f(x).sqrt()).collect::<Vec<_>>();
    assert_formula("sqrt_alphas_bar", &sched.sqrt_alphas_bar, &sqrt(&ab, |a| a), 0.0, 2e-6);
    let som = sqrt(&ab, |a| 1.0 - a);
    let som_tol = |t: usize| som[t] * (2e-6 + 2.0 * (2.0 + (t as f64).sqrt()) * u / (1.0 - ab[t]));
    assert_within("sqrt_one_minus_alphas_bar", &sched.sqrt_one_minus_alphas_bar, &som, &som_tol);
    assert_formula("sqrt_recip_alphas", &sched.sqrt_recip_alphas, &sqrt(&betas, |b| 1.0 / (1.0 - b)), 0.0, 2e-7);
}

/// The normals the device draws for `(seed, stream)`, as the host's Philox draws them.
fn normals(seed: u64, stream: u64, n: usize) -> Vec<f64> {
    (0..n as u64).map(|i| ddpm::rng::normal(seed, stream, i) as f64).collect()
}

/// q(x_t | x_0): `x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε` for 4 items at t = 0, 1, 500, 999, with ε the noise the backend
/// returns, and ε itself against the host's Philox normals. Tolerance: ε 4e-7 abs (|ε| < 5.8: the device's
/// logf/sqrtf/cosf are within ~2 ulp of the host's); x_t 1e-6 abs + 1e-5 rel plus the error of the f32
/// `√(1-ᾱ_t)` bounded in [`schedule_buffers`] times |ε| (it is 3e-4 relative at t = 1, on a term ≤ 0.08).
fn q_sample<B: Backend>(be: &B) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (_, ab) = schedule_f64(1000);
    let mut rng = StdRng::seed_from_u64(14);
    let (ts, per) = ([0usize, 1, 500, 999], 3 * 5 * 4);
    let x0 = uniform(&mut rng, ts.len() * per, -1.0, 1.0);
    let (noise, xt) = be.q_sample(&sched, &be.upload(x0.clone()).unwrap(), &ts, (21, 3)).unwrap();
    let (noise, xt) = (be.download(&noise).unwrap(), be.download(&xt).unwrap());
    assert_formula("q_sample noise", &noise, &normals(21, 3, x0.len()), 4e-7, 0.0);
    let want: Vec<f64> = (0..x0.len())
        .map(|i| ab[ts[i / per]].sqrt() * x0[i] as f64 + (1.0 - ab[ts[i / per]]).sqrt() * noise[i] as f64)
        .collect();
    let u = f32::EPSILON as f64 / 2.0;
    let tol = |i: usize| {
        let t = ts[i / per];
        let som_err = 2.0 * (2.0 + (t as f64).sqrt()) * u / (1.0 - ab[t]).sqrt();
        1e-6 + 1e-5 * want[i].abs() + som_err * (noise[i] as f64).abs()
    };
    assert_within("q_sample x_t", &xt, &want, &tol);
}
on_both!(q_sample);

/// One DDPM step (Ho et al., Algorithm 2): `x_{t-1} = (x_t - β_t/√(1-ᾱ_t)·ε)/√α_t + √β̃_t·z`, at t = 999, 500, 2,
/// 1 with z the Philox normals and at t = 0 without noise, from `DdpmCoefs` (host) and the backend's fused update.
/// Tolerance 2e-6 abs + 2e-5 rel: the coefficients' relative errors from the f32 schedule (≤ 1e-5) and a few
/// roundings of values ≤ 10; at t ≤ 2, 4e-5 abs: there 1 - ᾱ_t and 1 - ᾱ_{t-1} are ≤ 3e-4, formed in f32, so
/// β_t/√(1-ᾱ_t) (≈ 0.01, times |ε| < 3) and √β̃_t (≈ 0.01, times |z| < 5.8) are off by up to 3e-4 relative.
fn ddpm_step<B: Backend>(be: &B) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (betas, ab) = schedule_f64(1000);
    let mut rng = StdRng::seed_from_u64(15);
    for t in [999usize, 500, 2, 1, 0] {
        let (x, eps) = (uniform(&mut rng, 90, -3.0, 3.0), uniform(&mut rng, 90, -3.0, 3.0));
        let noise = (t > 0).then_some((5u64, t as u64 + 1));
        let mut out = be.alloc(90).unwrap();
        let coefs = DdpmCoefs::new(&sched, t).unwrap();
        be.ddpm_step(&coefs, &be.upload(x.clone()).unwrap(), &be.upload(eps.clone()).unwrap(), noise, &mut out)
            .unwrap();
        let z = noise.map_or(vec![0.0; 90], |(s, st)| normals(s, st, 90));
        let ab_prev = if t > 0 { ab[t - 1] } else { 1.0 };
        let sigma = (betas[t] * (1.0 - ab_prev) / (1.0 - ab[t])).sqrt();
        let want: Vec<f64> = (0..90)
            .map(|i| {
                (x[i] as f64 - betas[t] / (1.0 - ab[t]).sqrt() * eps[i] as f64) / (1.0 - betas[t]).sqrt() + sigma * z[i]
            })
            .collect();
        let atol = if t <= 2 { 4e-5 } else { 2e-6 };
        assert_formula(&format!("ddpm step t={t}"), &be.download(&out).unwrap(), &want, atol, 2e-5);
    }
}
on_both!(ddpm_step);

/// One DDIM step (Song et al., eq. 12 with the reference's clamp of x̂₀): `x̂₀ = clamp((x_t - √(1-ᾱ_t)ε)/√ᾱ_t, ±1)`,
/// `σ = η√((1-ᾱ_p)/(1-ᾱ_t))·√(1-ᾱ_t/ᾱ_p)`, `x_p = √ᾱ_p·x̂₀ + √(1-ᾱ_p-σ²)·ε + σz`, for η = 0, 0.5, 1 on the steps
/// 999 → 979, 500 → 480 and 20 → none (ᾱ_p = 1, the last step, no noise). x_t is built from an x₀ in ±1.5, so
/// about a third of the x̂₀ are clamped. Tolerance 6e-6 abs + 2e-5 rel: as for DDPM, the coefficients are within
/// 1e-5 relative; at t = 20, 1 - ᾱ_t ≈ 2.3e-3 is formed in f32, so √(1-ᾱ_t) is off by ≈ (2+√20)·u/2.3e-3 ≈ 2e-5
/// relative, on a term √(1-ᾱ_t)·ε/√ᾱ_t ≤ 0.15: 3e-6. (The division by √ᾱ_999 ≈ 6e-3 magnifies x̂₀'s rounding,
/// and the multiplication by √ᾱ_979 ≈ 7e-3 undoes it.)
fn ddim_step<B: Backend>(be: &B) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (_, ab) = schedule_f64(1000);
    let mut rng = StdRng::seed_from_u64(16);
    for (t, t_prev) in [(999usize, Some(979usize)), (500, Some(480)), (20, None)] {
        for eta in [0.0f32, 0.5, 1.0] {
            let (x0, eps) = (uniform(&mut rng, 90, -1.5, 1.5), uniform(&mut rng, 90, -3.0, 3.0));
            let x: Vec<f32> =
                (0..90).map(|i| (ab[t].sqrt() * x0[i] as f64 + (1.0 - ab[t]).sqrt() * eps[i] as f64) as f32).collect();
            let noise = (eta > 0.0 && t_prev.is_some()).then_some((9u64, t as u64 + 1));
            let coefs = DdimCoefs::new(&sched, t, t_prev, eta).unwrap();
            let mut out = be.alloc(90).unwrap();
            be.ddim_step(&coefs, &be.upload(x.clone()).unwrap(), &be.upload(eps.clone()).unwrap(), noise, &mut out)
                .unwrap();
            let z = noise.map_or(vec![0.0; 90], |(s, st)| normals(s, st, 90));
            let (a, ap, eta) = (ab[t], t_prev.map_or(1.0, |p| ab[p]), eta as f64);
            let sigma = eta * ((1.0 - ap) / (1.0 - a)).sqrt() * (1.0 - a / ap).sqrt();
            let want: Vec<f64> = (0..90)
                .map(|i| {
                    let x0 = ((x[i] as f64 - (1.0 - a).sqrt() * eps[i] as f64) / a.sqrt()).clamp(-1.0, 1.0);
                    ap.sqrt() * x0 + (1.0 - ap - sigma * sigma).max(0.0).sqrt() * eps[i] as f64 + sigma * z[i]
                })
                .collect();
            let what = format!("ddim step {t} -> {t_prev:?} eta {eta}");
            assert_formula(&what, &be.download(&out).unwrap(), &want, 6e-6, 2e-5);
        }
    }
}
on_both!(ddim_step);

/// The host versions `sampler::ddpm_step`/`ddim_step` (explicit z) agree with the backend's update, bit for bit on
/// the CPU (one implementation) — checked through the CPU backend above; here only that they use the same
/// formulas, so a caller of either gets the tested maths.
#[test]
fn host_step_functions_match_backend() {
    use ddpm::backend::Cpu;
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    let (x, eps) = (uniform(&mut rng, 40, -2.0, 2.0), uniform(&mut rng, 40, -2.0, 2.0));
    let z: Vec<f32> = (0..40).map(|i| ddpm::rng::normal(3, 4, i)).collect();
    let (mut a, mut b) = (vec![0.0; 40], vec![0.0; 40]);
    ddpm::diffusion::sampler::ddpm_step(&sched, 300, &x, &eps, Some(&z), &mut a).unwrap();
    Cpu.ddpm_step(&DdpmCoefs::new(&sched, 300).unwrap(), &x, &eps, Some((3, 4)), &mut b).unwrap();
    assert_eq!(a, b);
    ddpm::diffusion::sampler::ddim_step(&sched, (300, Some(280), 0.7), &x, &eps, Some(&z), &mut a).unwrap();
    Cpu.ddim_step(&DdimCoefs::new(&sched, 300, Some(280), 0.7).unwrap(), &x, &eps, Some((3, 4)), &mut b).unwrap();
    assert_eq!(a, b);
}
