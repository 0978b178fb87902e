//! Training steps captured once per epoch and replayed (CUDA graphs, `ddpm::gpu::graph`), and sampler steps
//! captured once per run: the same run to the bit as its steps queued launch by launch, on the emulator (which runs
//! every graph through the same capture and replay calls as a device) and on a CUDA device; and what a capture
//! refuses.

#[macro_use]
mod common;

use ddpm::backend::{Backend, Cpu, Gpu, Memory, Precision};
use ddpm::diffusion::inversion::inversion_steps;
use ddpm::diffusion::{
    ddim_invert, initial_noise, sample_observed, Denoiser, SamplerKind, SamplerPlan, Schedule, Spacing,
};
use ddpm::gpu::emu::Emulator;
use ddpm::gpu::record::Recorder;
use ddpm::gpu::Executor;
use ddpm::nn::{GuidedDenoiser, UNetConfig, UNetDenoiser};
use ddpm::train::{RunConfig, TrainState, Trainer};
use ddpm::Tensor;

/// Images `[n, 1, s, s]` in [-1, 1], all different.
fn images(n: usize, s: usize) -> Tensor {
    Tensor::new(&[n, 1, s, s], (0..n * s * s).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()).unwrap()
}

/// Every parameter, moment and EMA value's bits, and the step counts.
fn state_bits(s: &TrainState) -> (Vec<u32>, [u64; 3]) {
    let ts = s.params.tensors().iter().chain(&s.opt.exp_avg).chain(&s.opt.exp_avg_sq).chain(&s.ema.shadow);
    (ts.flat_map(|t| t.data().iter().map(|v| v.to_bits())).collect(), [s.step, s.opt.step, s.ema.updates])
}

/// 8 steps of 3 per epoch (batches of 8, so that a conditional model drops some of its 64 labels), with graphs
/// and without, class-conditional or not, f32 and bf16: the same log rows and state to the bit. With graphs, step 0 runs launch by launch, steps 1, 3 and 6 capture their epochs' graphs (and
/// run them once), the others replay them: 7 graph launches.
fn graphed_training_equals_launch_by_launch<E: Executor>(exec: E) {
    let gpu = Gpu::new(exec);
    for (classes, precision) in [(0, Precision::Fp32), (3, Precision::Fp32), (0, Precision::Bf16)] {
        let be = gpu.clone().with_precision(precision);
        let mut config = RunConfig {
            model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes },
            batch: 8,
            lr: 5e-4,
            ema_warmup: true,
            seed: 5,
            ..RunConfig::reference_recipe()
        };
        config.epochs = 10;
        let run = |graphs: bool| {
            let state = TrainState::new(config.clone()).unwrap().to_backend(&be).unwrap();
            let mut trainer = Trainer::new(state, images(25, 8)).unwrap();
            if classes > 0 {
                trainer = trainer.with_labels(&(0..25).map(|i| (i % classes) as u8).collect::<Vec<_>>()).unwrap();
            }
            trainer.use_graphs(graphs);
            let before = be.executor().counters().snapshot();
            let mut rows = Vec::new();
            for _ in 0..8 {
                rows.extend(trainer.step(&mut ()).unwrap());
            }
            rows.extend(trainer.flush(&mut ()).unwrap());
            let graph_launches = be.executor().counters().snapshot().since(&before).graph_launches;
            let stats: Vec<_> =
                rows.iter().map(|r| (r.step, r.stats.loss.to_bits(), r.stats.grad_norm.to_bits())).collect();
            (stats, state_bits(&trainer.into_state().to_backend(&Cpu).unwrap()), graph_launches)
        };
        let (graphed, plain) = (run(true), run(false));
        let what = format!("classes {classes}, {}", precision.name());
        assert_eq!(graphed.2, 7, "{what}: graph launches");
        assert_eq!(plain.2, 0, "{what}: graph launches without graphs");
        assert_eq!(graphed.0.len(), 8, "{what}: a log row per step");
        assert_eq!(graphed.0, plain.0, "{what}: losses and gradient norms");
        assert_eq!(graphed.1 .1, plain.1 .1, "{what}: step counts");
        assert!(graphed.1 .0 == plain.1 .0, "{what}: the graphed run's state differs from the plain run's");
    }
}
gpu_test!(graphed_training_equals_launch_by_launch);

/// Every sampler with graphs and without, on a 12-step schedule (DDPM makes 12 calls, the others 4 or 5), for 3
/// images: the same x after every step and the same output, to the bit, and one graph launch per step after the
/// first (which runs launch by launch from the plan; the second is captured, then run). Unconditional in f32 and
/// bf16 (the sinusoid's operand), and guided (a conditional model: doubled batch, labels uploaded once).
fn graphed_sampling_equals_step_by_step<E: Executor>(exec: E) {
    let gpu = Gpu::new(exec);
    let (ddim, spacing) = (SamplerKind::Ddim { steps: 4, eta: 0.0, clamp: true }, Spacing::UniformT);
    let noisy = SamplerKind::Ddim { steps: 4, eta: 1.0, clamp: true };
    let every = [
        ddim,
        noisy,
        SamplerKind::Ddpm,
        SamplerKind::DpmPp2m { steps: 4, spacing, clamp: true },
        SamplerKind::DpmPp2mSde { steps: 4, spacing, clamp: false },
    ];
    for (classes, precision, kinds) in
        [(0, Precision::Fp32, &every[..]), (0, Precision::Bf16, &[noisy]), (3, Precision::Fp32, &[ddim])]
    {
        let be = gpu.clone().with_precision(precision);
        let config = RunConfig {
            model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes },
            timesteps: 12,
            seed: 5,
            ..RunConfig::reference_recipe()
        };
        let state = TrainState::new(config).unwrap().to_backend(&be).unwrap();
        let sched = state.config.schedule.build(state.config.timesteps).unwrap();
        for &kind in kinds {
            let run = |graphs: bool| {
                let mut den: Box<dyn Denoiser<_>> = match classes {
                    0 => Box::new(UNetDenoiser { model: &state.model, params: &state.params }),
                    _ => Box::new(GuidedDenoiser::new(&state.model, &state.params, &[0, 2, 1], 2.0).unwrap()),
                };
                let x_t = initial_noise(7, 3, 1, 8, 8).into_backend(&be).unwrap();
                let before = be.executor().counters().snapshot();
                let mut xs = Vec::new();
                let mut observe = |_: usize, _: usize, x: &Tensor<_>| {
                    xs.push(x.to_vec()?.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                    Ok(())
                };
                let out = sample_observed(&mut *den, &sched, kind, x_t, (7, graphs), &mut observe).unwrap();
                let graph_launches = be.executor().counters().snapshot().since(&before).graph_launches;
                (out.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), xs, graph_launches)
            };
            let (graphed, plain) = (run(true), run(false));
            let what = format!("{kind:?}, classes {classes}, {}", precision.name());
            let calls = kind.timesteps(&sched).len() as u64;
            assert_eq!((graphed.2, plain.2), (calls - 1, 0), "{what}: graph launches with and without graphs");
            assert_eq!(graphed.1.len() as u64, calls, "{what}: an x per call");
            for (k, (g, p)) in graphed.1.iter().zip(&plain.1).enumerate() {
                assert!(g == p, "{what}: x after call {} differs with graphs", k + 1);
            }
            assert!(graphed.0 == plain.0, "{what}: the output differs with graphs");
        }
    }
}
gpu_test!(graphed_sampling_equals_step_by_step);

/// `inner` without its plan (`plan_width` left at `None`): the samplers call it step by step.
struct StepByStep<'a, B: Backend>(&'a mut dyn Denoiser<B>);

impl<B: Backend> Denoiser<B> for StepByStep<'_, B> {
    fn predict_eps(&mut self, x: &Tensor<B>, t: &[usize]) -> ddpm::Result<Tensor<B>> {
        self.0.predict_eps(x, t)
    }
    fn guided(&self) -> bool {
        self.0.guided()
    }
}

/// DDIM inversion runs in the samplers' loop: captured where it can be (one graph launch per call after the
/// first), the same noise to the bit as step by step.
fn graphed_inversion_equals_step_by_step<E: Executor>(exec: E) {
    let be = Gpu::new(exec);
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        timesteps: 12,
        ..RunConfig::reference_recipe()
    };
    let state = TrainState::new(config).unwrap().to_backend(&be).unwrap();
    let sched = state.config.schedule.build(state.config.timesteps).unwrap();
    let mut den = UNetDenoiser { model: &state.model, params: &state.params };
    let invert = |den: &mut dyn Denoiser<_>| {
        let before = be.executor().counters().snapshot();
        let x0 = images(3, 8).into_backend(&be).unwrap();
        let noise = ddim_invert(den, &sched, 4, x0, &mut |_, _| {}).unwrap().to_vec().unwrap();
        let graph_launches = be.executor().counters().snapshot().since(&before).graph_launches;
        (noise.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), graph_launches)
    };
    let (graphed, plain) = (invert(&mut den), invert(&mut StepByStep(&mut den)));
    let calls = inversion_steps(&sched, 4).len() as u64;
    assert_eq!((graphed.1, plain.1), (calls - 1, 0), "graph launches");
    assert!(graphed.0 == plain.0, "the inverted noise differs with graphs");
}
gpu_test!(graphed_inversion_equals_step_by_step);

/// A denoiser that says it runs from a plan but uploads its output at every call, as a denoiser that reads the host
/// would: its first step runs, its capture is refused, and the error says how to sample without graphs, which works.
struct Uploading;

impl Denoiser<Gpu<Emulator>> for Uploading {
    fn predict_eps(&mut self, x: &Tensor<Gpu<Emulator>>, _: &[usize]) -> ddpm::Result<Tensor<Gpu<Emulator>>> {
        x.try_clone()
    }
    fn plan_width(&self) -> Option<usize> {
        Some(4)
    }
    fn predict_eps_planned(
        &mut self,
        x: &Tensor<Gpu<Emulator>>,
        _: &SamplerPlan<Gpu<Emulator>>,
    ) -> ddpm::Result<Tensor<Gpu<Emulator>>> {
        let be = x.backend();
        Tensor::from_buf(be.clone(), x.shape(), be.upload(vec![0.0; x.numel()])?)
    }
}

#[test]
fn a_sampler_step_that_copies_from_the_host_is_not_captured() {
    let be = Gpu::new(Emulator::new());
    let sched = Schedule::linear(12, 1e-4, 0.02).unwrap();
    let kind = SamplerKind::Ddim { steps: 4, eta: 0.0, clamp: true };
    // The result and the number of steps observed.
    let run = |graphs| {
        let x_t = initial_noise(0, 1, 1, 4, 4).into_backend(&be).unwrap();
        let mut steps = 0;
        let r = sample_observed(&mut Uploading, &sched, kind, x_t, (0, graphs), &mut |done, _, _| {
            steps = done;
            Ok(())
        });
        (r, steps)
    };
    let (r, steps) = run(true);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("capturing a sampler step") && err.contains("--no-graphs"), "{err}");
    assert_eq!(steps, 1, "the first step runs from the plan, launch by launch");
    let (r, steps) = run(false);
    r.unwrap();
    assert_eq!(steps, kind.timesteps(&sched).len());
}

/// A capture records launches without running them, each replay runs them all, and what is not a launch (a copy,
/// a wait) is refused inside a capture, which then ends, leaving the executor as it was.
#[test]
fn a_capture_holds_only_launches() {
    let be = Gpu::new(Emulator::new());
    let mut buf = be.upload(vec![1.0, 2.0, 3.0]).unwrap();
    let src = be.upload(vec![5.0]).unwrap();
    let graph = be.capture(&mut || be.copy_into(&src, &mut buf, 1)).unwrap();
    assert_eq!(be.download(&buf).unwrap(), [1.0, 2.0, 3.0], "the capture ran a launch");
    assert_eq!(graph.launches().len(), 1);
    be.replay(&graph).unwrap();
    assert_eq!(be.download(&buf).unwrap(), [1.0, 5.0, 3.0]);
    // The graph owns its buffers: dropping ours leaves its target alive and written by each replay.
    drop(src);
    be.replay(&graph).unwrap();
    for (what, refused) in [
        ("a copy to the device", be.capture(&mut || be.upload(vec![0.0]).map(drop)).err()),
        ("a copy from the device", be.capture(&mut || be.download(&buf).map(drop)).err()),
        ("a wait for the device", be.capture(&mut || be.synchronize()).err()),
        ("replaying a graph", be.capture(&mut || be.replay(&graph)).err()),
    ] {
        let why = refused.unwrap_or_else(|| panic!("{what} inside a capture was accepted")).to_string();
        assert!(why.contains(what) && why.contains("during a graph capture"), "{what}: {why}");
    }
    // Every refused capture ended: copies work again.
    assert_eq!(be.download(&buf).unwrap(), [1.0, 5.0, 3.0]);
}

/// On the recorder (as on a CUDA device, whose caching allocator it follows), a capture refuses an allocation the
/// cache cannot serve, and serves one from a buffer freed before or inside the capture; the graph keeps what its
/// capture freed (its launches address it) until it is dropped.
#[test]
fn a_capture_allocates_only_from_the_cache() {
    let be = Gpu::new(Recorder::new());
    let allocs = || be.executor().counters().snapshot().allocs;
    drop(be.alloc(5000).unwrap());
    let before = allocs();
    let graph = be.capture(&mut || {
        drop(be.alloc(5000)?);
        drop(be.alloc(4500)?);
        Ok(())
    });
    let graph = graph.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(allocs(), before, "the capture allocated");
    let why = be.capture(&mut || be.alloc(1 << 20).map(drop)).unwrap_err().to_string();
    assert!(why.contains("allocation") && why.contains("during a graph capture"), "{why}");
    // The graph holds the capture's buffer: a new one is allocated while it lives, the graph's reused after.
    drop(be.alloc(5000).unwrap());
    assert_eq!(allocs(), before + 1, "the graph's buffer was handed out");
    drop(graph);
    drop((be.alloc(5000).unwrap(), be.alloc(5000).unwrap()));
    assert_eq!(allocs(), before + 1, "the dropped graph's buffer did not return to the cache");
}
