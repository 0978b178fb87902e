//! `ddpm bench --model NAME`: runs a training step or a sampler step at full size on the launch recorder (no kernel
//! runs, no GPU needed) and prints what one step asks of the device (launches, host syncs, bytes over the bus,
//! allocations, FLOPs, DRAM bytes) with the time the device model predicts for it: one JSON object per step kind
//! with `--json`, else a table per kernel. The step measured follows warm-up steps that filled the allocator's cache
//! and captured the graph it replays (unless `--no-graphs`).

use super::bench::{BenchArgs, Workload};
use anyhow::{bail, Result};
use ddpm::backend::{Gpu, Precision};
use ddpm::diffusion::{initial_noise, sample_observed, Denoiser, SamplerKind};
use ddpm::gpu::count::Launch;
use ddpm::gpu::model::DeviceModel;
use ddpm::gpu::record::Recorder;
use ddpm::gpu::{Counts, Executor};
use ddpm::nn::{UNetConfig, UNetDenoiser};
use ddpm::train::{RunConfig, TrainState, Trainer};
use ddpm::Tensor;
use std::collections::BTreeMap;

/// One step kind's counts and launches.
struct Step {
    name: &'static str,
    counts: Counts,
    launches: Vec<Launch>,
}

impl Step {
    /// Whether the step was a replay of a captured graph: its time is predicted with the graph's gap between
    /// launches.
    fn replayed(&self) -> bool {
        self.counts.graph_launches > 0
    }
}

pub fn run(a: &BenchArgs, model: &str, precision: Precision) -> Result<()> {
    let Some(model) = DeviceModel::by_name(model) else {
        let known: Vec<_> = DeviceModel::ALL.iter().map(|m| m.name).collect();
        bail!("--model {model}: unknown device model (known: {})", known.join(", "));
    };
    let gpu = Gpu::new(Recorder::new()).with_precision(precision);
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: a.base, t_dim: a.t_dim, classes: 0 },
        batch: a.batch,
        epochs: 1 << 30,
        ..RunConfig::reference_recipe()
    };
    let steps = match a.what {
        Workload::Train => vec![train_step(&gpu, config, !a.no_graphs)?],
        Workload::Sample => sampler_steps(&gpu, config, a.batch, !a.no_graphs)?,
        Workload::Convs => bail!("--model predicts whole steps (--what train or sample), not single convolutions"),
    };
    for s in &steps {
        if a.json {
            println!("{}", json(s, &model, precision, a));
        } else {
            print!("{}", table(s, &model, precision, a));
            if a.launches {
                print!("{}", sequence(s, &model));
            }
        }
    }
    Ok(())
}

/// The third training step of a run on a synthetic data set of four batches: like most steps of a run, one that
/// neither starts an epoch (which uploads the epoch's permutation, 4 bytes per image, and its plan) nor ends one
/// (which reads the steps' losses back, as every `READ_EVERY`-th step does); with graphs, a replay of the second
/// step's capture.
fn train_step(gpu: &Gpu<Recorder>, config: RunConfig, graphs: bool) -> Result<Step> {
    let images = Tensor::zeros(&[4 * config.batch, 1, 32, 32]);
    let mut trainer = Trainer::new(TrainState::new(config)?.to_backend(gpu)?, images)?;
    trainer.use_graphs(graphs);
    for _ in 0..2 {
        trainer.step(&mut ())?;
    }
    let (counts, launches) = measure(gpu, || trainer.step(&mut ()).map(drop))?;
    Ok(Step { name: "train", counts, launches })
}

/// The third network call and update of a DDIM sampler (eta 0, no noise) and of a DDPM sampler (with noise) on
/// `n` images: with graphs, a replay of the second step's capture.
fn sampler_steps(gpu: &Gpu<Recorder>, config: RunConfig, n: usize, graphs: bool) -> Result<Vec<Step>> {
    let state = TrainState::new(config)?.to_backend(gpu)?;
    let sched = state.config.schedule.build(state.config.timesteps)?;
    let mut out = Vec::new();
    for (name, kind) in [("ddim", SamplerKind::Ddim { steps: 3, eta: 0.0, clamp: true }), ("ddpm", SamplerKind::Ddpm)] {
        let mut den = UNetDenoiser { model: &state.model, params: &state.params };
        let x_t = initial_noise(0, n, 1, 32, 32).into_backend(gpu)?;
        let counters = gpu.executor().counters();
        let mut before = None;
        let mut after = None;
        // Steps 1 and 2 warm the allocator (and capture); step 3 is the one measured.
        let mut observe = |done: usize, _: usize, _: &Tensor<_>| {
            match done {
                2 => {
                    counters.record();
                    before = Some(counters.snapshot());
                }
                3 => after = Some((counters.snapshot(), counters.take_log())),
                _ => {}
            }
            Ok(())
        };
        sample_observed(&mut den as &mut dyn Denoiser<_>, &sched, kind, x_t, (0, graphs), &mut observe)?;
        let (Some(before), Some((end, launches))) = (before, after) else {
            bail!("the sampler took fewer than 3 steps")
        };
        out.push(Step { name, counts: end.since(&before), launches });
    }
    Ok(out)
}

/// The counts and launches of `f`.
fn measure(gpu: &Gpu<Recorder>, f: impl FnOnce() -> ddpm::Result<()>) -> Result<(Counts, Vec<Launch>)> {
    let counters = gpu.executor().counters();
    let before = counters.snapshot();
    counters.record();
    f()?;
    let launches = counters.take_log();
    Ok((counters.snapshot().since(&before), launches))
}

fn json(s: &Step, m: &DeviceModel, precision: Precision, a: &BenchArgs) -> String {
    let c = &s.counts;
    format!(
        "{{\"step\":\"{}\",\"model\":\"{}\",\"precision\":\"{}\",\"batch\":{},\"base\":{},\"launches\":{},\
         \"host_syncs\":{},\"h2d_bytes\":{},\"d2h_bytes\":{},\"allocs\":{},\"tc_flops\":{},\"fp32_flops\":{},\
         \"dram_bytes\":{},\"graph_launches\":{},\"predicted_ms\":{:.4},\"predicted_ms_graphs\":{:.4}}}",
        s.name,
        m.name,
        precision.name(),
        a.batch,
        a.base,
        c.launches,
        c.host_syncs,
        c.h2d_bytes,
        c.d2h_bytes,
        c.allocs,
        c.cost.tc_flops,
        c.cost.fp32_flops,
        c.cost.dram_bytes,
        c.graph_launches,
        1e3 * m.seconds(&s.launches, s.replayed()),
        1e3 * m.seconds(&s.launches, true),
    )
}

/// Every launch of `s` in order: its kernel, grid, DRAM bytes and predicted time (without the gap between launches).
fn sequence(s: &Step, m: &DeviceModel) -> String {
    let mut out = format!("\n{:>4} {:<24} {:>16} {:>9} {:>9}\n", "#", "kernel", "grid", "MB", "pred. us");
    for (i, l) in s.launches.iter().enumerate() {
        let [x, y, z] = l.cfg.grid;
        out += &format!(
            "{:>4} {:<24} {:>16} {:>9.1} {:>9.1}\n",
            i + 1,
            l.kernel.name(),
            format!("{x}x{y}x{z}"),
            l.cost.dram_bytes as f64 / 1e6,
            m.kernel_seconds(l) * 1e6
        );
    }
    out
}

/// Per kernel: launches, work and predicted time, the costliest first, then the step's totals.
fn table(s: &Step, m: &DeviceModel, precision: Precision, a: &BenchArgs) -> String {
    #[derive(Default)]
    struct Row {
        launches: u64,
        tc: u64,
        fp32: u64,
        bytes: u64,
        seconds: f64,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for l in &s.launches {
        let r = rows.entry(l.kernel.name()).or_default();
        r.launches += 1;
        r.tc += l.cost.tc_flops;
        r.fp32 += l.cost.fp32_flops;
        r.bytes += l.cost.dram_bytes;
        r.seconds += m.kernel_seconds(l) + m.gap(s.replayed());
    }
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|x, y| y.1.seconds.total_cmp(&x.1.seconds));
    let total = m.seconds(&s.launches, s.replayed());
    let mut out = format!(
        "{} step, batch {}, base {}, {} on the {} model (no kernel ran; one launch's time is the longest of its \
         FLOPs and bytes at the model's rates, plus {:.0} us between launches)\n\n",
        s.name,
        a.batch,
        a.base,
        precision.name(),
        m.name,
        m.gap(s.replayed()) * 1e6
    );
    out += &format!(
        "{:<24} {:>8} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
        "kernel", "launches", "TC GFLOP", "f32 GFLOP", "MB", "pred. us", "share"
    );
    for (name, r) in &rows {
        out += &format!(
            "{:<24} {:>8} {:>10.2} {:>10.3} {:>10.1} {:>10.1} {:>5.1}%\n",
            name,
            r.launches,
            r.tc as f64 / 1e9,
            r.fp32 as f64 / 1e9,
            r.bytes as f64 / 1e6,
            r.seconds * 1e6,
            100.0 * r.seconds / total.max(1e-30)
        );
    }
    let c = &s.counts;
    out += &format!(
        "\ntotal: {} launches{}, {:.3} ms predicted ({:.3} ms {}); {} host syncs, {} bytes uploaded, \
         {} downloaded, {} device allocations\n\n",
        c.launches,
        match c.graph_launches {
            0 => String::new(),
            g => format!(" in {g} graph launch{}", if g == 1 { "" } else { "es" }),
        },
        total * 1e3,
        m.seconds(&s.launches, !s.replayed()) * 1e3,
        if s.replayed() { "launched one by one" } else { "with CUDA graphs" },
        c.host_syncs,
        c.h2d_bytes,
        c.d2h_bytes,
        c.allocs
    );
    out
}
