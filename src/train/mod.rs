//! The reference's training procedure: `t ~ U{0..T-1}`, `ε ~ N(0, I)`, `x_t = q_sample(x_0, t, ε)`,
//! `L = mse(ε_θ(x_t, t), ε)`, then global-norm clipping at 1.0, AdamW, and an EMA update after every step.
//!
//! All randomness is counter-based (Philox, [`crate::rng`]) and keyed by the run's seed and the global step, so
//! the state needed to continue a run exactly is just the parameters, the optimiser and EMA state and the step
//! number: a run resumed at step k reproduces the uninterrupted run bit for bit.
//!
//! [`TrainState`] is the run itself and its step; [`Batcher`] picks each step's images, which the backend draws
//! from the [`TrainingSet`] it holds (a step copies nothing to it but, once per epoch, the epoch's permutation);
//! [`Trainer`] drives a run from end to end (checkpoints, sample grids, FID checks, the CSV log and the loss curve)
//! and reports progress to an [`Observer`], so that the command line, the benchmarks and the tests share one loop.

mod batcher;
mod data;
mod graphed;
mod output;
mod plan;
mod stats;
mod trainer;

pub use batcher::Batcher;
pub use data::TrainingSet;
pub use graphed::GraphedStep;
pub use output::{LogRow, RunDir, RunLog};
pub use plan::{PlanRow, StepPlan};
use stats::StatsRing;
pub use stats::RING_STEPS;
pub use trainer::{CheckpointPolicy, EpochSummary, Milestone, Observer, RunEnd, Trainer};

use crate::autograd::Tape;
use crate::backend::{Backend, Cpu};
use crate::diffusion::{
    initial_noise, sample, BatchDraw, Denoiser, LabelDraw, SamplerKind, Schedule, ScheduleKind, ScheduleTables,
};
use crate::error::{Error, Result};
use crate::nn::{Timesteps, UNet, UNetConfig, UNetDenoiser};
use crate::optim::{self, AdamW, Ema};
use crate::params::{GradStore, Params};
use crate::rng;
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};

/// The most diffusion steps a schedule may have: far beyond any use (the reference's T is 1000), small enough that
/// its tables (a few words per step) always fit.
pub const MAX_TIMESTEPS: usize = 1_000_000;

/// Philox stream domains (the top bits of the stream id), so no two uses of the run's seed share a stream.
const STREAM_SHUFFLE: u64 = 1 << 60;
const STREAM_T: u64 = 2 << 60;
const STREAM_NOISE: u64 = 3 << 60;
/// The label drops of a class-conditional run (`diffusion::drops_label`), keyed by the step like t and the noise.
const STREAM_LABEL_DROP: u64 = 4 << 60;

/// Everything that defines a training run (saved in every checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub model: UNetConfig,
    /// Diffusion steps T.
    pub timesteps: usize,
    /// The noise schedule the run trains with, and its samples are drawn with.
    pub schedule: ScheduleKind,
    pub epochs: u64,
    pub batch: usize,
    pub lr: f64,
    pub ema_decay: f64,
    /// EMA warm-up `d_k = min(d, (1+k)/(10+k))`; off in the reference's recipe.
    pub ema_warmup: bool,
    pub seed: u64,
    /// Stop after this many optimiser steps in total, if set.
    pub max_steps: Option<u64>,
}

impl RunConfig {
    /// The reference's recipe: base 64, t_dim 128, T = 1000 on the linear schedule, 30 epochs of batch 128, AdamW
    /// lr 2e-4, EMA 0.9999.
    pub fn reference_recipe() -> Self {
        RunConfig {
            model: UNetConfig::default(),
            timesteps: 1000,
            schedule: ScheduleKind::Linear,
            epochs: 30,
            batch: 128,
            lr: 2e-4,
            ema_decay: 0.9999,
            ema_warmup: false,
            seed: 0,
            max_steps: None,
        }
    }

    /// The CPU default, chosen on FID (README, "Choosing the CPU recipe"): an eighth of the reference's model (base 16,
    /// t_dim 64, 323 k parameters), batch 32, a higher learning rate (1e-3), and an EMA with warm-up and a shorter
    /// horizon (0.999), since 0.9999 averages over ~10k steps, as many as the run takes; 11250 steps (6 epochs).
    /// The README's "The two commands" gives its run time (about 35 minutes on 2 cores) and "Choosing the CPU
    /// recipe" the wider models it beat at equal time.
    pub fn cpu_default() -> Self {
        RunConfig {
            model: UNetConfig { in_ch: 1, base: 16, t_dim: 64, classes: 0 },
            batch: 32,
            lr: 1e-3,
            ema_decay: 0.999,
            ema_warmup: true,
            max_steps: Some(11250),
            ..Self::reference_recipe()
        }
    }

    /// `Err(Error::Arg)` for values no run can use.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |m: String| Err(Error::Arg(m));
        if !(2..=MAX_TIMESTEPS).contains(&self.timesteps) {
            return bad(format!("timesteps = {} is outside 2..={MAX_TIMESTEPS}", self.timesteps));
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("ema decay must be in [0, 1), got {}", self.ema_decay));
        }
        if self.epochs == 0 || self.max_steps == Some(0) {
            return bad("epochs and max-steps must be at least 1".into());
        }
        Ok(())
    }

    /// The configuration as JSON, one field per line, for people to read (`config.json` of a run folder).
    pub fn to_json(&self) -> String {
        let m = &self.model;
        // `{:?}` prints the shortest string that parses back to the same f64 (a valid JSON number when finite).
        format!(
            "{{\n  \"model\": {{ \"in_ch\": {}, \"base\": {}, \"t_dim\": {}, \"classes\": {} }},\n  \"timesteps\": {},\n  \"schedule\": \"{}\",\n  \"epochs\": {},\n  \
             \"batch\": {},\n  \"lr\": {:?},\n  \"ema_decay\": {:?},\n  \"ema_warmup\": {},\n  \"seed\": {},\n  \
             \"max_steps\": {}\n}}\n",
            m.in_ch,
            m.base,
            m.t_dim,
            m.classes,
            self.timesteps,
            self.schedule,
            self.epochs,
            self.batch,
            self.lr,
            self.ema_decay,
            self.ema_warmup,
            self.seed,
            self.max_steps.map_or("null".to_string(), |s| s.to_string())
        )
    }

    /// The total number of optimiser steps for a data set of `n_images`: epochs × ⌊n/batch⌋ (drop_last), capped
    /// by `max_steps`.
    pub fn total_steps(&self, n_images: usize) -> u64 {
        let full = self.epochs * (n_images / self.batch) as u64;
        self.max_steps.map_or(full, |m| m.min(full))
    }
}

/// Loss and gradient norm of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
}

/// A training step's clean batch.
pub enum Batch<'a, B: Backend> {
    /// `[B, C, H, W]` in [-1, 1] on the host: uploaded for the step, its timesteps drawn on the host.
    Host(&'a Tensor),
    /// Drawn on the backend from the resident training set ([`TrainingSet::batch`]), with its timesteps and noise.
    Drawn(Drawn<'a, B>),
}

/// A batch for the backend to draw: images `perm[first..first + batch]` of `images`, and the schedule's tables.
pub struct Drawn<'a, B: Backend> {
    pub images: &'a Tensor<B>,
    /// The class label of each image, for a class-conditional model.
    pub labels: Option<&'a B::Idx>,
    pub tables: &'a ScheduleTables<B>,
    pub perm: &'a B::Idx,
    pub first: usize,
    pub batch: usize,
}

/// A step's timesteps, held where they were drawn.
enum StepTimesteps<B: Backend> {
    Host(Vec<usize>),
    Device(B::Idx, usize),
}

impl<B: Backend> StepTimesteps<B> {
    fn view(&self) -> Timesteps<'_, B> {
        match self {
            StepTimesteps::Host(t) => Timesteps::Host(t),
            StepTimesteps::Device(t, n) => Timesteps::Device { t, n: *n },
        }
    }
}

/// A run in progress: model, parameters, optimiser, EMA and the number of steps taken. Parameters, moments and
/// the EMA live on backend `B`, where the whole step runs; checkpoints are written from a host copy.
#[derive(Clone, Debug)]
pub struct TrainState<B: Backend = Cpu> {
    pub config: RunConfig,
    pub model: UNet,
    pub params: Params<B>,
    pub opt: AdamW<B>,
    pub ema: Ema<B>,
    /// Optimiser steps taken so far.
    pub step: u64,
    /// The gradients, kept from step to step so that a step allocates nothing (made by the first step).
    grads: Option<GradStore<B>>,
    /// Loss and gradient norm of the steps not yet read ([`TrainState::take_stats`]).
    stats: StatsRing<B>,
}

impl TrainState {
    /// A fresh run: parameters initialised from the run's seed as PyTorch initialises them (with our own RNG).
    pub fn new(config: RunConfig) -> Result<Self> {
        config.validate()?;
        let mut params = Params::new();
        let model = UNet::new(config.model, &mut params, &mut StdRng::seed_from_u64(config.seed))?;
        let opt = AdamW::new(&params, config.lr);
        let ema = Ema::new(&params, config.ema_decay, config.ema_warmup);
        Ok(TrainState { config, model, params, opt, ema, step: 0, grads: None, stats: StatsRing::default() })
    }
}

impl<B: Backend> TrainState<B> {
    /// A copy of this run with its tensors on `backend` (the host is `&Cpu`, e.g. for a checkpoint).
    pub fn to_backend<C: Backend>(&self, backend: &C) -> Result<TrainState<C>> {
        Ok(TrainState {
            config: self.config.clone(),
            model: self.model.clone(),
            params: self.params.to_backend(backend)?,
            opt: self.opt.to_backend(backend, &self.params.placement())?,
            ema: self.ema.to_backend(backend, &self.params.placement())?,
            step: self.step,
            grads: None,
            stats: StatsRing::default(),
        })
    }

    /// The EMA weights as a parameter store (what the samplers use), on the state's backend: on a GPU views of the
    /// EMA's arena (so that they pack in one launch and the spans are views, as the parameters' are; the next
    /// update changes them), on the CPU copies.
    pub fn ema_params(&self) -> Result<Params<B>> {
        let be = self.params.backend();
        let arena = self.ema.arena.alias(be)?;
        let tensors = match arena.buf() {
            Some(_) => {
                let view = |t: &Tensor<B>| Tensor::from_buf(be.clone(), t.shape(), be.view(t.buf(), 0, t.numel())?);
                self.ema.shadow.iter().map(view).collect::<Result<_>>()?
            }
            None => self.ema.shadow.iter().map(Tensor::try_clone).collect::<Result<_>>()?,
        };
        Ok(self.params.with_tensors(tensors, arena))
    }

    /// `n` images sampled with `kind` from the EMA weights, from the initial noise and step noise of sampling seed
    /// 0 (image k does not depend on `n`), on the host.
    pub fn sample_ema(&self, sched: &Schedule, kind: SamplerKind, n: usize) -> Result<Tensor> {
        let ema_params = self.ema_params()?;
        let mut den = UNetDenoiser { model: &self.model, params: &ema_params };
        let x_t = initial_noise(0, n, self.config.model.in_ch, 32, 32).into_backend(ema_params.backend())?;
        sample(&mut den as &mut dyn Denoiser<B>, sched, kind, x_t, 0, &mut |_, _| {})
    }

    /// The epoch the next step belongs to, for a data set of `n_images`.
    pub fn epoch(&self, n_images: usize) -> u64 {
        self.step / (n_images / self.config.batch).max(1) as u64
    }

    /// One training step on the clean batch `x0` (`[B, C, H, W]` in [-1, 1], on the host), with the step's own t
    /// and noise: [`TrainState::train_step_on`] with [`Batch::Host`].
    pub fn train_step(&mut self, sched: &Schedule, x0: &Tensor) -> Result<StepStats> {
        self.train_step_on(sched, Batch::Host(x0))
    }

    /// [`TrainState::queue_step`], then its loss and gradient norm (dropping those of any steps queued before it
    /// and not yet taken): a copy back from the device every step.
    pub fn train_step_on(&mut self, sched: &Schedule, batch: Batch<'_, B>) -> Result<StepStats> {
        self.queue_step(sched, batch)?;
        self.take_stats()?.pop().ok_or_else(|| Error::Arg("a training step left no statistics".into()))
    }

    /// The loss and gradient norm of every step queued since the last call, oldest first (one copy from the
    /// device).
    pub fn take_stats(&mut self) -> Result<Vec<StepStats>> {
        self.stats.take()
    }

    /// One training step on `batch`, with the step's own t and noise (the same numbers wherever they are drawn).
    /// Everything runs on the backend: q_sample drawing its Philox noise (for a [`Batch::Drawn`] also the gather
    /// and t), forward, backward, clipping, AdamW and the EMA. The loss and the gradient norm stay there until
    /// [`TrainState::take_stats`] reads them, so on a GPU the step never waits for the device.
    pub fn queue_step(&mut self, sched: &Schedule, batch: Batch<'_, B>) -> Result<()> {
        self.record_step(sched, batch, None)
    }

    /// [`TrainState::queue_step`]; with a plan (and a drawn batch) the kernels read the step's values from its
    /// current row, the statistics are written to the 3 words of `staged`, and the step's last launch copies them
    /// to the ring and moves the plan on: a step that a graph can replay as the plan's next steps.
    fn record_step(
        &mut self,
        sched: &Schedule,
        batch: Batch<'_, B>,
        planned: Option<(&mut StepPlan<B>, &mut B::Buf)>,
    ) -> Result<()> {
        let (plan, mut staged) = planned.map_or((None, None), |(p, s)| (Some(p), Some(s)));
        let (seed, k) = (self.config.seed, self.step);
        let be = self.params.backend().clone();
        let classes = self.config.model.classes;
        let (shape, noise, (x_t, mut x_operand), t, labels) = match batch {
            Batch::Host(_) if classes > 0 => {
                return Err(Error::Arg("a class-conditional model trains on batches drawn with their labels".into()))
            }
            Batch::Host(_) if plan.is_some() => return Err(Error::Arg("a planned step draws its batch".into())),
            Batch::Host(x0) => {
                let (b, ..) = x0.dims4("training batch")?;
                let t: Vec<usize> =
                    (0..b).map(|i| rng::uniform_below(seed, STREAM_T | k, i as u64, sched.t as u32) as usize).collect();
                let x0 = x0.to_backend(&be)?;
                let (noise, x_t) = be.q_sample(sched, x0.buf(), &t, (seed, STREAM_NOISE | k))?;
                (x0.shape().to_vec(), noise, (x_t, None), StepTimesteps::Host(t), None)
            }
            Batch::Drawn(d) => {
                if d.tables.timesteps != sched.t {
                    return Err(Error::Arg(format!("tables of {} timesteps for T = {}", d.tables.timesteps, sched.t)));
                }
                let mut shape = d.images.shape().to_vec();
                shape[0] = d.batch;
                let per_item = d.images.numel() / d.images.shape()[0].max(1);
                let (images, perm, first, batch) = (d.images.buf(), d.perm, d.first, d.batch);
                let (t_stream, noise_stream) = (STREAM_T | k, STREAM_NOISE | k);
                // x_t written with the first conv's operand too, where the backend has operands.
                let operand_channels = Some(shape[1]);
                let plan = plan.as_deref();
                let draw = BatchDraw {
                    images,
                    per_item,
                    perm,
                    first,
                    batch,
                    seed,
                    t_stream,
                    noise_stream,
                    operand_channels,
                    plan,
                };
                let (noise, x_t, t, x_operand) = be.draw_batch(d.tables, &draw)?;
                let labels = match (classes, d.labels) {
                    (0, _) => None,
                    (_, None) => return Err(Error::Arg("a class-conditional model needs the training labels".into())),
                    (_, Some(labels)) => {
                        let (null, stream) = (classes as u32, STREAM_LABEL_DROP | k);
                        Some(be.draw_labels(&LabelDraw { labels, perm, first, batch, null, seed, stream, plan })?)
                    }
                };
                (shape, noise, (x_t, x_operand), StepTimesteps::Device(t, d.batch), labels)
            }
        };
        let mut grads = match self.grads.take() {
            Some(g) => g,
            None => GradStore::zeros_like(&self.params)?,
        };
        // A planned step's slot was reserved by whoever queues it (outside any capture: reserving may read the ring).
        let (ring, at) = match staged.as_deref_mut() {
            Some(staged) => (staged, 0),
            None => self.stats.slot(&be, self.step)?,
        };
        let taken = (|| {
            grads.grads = {
                let mut tape = Tape::new(&self.params).with_grad_store(&grads);
                let xv = tape.input(Tensor::from_buf(be.clone(), &shape, x_t)?);
                if let Some(op) = x_operand.take() {
                    tape.set_operand(xv, op);
                }
                let nv = tape.input(Tensor::from_buf(be.clone(), &shape, noise)?);
                let eps = self.model.forward_at(&mut tape, xv, t.view(), labels)?;
                // The loss is written into its slot of the statistics' ring: a view of it where the backend has
                // views, else copied there.
                let loss = match be.has_views() {
                    true => tape.mse_into(eps, nv, Tensor::from_buf(be.clone(), &[1], be.view(ring, at, 1)?)?)?,
                    false => {
                        let loss = tape.mse(eps, nv)?;
                        be.copy_into(tape.value(loss).buf(), ring, at)?;
                        loss
                    }
                };
                tape.backward(loss)?
            };
            let opt = (&mut self.opt, &mut self.ema);
            let stats = (&mut *ring, at + 1);
            if let Some((total, coef)) = optim::step(&mut self.params, &mut grads, opt, 1.0, stats, plan.as_deref())? {
                be.copy_into(&be.upload(vec![total, coef])?, ring, at + 1)?;
            }
            Ok(())
        })();
        if taken.is_err() && plan.is_none() {
            self.stats.cancel();
        }
        taken?;
        if let (Some(plan), Some(staged)) = (plan, staged) {
            let ring = self.stats.buf_mut().ok_or_else(|| Error::Arg("a planned step before the ring".into()))?;
            be.advance_plan(plan, staged, ring)?;
        }
        self.grads = Some(grads);
        self.step += 1;
        Ok(())
    }
}
