//! The schedule, q_sample and the sampler steps against the PyTorch goldens in tests/golden (see its README for the
//! tolerances), and the sampler loop with stub denoisers.

mod common;

use common::{assert_close, golden, max_ulp};
use ddpm::diffusion::sampler::{ddim_step, ddpm_step, noise_stream, DdimCoefs, INIT_STREAM};
use ddpm::diffusion::{ddim_timesteps, initial_noise, sample, SamplerKind, Schedule, ScheduleKind};
use ddpm::tensor_file::TensorFile;
use ddpm::{rng, Error, Result, Tensor};

fn reference_schedule() -> Schedule {
    Schedule::linear(1000, 1e-4, 2e-2).unwrap()
}

#[test]
fn schedule_matches_golden() {
    let g = golden("io.safetensors");
    let s = reference_schedule();
    let buffers: [(&str, &Vec<f32>, u32); 8] = [
        // The README's recipe reproduces these bit for bit: 0 mismatches out of 1000.
        ("betas", &s.betas, 0),
        ("alphas", &s.alphas, 0),
        ("alphas_bar", &s.alphas_bar, 0),
        ("alphas_bar_prev", &s.alphas_bar_prev, 0),
        ("posterior_variance", &s.posterior_variance, 0),
        // Torch's vectorised f32 sqrt is not always correctly rounded, and ours is, so these can be 1 ulp apart.
        ("sqrt_alphas_bar", &s.sqrt_alphas_bar, 1),
        ("sqrt_one_minus_alphas_bar", &s.sqrt_one_minus_alphas_bar, 1),
        ("sqrt_recip_alphas", &s.sqrt_recip_alphas, 1),
    ];
    for (name, ours, ulps) in buffers {
        let gold = g.f32(&format!("sched.{name}")).unwrap();
        assert_eq!(gold.shape(), &[1000]);
        let gold = gold.data();
        let u = max_ulp(ours, gold);
        assert!(u <= ulps, "sched.{name}: {u} ulp");
        // README's tolerance for a computed schedule; it also bounds a non-bit-exact port.
        let d = assert_close(&format!("sched.{name}"), ours, gold, 5e-6, 1e-6).max_abs;
        eprintln!("sched.{name}: max ulp {u}, max abs {d:e}");
    }
    // posterior_variance is tiny (~1e-4..2e-2), so the abs bound above is loose for it; the README's relative
    // bound for t >= 1 (t = 0 is exactly 0) catches a wrong formula there.
    let pv = g.f32("sched.posterior_variance").unwrap().data();
    assert_close("sched.posterior_variance[1:]", &s.posterior_variance[1..], &pv[1..], 0.0, 1e-3);
    assert_eq!(s.t, 1000);
}

#[test]
fn schedule_rejects_bad_arguments() {
    for (t, b0, b1) in
        [(0, 1e-4, 2e-2), (1, 1e-4, 2e-2), (10, 0.0, 2e-2), (10, 1e-4, 1.0), (10, -1e-3, 2e-2), (10, f32::NAN, 0.5)]
    {
        assert!(matches!(Schedule::linear(t, b0, b1), Err(Error::Arg(_))), "t={t} beta {b0}..{b1}");
    }
    assert!(Schedule::linear(2, 1e-4, 2e-2).is_ok());
}

/// `alpha_bar(u) = f(u) / f(0)` of the cosine schedule, straight from Nichol & Dhariwal's eq. 17 in f64.
fn cosine_alpha_bar(u: usize, t: usize) -> f64 {
    let f = |u: usize| ((u as f64 / t as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    f(u) / f(0)
}

#[test]
fn cosine_schedule_follows_the_formula() {
    for t in [2usize, 10, 1000, 4000] {
        let s = Schedule::cosine(t).unwrap();
        assert_eq!((s.t, s.betas.len(), s.alphas_bar.len()), (t, t, t));
        for i in 0..t {
            let b = s.betas[i];
            assert!(b > 0.0 && b <= 0.999, "T {t}: beta[{i}] = {b}");
            if i > 0 {
                // Monotone: the betas grow and alpha_bar falls, step by step.
                assert!(b >= s.betas[i - 1], "T {t}: beta[{i}] = {b} < beta[{}] = {}", i - 1, s.betas[i - 1]);
                assert!(s.alphas_bar[i] < s.alphas_bar[i - 1], "T {t}: alpha_bar not decreasing at {i}");
            }
            let unclipped = 1.0 - cosine_alpha_bar(i + 1, t) / cosine_alpha_bar(i, t);
            if unclipped < 0.999 {
                // Each beta is the formula's, rounded once to f32.
                assert_eq!(b, unclipped as f32, "T {t}: beta[{i}]");
                // alpha_bar is the running product of the i+1 f32 factors 1 - beta, each within half an ulp (2^-24
                // relative) of the rounded beta's complement and that within 2^-24 of the exact one, so the
                // product is within 2(i+1)·2^-24 relative of the formula (plus the final rounding to f32).
                let (want, got) = (cosine_alpha_bar(i + 1, t), s.alphas_bar[i] as f64);
                let bound = (2.0 * (i + 1) as f64 + 1.0) * 2f64.powi(-24);
                assert!((got - want).abs() <= bound * want, "T {t}: alpha_bar[{i}] = {got:e}, formula {want:e}");
            } else {
                // Clipped: the last step's formula gives 1 (alpha_bar(T) = 0), capped at 0.999.
                assert_eq!(b, 0.999f32, "T {t}: beta[{i}] clipped");
            }
        }
        // alpha_bar(T) = cos²(π/2) = 0, so the last beta is always the clipped one.
        assert_eq!(s.betas[t - 1], 0.999f32);
        // The derived buffers are the linear schedule's formulas (shared code): spot-check two of them.
        assert_eq!(s.alphas[t / 2], 1.0 - s.betas[t / 2]);
        assert_eq!(s.posterior_variance[0], 0.0);
        assert!(s.posterior_variance.iter().all(|v| v.is_finite()));
    }
    assert!(matches!(Schedule::cosine(1), Err(Error::Arg(_))));
    assert!(matches!(Schedule::cosine(3_000_000), Err(Error::Arg(_))));
}

#[test]
fn schedule_kinds_build_their_schedules() {
    let linear = ScheduleKind::Linear.build(1000).unwrap();
    assert_eq!(linear.betas, reference_schedule().betas);
    assert_eq!(ScheduleKind::Cosine.build(100).unwrap().betas, Schedule::cosine(100).unwrap().betas);
    for k in ScheduleKind::ALL {
        assert_eq!(k.name().parse::<ScheduleKind>().unwrap(), k);
    }
    assert_eq!(ScheduleKind::default(), ScheduleKind::Linear);
    assert!("quadratic".parse::<ScheduleKind>().is_err());
}

#[test]
fn q_sample_matches_golden() {
    let g = golden("io.safetensors");
    let t: Vec<usize> = g.i64("t").unwrap().iter().map(|&v| v as usize).collect();
    let tensor = |name: &str| g.f32(name).unwrap().clone();
    let xt = reference_schedule().q_sample(&tensor("q.x0"), &t, &tensor("noise")).unwrap();
    assert_eq!(xt.shape(), &[4, 1, 32, 32]);
    // README: atol 1e-5, rtol 1e-6. With the same buffers and op order this is two f32 products and a sum, so any
    // difference comes only from 1-ulp sqrt buffer differences (|x| <= ~3).
    let d = assert_close("q.xt", xt.data(), g.f32("q.xt").unwrap().data(), 1e-5, 1e-6).max_abs;
    eprintln!("q.xt: max abs {d:e}");
}

#[test]
fn q_sample_rejects_bad_inputs() {
    let s = reference_schedule();
    let x = Tensor::zeros(&[2, 1, 4, 4]);
    assert!(matches!(s.q_sample(&x, &[0], &x), Err(Error::Shape(_))));
    assert!(matches!(s.q_sample(&x, &[0, 1], &Tensor::zeros(&[2, 1, 4, 5])), Err(Error::Shape(_))));
    assert!(matches!(s.q_sample(&x, &[0, 1000], &x), Err(Error::Arg(_))));
}

/// The fixed step inputs `step.x`, `step.eps`, `step.z` of steps.safetensors, and the whole file.
fn step_inputs() -> (TensorFile, Vec<f32>, Vec<f32>, Vec<f32>) {
    let g = golden("steps.safetensors");
    let v = |name: &str| g.f32(name).unwrap().data().to_vec();
    let (x, eps, z) = (v("step.x"), v("step.eps"), v("step.z"));
    (g, x, eps, z)
}

#[test]
fn ddpm_steps_match_golden() {
    let (g, x, eps, z) = step_inputs();
    let s = reference_schedule();
    let mut out = vec![0.0; x.len()];
    let mut worst = 0.0f32;
    for t in [999, 500, 10, 1, 0] {
        ddpm_step(&s, t, &x, &eps, Some(&z), &mut out).unwrap();
        // README: atol 1e-5, rtol 1e-5 for single steps (measured <= 3.6e-6 against f64). With the reference's f32
        // op order and bit-exact betas, only the 1-ulp sqrt buffers can move the result, by ~1e-7 * |x|.
        worst = worst.max(
            assert_close(&format!("ddpm.t{t}"), &out, g.f32(&format!("ddpm.t{t}")).unwrap().data(), 1e-5, 1e-5).max_abs,
        );
    }
    eprintln!("ddpm.t*: max abs {worst:e}");
}

#[test]
fn ddim_steps_match_golden() {
    let (g, x, eps, z) = step_inputs();
    let s = reference_schedule();
    let ts = ddim_timesteps(1000, 50);
    let mut out = vec![0.0; x.len()];
    let mut worst = 0.0f32;
    for eta in [0.0f32, 1.0] {
        for i in [50usize, 25, 1, 0] {
            let t_prev = i.checked_sub(1).map(|p| ts[p]);
            // The seed replaces z by zeros at i = 0; passing None is the same.
            let zi = (i > 0).then_some(&z[..]);
            ddim_step(&s, (ts[i], t_prev, eta), &x, &eps, zi, &mut out).unwrap();
            let name = format!("ddim.eta{eta}.i{i}");
            // README: atol 1e-5, rtol 1e-5. The division by sqrt(ab_t) amplifies the 1-ulp sqrt differences by up to
            // 1/sqrt(ab_999) ≈ 160 before the clamp, which is still far below 1e-5.
            worst = worst.max(assert_close(&name, &out, g.f32(&name).unwrap().data(), 1e-5, 1e-5).max_abs);
        }
    }
    eprintln!("ddim.eta*.i*: max abs {worst:e}");
}

#[test]
fn ddim_timesteps_match_golden() {
    let g = golden("steps.safetensors");
    for n in [1, 7, 10, 25, 50, 1000, 3000] {
        let want: Vec<usize> = g.i64(&format!("ddim_ts.T1000.n{n}")).unwrap().iter().map(|&v| v as usize).collect();
        assert_eq!(ddim_timesteps(1000, n), want, "n={n}");
    }
}

#[test]
fn ddim_eta1_full_grid_is_ddpm_variance() {
    let s = reference_schedule();
    let mut worst = 0.0f32;
    // The full DDIM grid (steps = T) is 0, 1, ..., T-1, so each step goes from t to t-1.
    let grid = ddim_timesteps(s.t, s.t);
    assert_eq!(grid, (0..s.t).collect::<Vec<_>>());
    for w in grid.windows(2) {
        let (t_prev, t) = (w[0], w[1]);
        let sigma_sq = DdimCoefs::new(&s, t, Some(t_prev), 1.0).unwrap().sigma_sq;
        let pv = s.posterior_variance[t];
        // Equal in exact arithmetic, but the DDIM form computes 1 - ab_t/ab_prev (≈ beta_t, down to 1.2e-4 at t = 1)
        // by cancellation. An abs error of a few 1e-8 in the ratio is then ~1e-3 relative at small t, so we use
        // rtol 2e-3. A wrong formula (e.g. a missing factor) is off by O(1).
        let rel = (sigma_sq - pv).abs() / pv;
        assert!(rel <= 2e-3, "t={t}: sigma^2 {sigma_sq:e} vs posterior_variance {pv:e} (rel {rel:e})");
        worst = worst.max(rel);
    }
    eprintln!("ddim eta=1 sigma^2 vs posterior_variance: max rel {worst:e}");
}

#[test]
fn sampler_kind_validation() {
    for bad in [
        SamplerKind::Ddim { steps: 0, eta: 0.0, clamp: true },
        SamplerKind::Ddim { steps: 1001, eta: 0.0, clamp: true },
        SamplerKind::Ddim { steps: 50, eta: -0.1, clamp: true },
        SamplerKind::Ddim { steps: 50, eta: f32::NAN, clamp: true },
        SamplerKind::Ddim { steps: 50, eta: f32::INFINITY, clamp: true },
    ] {
        assert!(matches!(bad.validate(1000), Err(Error::Arg(_))), "{bad:?}");
        let mut den = |x: &Tensor, _: &[usize]| Ok(x.clone());
        let r = sample(&mut den, &reference_schedule(), bad, Tensor::zeros(&[1, 1, 2, 2]), 0, &mut |_, _| {});
        assert!(matches!(r, Err(Error::Arg(_))), "sample with {bad:?}");
    }
    for good in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim { steps: 1, eta: 0.0, clamp: true },
        SamplerKind::Ddim { steps: 1000, eta: 2.0, clamp: true },
    ] {
        assert!(good.validate(1000).is_ok(), "{good:?}");
    }
}

#[test]
fn step_functions_reject_bad_inputs() {
    let s = reference_schedule();
    let v = vec![0.0f32; 8];
    let mut out = vec![0.0f32; 8];
    assert!(matches!(ddpm_step(&s, 1000, &v, &v, None, &mut out), Err(Error::Arg(_))));
    assert!(matches!(ddpm_step(&s, 5, &v, &v[..7], None, &mut out), Err(Error::Shape(_))));
    assert!(matches!(ddpm_step(&s, 5, &v, &v, Some(&v[..4]), &mut out), Err(Error::Shape(_))));
    assert!(matches!(ddim_step(&s, (5, Some(5), 0.0), &v, &v, None, &mut out), Err(Error::Arg(_))));
    assert!(matches!(ddim_step(&s, (1000, None, 0.0), &v, &v, None, &mut out), Err(Error::Arg(_))));
    assert!(matches!(ddim_step(&s, (5, None, 0.0), &v, &v, None, &mut out[..3]), Err(Error::Shape(_))));
}

/// A stub network `eps = 0.5 x` that records the timesteps it is called with.
fn run(kind: SamplerKind, sched: &Schedule, seed: u64, xt: &Tensor, calls: &mut Vec<usize>) -> Result<Tensor> {
    let mut den = |x: &Tensor, t: &[usize]| {
        assert!(t.iter().all(|&v| v == t[0]) && t.len() == x.shape()[0]);
        calls.push(t[0]);
        Tensor::new(x.shape(), x.data().iter().map(|v| 0.5 * v).collect())
    };
    let mut last = (0, 0);
    let out = sample(&mut den, sched, kind, xt.clone(), seed, &mut |done, total| last = (done, total))?;
    assert_eq!(last.0, last.1, "progress must end at total");
    Ok(out)
}

#[test]
fn sample_visits_the_reference_timesteps() {
    let s = reference_schedule();
    let xt = initial_noise(1, 2, 1, 4, 4);
    let mut calls = Vec::new();
    run(SamplerKind::Ddpm, &s, 0, &xt, &mut calls).unwrap();
    assert_eq!(calls, (0..1000).rev().collect::<Vec<_>>());
    calls.clear();
    // README, traj.ddim10: 11 network calls at t = 999, 900, 800, ..., 100, 0.
    run(SamplerKind::Ddim { steps: 10, eta: 0.0, clamp: true }, &s, 0, &xt, &mut calls).unwrap();
    let mut want: Vec<usize> = (0..10).rev().map(|k| 100 * k).collect();
    want.insert(0, 999);
    assert_eq!(calls, want);
}

#[test]
fn sample_is_deterministic_per_seed() {
    let s = Schedule::linear(100, 1e-4, 2e-2).unwrap();
    let xt = initial_noise(3, 2, 1, 8, 8);
    let mut calls = Vec::new();
    for kind in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim { steps: 20, eta: 1.0, clamp: true },
        SamplerKind::Ddim { steps: 20, eta: 0.0, clamp: true },
    ] {
        let a = run(kind, &s, 7, &xt, &mut calls).unwrap();
        assert_eq!(a, run(kind, &s, 7, &xt, &mut calls).unwrap(), "{kind:?}: same seed");
        assert!(a.data().iter().all(|v| (-1.0..=1.0).contains(v)), "{kind:?}: final clamp");
        let b = run(kind, &s, 8, &xt, &mut calls).unwrap();
        if kind == (SamplerKind::Ddim { steps: 20, eta: 0.0, clamp: true }) {
            // eta = 0 draws no noise, so the seed only matters through x_T.
            assert_eq!(a, b, "{kind:?}: deterministic");
        } else {
            assert_ne!(a, b, "{kind:?}: seeds must differ");
        }
    }
}

#[test]
fn sample_follows_the_step_functions() {
    // With eps = 0.5 x the DDPM loop is reproducible by hand from ddpm_step and the documented noise streams.
    let s = Schedule::linear(20, 1e-4, 2e-2).unwrap();
    let xt = initial_noise(11, 1, 1, 4, 4);
    let got = run(SamplerKind::Ddpm, &s, 5, &xt, &mut Vec::new()).unwrap();
    let mut x = xt.data().to_vec();
    let mut z = vec![0.0; x.len()];
    for t in (0..20).rev() {
        let eps: Vec<f32> = x.iter().map(|v| 0.5 * v).collect();
        rng::fill_normal(5, noise_stream(t), &mut z);
        let mut next = vec![0.0; x.len()];
        ddpm_step(&s, t, &x, &eps, Some(&z), &mut next).unwrap();
        x = next;
    }
    x.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    assert_eq!(got.data(), &x[..]);
}

#[test]
fn initial_noise_is_batch_size_independent() {
    let a = initial_noise(42, 3, 1, 8, 8);
    let b = initial_noise(42, 5, 1, 8, 8);
    assert_eq!(a.shape(), &[3, 1, 8, 8]);
    assert_eq!(a.data(), &b.data()[..a.numel()]);
    assert_eq!(a.data()[17], rng::normal(42, INIT_STREAM, 17));
    assert_ne!(a.data(), initial_noise(43, 3, 1, 8, 8).data());
}

#[test]
fn sample_rejects_a_wrong_eps_shape() {
    let s = Schedule::linear(10, 1e-4, 2e-2).unwrap();
    let mut den = |_: &Tensor, _: &[usize]| Ok(Tensor::zeros(&[1, 1, 2, 3]));
    let r = sample(&mut den, &s, SamplerKind::Ddpm, Tensor::zeros(&[1, 1, 2, 2]), 0, &mut |_, _| {});
    assert!(matches!(r, Err(Error::Shape(_))));
    let r = sample(&mut den, &s, SamplerKind::Ddpm, Tensor::zeros(&[4]), 0, &mut |_, _| {});
    assert!(matches!(r, Err(Error::Shape(_))));
}
