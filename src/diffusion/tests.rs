//! The diffusion kernels on the GPU against the CPU's.

use super::dpm_solver::dpm_update;
use super::sampler::{ddim_step, ddim_update, ddpm_step, noise_stream};
use super::{
    drops_label, BatchDraw, DdimCoefs, DdpmCoefs, DiffusionOps, DpmCoefs, LabelDraw, SamplerPlan, Schedule,
    ScheduleTables, StepCoefs,
};
use crate::backend::{ConvOps, Cpu, Gpu, Memory, OptimOps};
use crate::gpu::Executor;
use crate::nn::TimeEmbedding;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};
use crate::rng;
use crate::tensor::Tensor;
use crate::train::{PlanRow, StepPlan};

// q_sample: the noise is Philox on the device, the same draws as rng::fill_normal; the integer part is exact, and
// logf/sqrtf/cosf are within 2 ulp on a GPU: rel 1e-6 + abs 1e-6 (cos near its zeros).
fn q_sample<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (batch, per) = (3, 2 * 5 * 7);
    let (seed, stream) = (0x1234_5678_9abc, 7u64 << 33);
    let x0 = Tensor::new(&[batch, 2, 5, 7], rand(80, batch * per)).unwrap();
    let t = [0usize, 499, 999];
    let mut noise = Tensor::zeros(&[batch, 2, 5, 7]);
    rng::fill_normal(seed, stream, noise.data_mut());
    let want = sched.q_sample(&x0, &t, &noise).unwrap();
    let (nb, xt) = dev.q_sample(&sched, &up(dev, x0.data()), &t, (seed, stream)).unwrap();
    close(&down(dev, &nb), noise.data(), 1e-6, 1e-6, "q_sample noise");
    close(&down(dev, &xt), want.data(), 1e-6, 1e-6, "q_sample x_t");
    // A timestep outside the schedule would index past its tables: refused before any launch.
    assert!(dev.q_sample(&sched, &up(dev, x0.data()), &[0, 1000, 2], (seed, stream)).is_err());
}
gpu_test!(q_sample);

// DDPM and DDIM steps with and without on-device noise, same f32 order as the CPU: exact on the emulator; noise
// within 2 ulp on a GPU: abs 1e-6 + rel 1e-6.
fn sampler_steps<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let n = 2 * 7 * 9;
    let (x, eps) = (rand(90, n), rand(91, n));
    let (xb, eb, mut got) = (up(dev, &x), up(dev, &eps), out(dev, n));
    let seed = 42;
    for t in [0usize, 1, 500, 999] {
        let stream = noise_stream(t);
        let mut z = vec![0.0; n];
        rng::fill_normal(seed, stream, &mut z);
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddpm_step(&sched, t, &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            // The CPU drops the noise at t = 0; so does passing None.
            let noise = (noisy && t > 0).then_some((seed, stream));
            dev.ddpm_step(&DdpmCoefs::new(&sched, t).unwrap(), &xb, &eb, noise, &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-6, 1e-6, &format!("ddpm t={t} noisy={noisy}"));
        }
        let (t_prev, eta) = (t.checked_sub(20).filter(|_| t >= 20), 0.7);
        let c = DdimCoefs::new(&sched, t, t_prev, eta).unwrap();
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddim_step(&sched, (t, t_prev, eta), &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            dev.ddim_step(&c, &xb, &eb, noisy.then_some((seed, stream)), &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-6, 1e-6, &format!("ddim t={t} noisy={noisy}"));
            // Without the clamp: x in [-1, 1] and eps make x̂0 up to ~1/sqrt(alpha_bar), far outside [-1, 1].
            let c = DdimCoefs { clamp: false, ..c };
            ddim_update(&c, &x, &eps, noisy.then_some(&z[..]), &mut want);
            dev.ddim_step(&c, &xb, &eb, noisy.then_some((seed, stream)), &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-6, 1e-6, &format!("ddim no clamp t={t} noisy={noisy}"));
            // Guided: the direction's noise re-derived from the clamped x̂0; the division by sqrt(1 - ab) is
            // ill-conditioned at small t, so rel 1e-5.
            let c = DdimCoefs { clamp: true, rederive: true, ..c };
            ddim_update(&c, &x, &eps, noisy.then_some(&z[..]), &mut want);
            dev.ddim_step(&c, &xb, &eb, noisy.then_some((seed, stream)), &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-5, 1e-5, &format!("ddim rederive t={t} noisy={noisy}"));
        }
    }
}
gpu_test!(sampler_steps);

/// GLIDE's guided DDIM step: with the clamp binding, the direction uses the noise re-derived from the clamped x̂0
/// (the formula in f64); where it does not bind, that noise is the network's, so the step is the plain one up to
/// rounding.
#[test]
fn ddim_rederives_the_noise_from_the_clamped_x0() {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let c = DdimCoefs { rederive: true, ..DdimCoefs::new(&sched, 600, Some(580), 0.0).unwrap() };
    let (x, eps) = ([0.3f32, -2.5, 1.7, 0.9], [0.1f32, 0.2, -1.5, 0.8]);
    let mut got = [0.0f32; 4];
    ddim_update(&c, &x, &eps, None, &mut got);
    let plain = DdimCoefs { rederive: false, ..c };
    let mut unclamped = [0.0f32; 4];
    ddim_update(&plain, &x, &eps, None, &mut unclamped);
    let (s1m, sab, sabp, dir) =
        (c.sqrt_one_minus_ab as f64, c.sqrt_ab as f64, c.sqrt_ab_prev as f64, c.dir_coef as f64);
    let mut bound = 0;
    for i in 0..4 {
        let x0 = (x[i] as f64 - s1m * eps[i] as f64) / sab;
        let x0c = x0.clamp(-1.0, 1.0);
        let want = sabp * x0c + dir * (x[i] as f64 - sab * x0c) / s1m;
        assert!((got[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "element {i}: {} vs {want}", got[i]);
        if x0 == x0c {
            assert!((got[i] - unclamped[i]).abs() < 1e-5, "element {i}: clamp not binding, yet the steps differ");
        } else {
            bound += 1;
            assert!((got[i] - unclamped[i]).abs() > 1e-2, "element {i}: the clamp binds, yet nothing changed");
        }
    }
    assert!(bound > 0 && bound < 4, "the test should have elements on both sides of the clamp");
}

// DPM-Solver++ steps (2M and SDE, first and second order, the final step, with and without the clamp) against the
// CPU twin: the output and the x̂0 written back into x0_prev, bit for bit on the emulator (same f32 order, no FMA
// contraction), within 2 ulp of the Philox normals on a GPU.
fn dpm_steps<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let n = 2 * 7 * 9;
    let (x, eps, prev) = (rand(92, n), rand(93, n), rand(94, n));
    let (xb, eb, mut got) = (up(dev, &x), up(dev, &eps), out(dev, n));
    let seed = 43;
    for (u, s, t) in [(None, 999, Some(950)), (Some(999), 950, Some(500)), (Some(20), 5, Some(0)), (Some(5), 0, None)] {
        for (sde, clamp) in [(false, true), (false, false), (true, true), (true, false)] {
            let c = DpmCoefs::new(&sched, (u, s, t), sde, clamp).unwrap();
            let noise = (sde && t.is_some()).then_some((seed, noise_stream(s)));
            let z = noise.map(|(seed, stream)| {
                let mut z = vec![0.0; n];
                rng::fill_normal(seed, stream, &mut z);
                z
            });
            let (mut want, mut want_prev) = (vec![0.0; n], prev.clone());
            dpm_update(&c, &x, &eps, &mut want_prev, z.as_deref(), &mut want);
            let mut prev_b = up(dev, &prev);
            dev.dpm_step(&c, &xb, &eb, &mut prev_b, noise, &mut got).unwrap();
            let what = format!("dpm {u:?} -> {s} -> {t:?} sde={sde} clamp={clamp}");
            same::<E>(&down(dev, &got), &want, &what);
            same::<E>(&down(dev, &prev_b), &want_prev, &format!("{what}: x0_prev"));
        }
    }
    // A short x0_prev is refused before the launch.
    let c = DpmCoefs::new(&sched, (None, 999, Some(950)), false, true).unwrap();
    assert!(dev.dpm_step(&c, &xb, &eb, &mut out(dev, n - 1), None, &mut got).is_err());
}
gpu_test!(dpm_steps);

/// Whether `E` is the emulator, whose f32 math is the host's (same libm, no FMA contraction): there the elementwise
/// kernels must match the CPU bit for bit; a GPU's logf/cosf/expf/sinf are within 2 ulp.
fn on_emulator<E: Executor>() -> bool {
    std::any::TypeId::of::<E>() == std::any::TypeId::of::<crate::gpu::emu::Emulator>()
}

/// `got == want` bit for bit on the emulator, within abs 1e-6 + rel 1e-6 on a GPU.
fn same<E: Executor>(got: &[f32], want: &[f32], what: &str) {
    if on_emulator::<E>() {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
        }
    } else {
        close(got, want, 1e-6, 1e-6, what);
    }
}

// The training batch drawn on the device (gather by the epoch's permutation, t, noise, x_t in one pass) against the
// host's path (gather, rng::uniform_below, fill_normal, Schedule::q_sample); the CPU twin against the same.
fn draw_batch<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (n_images, per) = (7, 2 * 5 * 3);
    let images = rand(81, n_images * per);
    let perm = [3u32, 6, 0, 5, 1, 4, 2];
    let (first, batch) = (2, 4);
    let (seed, t_stream, noise_stream) = (0x5eed_0123_4567, (2u64 << 60) | 9, (3u64 << 60) | 9);
    // The host's path, as the training step took it before the draw moved to the backend.
    let x0: Vec<f32> =
        perm[first..first + batch].iter().flat_map(|&i| images[i as usize * per..][..per].to_vec()).collect();
    let x0 = Tensor::new(&[batch, per], x0).unwrap();
    let t: Vec<usize> = (0..batch).map(|i| rng::uniform_below(seed, t_stream, i as u64, 1000) as usize).collect();
    let mut noise = Tensor::zeros(&[batch, per]);
    rng::fill_normal(seed, noise_stream, noise.data_mut());
    let want = sched.q_sample(&x0, &t, &noise).unwrap();
    let want_t: Vec<u32> = t.iter().map(|&v| v as u32).collect();

    let cpu_tables = ScheduleTables::new(&Cpu, &sched).unwrap();
    let cpu_perm = perm.to_vec();
    let operand_channels = None;
    let cpu_d = BatchDraw {
        images: &images,
        per_item: per,
        perm: &cpu_perm,
        first,
        batch,
        seed,
        t_stream,
        noise_stream,
        operand_channels,
        plan: None,
    };
    let (cn, cx, ct, _) = Cpu.draw_batch(&cpu_tables, &cpu_d).unwrap();
    assert_eq!(ct, want_t, "cpu draw_batch t");
    assert!(cn == noise.data() && cx == want.data(), "cpu draw_batch noise or x_t differ from the host's path");

    let tables = ScheduleTables::new(dev, &sched).unwrap();
    let (ib, pb) = (up(dev, &images), dev.upload_indices(&perm).unwrap());
    let d = BatchDraw {
        images: &ib,
        per_item: per,
        perm: &pb,
        first,
        batch,
        seed,
        t_stream,
        noise_stream,
        operand_channels,
        plan: None,
    };
    let (gn, gx, gt, _) = dev.draw_batch(&tables, &d).unwrap();
    assert_eq!(dev.download_indices(&gt).unwrap(), want_t, "draw_batch t");
    same::<E>(&down(dev, &gn), noise.data(), "draw_batch noise");
    same::<E>(&down(dev, &gx), want.data(), "draw_batch x_t");
    // Under bf16, x_t (items of 2 channels of 15 pixels) with its operand: as converting it makes it, to the bit.
    let bf16 = dev.clone().with_precision(crate::backend::Precision::Bf16);
    let (_, bx, _, op) = bf16.draw_batch(&tables, &BatchDraw { operand_channels: Some(2), ..d }).unwrap();
    let op = op.expect("an operand under bf16");
    let converted = bf16.operand(&bx, crate::desc::Planes { n: batch, c: 2, plane: per / 2 }).unwrap().unwrap();
    let bits = |b: &E::Buf| down(dev, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&op.buf.buf), bits(&converted.buf.buf), "draw_batch x_t's operand");

    // Refused before any launch: a batch past the permutation's end, a permutation value past the images.
    let past = BatchDraw { first: 4, ..d };
    assert!(dev.draw_batch(&tables, &past).is_err());
    let bad = dev.upload_indices(&[0, 1, 7, 2]).unwrap();
    assert!(dev.draw_batch(&tables, &BatchDraw { perm: &bad, first: 0, ..past }).is_err());

    // With a plan moved on to its second row, the row's values replace the arguments (which here are another
    // step's); the CPU refuses plans, and the GPU a plan with a row whose batch passes the permutation's end.
    let row = |first, stream: u64| PlanRow {
        first,
        t_stream: stream,
        noise_stream: stream,
        label_stream: stream,
        stats_word: 0,
        adam: crate::optim::AdamW::new(&crate::params::Params::new(), 1e-3).scalars(1),
        ema: (0.5, 0.5),
    };
    let mut plan = StepPlan::new(dev, &[row(0, 1), PlanRow { t_stream, noise_stream, ..row(first, 2) }]).unwrap();
    let mut ring = up(dev, &[0.0; 3]);
    dev.advance_plan(&mut plan, &up(dev, &[1.0, 2.0, 3.0]), &mut ring).unwrap();
    let other = BatchDraw { first: 0, t_stream: 5, noise_stream: 6, plan: Some(&plan), ..d };
    let (pn, px, pt, _) = dev.draw_batch(&tables, &other).unwrap();
    assert_eq!(dev.download_indices(&pt).unwrap(), want_t, "planned draw_batch t");
    same::<E>(&down(dev, &pn), noise.data(), "planned draw_batch noise");
    same::<E>(&down(dev, &px), want.data(), "planned draw_batch x_t");
    let cpu_plan = StepPlan::new(&Cpu, &[row(0, 1)]).unwrap();
    let cpu_planned = BatchDraw { plan: Some(&cpu_plan), ..cpu_d };
    assert!(Cpu.draw_batch(&cpu_tables, &cpu_planned).is_err());
    let beyond = StepPlan::new(dev, &[row(0, 1), row(4, 1)]).unwrap();
    assert!(dev.draw_batch(&tables, &BatchDraw { plan: Some(&beyond), ..d }).is_err());
}
gpu_test!(draw_batch);

// The time embedding's sinusoid from device timesteps against TimeEmbedding::sinusoid on the host (and the CPU
// twin), at the UNet's widths and across the schedule.
fn time_sinusoid<E: Executor>(dev: &Gpu<E>) {
    let t = [0usize, 1, 2, 17, 250, 500, 998, 999];
    let t32: Vec<u32> = t.iter().map(|&v| v as u32).collect();
    let tb = dev.upload_indices(&t32).unwrap();
    for dim in [4, 10, 64, 128] {
        let want = TimeEmbedding::sinusoid(&t, dim);
        assert_eq!(Cpu.time_sinusoid(&t32, t.len(), dim, true).unwrap().0, want.data(), "cpu sinusoid dim {dim}");
        let (got, _) = dev.time_sinusoid(&tb, t.len(), dim, false).unwrap();
        same::<E>(&down(dev, &got), want.data(), &format!("sinusoid dim {dim}"));
        // Under bf16 with its operand (dim 10 padded to 16): as converting it makes it, to the bit.
        let bf16 = dev.clone().with_precision(crate::backend::Precision::Bf16);
        let (bs, op) = bf16.time_sinusoid(&tb, t.len(), dim, true).unwrap();
        let converted = bf16.operand(&bs, crate::desc::Planes { n: t.len(), c: dim, plane: 1 }).unwrap().unwrap();
        let bits = |b: &E::Buf| down(dev, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let op = op.expect("an operand under bf16");
        assert_eq!(bits(&op.buf.buf), bits(&converted.buf.buf), "sinusoid dim {dim}: operand");
        // The first n timesteps of a longer buffer.
        let (head, _) = dev.time_sinusoid(&tb, 3, dim, false).unwrap();
        same::<E>(&down(dev, &head), &want.data()[..3 * dim], &format!("sinusoid head dim {dim}"));
    }
    assert!(dev.time_sinusoid(&tb, t.len() + 1, 8, false).is_err());
}
gpu_test!(time_sinusoid);

// A sampler's plan: each planned step, updating x in place with the scalars and noise stream of the plan's current
// row, gives the bits of the same step launched with them as arguments out of place (the same kernel and f32
// order), and the plan's sinusoid is the host's of the row's timestep for every image (and its operand under bf16
// the conversion's). Every update kind, noise on and off from row to row, DDIM's flags and DPM-Solver++'s x̂0.
fn planned_sampler_steps<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (images, dim) = (3, 10);
    let n = images * 16;
    let (x, eps, prev) = (rand(95, n), rand(96, n), rand(97, n));
    let seed = 44;
    let ts = [999usize, 500, 0];
    let ddim = |k: usize, rederive| {
        let c = DdimCoefs::new(&sched, ts[k], ts.get(k + 1).copied(), 0.8).unwrap();
        StepCoefs::Ddim(DdimCoefs { rederive, ..c })
    };
    let dpm = |k: usize| {
        let before = k.checked_sub(1).map(|j| ts[j]);
        StepCoefs::Dpm(DpmCoefs::new(&sched, (before, ts[k], ts.get(k + 1).copied()), true, true).unwrap())
    };
    let plans: [Vec<StepCoefs>; 4] = [
        (0..3).map(|k| ddim(k, false)).collect(),
        (0..3).map(|k| ddim(k, true)).collect(),
        ts.iter().map(|&t| StepCoefs::Ddpm(DdpmCoefs::new(&sched, t).unwrap())).collect(),
        (0..3).map(dpm).collect(),
    ];
    let bf16 = dev.clone().with_precision(crate::backend::Precision::Bf16);
    for coefs in plans {
        // Noise on the first two steps only, as a sampler's last step has none.
        let steps: Vec<_> =
            coefs.iter().enumerate().map(|(k, &c)| (c, (k < 2).then_some((seed, noise_stream(ts[k]))))).collect();
        let mut plan = SamplerPlan::new(&bf16, &steps, &ts, dim).unwrap();
        let (mut xb, mut prev_b) = (up(dev, &x), up(dev, &prev));
        let (mut want_x, mut want_prev) = (up(dev, &x), up(dev, &prev));
        let eb = up(dev, &eps);
        for (k, (c, noise)) in steps.iter().enumerate() {
            let what = format!("{c:?} step {k}");
            let (s, op) = bf16.plan_sinusoid(&plan, images, true).unwrap();
            let host = TimeEmbedding::sinusoid(&[ts[k]; 3], dim);
            assert_eq!(down(dev, &s), host.data(), "{what}: sinusoid");
            let converted = bf16.operand(&s, crate::desc::Planes { n: images, c: dim, plane: 1 }).unwrap().unwrap();
            let bits = |b: &E::Buf| down(dev, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&op.expect("an operand").buf.buf), bits(&converted.buf.buf), "{what}: operand");
            let mut next = out(dev, n);
            match c {
                StepCoefs::Ddpm(c) => dev.ddpm_step(c, &want_x, &eb, *noise, &mut next).unwrap(),
                StepCoefs::Ddim(c) => dev.ddim_step(c, &want_x, &eb, *noise, &mut next).unwrap(),
                StepCoefs::Dpm(c) => dev.dpm_step(c, &want_x, &eb, &mut want_prev, *noise, &mut next).unwrap(),
            }
            want_x = next;
            bf16.planned_step(&mut plan, &mut xb, &eb, Some(&mut prev_b)).unwrap();
            assert!(bits(&xb) == bits(&want_x), "{what}: x");
            assert!(bits(&prev_b) == bits(&want_prev), "{what}: x0_prev");
        }
        // Past its rows a plan is refused before any launch; so is a DPM-Solver++ plan without its x̂0.
        assert!(bf16.plan_sinusoid(&plan, images, true).is_err());
        assert!(bf16.planned_step(&mut plan, &mut xb, &eb, None).is_err());
        if let StepCoefs::Dpm(_) = coefs[0] {
            let mut fresh = SamplerPlan::new(&bf16, &steps, &ts, dim).unwrap();
            assert!(bf16.planned_step(&mut fresh, &mut xb, &eb, None).is_err());
        }
    }
    // The CPU runs no plans; a plan mixing update kinds, or with a timestep short, is refused.
    let c = DdimCoefs::new(&sched, 999, None, 0.0).unwrap();
    let last = StepCoefs::Ddim(c);
    let steps = [(last, None)];
    let mut cpu_plan = SamplerPlan::new(&Cpu, &steps, &[999], dim).unwrap();
    assert!(Cpu.plan_sinusoid(&cpu_plan, 1, false).is_err());
    assert!(Cpu.planned_step(&mut cpu_plan, &mut vec![0.0; 4], &vec![0.0; 4], None).is_err());
    let mixed = [(last, None), (StepCoefs::Ddpm(DdpmCoefs::new(&sched, 5).unwrap()), None)];
    assert!(SamplerPlan::new(dev, &mixed, &[999, 5], dim).is_err());
    let flags_differ = [(last, None), (StepCoefs::Ddim(DdimCoefs { rederive: true, ..c }), None)];
    assert!(SamplerPlan::new(dev, &flags_differ, &[999, 5], dim).is_err());
    assert!(SamplerPlan::new(dev, &steps, &[], dim).is_err());
}
gpu_test!(planned_sampler_steps);

// The label drop is Bernoulli(0.1): over 200 000 draws the count of drops lies within 5 binomial standard
// deviations (sqrt(n·0.1·0.9) ≈ 134) of n/10, and two streams differ.
#[test]
fn labels_drop_one_time_in_ten() {
    let (n, seed, stream) = (200_000u64, 0x0c1a_55e5, (4u64 << 60) | 3);
    let drops = (0..n).filter(|&i| drops_label(seed, stream, i)).count() as f64;
    let (mean, sd) = (n as f64 * 0.1, (n as f64 * 0.1 * 0.9).sqrt());
    assert!((drops - mean).abs() <= 5.0 * sd, "{drops} drops in {n} draws, expected {mean} ± {}", 5.0 * sd);
    let other: Vec<bool> = (0..64).map(|i| drops_label(seed, stream + 1, i)).collect();
    assert_ne!(other, (0..64).map(|i| drops_label(seed, stream, i)).collect::<Vec<_>>());
}

// A training batch's labels drawn on the device (gather by the epoch's permutation, the drop) against the host's
// formula and the CPU twin: equal, bit for bit.
fn draw_labels<E: Executor>(dev: &Gpu<E>) {
    let labels: Vec<u32> = (0..40u32).map(|i| (i * 7) % 10).collect();
    let perm: Vec<u32> = (0..40u32).map(|i| (i * 17) % 40).collect();
    let (first, batch, null, seed, stream) = (8, 30, 10, 77, (4u64 << 60) | 5);
    let want: Vec<u32> = (0..batch)
        .map(|i| if drops_label(seed, stream, i as u64) { null } else { labels[perm[first + i] as usize] })
        .collect();
    assert!(want.contains(&null) && want.iter().any(|&l| l != null), "the batch shows both cases");
    let d = LabelDraw { labels: &labels, perm: &perm, first, batch, null, seed, stream, plan: None };
    assert_eq!(Cpu.draw_labels(&d).unwrap(), want, "cpu draw_labels");
    let (lb, pb) = (dev.upload_indices(&labels).unwrap(), dev.upload_indices(&perm).unwrap());
    let d = LabelDraw { labels: &lb, perm: &pb, first, batch, null, seed, stream, plan: None };
    assert_eq!(dev.download_indices(&dev.draw_labels(&d).unwrap()).unwrap(), want, "draw_labels");
    // A plan's row (its first position and label stream) replaces the arguments.
    let adam = crate::optim::AdamW::new(&crate::params::Params::new(), 1e-3).scalars(1);
    let row =
        PlanRow { first, t_stream: 0, noise_stream: 0, label_stream: stream, stats_word: 0, adam, ema: (0.5, 0.5) };
    let plan = StepPlan::new(dev, &[row]).unwrap();
    let planned = LabelDraw { first: 0, stream: stream + 1, plan: Some(&plan), ..d };
    assert_eq!(dev.download_indices(&dev.draw_labels(&planned).unwrap()).unwrap(), want, "planned draw_labels");
    // Refused before any launch: a batch past the permutation, a label that is not below the null label.
    assert!(dev.draw_labels(&LabelDraw { first: 11, ..d }).is_err());
    let (cpu_bad, bad) = (vec![10u32; 40], dev.upload_indices(&[10u32; 40]).unwrap());
    let cpu_bad = LabelDraw { labels: &cpu_bad, perm: &perm, first, batch, null, seed, stream, plan: None };
    assert!(Cpu.draw_labels(&cpu_bad).is_err());
    assert!(dev.draw_labels(&LabelDraw { labels: &bad, ..d }).is_err());
}
gpu_test!(draw_labels);

// Classifier-free guidance's combination (1 + w)·c - w·u, the CPU's f32 order: exact on the emulator, and w = 0
// returns the conditional half unchanged.
fn guide<E: Executor>(dev: &Gpu<E>) {
    let half = 3 * 32 + 5;
    let eps = rand(95, 2 * half);
    for w in [0.0f32, 0.5, 3.0, 7.25] {
        let mut cpu = vec![0.0; half];
        Cpu.guide(&eps, half, w, &mut cpu).unwrap();
        let want: Vec<f32> = (0..half).map(|e| (1.0 + w) * eps[e] - w * eps[half + e]).collect();
        assert_eq!(cpu, want, "cpu guide w = {w}");
        let mut got = out(dev, half);
        dev.guide(&up(dev, &eps), half, w, &mut got).unwrap();
        same::<E>(&down(dev, &got), &want, &format!("guide w = {w}"));
    }
    let mut cpu = vec![0.0; half];
    Cpu.guide(&eps, half, 0.0, &mut cpu).unwrap();
    assert_eq!(cpu, eps[..half]);
    assert!(dev.guide(&up(dev, &eps[1..]), half, 1.0, &mut out(dev, half)).is_err());
}
gpu_test!(guide);
