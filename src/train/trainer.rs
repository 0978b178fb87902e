//! The training loop: a step at a time, with at the end of every epoch and of the run a checkpoint, a DDIM-50
//! sample grid and a FID check, and after the last step the final DDIM and DDPM grids and the loss curve. The
//! loop prints nothing: it reports to an [`Observer`], which the command line turns into a progress bar and lines.

use super::{Batcher, LogRow, RunDir, RunLog, StepStats, TrainState};
use crate::backend::{Backend, Cpu};
use crate::checkpoint;
use crate::diffusion::{SamplerKind, Schedule};
use crate::error::{Error, Result};
use crate::eval::{Evaluator, Quality};
use crate::image::save_grid_png;
use crate::plot::save_curve_png;
use crate::tensor::Tensor;

/// Images per row of the sample grids.
const GRID_ROW: usize = 8;

/// What a run reports as it goes. Every method has a default that does nothing, so `()` is the silent observer.
pub trait Observer {
    /// After each step, once its checkpoint, grids and FID check (if any) are done and its log row is written.
    fn step_done(&mut self, _row: &LogRow) {}
    /// At the end of an epoch or of the run, right after its last step, before its checkpoint.
    fn epoch_done(&mut self, _summary: &EpochSummary) {}
    /// After a FID check, at step `step`.
    fn evaluated(&mut self, _step: u64, _quality: &Quality) {}
    /// Runs `work`, the sampling for a grid and a FID check (seconds to minutes without a report), exactly once;
    /// a progress bar can hide meanwhile.
    fn sampling(&mut self, work: &mut dyn FnMut()) {
        work()
    }
    /// After the last step, before the final grids.
    fn training_done(&mut self) {}
    /// Before sampling the final DDPM grid (`timesteps` network calls).
    fn final_ddpm_grid(&mut self, _timesteps: usize) {}
}

impl Observer for () {}

/// The steps since the last summary, up to the end of an epoch or of the run.
#[derive(Clone, Copy, Debug)]
pub struct EpochSummary {
    pub epoch: u64,
    /// Steps taken, this epoch's included.
    pub step: u64,
    /// Steps the run takes in all.
    pub total: u64,
    /// Mean loss over `steps`.
    pub mean_loss: f64,
    /// Steps summarised: the whole epoch, or those since the run was resumed, or up to the run's end.
    pub steps: u64,
}

/// What the step just taken completed. Checkpoints and evaluations are scheduled from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Milestone {
    /// The step was the last of its epoch.
    pub epoch_end: bool,
    /// The step was the run's last.
    pub run_end: bool,
}

impl Milestone {
    /// A checkpoint is written at the end of every epoch and of the run.
    pub fn checkpoint_due(self) -> bool {
        self.epoch_end || self.run_end
    }

    /// Sample grids and the FID check come with the checkpoint: at the end of every epoch and of the run.
    pub fn evaluation_due(self) -> bool {
        self.epoch_end || self.run_end
    }
}

/// Where a run writes: its folder, its log, and the size of its sample grids.
struct Output {
    dir: RunDir,
    log: RunLog,
    sample_n: usize,
}

/// A training run on backend `B`: the state, the training images and their batching, the schedule, and
/// optionally an output folder (checkpoints, grids, log, loss curve) and a FID evaluator. Without an output
/// folder it only trains, as the benchmarks and tests want.
pub struct Trainer<B: Backend = Cpu> {
    state: TrainState<B>,
    /// The training images `[N, C, H, W]` in [-1, 1], on the host.
    images: Tensor,
    batcher: Batcher,
    sched: Schedule,
    /// The step the run stops at.
    total: u64,
    output: Option<Output>,
    evaluator: Option<Evaluator<B>>,
    /// Sum and count of the losses since the last [`EpochSummary`].
    epoch_loss: f64,
    epoch_steps: u64,
    /// Whether `samples_ddim.png` was written from the last step's evaluation batch.
    final_ddim_done: bool,
}

impl<B: Backend> Trainer<B> {
    /// A trainer continuing `state` (fresh or loaded from a checkpoint) on `images` (`[N, C, H, W]` in [-1, 1], on
    /// the host), which must hold at least one full batch.
    pub fn new(state: TrainState<B>, images: Tensor) -> Result<Self> {
        let c = &state.config;
        let n_images = images.shape().first().copied().unwrap_or(0);
        let batcher = Batcher::new(n_images, c.batch, c.seed)?;
        let sched = Schedule::linear(c.timesteps, 1e-4, 2e-2)?;
        let total = c.total_steps(n_images);
        Ok(Trainer {
            state,
            images,
            batcher,
            sched,
            total,
            output: None,
            evaluator: None,
            epoch_loss: 0.0,
            epoch_steps: 0,
            final_ddim_done: false,
        })
    }

    /// Writes the run into `dir`: checkpoints, grids of `sample_n` images, the log and the loss curve. Opens the
    /// log now; a run that has taken steps (a resumed one) appends to the rows already there.
    pub fn write_into(&mut self, dir: RunDir, sample_n: usize) -> Result<()> {
        if sample_n == 0 {
            return Err(Error::Arg("sample grids need at least 1 image".into()));
        }
        let log = RunLog::open(&dir.log(), self.state.step > 0)?;
        self.output = Some(Output { dir, log, sample_n });
        Ok(())
    }

    /// Checks FID with `evaluator` at every evaluation (DDIM-50 samples from the EMA weights), logged in the last
    /// column.
    pub fn evaluate_with(&mut self, evaluator: Evaluator<B>) {
        self.evaluator = Some(evaluator);
    }

    pub fn state(&self) -> &TrainState<B> {
        &self.state
    }

    pub fn into_state(self) -> TrainState<B> {
        self.state
    }

    pub fn schedule(&self) -> &Schedule {
        &self.sched
    }

    /// The output folder, if the run writes one.
    pub fn dir(&self) -> Option<&RunDir> {
        self.output.as_ref().map(|o| &o.dir)
    }

    pub fn n_images(&self) -> usize {
        self.images.shape()[0]
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.batcher.steps_per_epoch()
    }

    /// The step the run stops at: epochs × steps per epoch, capped by `max_steps`.
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// Whether the run has taken all its steps.
    pub fn done(&self) -> bool {
        self.state.step >= self.total
    }

    /// Runs the remaining steps, then [`Trainer::finish`].
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<()> {
        while !self.done() {
            self.step(obs)?;
        }
        self.finish(obs)
    }

    /// One training step on the next batch, then what it completes: the epoch summary, the checkpoint, the grids
    /// and the FID check, and the log row, which it returns. Past the run's end it keeps training (for
    /// benchmarks); [`Trainer::run`] stops there.
    pub fn step(&mut self, obs: &mut dyn Observer) -> Result<LogRow> {
        let x0 = self.batcher.batch(&self.images, self.state.step);
        let epoch = self.state.epoch(self.n_images());
        let stats: StepStats = self.state.train_step(&self.sched, &x0)?;
        let step = self.state.step;
        let m = Milestone { epoch_end: step.is_multiple_of(self.steps_per_epoch()), run_end: step == self.total };
        self.epoch_loss += stats.loss as f64;
        self.epoch_steps += 1;
        if m.epoch_end || m.run_end {
            let mean_loss = self.epoch_loss / self.epoch_steps as f64;
            obs.epoch_done(&EpochSummary { epoch, step, total: self.total, mean_loss, steps: self.epoch_steps });
            (self.epoch_loss, self.epoch_steps) = (0.0, 0);
        }
        if m.checkpoint_due() {
            self.save_checkpoint()?;
        }
        let fid = if m.evaluation_due() { self.sample_and_score(epoch, m, obs)? } else { None };
        let row = LogRow { step, epoch, stats, lr: self.state.config.lr, fid };
        if let Some(out) = &mut self.output {
            out.log.append(&row)?;
        }
        obs.step_done(&row);
        Ok(row)
    }

    /// Writes the state to the output folder's checkpoint (through a host copy); nothing without an output folder.
    pub fn save_checkpoint(&self) -> Result<()> {
        match &self.output {
            Some(out) => checkpoint::save(&self.state.to_backend(&Cpu)?, &out.dir.checkpoint()),
            None => Ok(()),
        }
    }

    /// After the last step: the loss curve, the final DDIM-50 grid if the last step did not write it (a run resumed
    /// from its final checkpoint takes no step), and the final DDPM grid, all from the EMA weights.
    pub fn finish(&mut self, obs: &mut dyn Observer) -> Result<()> {
        obs.training_done();
        let Some(out) = &self.output else { return Ok(()) };
        save_curve_png(&out.dir.loss_curve(), &out.log.losses(), "training loss", "step", "loss")?;
        if !self.final_ddim_done {
            let images = self.state.sample_ema(&self.sched, self.ddim50(), out.sample_n)?;
            save_grid_png(&out.dir.ddim_grid(), &images, GRID_ROW)?;
            self.final_ddim_done = true;
        }
        obs.final_ddpm_grid(self.sched.t);
        let images = self.state.sample_ema(&self.sched, SamplerKind::Ddpm, out.sample_n)?;
        save_grid_png(&out.dir.ddpm_grid(), &images, GRID_ROW)
    }

    /// DDIM-50 (η = 0), or DDIM over every step when T < 50: the evaluation sampler.
    fn ddim50(&self) -> SamplerKind {
        SamplerKind::Ddim { steps: 50.min(self.sched.t), eta: 0.0 }
    }

    /// The evaluation at the milestone `m` of epoch `epoch`: one DDIM-50 batch from the EMA weights serves the
    /// epoch's grid and the final grid (its first images) and the FID check (all of them), since image k of the
    /// sampler's noise does not depend on how many are drawn. Returns the FID, if checked.
    fn sample_and_score(&mut self, epoch: u64, m: Milestone, obs: &mut dyn Observer) -> Result<Option<f64>> {
        let sample_n = self.output.as_ref().map_or(0, |o| o.sample_n);
        let n = self.evaluator.as_ref().map_or(sample_n, |ev| sample_n.max(ev.n()));
        if n == 0 {
            return Ok(None);
        }
        let (state, sched, kind) = (&self.state, &self.sched, self.ddim50());
        let mut drawn = None;
        obs.sampling(&mut || drawn = Some(state.sample_ema(sched, kind, n)));
        let images = drawn.expect("Observer::sampling must run its work")?;
        if let Some(out) = &self.output {
            if m.epoch_end {
                save_grid_png(&out.dir.epoch_grid(epoch), &images.head(out.sample_n)?, GRID_ROW)?;
            }
            if m.run_end {
                save_grid_png(&out.dir.ddim_grid(), &images.head(out.sample_n)?, GRID_ROW)?;
                self.final_ddim_done = true;
            }
        }
        let Some(ev) = &self.evaluator else { return Ok(None) };
        let quality = ev.score(&images.head(ev.n())?)?;
        obs.evaluated(self.state.step, &quality);
        Ok(Some(quality.fid))
    }
}
