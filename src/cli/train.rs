//! `ddpm train`: the flags, the run they describe, and its progress on the terminal. The loop itself (checkpoints,
//! sample grids, FID checks, the CSV log and the loss curve) is [`ddpm::train::Trainer`].

use super::{on_backend, progress_bar, resolve_device, say, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ddpm::backend::Backend;
use ddpm::checkpoint::load_train_state;
use ddpm::data::{load_dataset, Split};
use ddpm::eval::{Evaluator, Quality};
use ddpm::nn::DEFAULT_WEIGHTS;
use ddpm::train::{EpochSummary, LogRow, Observer, RunConfig, RunDir, TrainState, Trainer};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::time::Instant;

/// Starting points for the flags below; any flag given overrides its recipe value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// The reference's recipe (the blog post's): base 64, t_dim 128, 30 epochs of batch 128, lr 2e-4, EMA 0.9999
    /// (10-14 hours on a 2-core CPU; the default when a GPU is used).
    // Also accepted as `seed`, its earlier name, so that old command lines keep working; --help does not show it.
    #[value(alias = "seed")]
    Reference,
    /// The CPU default: base 16, t_dim 64, batch 32, lr 1e-3, EMA 0.999 with warm-up, 11250 steps
    /// (about 35 minutes on 2 cores with the final grids and FID checks; the default on the CPU).
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
    /// Recipe the other flags start from [default: reference on a GPU, cpu on the CPU].
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
            Recipe::Reference => RunConfig::reference_recipe(),
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

pub fn run(a: TrainArgs) -> Result<()> {
    let device = resolve_device(a.device)?;
    let recipe = a.recipe.unwrap_or(if device.name() == "cpu" { Recipe::Cpu } else { Recipe::Reference });
    on_backend!(device, |b| train_on(&a, recipe, b))
}

/// The training run of `a` with `recipe`, on `backend`.
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
    let state = state.to_backend(backend)?;
    if a.resume.is_none() && a.recipe.is_none() && recipe == Recipe::Cpu {
        let changed = a.recipe_overrides();
        if changed.is_empty() {
            println!(
                "No GPU in use: training with the CPU recipe (about 35 minutes on 2 cores, final sample grids and FID checks included). \
                 The blog post's full recipe is `--recipe reference` (10-14 hours on a 2-core CPU)."
            );
        } else {
            println!("No GPU in use: starting from the CPU recipe, with {} as given.", changed.join(", "));
        }
    }
    if a.sample_n == 0 {
        bail!("--sample-n must be at least 1");
    }
    let data = load_dataset(&a.data, Split::Train)?;
    let mut trainer = Trainer::new(state, data.images)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!("runs/run-{secs}"))
    });
    let dir = RunDir::create(&out)?;
    if a.resume.is_none() && dir.holds_run() {
        bail!(
            "{} already holds a run; pass --resume {} to continue it, or choose another --out",
            out.display(),
            dir.checkpoint().display()
        );
    }
    trainer.write_into(dir, a.sample_n)?;
    let (c, total) = (&trainer.state().config, trainer.total_steps());
    println!(
        "training UNet(base {}, t_dim {}) with {} parameters on {}: {} images, batch {}, {} steps/epoch, steps {}..{total}; output in {}",
        c.model.base, c.model.t_dim, trainer.state().params.numel(), backend.describe(), trainer.n_images(), c.batch, trainer.steps_per_epoch(), trainer.state().step, out.display()
    );
    let bar = progress_bar(total, "train");
    bar.set_position(trainer.state().step.min(total));
    if a.eval_n > 0 {
        let evaluator = Evaluator::load(backend, &a.classifier, &a.data, a.eval_n)
            .context("FID during training (--eval-n 0 turns it off)")?;
        trainer.evaluate_with(evaluator);
    }
    trainer.run(&mut Progress { bar, started: Instant::now() })?;
    println!(
        "done: {} steps; checkpoint, samples_ddim.png, samples_ddpm.png, loss_curve.png and log.csv in {}",
        trainer.state().step,
        out.display()
    );
    Ok(())
}

/// The run's progress on the terminal: a progress bar, and a line at the end of every epoch and after every FID
/// check (on stderr when the bar is hidden).
struct Progress {
    bar: ProgressBar,
    /// When training started, for the epoch lines.
    started: Instant,
}

impl Observer for Progress {
    fn step_done(&mut self, row: &LogRow) {
        self.bar.set_position(row.step);
        self.bar.set_message(format!("epoch {} loss {:.4}", row.epoch, row.stats.loss));
    }

    fn epoch_done(&mut self, e: &EpochSummary) {
        let secs = self.started.elapsed().as_secs();
        say(
            &self.bar,
            format!(
                "epoch {}: step {}/{}, mean loss {:.4} over {} steps, {}m{:02}s",
                e.epoch,
                e.step,
                e.total,
                e.mean_loss,
                e.steps,
                secs / 60,
                secs % 60
            ),
        );
    }

    fn evaluated(&mut self, step: u64, q: &Quality) {
        say(&self.bar, format!("step {step}: FID {:.2} at n = {} (real-vs-real floor {:.2})", q.fid, q.n, q.fid_floor));
    }

    fn sampling(&mut self, work: &mut dyn FnMut()) {
        self.bar.suspend(work)
    }

    fn training_done(&mut self) {
        self.bar.finish();
    }

    fn final_ddpm_grid(&mut self, timesteps: usize) {
        println!("sampling the final DDPM-{timesteps} grid from the EMA weights");
    }
}
