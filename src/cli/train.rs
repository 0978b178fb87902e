//! `ddpm train`: the seed's training loop with a progress bar, a CSV log, a checkpoint and a DDIM-50 sample grid
//! every epoch, and at the end DDPM and DDIM sample grids and a loss curve.

use super::{on_backend, progress_bar, resolve_device, say, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ddpm::backend::{Backend, Cpu};
use ddpm::checkpoint::{self, load_train_state};
use ddpm::data::{load_dataset, Split};
use ddpm::diffusion::{initial_noise, sample, Denoiser, SamplerKind, Schedule};
use ddpm::eval::Evaluator;
use ddpm::image::save_grid_png;
use ddpm::nn::UNetDenoiser;
use ddpm::nn::DEFAULT_WEIGHTS;
use ddpm::plot::save_curve_png;
use ddpm::train::{Batcher, RunConfig, TrainState};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Starting points for the flags below; any flag given overrides its recipe value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// The blog post's recipe: base 64, t_dim 128, 30 epochs of batch 128, lr 2e-4, EMA 0.9999
    /// (10-14 hours on a 2-core CPU; the default when a GPU is used).
    Seed,
    /// The CPU default: base 16, t_dim 64, batch 32, lr 1e-3, EMA 0.999 with warm-up, 11250 steps
    /// (about 37 minutes on 2 cores with the final grids and FID checks; the default on the CPU).
    Cpu,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], ...).
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Output folder for checkpoints, samples and logs [default: runs/run-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Recipe the other flags start from [default: seed on a GPU, cpu on the CPU].
    #[arg(long, value_enum)]
    recipe: Option<Recipe>,
    /// Passes over the training set.
    #[arg(long)]
    epochs: Option<u64>,
    /// Images per step.
    #[arg(long)]
    batch: Option<usize>,
    /// AdamW learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// UNet width at full resolution (a multiple of 8).
    #[arg(long)]
    base: Option<usize>,
    /// Width of the sinusoidal time embedding (even); the time MLP is 4x wider.
    #[arg(long)]
    t_dim: Option<usize>,
    /// Diffusion steps T of the linear schedule (β from 1e-4 to 0.02).
    #[arg(long)]
    timesteps: Option<usize>,
    /// EMA decay of the sampled weights.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Seed of the initialisation, shuffling, timesteps and noise.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps in total (also when resuming).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Continue a run from one of its checkpoints; it continues exactly as if never interrupted.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Images in each sample grid.
    #[arg(long, default_value_t = 64)]
    sample_n: usize,
    /// At the end of each epoch and of training, FID of this many DDIM-50 samples from the EMA weights against as
    /// many real test images, logged in log.csv (column `fid`); 0 turns it off. Costs n/64 times a grid.
    #[arg(long, default_value_t = 500)]
    eval_n: usize,
    /// The MNIST classifier FID is measured with (see `ddpm eval`).
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    classifier: PathBuf,
}

impl TrainArgs {
    /// The run configuration: the recipe, overridden by every flag given.
    fn config(&self, recipe: Recipe) -> RunConfig {
        let mut c = match recipe {
            Recipe::Seed => RunConfig::seed_recipe(),
            Recipe::Cpu => RunConfig::cpu_default(),
        };
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.batch = self.batch.unwrap_or(c.batch);
        c.lr = self.lr.unwrap_or(c.lr);
        c.model.base = self.base.unwrap_or(c.model.base);
        c.model.t_dim = self.t_dim.unwrap_or(c.model.t_dim);
        c.timesteps = self.timesteps.unwrap_or(c.timesteps);
        c.ema_decay = self.ema_decay.unwrap_or(c.ema_decay);
        c.seed = self.seed.unwrap_or(c.seed);
        c.max_steps = self.max_steps.or(c.max_steps);
        c
    }

    /// Flags that define the run and so cannot change on `--resume`.
    fn run_defining_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--recipe", self.recipe.is_some()),
            ("--batch", self.batch.is_some()),
            ("--lr", self.lr.is_some()),
            ("--base", self.base.is_some()),
            ("--t-dim", self.t_dim.is_some()),
            ("--timesteps", self.timesteps.is_some()),
            ("--ema-decay", self.ema_decay.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        given.into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }

    /// Flags that change the recipe's run: the run-defining ones and the run's length.
    fn recipe_overrides(&self) -> Vec<&'static str> {
        let length = [("--epochs", self.epochs.is_some()), ("--max-steps", self.max_steps.is_some())];
        let mut flags = self.run_defining_flags();
        flags.extend(length.into_iter().filter(|(_, g)| *g).map(|(f, _)| f));
        flags
    }
}

/// Samples `n` images from the EMA weights of `state` with `kind`, from the noise of sampling seed 0.
fn sample_ema<B: Backend>(
    state: &TrainState<B>,
    sched: &ddpm::diffusion::Schedule,
    kind: SamplerKind,
    n: usize,
) -> Result<ddpm::Tensor> {
    let ema_params = state.ema_params()?;
    let mut den = UNetDenoiser { model: &state.model, params: &ema_params };
    let x_t = initial_noise(0, n, state.config.model.in_ch, 32, 32).into_backend(ema_params.backend())?;
    Ok(sample(&mut den as &mut dyn Denoiser<B>, sched, kind, x_t, 0, &mut |_, _| {})?)
}

/// The CSV log: appended to as training goes, with a header when new.
fn open_log(path: &Path, resuming: bool) -> Result<std::fs::File> {
    let fresh = !resuming || !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    if fresh {
        writeln!(f, "step,epoch,loss,grad_norm,lr,fid")?;
    }
    Ok(f)
}

/// Reads `(step, loss)` back from the CSV log for the loss curve.
fn read_losses(path: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            let step = it.next()?.parse().ok()?;
            let _epoch = it.next()?;
            Some((step, it.next()?.parse().ok()?))
        })
        .collect()
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = resolve_device(a.device)?;
    let recipe = a.recipe.unwrap_or(if device.name() == "cpu" { Recipe::Cpu } else { Recipe::Seed });
    on_backend!(device, |b| train_on(&a, recipe, b))
}

/// The training run of `a` with `recipe`, on `backend` (checkpoints go through a host copy).
fn train_on<B: Backend>(a: &TrainArgs, recipe: Recipe, backend: &B) -> Result<()> {
    let state = match &a.resume {
        Some(path) => {
            let flags = a.run_defining_flags();
            if !flags.is_empty() {
                bail!(
                    "{} cannot change when resuming: the run's settings come from {}",
                    flags.join(", "),
                    path.display()
                );
            }
            let mut s = load_train_state(path)?;
            s.config.max_steps = a.max_steps.or(s.config.max_steps);
            s.config.epochs = a.epochs.unwrap_or(s.config.epochs);
            s
        }
        None => TrainState::new(a.config(recipe))?,
    };
    let mut state = state.to_backend(backend)?;
    let c = state.config.clone();
    if a.resume.is_none() && a.recipe.is_none() && recipe == Recipe::Cpu {
        let changed = a.recipe_overrides();
        if changed.is_empty() {
            println!(
                "No GPU in use: training with the CPU recipe (about 37 minutes on 2 cores, final sample grids and FID checks included). \
                 The blog post's full recipe is `--recipe seed` (10-14 hours on a 2-core CPU)."
            );
        } else {
            println!("No GPU in use: starting from the CPU recipe, with {} as given.", changed.join(", "));
        }
    }
    if a.sample_n == 0 {
        bail!("--sample-n must be at least 1");
    }
    let data = load_dataset(&a.data, Split::Train)?;
    let n_images = data.labels.len();
    let mut batcher = Batcher::new(n_images, c.batch, c.seed)?;
    let sched = Schedule::linear(c.timesteps, 1e-4, 2e-2)?;
    let total = c.total_steps(n_images);
    let out = a.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!("runs/run-{secs}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let ckpt = out.join("checkpoint.safetensors");
    if a.resume.is_none() && ckpt.exists() {
        bail!(
            "{} already holds a run; pass --resume {} to continue it, or choose another --out",
            out.display(),
            ckpt.display()
        );
    }
    let log_path = out.join("log.csv");
    let mut log = open_log(&log_path, a.resume.is_some())?;
    println!(
        "training UNet(base {}, t_dim {}) with {} parameters on {}: {} images, batch {}, {} steps/epoch, steps {}..{total}; output in {}",
        c.model.base, c.model.t_dim, state.params.numel(), backend.describe(), n_images, c.batch, batcher.steps_per_epoch(), state.step, out.display()
    );
    let bar = progress_bar(total, "train");
    bar.set_position(state.step.min(total));
    let grid = |state: &TrainState<B>, kind, name: &str| -> Result<()> {
        let images = sample_ema(state, &sched, kind, a.sample_n)?;
        Ok(save_grid_png(&out.join(name), &images, 8)?)
    };
    let ddim50 = SamplerKind::Ddim { steps: 50.min(c.timesteps), eta: 0.0 };
    let evaluator = match a.eval_n {
        0 => None,
        n => Some(
            Evaluator::load(backend, &a.classifier, &a.data, n)
                .context("FID during training (--eval-n 0 turns it off)")?,
        ),
    };
    let started = std::time::Instant::now();
    let (mut epoch_loss, mut epoch_steps) = (0.0f64, 0u64);
    let mut final_ddim_done = false;
    while state.step < total {
        let x0 = batcher.batch(&data.images, state.step);
        let epoch = state.epoch(n_images);
        let stats = state.train_step(&sched, &x0)?;
        let epoch_done = state.step % batcher.steps_per_epoch() == 0;
        epoch_loss += stats.loss as f64;
        epoch_steps += 1;
        if epoch_done || state.step == total {
            let (secs, mean) = (started.elapsed().as_secs(), epoch_loss / epoch_steps as f64);
            say(
                &bar,
                format!(
                    "epoch {epoch}: step {}/{total}, mean loss {mean:.4} over {epoch_steps} steps, {}m{:02}s",
                    state.step,
                    secs / 60,
                    secs % 60
                ),
            );
            (epoch_loss, epoch_steps) = (0.0, 0);
        }
        let mut fid = String::new();
        let last = state.step == total;
        if epoch_done || last {
            checkpoint::save(&state.to_backend(&Cpu)?, &ckpt)?;
            // One DDIM-50 batch serves the epoch's grid and the final grid (its first images) and the FID (all of
            // them): image k of the initial noise does not depend on how many are drawn.
            let n = if evaluator.is_some() { a.sample_n.max(a.eval_n) } else { a.sample_n };
            let images = bar.suspend(|| sample_ema(&state, &sched, ddim50, n))?;
            if epoch_done {
                save_grid_png(&out.join(format!("samples_epoch{epoch:03}.png")), &images.head(a.sample_n)?, 8)?;
            }
            if last {
                save_grid_png(&out.join("samples_ddim.png"), &images.head(a.sample_n)?, 8)?;
                final_ddim_done = true;
            }
            if let Some(ev) = &evaluator {
                let q = ev.score(&images.head(ev.n())?)?;
                say(
                    &bar,
                    format!(
                        "step {}: FID {:.2} at n = {} (real-vs-real floor {:.2})",
                        state.step, q.fid, q.n, q.fid_floor
                    ),
                );
                fid = format!("{:.4}", q.fid);
            }
        }
        writeln!(log, "{},{},{},{},{},{fid}", state.step, epoch, stats.loss, stats.grad_norm, c.lr)?;
        bar.set_position(state.step);
        bar.set_message(format!("epoch {epoch} loss {:.4}", stats.loss));
    }
    bar.finish();
    log.flush()?;
    save_curve_png(&out.join("loss_curve.png"), &read_losses(&log_path), "training loss", "step", "loss")?;
    if !final_ddim_done {
        // Resumed from the final checkpoint: the loop above made no steps, so no last DDIM-50 batch either.
        grid(&state, ddim50, "samples_ddim.png")?;
    }
    println!("sampling the final DDPM-{} grid from the EMA weights", c.timesteps);
    grid(&state, SamplerKind::Ddpm, "samples_ddpm.png")?;
    println!(
        "done: {} steps; checkpoint, samples_ddim.png, samples_ddpm.png, loss_curve.png and log.csv in {}",
        state.step,
        out.display()
    );
    Ok(())
}
