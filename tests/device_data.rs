//! The training set resident on the backend: a training step moves nothing over the bus (the launch recorder counts
//! its copies at full size), and drawing the batch on the backend changes no bit of a run (the emulator's drawn
//! batches against the same run fed host batches, and likewise on the CPU).

use ddpm::backend::{Backend, Cpu, Gpu, Precision};
use ddpm::diffusion::Schedule;
use ddpm::gpu::emu::Emulator;
use ddpm::gpu::record::Recorder;
use ddpm::gpu::{Executor, Kernel};
use ddpm::nn::UNetConfig;
use ddpm::train::{Batcher, RunConfig, TrainState, Trainer};
use ddpm::Tensor;

/// Images `[n, 1, s, s]` in [-1, 1], all different.
fn images(n: usize, s: usize) -> Tensor {
    Tensor::new(&[n, 1, s, s], (0..n * s * s).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()).unwrap()
}

// The reference recipe's model at bf16 on the recorder, on a data set of 3 batches: a step inside an epoch copies
// nothing to the device (the trainer captures the second step and replays it as the third); a step that starts an
// epoch (after the first) uploads that epoch's permutation (4 bytes per image) and the plan of its steps for the
// epoch's graph (4 bytes, then 48 per step), and nothing else. Likewise class-conditional, whose labels are uploaded once and drawn on the
// device.
#[test]
fn recorded_training_step_uploads_nothing() {
    steps_upload_nothing(0);
    steps_upload_nothing(10);
}

fn steps_upload_nothing(classes: usize) {
    let gpu = Gpu::new(Recorder::new()).with_precision(Precision::Bf16);
    let mut config = RunConfig { batch: 16, epochs: 10, ..RunConfig::reference_recipe() };
    config.model.classes = classes;
    let n = 3 * config.batch;
    let mut trainer = Trainer::new(TrainState::new(config).unwrap().to_backend(&gpu).unwrap(), images(n, 32)).unwrap();
    if classes > 0 {
        let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
        trainer = trainer.with_labels(&labels).unwrap();
    }
    let counters = gpu.executor().counters();
    for step in 0..5 {
        let before = counters.snapshot();
        counters.record();
        trainer.step(&mut ()).unwrap();
        let h2d = counters.snapshot().since(&before).h2d_bytes;
        // Every operand is written by the op that makes its tensor or gradient (the batch draw and the time
        // sinusoid too), except, in a conditional model, the time MLP output's gradient's (from the label
        // embedding's backward).
        let conversions = counters.take_log().iter().filter(|l| l.kernel == Kernel::NchwToNhwcBf16).count();
        assert_eq!(conversions, usize::from(classes > 0), "step {step}: conversions");
        let perm = if step % 3 == 0 { 4 * n as u64 } else { 0 };
        let plan = if step % 3 == 0 { 4 * (1 + 12 * 3) } else { 0 };
        let want = perm + plan;
        if step == 0 {
            // The run's first step also makes the gradient store, once: its arena is filled on the device, and the
            // table of the gradient norm's per-tensor partition (16 bytes per block) is copied there.
            assert!(h2d > want, "step 0 copied {h2d} bytes to the device");
        } else {
            assert_eq!(h2d, want, "step {step} copied {h2d} bytes to the device");
        }
    }
}

/// A run of `steps` through the trainer (batches drawn on the backend) and the same run fed host batches through
/// `TrainState::train_step`, on `be`: every parameter, moment and EMA value equal, bit for bit.
fn drawn_equals_host<B: Backend>(be: &B, steps: u64) {
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        batch: 2,
        lr: 5e-4,
        ema_warmup: true,
        seed: 11,
        ..RunConfig::reference_recipe()
    };
    let data = images(5, 8);
    let state = TrainState::new(config.clone()).unwrap().to_backend(be).unwrap();
    let mut host = state.to_backend(be).unwrap();
    let mut trainer = Trainer::new(state, data.clone()).unwrap();
    let sched = Schedule::linear(config.timesteps, 1e-4, 2e-2).unwrap();
    let mut batcher = Batcher::new(5, config.batch, config.seed).unwrap();
    // 2 steps per epoch: the run crosses epoch boundaries.
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for step in 0..steps {
        got.extend(trainer.step(&mut ()).unwrap());
        want.push(host.train_step(&sched, &batcher.batch(&data, step)).unwrap());
    }
    // A GPU's trainer reads its steps' statistics in batches: the steps not read yet.
    got.extend(trainer.flush(&mut ()).unwrap());
    assert_eq!(got.len(), want.len(), "one row per step");
    for (got, want) in got.iter().map(|r| r.stats).zip(want) {
        assert_eq!((got.loss.to_bits(), got.grad_norm.to_bits()), (want.loss.to_bits(), want.grad_norm.to_bits()));
    }
    let (a, b) = (trainer.into_state().to_backend(&Cpu).unwrap(), host.to_backend(&Cpu).unwrap());
    let all = |s: &TrainState| -> Vec<u32> {
        let ts = s.params.tensors().iter().chain(&s.opt.exp_avg).chain(&s.opt.exp_avg_sq).chain(&s.ema.shadow);
        ts.flat_map(|t| t.data().iter().map(|v| v.to_bits())).collect()
    };
    assert_eq!(a.step, steps);
    assert!(all(&a) == all(&b), "a run on drawn batches differs from the same run on host batches");
}

#[test]
fn drawn_batches_equal_host_batches_cpu() {
    drawn_equals_host(&Cpu, 5);
}

#[test]
fn drawn_batches_equal_host_batches_emu() {
    drawn_equals_host(&Gpu::new(Emulator::new()), 3);
}

/// Under bf16 the drawn batch also writes x_t's operand and the device-made sinusoid its own, where the host batch's
/// are converted: the same values rounded the same way, so the runs are equal to the bit.
#[test]
fn drawn_batches_equal_host_batches_emu_bf16() {
    drawn_equals_host(&Gpu::new(Emulator::new()).with_precision(Precision::Bf16), 3);
}
