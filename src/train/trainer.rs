//! The training loop: a step at a time, with at the end of every epoch and of the run a DDIM-50 sample grid and a
//! FID check, a checkpoint then and every few steps, and after the last step the final DDIM and DDPM grids and the
//! loss curve. The loop prints nothing: it reports to an [`Observer`], which the command line turns into a
//! progress bar and lines.
//!
//! A run is never lost: checkpoints come often and are written atomically, the log is cut back to the checkpoint a
//! run continues from, a stop requested between steps (Ctrl-C) writes a checkpoint first, and a run whose loss or
//! gradient norm stops being finite ends with an error before it can write a checkpoint.

use super::output::link_or_copy;
use super::{Batcher, GraphedStep, LogRow, RunDir, RunLog, StepStats, TrainState, TrainingSet};
use crate::atomic_write::write_atomic;
use crate::backend::{Backend, Cpu};
use crate::checkpoint;
use crate::diffusion::{SamplerKind, Schedule};
use crate::error::{Error, Result};
use crate::eval::{Evaluator, Quality};
use crate::image::save_grid_png;
use crate::plot::save_curve_png;
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// On a GPU, the steps between two reads of the loss and gradient norm (each read waits for the device): a read
/// every 32 steps costs about one wait per 32 steps and shows progress several times a second.
pub const READ_EVERY: u64 = 32;

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
    /// Runs `work`, the sampling for a grid or a FID check (seconds to minutes without a report; `what` says
    /// which), exactly once; a progress bar can hide meanwhile and something else show that work goes on.
    fn sampling(&mut self, _what: &str, work: &mut dyn FnMut()) {
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
    /// The step is a multiple of the checkpoint interval ([`CheckpointPolicy::every`]).
    pub periodic: bool,
}

impl Milestone {
    /// A checkpoint is written every [`CheckpointPolicy::every`] steps and at the end of every epoch and of the run.
    pub fn checkpoint_due(self) -> bool {
        self.epoch_end || self.run_end || self.periodic
    }

    /// Sample grids and the FID check come with the checkpoint: at the end of every epoch and of the run.
    pub fn evaluation_due(self) -> bool {
        self.epoch_end || self.run_end
    }
}

/// How often a run writes a checkpoint, and how many `checkpoint-STEP.safetensors` it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// A checkpoint every this many steps (besides those at the end of every epoch and of the run).
    pub every: u64,
    /// The newest this many step checkpoints are kept; older ones are deleted.
    pub keep: usize,
}

impl CheckpointPolicy {
    /// 1000 steps: about 2.5 minutes of the CPU recipe on 2 cores (and about 2 of its 6 epochs), so that a crash
    /// costs minutes, not an epoch.
    pub const DEFAULT_EVERY: u64 = 1000;
    pub const DEFAULT_KEEP: usize = 3;
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy { every: Self::DEFAULT_EVERY, keep: Self::DEFAULT_KEEP }
    }
}

/// How [`Trainer::run`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step taken, and the final grids written.
    Finished,
    /// Stopped on request (the flag of [`Trainer::stop_when`]) after step `step`, whose checkpoint it wrote (when
    /// the run has an output folder).
    Stopped { step: u64 },
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
    /// The training images `[N, C, H, W]` in [-1, 1], on the backend, from which it draws each batch.
    data: TrainingSet<B>,
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
    policy: CheckpointPolicy,
    /// Set from outside (a signal handler) to stop the run after the current step.
    stop: Option<Arc<AtomicBool>>,
    /// The step of the newest checkpoint in the output folder.
    last_saved: Option<u64>,
    /// The FID of `checkpoint-best.safetensors`, as logged (4 decimals).
    best_fid: Option<f64>,
    /// Whether steps are captured and replayed as graphs where the backend has them ([`Trainer::use_graphs`]).
    graphs: bool,
    /// The current epoch's captured step.
    graphed: Option<GraphedStep<B>>,
    /// Whether this trainer has queued a planned step (so that the device's cache holds what a capture allocates).
    warm: bool,
}

impl<B: Backend> Trainer<B> {
    /// A trainer continuing `state` (fresh or loaded from a checkpoint) on `images` (`[N, C, H, W]` in [-1, 1], on
    /// the host), which must hold at least one full batch. The images are put on the state's backend once.
    pub fn new(state: TrainState<B>, images: Tensor) -> Result<Self> {
        let c = &state.config;
        let n_images = images.shape().first().copied().unwrap_or(0);
        let batcher = Batcher::new(n_images, c.batch, c.seed)?;
        let sched = c.schedule.build(c.timesteps)?;
        let total = c.total_steps(n_images);
        let data = TrainingSet::new(state.params.backend(), images, &sched)?;
        Ok(Trainer {
            state,
            data,
            batcher,
            sched,
            total,
            output: None,
            evaluator: None,
            epoch_loss: 0.0,
            epoch_steps: 0,
            final_ddim_done: false,
            policy: CheckpointPolicy::default(),
            stop: None,
            last_saved: None,
            best_fid: None,
            graphs: true,
            graphed: None,
            warm: false,
        })
    }

    /// The trainer with the class label of each training image (`labels[i]` of image i), which a
    /// class-conditional model trains on (each below its classes).
    pub fn with_labels(mut self, labels: &[u8]) -> Result<Self> {
        self.data = self.data.with_labels(labels, self.state.config.model.classes)?;
        Ok(self)
    }

    /// Writes the run into `dir`: checkpoints, grids of `sample_n` images, the log, `config.json` and the loss
    /// curve. A fresh run starts the log anew (see [`RunDir::for_new_run`] for a folder it may use); a run that has
    /// taken steps (a resumed one) keeps the log's rows up to its step and appends to them, so that the log ends up
    /// as the uninterrupted run's, and writes its state as the folder's latest checkpoint (refusing a state that is
    /// not finite).
    pub fn write_into(&mut self, dir: RunDir, sample_n: usize) -> Result<()> {
        if sample_n == 0 {
            return Err(Error::Arg("sample grids need at least 1 image".into()));
        }
        let step = self.state.step;
        let log = if step == 0 {
            RunLog::create(&dir.log())?
        } else {
            // A run that ended at `step` checked FID there; the longer run checks it only at epoch ends.
            let keep_fid = step.is_multiple_of(self.steps_per_epoch()) || step >= self.total;
            RunLog::resume(&dir.log(), step, keep_fid)?
        };
        self.best_fid = if dir.best_checkpoint().exists() { log.best_fid() } else { None };
        let config = dir.config();
        let json = self.state.config.to_json();
        write_atomic(&config, |w| w.write_all(json.as_bytes()).map_err(|e| Error::file(&config, e.to_string())))?;
        self.output = Some(Output { dir, log, sample_n });
        if step > 0 {
            // The folder's latest checkpoint becomes the one the log was cut back to (a resume from an older
            // checkpoint, or into a new folder), so that a crash before the next checkpoint resumes from there.
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// Writes checkpoints as `policy` says (the default: [`CheckpointPolicy::default`]).
    pub fn checkpoint_policy(&mut self, policy: CheckpointPolicy) -> Result<()> {
        if policy.every == 0 || policy.keep == 0 {
            return Err(Error::Arg("checkpoints need an interval and a number to keep of at least 1".into()));
        }
        self.policy = policy;
        Ok(())
    }

    /// Whether to capture a step once per epoch and replay it as the epoch's later steps, where the backend records
    /// graphs (a GPU): on by default; off, every step is queued launch by launch (the same results to the bit).
    pub fn use_graphs(&mut self, on: bool) {
        self.graphs = on;
        self.graphed = None;
    }

    /// Stops the run after the step in progress once `flag` is set: [`Trainer::run`] then writes a checkpoint and
    /// returns [`RunEnd::Stopped`].
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
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
        self.data.len()
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

    /// Runs the remaining steps, then [`Trainer::finish`]; or, when a stop is requested, writes a checkpoint after
    /// the step in progress and returns [`RunEnd::Stopped`].
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<RunEnd> {
        while !self.done() {
            if self.stop_requested() {
                return self.stop_here(obs);
            }
            self.step(obs)?;
        }
        self.finish(obs)
    }

    /// Completes the steps not yet read, then writes a checkpoint of the current step, for a stop on request.
    fn stop_here(&mut self, obs: &mut dyn Observer) -> Result<RunEnd> {
        self.flush(obs)?;
        if self.last_saved != Some(self.state.step) {
            self.save_checkpoint()?;
        }
        Ok(RunEnd::Stopped { step: self.state.step })
    }

    /// One training step on the next batch, then what the steps whose statistics it reads complete: their epoch
    /// summaries, grids and FID check, log rows (which it returns, oldest first) and checkpoint. A GPU keeps each
    /// step's loss and gradient norm until they are read, every `READ_EVERY` steps and at every step that ends an
    /// epoch or the run or writes a checkpoint (so those steps' work always follows their rows); the CPU reads them
    /// every step, at no cost. A row comes before its checkpoint, so a checkpoint's log always reaches its step.
    /// Past the run's end it keeps training (for benchmarks); [`Trainer::run`] stops there. A non-finite loss or
    /// gradient norm is an [`Error::Diverged`] (after its log row), and the state is not saved.
    pub fn step(&mut self, obs: &mut dyn Observer) -> Result<Vec<LogRow>> {
        self.queue_step()?;
        let step = self.state.step;
        let due = self.milestone(step);
        let reads_wait = self.state.params.backend().reads_wait();
        if reads_wait && !(due.checkpoint_due() || step.is_multiple_of(READ_EVERY)) {
            return Ok(Vec::new());
        }
        self.flush(obs)
    }

    /// Queues the next step: launch by launch, or, with graphs on where the backend has them, with the plan of the
    /// epoch's remaining steps: the trainer's first step launch by launch reading the plan (which leaves the
    /// device's cache holding what a capture allocates), then a capture of the epoch's next step (or the first of
    /// each later epoch) and replays of it for the epoch's other steps.
    fn queue_step(&mut self) -> Result<()> {
        let (step, per_epoch) = (self.state.step, self.steps_per_epoch());
        let batch = self.data.batch(&mut self.batcher, step)?;
        if !(self.graphs && self.state.params.backend().has_graphs()) {
            return self.state.queue_step(&self.sched, batch);
        }
        let epoch = self.batcher.position(step).0;
        let graphed = match self.graphed.take().filter(|g| g.serves(epoch, step)) {
            Some(g) => g,
            // The old graph's memory goes back to the cache (as it drops) before the plan and capture ask for it.
            None => self.state.plan(&self.batcher, epoch, step..(epoch + 1) * per_epoch)?,
        };
        let graphed = self.graphed.insert(graphed);
        let capture = self.warm && !graphed.captured();
        if let Err(e) = self.state.queue_graphed(&self.sched, batch, graphed, self.warm) {
            // A failed capture leaves the state's counts past what ran: the run must end here (its checkpoints are
            // untouched), and can go on from the last one without graphs.
            self.graphed = None;
            return Err(match capture {
                true => Error::Device(format!(
                    "capturing training step {} as a CUDA graph failed: {e}. Resume from the last checkpoint with \
                     --no-graphs to train launch by launch",
                    step + 1
                )),
                false => e,
            });
        }
        self.warm = true;
        Ok(())
    }

    /// Reads the statistics of every step taken and not yet read, and completes each of those steps in order;
    /// their log rows, oldest first.
    pub fn flush(&mut self, obs: &mut dyn Observer) -> Result<Vec<LogRow>> {
        let stats = self.state.take_stats()?;
        let first = self.state.step + 1 - stats.len() as u64;
        (first..).zip(stats).map(|(step, stats)| self.complete(step, stats, obs)).collect()
    }

    /// What step `step` completes, once its statistics are read.
    fn complete(&mut self, step: u64, stats: StepStats, obs: &mut dyn Observer) -> Result<LogRow> {
        let epoch = (step - 1) / self.steps_per_epoch();
        if !(stats.loss.is_finite() && stats.grad_norm.is_finite()) {
            let row = LogRow { step, epoch, stats, lr: self.state.config.lr, fid: None };
            if let Some(out) = &mut self.output {
                out.log.append(&row)?;
            }
            let what = format!("the loss is {} and the gradient norm {}", stats.loss, stats.grad_norm);
            return Err(self.diverged(step, &what));
        }
        // Only the newest step read can be a milestone: reaching one forces the read.
        let m = self.milestone(step);
        self.epoch_loss += stats.loss as f64;
        self.epoch_steps += 1;
        if m.epoch_end || m.run_end {
            let mean_loss = self.epoch_loss / self.epoch_steps as f64;
            obs.epoch_done(&EpochSummary { epoch, step, total: self.total, mean_loss, steps: self.epoch_steps });
            (self.epoch_loss, self.epoch_steps) = (0.0, 0);
        }
        let fid = if m.evaluation_due() { self.sample_and_score(epoch, m, obs)? } else { None };
        let row = LogRow { step, epoch, stats, lr: self.state.config.lr, fid };
        if let Some(out) = &mut self.output {
            out.log.append(&row)?;
        }
        if m.checkpoint_due() {
            self.save_checkpoint()?;
            if let Some(fid) = fid {
                self.keep_if_best(fid)?;
            }
        }
        obs.step_done(&row);
        Ok(row)
    }

    /// What step `step` (counted from 1) completes.
    fn milestone(&self, step: u64) -> Milestone {
        Milestone {
            epoch_end: step.is_multiple_of(self.steps_per_epoch()),
            run_end: step == self.total,
            periodic: step.is_multiple_of(self.policy.every),
        }
    }

    /// The error for a run that diverged at `step` (`what` says how): which checkpoint is left, and what to try.
    fn diverged(&self, step: u64, what: &str) -> Error {
        let kept = match (&self.output, self.last_saved) {
            (Some(out), Some(s)) => {
                format!("the last checkpoint, of step {s} ({}), is untouched", out.dir.checkpoint().display())
            }
            (Some(_), None) => "no checkpoint was written".to_string(),
            (None, _) => "nothing was saved".to_string(),
        };
        Error::Diverged(format!(
            "training diverged at step {step}: {what}; {kept}. Start again with a lower learning rate than {:?} \
             (--lr)",
            self.state.config.lr
        ))
    }

    /// Writes the state (through a host copy) as the output folder's `checkpoint-STEP.safetensors` and its latest
    /// `checkpoint.safetensors`, and deletes step checkpoints beyond the newest [`CheckpointPolicy::keep`]; nothing
    /// without an output folder. A state with a non-finite value is never written: [`Error::Diverged`].
    pub fn save_checkpoint(&mut self) -> Result<()> {
        let Some(out) = &self.output else { return Ok(()) };
        let host = self.state.to_backend(&Cpu)?;
        let step = host.step;
        if let Err(e) = checkpoint::check_state_finite(&host) {
            return Err(self.diverged(step, &e.to_string()));
        }
        let path = out.dir.step_checkpoint(step);
        checkpoint::save(&host, &path)?;
        link_or_copy(&path, &out.dir.checkpoint())?;
        // Step checkpoints past this step (left by a run resumed from an older one) are the same run's future,
        // rewritten when the run gets there; only older ones count against `keep`.
        let older: Vec<_> = out.dir.step_checkpoints().into_iter().filter(|(s, _)| *s <= step).collect();
        for (_, old) in older.iter().rev().skip(self.policy.keep) {
            std::fs::remove_file(old).map_err(|e| Error::file(old, format!("cannot delete an old checkpoint: {e}")))?;
        }
        self.last_saved = Some(step);
        Ok(())
    }

    /// Makes the checkpoint just written `checkpoint-best.safetensors` if `fid` (as logged) beats the best so far.
    fn keep_if_best(&mut self, fid: f64) -> Result<()> {
        let Some(out) = &self.output else { return Ok(()) };
        let logged: f64 = format!("{fid:.4}").parse().unwrap_or(fid);
        if self.best_fid.is_none_or(|best| logged < best) {
            link_or_copy(&out.dir.step_checkpoint(self.state.step), &out.dir.best_checkpoint())?;
            self.best_fid = Some(logged);
        }
        Ok(())
    }

    /// After the last step: the loss curve, the final DDIM-50 grid if the last step did not write it (a run resumed
    /// from its final checkpoint takes no step), and the final DDPM grid, all from the EMA weights. A stop requested
    /// before the DDPM grid (minutes of sampling) skips it: [`RunEnd::Stopped`], the final checkpoint written.
    pub fn finish(&mut self, obs: &mut dyn Observer) -> Result<RunEnd> {
        obs.training_done();
        if self.stop_requested() {
            return self.stop_here(obs);
        }
        let Some(out) = &self.output else { return Ok(RunEnd::Finished) };
        save_curve_png(&out.dir.loss_curve(), &out.log.losses(), "training loss", "step", "loss")?;
        if !self.final_ddim_done {
            let images = self.state.sample_ema(&self.sched, self.ddim50(), out.sample_n)?;
            save_grid_png(&out.dir.ddim_grid(), &images, GRID_ROW)?;
            self.final_ddim_done = true;
        }
        if self.stop_requested() {
            return self.stop_here(obs);
        }
        obs.final_ddpm_grid(self.sched.t);
        let (state, sched, mut drawn) = (&self.state, &self.sched, None);
        let what = format!("sampling the DDPM-{} grid ({} images)", sched.t, out.sample_n);
        obs.sampling(&what, &mut || drawn = Some(state.sample_ema(sched, SamplerKind::Ddpm, out.sample_n)));
        let images = drawn.expect("Observer::sampling must run its work")?;
        save_grid_png(&out.dir.ddpm_grid(), &images, GRID_ROW)?;
        Ok(RunEnd::Finished)
    }

    /// DDIM-50 (η = 0), or DDIM over every step when T < 50: the evaluation sampler.
    fn ddim50(&self) -> SamplerKind {
        SamplerKind::Ddim { steps: 50.min(self.sched.t), eta: 0.0, clamp: true }
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
        let what = match &self.evaluator {
            Some(ev) => format!("sampling {n} DDIM-50 images for the grid and the FID check (n = {})", ev.n()),
            None => format!("sampling the DDIM-50 grid ({n} images)"),
        };
        let mut drawn = None;
        obs.sampling(&what, &mut || drawn = Some(state.sample_ema(sched, kind, n)));
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
