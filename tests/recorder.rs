//! The launch recorder: it counts what a real run would ask of a device (launches with their declared work,
//! copies, host syncs, allocations from the caching allocator) without running a kernel.

use ddpm::backend::{Gpu, Memory, Precision};
use ddpm::diffusion::Schedule;
use ddpm::gpu::record::Recorder;
use ddpm::gpu::{Executor, Kernel};
use ddpm::nn::UNetConfig;
use ddpm::train::{Batch, RunConfig, TrainState};
use ddpm::Tensor;

#[test]
fn the_recorder_allocates_as_the_caching_allocator_does() {
    let gpu = Gpu::new(Recorder::new());
    let counters = gpu.executor().counters();
    // Making the backend uploads one int (the block counter of last-block reductions): counted from here on.
    let start = counters.snapshot();
    let a = gpu.alloc(1000).unwrap();
    let b = gpu.alloc(1024).unwrap(); // the same 4 KiB size class, but `a` is still live
    assert_eq!(counters.snapshot().since(&start).allocs, 2);
    drop((a, b));
    let _c = gpu.alloc(10).unwrap(); // served from the cache
    let _d = gpu.upload(vec![1.0; 2000]).unwrap(); // a new class: allocated, 8000 bytes uploaded
    let got = gpu.download(&_d).unwrap();
    let s = counters.snapshot().since(&start);
    assert_eq!((s.allocs, s.h2d_bytes, s.d2h_bytes, s.host_syncs, s.launches), (3, 8000, 8000, 1, 0));
    assert_eq!(got, vec![0.0; 2000], "a recorder's download returns zeros");
}

/// The second training step of a small UNet in bf16 on the recorder, queued (its loss and gradient norm not read).
#[test]
fn a_queued_training_step_runs_the_optimiser_in_one_launch_and_never_waits_for_the_device() {
    let gpu = Gpu::new(Recorder::new()).with_precision(Precision::Bf16);
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 16, classes: 0 },
        batch: 4,
        ..RunConfig::reference_recipe()
    };
    let mut state = TrainState::new(config).unwrap().to_backend(&gpu).unwrap();
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let x0 = Tensor::zeros(&[4, 1, 32, 32]);
    state.queue_step(&sched, Batch::Host(&x0)).unwrap();
    let counters = gpu.executor().counters();
    let before = counters.snapshot();
    counters.record();
    state.queue_step(&sched, Batch::Host(&x0)).unwrap();
    let launches = counters.take_log();
    let s = counters.snapshot().since(&before);
    assert_eq!((s.host_syncs, s.allocs, s.d2h_bytes), (0, 0, 0), "{s:?}");
    assert_eq!(s.launches as usize, launches.len());
    let count = |k: Kernel| launches.iter().filter(|l| l.kernel == k).count();
    assert_eq!(count(Kernel::AdamwEma), 1, "one launch updates every parameter");
    assert_eq!(count(Kernel::SumsqSegments), 1, "one launch for the gradient norm's first pass");
    for k in [Kernel::Adamw, Kernel::EmaUpdate, Kernel::ScaleBy] {
        assert_eq!(count(k), 0, "{} is the per-tensor path", k.name());
    }
    // Every parameter gradient, biases' and GroupNorm's included, is written into its place in the gradient arena by
    // the kernel that makes it: none is copied there afterwards; and the loss is written into its slot of the
    // statistics ring.
    assert_eq!(count(Kernel::CopyChannels), 0, "a gradient or the loss copied");
    // Every tensor and gradient a conv or linear layer reads comes with its operand, written by the op that made it
    // (in the forward GroupNorm, the SiLUs, the concats and the convs; in the backward the loss's, a GroupNorm's, a
    // SiLU's or a concat's backward, an input-gradient GEMM, and the residual's or the time projection's from their
    // conv's), except x, this host batch (a drawn batch writes it: tests/device_data.rs). The time sinusoid, made on
    // the host from the host timesteps, is uploaded with its operand made there.
    assert_eq!(count(Kernel::NchwToNhwcBf16), 1, "conversions in a training step");
    // The declared work adds up, and the convolutions run on the tensor cores.
    let tc: u64 = launches.iter().map(|l| l.cost.tc_flops).sum();
    assert_eq!(tc, s.cost.tc_flops);
    assert!(tc > 0 && launches.iter().filter(|l| l.cost.tc_flops > 0).all(|l| l.kernel.name().ends_with("_mma")));
    // Both steps' statistics come back in one read, in order.
    let stats = state.take_stats().unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(counters.snapshot().since(&before).host_syncs, 1);
}

/// A sampler's network call in bf16 on the recorder: x enters the tape as a view and ε leaves it moved (no copy
/// launch), and only x is converted for the GEMMs (the time sinusoid comes with its operand, made on the host with
/// it); every other input of a conv or linear layer comes with its operand written by its producer.
#[test]
fn a_network_call_copies_nothing_and_converts_only_what_no_conv_produced() {
    use ddpm::diffusion::Denoiser;
    use ddpm::nn::UNetDenoiser;
    let gpu = Gpu::new(Recorder::new()).with_precision(Precision::Bf16);
    let config =
        RunConfig { model: UNetConfig { in_ch: 1, base: 8, t_dim: 16, classes: 0 }, ..RunConfig::reference_recipe() };
    let state = TrainState::new(config).unwrap().to_backend(&gpu).unwrap();
    let mut den = UNetDenoiser { model: &state.model, params: &state.params };
    let x = Tensor::zeros(&[4, 1, 32, 32]).to_backend(&gpu).unwrap();
    den.predict_eps(&x, &[10; 4]).unwrap();
    let counters = gpu.executor().counters();
    counters.record();
    let eps = den.predict_eps(&x, &[10; 4]).unwrap();
    let launches = counters.take_log();
    assert_eq!(eps.shape(), x.shape());
    let count = |k: Kernel| launches.iter().filter(|l| l.kernel == k).count();
    assert_eq!(count(Kernel::CopyChannels), 0, "x or ε copied");
    assert_eq!(count(Kernel::NchwToNhwcBf16), 1, "conversions in one network call");
}
