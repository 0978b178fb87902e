//! The training step's plan: what changes from one step to the next, in device memory, so that one captured step
//! (a CUDA graph, [`crate::gpu::graph`]) replays as every step of an epoch. A step's launches are the same from
//! step to step but for a few values: where its batch starts in the epoch's permutation, the Philox streams of its
//! timesteps, noise and label drops, where its statistics go in the ring, AdamW's bias corrections and the EMA's
//! decay. The host computes them for every step the plan covers (as an unplanned step computes its own, so the
//! bits are the same) and uploads them once; the kernels that need them read the current row, and the step's last
//! launch (`plan_advance`) moves the plan on to the next.
//!
//! Layout (`PLAN_*` in kernels/common.cuh): word 0 is the current row, row r is words `1 + r·ROW ..`.

use crate::backend::Memory;
use crate::error::{Error, Result};
use crate::optim::AdamWScalars;

/// Words per row (`PLAN_ROW`).
const ROW: usize = 12;

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
        let word = |v: usize| u32::try_from(v).map(f32::from_bits).map_err(|_| Error::Arg(format!("plan value {v}")));
        let pair = |v: u64| [f32::from_bits(v as u32), f32::from_bits((v >> 32) as u32)];
        let [t0, t1] = pair(self.t_stream);
        let [n0, n1] = pair(self.noise_stream);
        let [l0, l1] = pair(self.label_stream);
        let (first, stats) = (word(self.first)?, word(self.stats_word)?);
        let a = &self.adam;
        Ok([first, t0, t1, n0, n1, l0, l1, stats, a.neg_step_size, a.bc2_sqrt, self.ema.0, self.ema.1])
    }
}

/// The plan of consecutive steps on backend `M`, and how many of them have been taken.
pub struct StepPlan<M: Memory> {
    buf: M::Buf,
    rows: usize,
    taken: usize,
    /// The largest `first` of any row and the end of the largest statistics words, which launchers check against
    /// the buffers the kernels index with them.
    max_first: usize,
    stats_end: usize,
}

impl<M: Memory> StepPlan<M> {
    /// The plan of `rows`, uploaded to `backend`, at its first row.
    pub fn new(backend: &M, rows: &[PlanRow]) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::Arg("a step plan needs at least one step".into()));
        }
        let mut words = vec![f32::from_bits(0)];
        for r in rows {
            words.extend(r.words()?);
        }
        let max_first = rows.iter().map(|r| r.first).max().unwrap_or(0);
        let stats_end = rows.iter().map(|r| r.stats_word + 3).max().unwrap_or(0);
        Ok(StepPlan { buf: backend.upload(words)?, rows: rows.len(), taken: 0, max_first, stats_end })
    }

    /// The plan's words on the backend.
    pub fn buf(&self) -> &M::Buf {
        &self.buf
    }

    /// The plan's words, for `plan_advance` to move on.
    pub(crate) fn buf_mut(&mut self) -> &mut M::Buf {
        &mut self.buf
    }

    /// The largest first position of a batch in the permutation over all rows.
    pub fn max_first(&self) -> usize {
        self.max_first
    }

    /// One past the last statistics word any row writes.
    pub fn stats_end(&self) -> usize {
        self.stats_end
    }

    /// Steps taken so far (queued on the device).
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// Steps left to take.
    pub fn remaining(&self) -> usize {
        self.rows - self.taken
    }

    /// Counts a step queued on the device, which moves the plan on a row when it ends; `Err` when the plan has no
    /// row left for it (the kernels would read past the plan).
    pub(crate) fn take_row(&mut self) -> Result<()> {
        if self.taken == self.rows {
            return Err(Error::Arg(format!("the step plan's {} rows are all taken", self.rows)));
        }
        self.taken += 1;
        Ok(())
    }
}
