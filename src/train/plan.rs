//! The training step's plan ([`crate::plan`]): a step's launches are the same from step to step but for a few
//! values: where its batch starts in the epoch's permutation, the Philox streams of its timesteps, noise and label
//! drops, where its statistics go in the ring, AdamW's bias corrections and the EMA's decay. Row layout: `PLAN_*`
//! in kernels/common.cuh.

use crate::backend::Memory;
use crate::error::Result;
use crate::optim::AdamWScalars;
use crate::plan::{pair, word, Plan, ROW};

/// One step's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanRow {
    /// The batch's first position in the epoch's permutation.
    pub first: usize,
    pub t_stream: u64,
    pub noise_stream: u64,
    pub label_stream: u64,
    /// The first of the step's 3 words (loss, gradient norm, clip coefficient) in the statistics ring.
    pub stats_word: usize,
    /// AdamW's scalars of the step (only the bias corrections change from step to step).
    pub adam: AdamWScalars,
    /// The EMA's `(d, 1 - d)`.
    pub ema: (f32, f32),
}

impl PlanRow {
    /// The row's words, in `PLAN_*` order.
    fn words(&self) -> Result<[f32; ROW]> {
        let [t0, t1] = pair(self.t_stream);
        let [n0, n1] = pair(self.noise_stream);
        let [l0, l1] = pair(self.label_stream);
        let (first, stats) = (word(self.first)?, word(self.stats_word)?);
        let a = &self.adam;
        Ok([first, t0, t1, n0, n1, l0, l1, stats, a.neg_step_size, a.bc2_sqrt, self.ema.0, self.ema.1])
    }
}

/// The plan of consecutive training steps on backend `M`.
pub struct StepPlan<M: Memory> {
    rows: Plan<M>,
    /// The largest `first` of any row and the end of the largest statistics words, which launchers check against
    /// the buffers the kernels index with them.
    max_first: usize,
    stats_end: usize,
}

impl<M: Memory> StepPlan<M> {
    /// The plan of `rows`, uploaded to `backend`, at its first row.
    pub fn new(backend: &M, rows: &[PlanRow]) -> Result<Self> {
        let words = rows.iter().map(PlanRow::words).collect::<Result<Vec<_>>>()?;
        let max_first = rows.iter().map(|r| r.first).max().unwrap_or(0);
        let stats_end = rows.iter().map(|r| r.stats_word + 3).max().unwrap_or(0);
        Ok(StepPlan { rows: Plan::new(backend, &words)?, max_first, stats_end })
    }

    /// The plan's words on the backend.
    pub fn buf(&self) -> &M::Buf {
        self.rows.buf()
    }

    /// The rows and how many have been taken.
    pub fn rows(&self) -> &Plan<M> {
        &self.rows
    }

    pub(crate) fn rows_mut(&mut self) -> &mut Plan<M> {
        &mut self.rows
    }

    /// The largest first position of a batch in the permutation over all rows.
    pub fn max_first(&self) -> usize {
        self.max_first
    }

    /// One past the last statistics word any row writes.
    pub fn stats_end(&self) -> usize {
        self.stats_end
    }
}
