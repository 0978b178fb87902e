//! `ddpm bench`: times a training step or a sampler step on synthetic data and prints one JSON line per workload
//! (for comparison scripts), or each of the UNet's conv shapes alone (`--what convs`, in `bench_convs.rs`). Peak
//! memory is the process's (measure it with `/usr/bin/time -v`).

use super::{checks, on_backend, resolve_device, Device};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use ddpm::backend::Backend;
use ddpm::diffusion::{sample_observed, Denoiser, SamplerKind};
use ddpm::nn::{UNetConfig, UNetDenoiser};
use ddpm::train::{RunConfig, TrainState, Trainer};
use ddpm::{rng, Tensor};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// One training step: forward, backward, clip, AdamW, EMA.
    Train,
    /// One DDIM sampler step (η = 0): the UNet forward and the update, timed until the device has finished it.
    /// The steps timed are those of one DDIM run of --iters + 2 steps after its first two (which warm the
    /// allocator's cache and, on a GPU, capture the step that the others replay, unless --no-graphs).
    Sample,
    /// Each distinct conv shape of the UNet alone: forward, input gradient and weight gradient timed separately
    /// (one JSON line per shape and pass with --json, else a table).
    Convs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time.
    #[arg(long, value_enum, default_value = "train")]
    pub(super) what: Workload,
    /// Batch size (training) or number of images (sampling; also spelled --n).
    #[arg(long, alias = "n", default_value_t = 128)]
    pub(super) batch: usize,
    /// UNet width.
    #[arg(long, default_value_t = 64)]
    pub(super) base: usize,
    /// Time-embedding width.
    #[arg(long, default_value_t = 128)]
    pub(super) t_dim: usize,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub(super) iters: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub(super) device: super::DeviceArg,
    /// Convolutions and linear layers in bf16 (tensor cores; default on a GPU) or fp32 (default, and the only
    /// path, on the CPU).
    #[arg(long, value_enum)]
    pub(super) precision: Option<super::PrecisionArg>,
    /// With --what convs or --model: one JSON line per shape and pass, or per step kind, instead of a table (the
    /// timed workloads always print JSON).
    #[arg(long)]
    pub(super) json: bool,
    /// Predict instead of timing: run the step on the launch recorder (every launch checked and counted, no
    /// kernel run, no GPU needed) and turn its FLOPs and bytes into a time on this device model (`h200`).
    /// Prints launches, host syncs, bytes copied, device allocations and the predicted time of one step.
    #[arg(long, value_name = "DEVICE")]
    pub(super) model: Option<String>,
    /// With --model: after the table, every launch of the step in order, with its grid, DRAM bytes and predicted
    /// time (to see which layer a kernel's launches belong to).
    #[arg(long, requires = "model", conflicts_with = "json")]
    pub(super) launches: bool,
    /// Train or sample launch by launch instead of capturing a step (once per epoch, or once per sampler run) as a
    /// CUDA graph and replaying it (on a GPU, the emulator or --model; the CPU has no graphs). The same results
    /// to the bit.
    #[arg(long)]
    pub(super) no_graphs: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.iters == 0 || a.batch == 0 {
        bail!("--iters and --batch must be at least 1");
    }
    let timesteps = RunConfig::reference_recipe().timesteps;
    if a.what == Workload::Sample && a.iters + 2 > timesteps {
        bail!("--iters {} with --what sample: the DDIM run of --iters + 2 steps must fit T = {timesteps}", a.iters);
    }
    let config = UNetConfig { in_ch: 1, base: a.base, t_dim: a.t_dim, classes: 0 };
    config.validate()?;
    if let Some(model) = &a.model {
        if a.device != super::DeviceArg::Auto {
            bail!("--model predicts from the launch recorder, which runs no kernel: --device does not apply to it");
        }
        let precision = match a.precision {
            Some(super::PrecisionArg::Fp32) => ddpm::backend::Precision::Fp32,
            _ => ddpm::backend::Precision::Bf16,
        };
        return super::bench_model::run(&a, model, precision);
    }
    let device = resolve_device(a.device, a.precision)?;
    if a.what == Workload::Convs {
        return super::bench_convs::run(&device, a.batch, a.base, a.iters, a.json);
    }
    if matches!(device, Device::Cpu | Device::Emu(_)) {
        // A training step also keeps the gradients and the backward pass's buffers (about three forward passes),
        // and the weights five times over (parameters, gradients, two AdamW moments, the EMA).
        let passes = if a.what == Workload::Train { 3 } else { 1 };
        let bytes = passes * checks::sampling_bytes(a.batch, &config) + 5 * checks::model_bytes(&config);
        checks::fits_in_memory(&format!("--batch {} --base {} --t-dim {}", a.batch, a.base, a.t_dim), bytes)?;
    }
    let (name, precision) = (device.name(), device.precision().name());
    // Whether the steps timed were graph replays: not disabled, on a device that captures (not the CPU).
    let graphs = !a.no_graphs && !matches!(device, Device::Cpu);
    let mut times = on_backend!(device, |b| time_on(&a, b))?;
    if ddpm::autograd::profile::enabled() {
        eprint!("{}", ddpm::autograd::profile::report());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"workload\":\"{:?}\",\"device\":\"{name}\",\"precision\":\"{precision}\",\"batch\":{},\"base\":{},\"threads\":{},\"iters\":{},\"graphs\":{graphs},\"median_s\":{median:.4},\"min_s\":{:.4},\"max_s\":{:.4}}}",
        a.what, a.batch, a.base, rayon::current_num_threads(), a.iters, times[0], times[times.len() - 1]
    );
    Ok(())
}

/// The seconds of each of `a.iters` timed repetitions (after one warm-up) of the workload on `backend`.
fn time_on<B: Backend>(a: &BenchArgs, backend: &B) -> Result<Vec<f64>> {
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: a.base, t_dim: a.t_dim, classes: 0 },
        batch: a.batch,
        epochs: 1 << 30,
        ..RunConfig::reference_recipe()
    };
    let mut x = Tensor::zeros(&[a.batch, 1, 32, 32]);
    rng::fill_normal(1, 0, x.data_mut());
    x.data_mut().iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    let state = TrainState::new(config)?.to_backend(backend)?;
    if a.what == Workload::Sample {
        return time_sampler(a, &state, x.to_backend(backend)?);
    }
    // The synthetic batch repeated: a data set of the steps timed (up to 64 batches, 33 MB at batch 128), so that they
    // are one epoch's (on a GPU the trainer captures an epoch's second step and replays it for the others).
    let repeats = (a.iters + 1).min(64);
    let data = Tensor::new(&[repeats * a.batch, 1, 32, 32], x.data().repeat(repeats))?;
    let mut trainer = Trainer::new(state, data)?;
    trainer.use_graphs(!a.no_graphs);
    let mut times = Vec::with_capacity(a.iters);
    for i in 0..=a.iters {
        let start = Instant::now();
        match a.what {
            Workload::Train => {
                trainer.step(&mut ())?;
                // A GPU queues the step and returns: the time is the device's only once it has finished.
                backend.synchronize()?;
            }
            Workload::Convs | Workload::Sample => bail!("--what {:?} is not timed as a training step", a.what),
        }
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The seconds of `a.iters` DDIM steps on `x` (see [`Workload::Sample`]), each waited for.
fn time_sampler<B: Backend>(a: &BenchArgs, state: &TrainState<B>, x: Tensor<B>) -> Result<Vec<f64>> {
    let sched = state.config.schedule.build(state.config.timesteps)?;
    let kind = SamplerKind::Ddim { steps: a.iters + 2, eta: 0.0, clamp: true };
    let mut den = UNetDenoiser { model: &state.model, params: &state.params };
    let backend = x.backend().clone();
    let (mut times, mut last) = (Vec::with_capacity(a.iters), Instant::now());
    let mut observe = |done: usize, _: usize, _: &Tensor<B>| {
        backend.synchronize()?;
        if done > 2 {
            times.push(last.elapsed().as_secs_f64());
        }
        last = Instant::now();
        Ok(())
    };
    sample_observed(&mut den as &mut dyn Denoiser<B>, &sched, kind, x, (0, !a.no_graphs), &mut observe)?;
    // The grid can add one more call, at T - 1.
    times.truncate(a.iters);
    Ok(times)
}
