//! `ddpm train`: the flags, the run they describe, the folder it writes, Ctrl-C, and its progress on the terminal.
//! The loop itself (checkpoints, sample grids, FID checks, the CSV log and the loss curve) is
//! [`ddpm::train::Trainer`].

use super::{on_backend, progress_bar, resolve_device, say, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use ddpm::backend::Backend;
use ddpm::checkpoint::load_train_state;
use ddpm::data::{load_dataset, Split};
use ddpm::diffusion::ScheduleKind;
use ddpm::eval::{Evaluator, Quality};
use ddpm::nn::{CLASSES as MNIST_CLASSES, DEFAULT_WEIGHTS};
use ddpm::train::{CheckpointPolicy, EpochSummary, LogRow, Observer, RunConfig, RunDir, RunEnd, TrainState, Trainer};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], ...).
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Output folder for checkpoints, samples, log.csv and config.json; a new run needs a new or empty one
    /// [default: runs/YYYY-MM-DD-HHMMSS, the start time in UTC]. With --resume: the checkpoint's own folder unless
    /// --out names a new or empty one, which then gets the checkpoint and the log up to its step.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Recipe the other flags start from [default: reference on a GPU, cpu on the CPU].
    #[arg(long, value_enum)]
    recipe: Option<Recipe>,
    /// Passes over the training set. Given explicitly, the run takes all of them: it replaces the recipe's step
    /// count (the CPU recipe stops at 11250 steps otherwise); --max-steps still caps it.
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
    /// Diffusion steps T.
    #[arg(long)]
    timesteps: Option<usize>,
    /// Noise schedule: linear (β from 1e-4 to 0.02, the reference's) or cosine (Nichol & Dhariwal 2021), kept in
    /// the checkpoints and used by every sampler [default: linear].
    #[arg(long, value_parser = PossibleValuesParser::new(ScheduleKind::ALL.map(|k| k.name()))
        .try_map(|s| s.parse::<ScheduleKind>()))]
    schedule: Option<ScheduleKind>,
    /// Train class-conditional on the digit labels (10 classes, each replaced by a null label one time in ten),
    /// for `sample --digit D --guidance W` (classifier-free guidance).
    #[arg(long)]
    classes: bool,
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
    /// Convolutions and linear layers in bf16 (tensor cores; default on a GPU) or fp32 (default, and the only
    /// path, on the CPU).
    #[arg(long, value_enum)]
    precision: Option<super::PrecisionArg>,
    /// On a GPU, queue every step launch by launch instead of capturing one step per epoch as a CUDA graph and
    /// replaying it for the epoch's others (the same results to the bit; for comparison, or should a driver
    /// refuse the capture).
    #[arg(long)]
    no_graphs: bool,
    /// Continue a run from one of its checkpoints (DIR/checkpoint.safetensors, the latest, or any
    /// checkpoint-STEP.safetensors); it continues exactly as if never interrupted, its log cut back to that step.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a checkpoint every this many steps, besides those at the end of every epoch and of the run (1000:
    /// about 2.5 minutes of the CPU recipe on 2 cores).
    #[arg(long, default_value_t = CheckpointPolicy::DEFAULT_EVERY)]
    save_every: u64,
    /// Keep the newest this many checkpoint-STEP.safetensors (checkpoint.safetensors is the latest of them, and
    /// checkpoint-best.safetensors the one with the lowest FID).
    #[arg(long, default_value_t = CheckpointPolicy::DEFAULT_KEEP)]
    keep: usize,
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
        c.schedule = self.schedule.unwrap_or(c.schedule);
        c.model.classes = if self.classes { MNIST_CLASSES } else { 0 };
        c.ema_decay = self.ema_decay.unwrap_or(c.ema_decay);
        c.seed = self.seed.unwrap_or(c.seed);
        // Explicit epochs replace the recipe's step count; only an explicit --max-steps caps them.
        c.max_steps = if self.epochs.is_some() { self.max_steps } else { self.max_steps.or(c.max_steps) };
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

    /// Flags that change the recipe's run: the run-defining ones, the schedule and the run's length.
    fn recipe_overrides(&self) -> Vec<&'static str> {
        let length = [
            ("--schedule", self.schedule.is_some()),
            ("--classes", self.classes),
            ("--epochs", self.epochs.is_some()),
            ("--max-steps", self.max_steps.is_some()),
        ];
        let mut flags = self.run_defining_flags();
        flags.extend(length.into_iter().filter(|(_, g)| *g).map(|(f, _)| f));
        flags
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.save_every == 0 || a.keep == 0 {
        bail!("--save-every and --keep must be at least 1");
    }
    let device = resolve_device(a.device, a.precision)?;
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
            if a.classes && s.config.model.classes == 0 {
                bail!(
                    "--classes does not match {}, an unconditional run; a run cannot become conditional",
                    path.display()
                );
            }
            // The checkpoint's schedule may be restated, not changed: the run trains on one schedule throughout.
            if let Some(k) = a.schedule.filter(|&k| k != s.config.schedule) {
                bail!(
                    "--schedule {k} does not match {}, which was trained with the {} schedule; a run cannot change \
                     its schedule when resuming",
                    path.display(),
                    s.config.schedule
                );
            }
            s.config.max_steps = if a.epochs.is_some() { a.max_steps } else { a.max_steps.or(s.config.max_steps) };
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
    let conditional = state.config.model.classes > 0;
    let mut trainer = Trainer::new(state, data.images)?;
    if conditional {
        trainer = trainer.with_labels(&data.labels)?;
    }
    trainer.checkpoint_policy(CheckpointPolicy { every: a.save_every, keep: a.keep })?;
    trainer.use_graphs(!a.no_graphs);
    let dir = match &a.resume {
        Some(ckpt) => resume_dir(a, ckpt)?,
        None => RunDir::for_new_run(a.out.clone().unwrap_or_else(default_out))?,
    };
    let out = dir.path().to_path_buf();
    trainer.write_into(dir, a.sample_n)?;
    let stop = stop_on_signals()?;
    trainer.stop_when(Arc::clone(&stop));
    let (c, total) = (&trainer.state().config, trainer.total_steps());
    println!(
        "training {}UNet(base {}, t_dim {}) with {} parameters on {}: {} images, batch {}, {} steps/epoch, steps {}..{total}; output in {}",
        if c.model.classes > 0 { "class-conditional " } else { "" }, c.model.base, c.model.t_dim, trainer.state().params.numel(), backend.describe(), trainer.n_images(), c.batch, trainer.steps_per_epoch(), trainer.state().step, out.display()
    );
    let bar = progress_bar(total, "train");
    bar.set_position(trainer.state().step.min(total));
    if a.eval_n > 0 {
        let evaluator = Evaluator::load(backend, &a.classifier, &a.data, a.eval_n)
            .context("FID during training (--eval-n 0 turns it off)")?;
        trainer.evaluate_with(evaluator);
    }
    let progress =
        &mut Progress { bar, started: Instant::now(), last_line: Instant::now(), stop, stop_announced: false };
    match trainer.run(progress)? {
        RunEnd::Finished => {
            println!(
                "done: {} steps; checkpoints, samples_ddim.png, samples_ddpm.png, loss_curve.png and log.csv in {}",
                trainer.state().step,
                out.display()
            );
            Ok(())
        }
        RunEnd::Stopped { step } => {
            let ckpt = out.join("checkpoint.safetensors");
            println!("stopped after step {step}; its checkpoint is {}. Continue with:", ckpt.display());
            println!("  {}", resume_command(a, &ckpt));
            bail!("interrupted after step {step} (checkpoint written; resume with the command above)")
        }
    }
}

/// The folder a resumed run writes: the checkpoint's own folder, or `--out` if that is a new or empty folder (it
/// gets the log here, and the checkpoint once the trainer writes into it). A folder with another run's files is
/// refused.
fn resume_dir(a: &TrainArgs, ckpt: &Path) -> Result<RunDir> {
    let own = match ckpt.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out = match &a.out {
        Some(out) if !same_folder(out, &own) => out,
        _ => return Ok(RunDir::create(own)?),
    };
    let dir = RunDir::create(out)?;
    let files = dir.run_files();
    if !files.is_empty() {
        let what = if dir.holds_run() {
            format!("another run; to continue that one: `ddpm train --resume {}`", quote(&dir.checkpoint()))
        } else {
            format!("files of another run ({} files, no checkpoint)", files.len())
        };
        bail!(
            "{} holds {what}. To continue {} in its own folder, leave out --out: `{}`; or give --out a new or empty folder",
            out.display(),
            ckpt.display(),
            resume_command(&TrainArgs { out: None, ..a.clone() }, ckpt)
        );
    }
    let log = own.join("log.csv");
    if log.exists() {
        std::fs::copy(&log, dir.log()).with_context(|| format!("copying {} into {}", log.display(), out.display()))?;
    }
    Ok(dir)
}

/// Whether `a` and `b` name the same existing folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// `runs/YYYY-MM-DD-HHMMSS`, now in UTC, with `-2`, `-3`, ... after it if that exists (runs started in the same
/// second).
fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let stamp = format!("runs/{}", utc_stamp(secs));
    let mut out = PathBuf::from(&stamp);
    for i in 2.. {
        if !out.exists() {
            break;
        }
        out = PathBuf::from(format!("{stamp}-{i}"));
    }
    out
}

/// `YYYY-MM-DD-HHMMSS` of `secs` since the Unix epoch, in UTC (the civil-from-days algorithm of H. Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms").
fn utc_stamp(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The command that continues the run from `ckpt`: `--resume` and the flags given that the checkpoint does not
/// hold (the run's settings and length are in it).
fn resume_command(a: &TrainArgs, ckpt: &Path) -> String {
    let mut cmd = format!("ddpm train --resume {}", quote(ckpt));
    if let Some(out) = &a.out {
        if !same_folder(out, ckpt.parent().unwrap_or(Path::new("."))) {
            cmd += &format!(" --out {}", quote(out));
        }
    }
    if a.data != Path::new("data/mnist") {
        cmd += &format!(" --data {}", quote(&a.data));
    }
    if a.device != DeviceArg::Auto {
        cmd +=
            &format!(" --device {}", a.device.to_possible_value().map_or("auto".into(), |v| v.get_name().to_string()));
    }
    if let Some(p) = a.precision {
        cmd += &format!(" --precision {}", p.to_possible_value().map_or("bf16".into(), |v| v.get_name().to_string()));
    }
    if a.no_graphs {
        cmd += " --no-graphs";
    }
    let numbers = [
        ("--sample-n", a.sample_n as u64, 64),
        ("--eval-n", a.eval_n as u64, 500),
        ("--save-every", a.save_every, CheckpointPolicy::DEFAULT_EVERY),
        ("--keep", a.keep as u64, CheckpointPolicy::DEFAULT_KEEP as u64),
    ];
    for (flag, v, default) in numbers {
        if v != default {
            cmd += &format!(" {flag} {v}");
        }
    }
    if a.classifier != Path::new(DEFAULT_WEIGHTS) {
        cmd += &format!(" --classifier {}", quote(&a.classifier));
    }
    cmd
}

/// `p` as one shell word: as is when it is plain, in single quotes otherwise.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A flag that SIGINT and SIGTERM set, so that the run stops after its current step with a checkpoint; a second
/// signal, with the flag already set, exits at once (status 130) without writing anything.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so that it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .context("installing the Ctrl-C handler")?;
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing the Ctrl-C handler")?;
    }
    Ok(flag)
}

/// How often a run without a terminal prints a progress line.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// The run's progress on the terminal: a progress bar, and a line at the end of every epoch and after every FID
/// check (on stderr when the bar is hidden).
struct Progress {
    bar: ProgressBar,
    /// When training started, for the epoch lines.
    started: Instant,
    /// When the last progress line was printed (without a terminal).
    last_line: Instant,
    /// Set by Ctrl-C; announced once.
    stop: Arc<AtomicBool>,
    stop_announced: bool,
}

impl Observer for Progress {
    fn step_done(&mut self, row: &LogRow) {
        self.bar.set_position(row.step);
        self.bar.set_message(format!("epoch {} loss {:.4}", row.epoch, row.stats.loss));
        // Without a terminal the bar is hidden: a line every half minute instead, so a logged run shows progress.
        if self.bar.is_hidden() && self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let (secs, total) = (self.started.elapsed().as_secs(), self.bar.length().unwrap_or(0));
            let loss = row.stats.loss;
            eprintln!(
                "step {}/{total} (epoch {}), loss {loss:.4}, {}m{:02}s",
                row.step,
                row.epoch,
                secs / 60,
                secs % 60
            );
        }
        if !self.stop_announced && self.stop.load(Ordering::SeqCst) {
            self.stop_announced = true;
            say(&self.bar, "stopping: writing a checkpoint (interrupt again to exit at once without it)");
        }
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

    /// A spinner with the elapsed time while `work` samples (the step bar is hidden meanwhile); without a
    /// terminal, a line before and after it.
    fn sampling(&mut self, what: &str, work: &mut dyn FnMut()) {
        let started = Instant::now();
        if self.bar.is_hidden() {
            eprintln!("{what}");
            work();
            eprintln!("{what}: done in {}s", started.elapsed().as_secs());
            return;
        }
        let spinner = ProgressBar::new_spinner().with_message(what.to_string());
        spinner.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"),
        );
        spinner.enable_steady_tick(Duration::from_millis(250));
        self.bar.suspend(work);
        spinner.finish_and_clear();
        self.bar.println(format!("{what}: done in {}s", started.elapsed().as_secs()));
    }

    fn training_done(&mut self) {
        self.bar.finish();
    }

    fn final_ddpm_grid(&mut self, timesteps: usize) {
        println!("sampling the final DDPM-{timesteps} grid from the EMA weights");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folder_names_are_utc_dates() {
        assert_eq!(utc_stamp(0), "1970-01-01-000000");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29-000000");
        assert_eq!(utc_stamp(1_796_211_000), "2026-12-02-113000");
        assert_eq!(utc_stamp(4_107_542_399), "2100-02-28-235959");
    }

    #[test]
    fn odd_paths_are_quoted_for_the_shell() {
        assert_eq!(
            quote(Path::new("runs/2026-12-02-113000/checkpoint.safetensors")),
            "runs/2026-12-02-113000/checkpoint.safetensors"
        );
        assert_eq!(quote(Path::new("my runs/it's")), r"'my runs/it'\''s'");
    }
}
