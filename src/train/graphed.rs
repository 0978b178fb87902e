//! Training steps replayed from a captured graph ([`crate::gpu::graph`]): the first step of an epoch (or of a
//! run's stretch of it) is captured with a [`StepPlan`] of the epoch's remaining steps and run; every later step of
//! the epoch is one replay of it, with no host work per kernel. The results are those of the steps queued one by
//! one, to the bit: the plan holds the values each step would have passed itself.

use super::{Batch, Batcher, PlanRow, StatsRing, StepPlan, TrainState};
use super::{STREAM_LABEL_DROP, STREAM_NOISE, STREAM_T};
use crate::backend::Backend;
use crate::diffusion::Schedule;
use crate::error::{Error, Result};
use std::ops::Range;

/// The plan of an epoch's remaining steps, with the graph of a step captured with it once there is one.
pub struct GraphedStep<B: Backend> {
    /// `None` until a step is captured.
    graph: Option<B::Graph>,
    plan: StepPlan<B>,
    /// The 3 words each step stages its statistics in.
    staged: B::Buf,
    /// The epoch whose permutation the steps read.
    epoch: u64,
    /// The step of the plan's first row.
    first_step: u64,
}

impl<B: Backend> GraphedStep<B> {
    /// Whether a step has been captured with the plan.
    pub fn captured(&self) -> bool {
        self.graph.is_some()
    }

    /// Whether the plan's next row is `step`, of `epoch`.
    pub fn serves(&self, epoch: u64, step: u64) -> bool {
        self.epoch == epoch && self.next_step() == step && self.plan.rows().remaining() > 0
    }

    /// The step of the plan's next row.
    fn next_step(&self) -> u64 {
        self.first_step + self.plan.rows().taken() as u64
    }
}

impl<B: Backend> TrainState<B> {
    /// The plan of `steps` (the state's next step first) of epoch `epoch`, uploaded, with their batches where
    /// `batcher` places them and the optimiser's scalars of each (AdamW's step count and the EMA's updates go on
    /// with the run's steps).
    pub fn plan(&self, batcher: &Batcher, epoch: u64, steps: Range<u64>) -> Result<GraphedStep<B>> {
        if steps.start != self.step {
            return Err(Error::Arg(format!("a plan from step {} for a run at step {}", steps.start, self.step)));
        }
        let first_step = steps.start;
        let rows: Vec<PlanRow> = steps
            .map(|s| {
                let ahead = s - self.step;
                PlanRow {
                    first: batcher.position(s).1,
                    t_stream: STREAM_T | s,
                    noise_stream: STREAM_NOISE | s,
                    label_stream: STREAM_LABEL_DROP | s,
                    stats_word: StatsRing::<B>::word_of(s),
                    adam: self.opt.scalars(self.opt.step + 1 + ahead),
                    ema: self.ema.scalars_at(self.ema.updates + ahead),
                }
            })
            .collect();
        let be = self.params.backend();
        Ok(GraphedStep { graph: None, plan: StepPlan::new(be, &rows)?, staged: be.alloc(3)?, epoch, first_step })
    }

    /// Queues the next step (on `batch`, drawn) with `graphed`'s plan, whose next row it must be: one replay of
    /// its graph when it has one; else, when `capture`, the step captured into it, then run; else the step run
    /// launch by launch, reading the plan as a captured step does. The three give the same bits as
    /// [`TrainState::queue_step`]. Capturing needs a step run before with the device's cache in the same state
    /// (the plan and its staging buffer alive), so that the cache serves every allocation of the capture: the first
    /// step of a run, or of a resumed one, runs without capture.
    pub fn queue_graphed(
        &mut self,
        sched: &Schedule,
        batch: Batch<'_, B>,
        graphed: &mut GraphedStep<B>,
        capture: bool,
    ) -> Result<()> {
        if graphed.next_step() != self.step || graphed.plan.rows().remaining() == 0 {
            return Err(Error::Arg(format!("a plan at step {} for the run's step {}", graphed.next_step(), self.step)));
        }
        let be = self.params.backend().clone();
        self.stats.reserve(&be, self.step)?;
        let queued = match (&graphed.graph, capture) {
            (Some(graph), _) => graphed.plan.rows_mut().take_row().and_then(|()| be.replay(graph)).map(|()| {
                // What the step's host code would have counted (record_step and optim::step).
                crate::optim::count_flat_step(&mut self.opt, &mut self.ema);
                self.step += 1;
            }),
            (None, false) => self.record_step(sched, batch, Some((&mut graphed.plan, &mut graphed.staged))),
            (None, true) => {
                let (mut batch, GraphedStep { plan, staged, .. }) = (Some(batch), &mut *graphed);
                let graph = be.capture(&mut || {
                    let batch = batch.take().ok_or_else(|| Error::Arg("a step captured twice".into()))?;
                    self.record_step(sched, batch, Some((plan, staged)))
                });
                graph.and_then(|g| be.replay(graphed.graph.insert(g)))
            }
        };
        if queued.is_err() {
            self.stats.cancel();
        }
        queued
    }
}
