//! The whole model on the GPU backend: the UNet forward and backward against the golden PyTorch files, a full
//! training step (q_sample with on-device noise, forward, backward, clipping, AdamW, EMA) and the DDPM and DDIM
//! samplers against the same on the CPU. Each check is one generic function over the executor; the `emu` variants run on the CPU
//! emulator in every test pass, the `cuda` variants are `#[ignore]`d (reported as ignored, not passed, without a
//! GPU) and `--ignored` runs them on a GPU machine, where a missing device fails them.

#[macro_use]
mod common;

use common::{assert_close, golden, golden_model, golden_step};
use ddpm::backend::Backend;
use ddpm::backend::Gpu;
use ddpm::diffusion::{ddim_invert, roundtrip, sample, Denoiser, SamplerKind, Schedule, Spacing};
use ddpm::gpu::Executor;
use ddpm::nn::{UNetConfig, UNetDenoiser};
use ddpm::optim::clip_grad_norm;
use ddpm::train::{RunConfig, TrainState};
use ddpm::Tensor;

/// The golden batch (4 images of the base-16 UNet) through forward and backward on the GPU backend, at the
/// tolerances of tests/golden_unet.rs (derived in tests/golden/README.md from the measured f32-vs-f64 error): the
/// GPU sums in other orders than the CPU (GEMM tiles, two-pass reductions in f32), which is within those
/// budgets, since they were set at 3-10x the error of any correct f32 port.
fn golden_forward_backward<E: Executor>(exec: E) {
    let (model, host_params) = golden_model();
    let params = host_params.to_backend(&Gpu::new(exec)).unwrap();
    let (acts, loss, mut grads) = golden_step(&model, &params);
    let (io, golden_acts) = (golden("io.safetensors"), golden("acts.safetensors"));
    for (name, value) in &acts {
        let atol = if name == "time" { 1e-4 } else { 1e-5 };
        let c = assert_close(
            &format!("act.{name}"),
            value.data(),
            golden_acts.f32(&format!("act.{name}")).unwrap().data(),
            atol,
            1e-5,
        );
        eprintln!("gpu act.{name:<9} max abs {:.2e} ({:.0}% of threshold)", c.max_abs, 100.0 * c.worst_ratio);
    }
    let eps = &acts.iter().find(|(n, _)| n == "out_conv").unwrap().1;
    assert_close("eps", eps.data(), io.f32("eps").unwrap().data(), 1e-5, 1e-5);
    let c = assert_close("loss", &[loss], io.f32("loss").unwrap().data(), 0.0, 1e-6);
    eprintln!("gpu loss rel err {:.2e}", c.max_abs / loss);
    let mut worst = 0.0f32;
    for (i, (name, _)) in host_params.iter().enumerate() {
        let c = assert_close(
            &format!("grad.{name}"),
            grads.0[i].data(),
            io.f32(&format!("grad.{name}")).unwrap().data(),
            1e-7,
            1e-4,
        );
        worst = worst.max(c.worst_ratio);
    }
    eprintln!("gpu grad.* worst {:.0}% of threshold", 100.0 * worst);
    let (total, coef) = clip_grad_norm(&mut grads, 1.0).unwrap();
    assert_close("clip.total_norm", &[total], io.f32("clip.total_norm").unwrap().data(), 0.0, 1e-5);
    assert_close("clip.coef", &[coef], io.f32("clip.coef").unwrap().data(), 0.0, 1e-5);
}
gpu_test!(golden_forward_backward);

/// A tiny run: base 8, t_dim 4, batch 2 of 8x8 images, lr 5e-4, EMA with warm-up (decay 0.1 at the first step).
fn tiny_config() -> RunConfig {
    RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        batch: 2,
        lr: 5e-4,
        ema_warmup: true,
        seed: 5,
        ..RunConfig::reference_recipe()
    }
}

/// One full training step on the GPU backend against the same step on the CPU, from the same weights.
///
/// Tolerances (`abs + rel·|ref|`, per element):
/// - loss and grad norm: rel 1e-5. The GPU draws the same Philox noise as the CPU (within ~1 ulp: its logf/cosf),
///   and its forward sums in another order; golden_unet allows rel 1e-6 against PyTorch for the loss and 1e-5 for
///   the norm, and here both sides carry their own summation error, hence 1e-5 for both.
/// - AdamW moments: the gradients agree to `δ = 1e-7 + 1e-4·|g|` (golden_unet's gradient budget); `m = 0.1·g`
///   gives `1e-8 + 1e-4·|m|`, and `v = 0.001·g²` moves by `0.002·|g|·δ + 0.001·δ²`, i.e. at most
///   `1e-17 + 2e-10·sqrt(1000·v) + 2e-4·v` (to first order in 1e-4).
/// - parameters: the first AdamW update is `u = lr·g/(|g| + 1e-8)` (bias corrections cancel), whose slope in g is
///   `lr·1e-8/(|g|+1e-8)²`. For `|g| >= 1e-6` the gradient error above moves u by at most `lr·1e-3`, so 1e-6
///   covers it; below that, where u flips between ±lr with the sign of a gradient that is zero up to rounding,
///   only `2·lr` can be promised. `|g|` is read from the CPU's `m = 0.1·g`.
/// - EMA shadow: `0.1·s + 0.9·p` at the first (warm-up) update: the parameter tolerance.
fn train_step_matches_cpu<E: Executor>(exec: E) {
    let config = tiny_config();
    let sched = Schedule::linear(config.timesteps, 1e-4, 2e-2).unwrap();
    let x0 = Tensor::new(&[2, 1, 8, 8], (0..128).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()).unwrap();
    let lr = config.lr as f32;
    let mut cpu = TrainState::new(config).unwrap();
    let mut gpu = cpu.to_backend(&Gpu::new(exec)).unwrap();
    let want = cpu.train_step(&sched, &x0).unwrap();
    let got = gpu.train_step(&sched, &x0).unwrap();
    assert_close("loss", &[got.loss], &[want.loss], 0.0, 1e-5);
    assert_close("grad_norm", &[got.grad_norm], &[want.grad_norm], 0.0, 1e-5);
    let host = gpu.to_backend(&ddpm::backend::Cpu).unwrap();
    assert_eq!((host.step, host.opt.step, host.ema.updates), (1, 1, 1));
    for (i, (name, p)) in host.params.iter().enumerate() {
        let (m, v) = (cpu.opt.exp_avg[i].data(), cpu.opt.exp_avg_sq[i].data());
        for (what, got, want, tol) in [
            ("exp_avg", host.opt.exp_avg[i].data(), m, &|j: usize| 1e-8 + 1e-4 * m[j].abs() as f64),
            ("exp_avg_sq", host.opt.exp_avg_sq[i].data(), v, &|j: usize| {
                1e-17 + 2e-10 * (1000.0 * v[j] as f64).sqrt() + 2e-4 * v[j] as f64
            }),
            ("param", p.data(), cpu.params.tensors()[i].data(), &|j: usize| {
                if 10.0 * m[j].abs() >= 1e-6 {
                    1e-6
                } else {
                    2.0 * lr as f64 + 1e-6
                }
            }),
            ("ema", host.ema.shadow[i].data(), cpu.ema.shadow[i].data(), &|j: usize| {
                if 10.0 * m[j].abs() >= 1e-6 {
                    1e-6
                } else {
                    2.0 * lr as f64 + 1e-6
                }
            }),
        ] as [(&str, &[f32], &[f32], &dyn Fn(usize) -> f64); 4]
        {
            for (j, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(((g - w).abs() as f64) <= tol(j), "{what} {name}[{j}]: gpu {g}, cpu {w} (tol {:e})", tol(j));
            }
        }
    }
}
gpu_test!(train_step_matches_cpu);

/// The samplers on the GPU backend against the CPU: DDPM over a 20-step schedule (noise drawn on the device at
/// every step but the last), DDIM with eta 0.5 on a 5-step grid, and 6-step DPM-Solver++(2M) (uniform-t) and
/// SDE-DPM-Solver++(2M) (log-SNR, noise on the device), for the tiny UNet, from the same x_T.
///
/// Tolerance 1e-4 abs on images in [-1, 1]: each network call differs from the CPU's by at most the golden
/// activation budget (1e-5), each step scales ε by at most `β/sqrt(1-ᾱ) < 1` and x by `1/sqrt(α) < 1.02`, and the
/// Philox normals agree to ~1 ulp (GPU logf/cosf), so 20 steps accumulate at most ~20·1e-5·1.02²⁰ ≈ 3e-4 in the
/// worst case and far less in practice, since the per-element errors do not all line up.
fn sampler_matches_cpu<E: Executor>(exec: E) {
    let config = tiny_config();
    let cpu = TrainState::new(config).unwrap();
    let gpu_params = cpu.params.to_backend(&Gpu::new(exec)).unwrap();
    let sched = Schedule::linear(20, 1e-4, 2e-2).unwrap();
    let x_t = ddpm::diffusion::initial_noise(3, 2, 1, 8, 8);
    for kind in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim { steps: 5, eta: 0.5, clamp: true },
        SamplerKind::DpmPp2m { steps: 6, spacing: Spacing::UniformT, clamp: true },
        SamplerKind::DpmPp2mSde { steps: 6, spacing: Spacing::LogSnr, clamp: true },
    ] {
        let mut cpu_den = UNetDenoiser { model: &cpu.model, params: &cpu.params };
        let want = sample(&mut cpu_den, &sched, kind, x_t.clone(), 7, &mut |_, _| {}).unwrap();
        let mut gpu_den = UNetDenoiser { model: &cpu.model, params: &gpu_params };
        let x_dev = x_t.to_backend(gpu_params.backend()).unwrap();
        let got = sample(&mut gpu_den, &sched, kind, x_dev, 7, &mut |_, _| {}).unwrap();
        let c = assert_close(&format!("{kind:?}"), got.data(), want.data(), 1e-4, 0.0);
        eprintln!("gpu {kind:?}: max abs {:.2e}", c.max_abs);
    }
}
gpu_test!(sampler_matches_cpu);

/// A denoiser computed on the host whatever the backend, `ε = (0.5 + t/T)·x - 0.1`: the same numbers on every
/// backend, so that only the inversion's own steps can differ.
struct HostAffine {
    t_total: usize,
}

impl<B: Backend> Denoiser<B> for HostAffine {
    fn predict_eps(&mut self, x: &Tensor<B>, t: &[usize]) -> ddpm::Result<Tensor<B>> {
        let k = 0.5 + t[0] as f32 / self.t_total as f32;
        let eps = x.to_vec()?.iter().map(|&v| k * v - 0.1).collect();
        Tensor::new(x.shape(), eps)?.into_backend(x.backend())
    }
}

/// DDIM inversion on the GPU backend against the CPU. With a denoiser that gives both the same ε, the inversion
/// (the backend's fused `ddim_step` with the inverse coefficients, 11 steps) is bit for bit the CPU's on the
/// emulator (same f32 operations, no FMA contraction), within 2 ulp per step on a GPU (1e-5 abs over the run). With
/// the tiny UNet the network's own summation order differs (see `sampler_matches_cpu`), so the noise and the
/// round trip's reconstruction must agree within 1e-4 abs, as the sampler does.
fn inversion_matches_cpu<E: Executor>(exec: E) {
    let gpu = Gpu::new(exec);
    let on_emu = std::any::TypeId::of::<E>() == std::any::TypeId::of::<ddpm::gpu::emu::Emulator>();
    let sched = Schedule::linear(20, 1e-4, 2e-2).unwrap();
    let x0 = Tensor::new(&[2, 1, 8, 8], (0..128).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()).unwrap();
    let mut den = HostAffine { t_total: sched.t };
    let want = ddim_invert(&mut den, &sched, 10, x0.clone(), &mut |_, _| {}).unwrap();
    let got = ddim_invert(&mut den, &sched, 10, x0.to_backend(&gpu).unwrap(), &mut |_, _| {}).unwrap();
    let got = got.to_vec().unwrap();
    if on_emu {
        assert!(
            got.iter().zip(want.data()).all(|(g, w)| g.to_bits() == w.to_bits()),
            "emulator inversion not bit-equal"
        );
    } else {
        assert_close("inversion (host denoiser)", &got, want.data(), 1e-5, 0.0);
    }
    let cpu = TrainState::new(tiny_config()).unwrap();
    let gpu_params = cpu.params.to_backend(&gpu).unwrap();
    let mut cpu_den = UNetDenoiser { model: &cpu.model, params: &cpu.params };
    let (want_noise, want_recon) = roundtrip(&mut cpu_den, &sched, 5, x0.clone(), &mut |_, _| {}).unwrap();
    let mut gpu_den = UNetDenoiser { model: &cpu.model, params: &gpu_params };
    let (noise, recon) = roundtrip(&mut gpu_den, &sched, 5, x0.to_backend(&gpu).unwrap(), &mut |_, _| {}).unwrap();
    let c = assert_close("inverted noise", noise.data(), want_noise.data(), 1e-4, 0.0);
    let r = assert_close("reconstruction", recon.data(), want_recon.data(), 1e-4, 0.0);
    eprintln!("gpu inversion: noise max abs {:.2e}, reconstruction max abs {:.2e}", c.max_abs, r.max_abs);
}
gpu_test!(inversion_matches_cpu);

/// Twenty training steps of the tiny UNet (base 8: channels 8, 16 and 32, so its inner convs and time projections
/// run on the tensor-core path) in bf16 on the emulator, against the same twenty in f32 on the CPU, from the same
/// weights and the same batches: the losses must agree within 2% relative at every step.
///
/// Why 2%: rounding the operands to bf16 (relative error at most 2⁻⁹ each) perturbs each conv output by about
/// 2⁻⁸ relative, and the ε-prediction error that the loss measures by a similar fraction of the prediction; the
/// parameters drift apart too, since AdamW's first steps move each by about ±lr with the sign of its gradient, and
/// small gradients can flip sign under bf16. Measured: at most 0.12%. A wrong kernel (one tap or one
/// channel off) changes the prediction by far more than 2%.
#[test]
fn bf16_training_on_the_emulator_follows_the_f32_cpu_loss() {
    let config = tiny_config();
    let sched = Schedule::linear(config.timesteps, 1e-4, 2e-2).unwrap();
    let mut cpu = TrainState::new(config).unwrap();
    let bf16 = Gpu::new(ddpm::gpu::emu::Emulator::new()).with_precision(ddpm::backend::Precision::Bf16);
    let mut gpu = cpu.to_backend(&bf16).unwrap();
    let mut worst = 0.0f32;
    for step in 0..20 {
        let x0 =
            Tensor::new(&[2, 1, 8, 8], (0..128).map(|i| (((i + 7 * step) * 37 % 101) as f32 / 50.0) - 1.0).collect())
                .unwrap();
        let want = cpu.train_step(&sched, &x0).unwrap().loss;
        let got = gpu.train_step(&sched, &x0).unwrap().loss;
        let rel = (got - want).abs() / want.abs();
        worst = worst.max(rel);
        assert!(rel <= 0.02, "step {step}: bf16 loss {got}, f32 CPU loss {want} ({:.2}% apart)", 100.0 * rel);
    }
    eprintln!("bf16 on the emulator vs f32 on the CPU over 20 steps: losses at most {:.3}% apart", 100.0 * worst);
}

/// Under bf16 the GPU packs the conv and linear weights once per parameter update (`Params::packed`); a packing
/// must never outlive the values it was made from. After each training step (whose optimiser writes the
/// parameters), the model's prediction from the trained parameters equals to the bit that from a fresh copy of
/// them, which packs anew; and it differs from the prediction before the step.
#[test]
fn packed_weights_follow_every_update() {
    let config = tiny_config();
    let sched = Schedule::linear(config.timesteps, 1e-4, 2e-2).unwrap();
    let bf16 = Gpu::new(ddpm::gpu::emu::Emulator::new()).with_precision(ddpm::backend::Precision::Bf16);
    let mut gpu = TrainState::new(config).unwrap().to_backend(&bf16).unwrap();
    let model = gpu.model.clone();
    let x = Tensor::new(&[2, 1, 8, 8], (0..128).map(|i| ((i * 29 % 97) as f32 / 48.0) - 1.0).collect()).unwrap();
    let x_dev = x.to_backend(&bf16).unwrap();
    let predict = |params: &ddpm::params::Params<Gpu<ddpm::gpu::emu::Emulator>>| -> Vec<u32> {
        let eps = UNetDenoiser { model: &model, params }.predict_eps(&x_dev, &[3, 7]).unwrap();
        eps.to_host().unwrap().data().iter().map(|v| v.to_bits()).collect()
    };
    for step in 0..3 {
        let before = predict(&gpu.params);
        gpu.train_step(&sched, &x).unwrap();
        let after = predict(&gpu.params);
        assert!(after != before, "step {step}: the prediction did not change with the parameters");
        let fresh = predict(&gpu.params.to_backend(&bf16).unwrap());
        assert!(after == fresh, "step {step}: the trained parameters predict other bits than a fresh copy of them");
    }
}
