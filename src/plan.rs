//! Plans: what changes from one step of a loop to the next, in device memory, so that one captured step (a CUDA
//! graph, [`crate::gpu::graph`]) replays as every step. The host computes each step's values as the step would
//! compute its own (so the bits are the same), uploads them once, and the kernels that need them read the current
//! row; the step's last launch (`plan_advance`) moves the plan on to the next. The training step's plan is
//! [`crate::train::StepPlan`], a sampler's [`crate::diffusion::SamplerPlan`].
//!
//! Layout (`PLAN_ROW`, `plan_row` in kernels/common.cuh): word 0 is the current row (an unsigned int's bits), row r
//! is words `1 + r·ROW ..`, integers stored as their bits.

use crate::backend::Memory;
use crate::error::{Error, Result};

/// Words per row (`PLAN_ROW`).
pub(crate) const ROW: usize = 12;

/// A plan's rows on backend `M`, and how many of them have been taken.
pub struct Plan<M: Memory> {
    buf: M::Buf,
    rows: usize,
    taken: usize,
}

impl<M: Memory> Plan<M> {
    /// `rows` uploaded to `backend`, at the first row.
    pub(crate) fn new(backend: &M, rows: &[[f32; ROW]]) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::Arg("a plan needs at least one step".into()));
        }
        let words = std::iter::once(f32::from_bits(0)).chain(rows.iter().flatten().copied()).collect();
        Ok(Plan { buf: backend.upload(words)?, rows: rows.len(), taken: 0 })
    }

    /// The plan's words on the backend.
    pub fn buf(&self) -> &M::Buf {
        &self.buf
    }

    /// The plan's words, for `plan_advance` to move on.
    pub(crate) fn buf_mut(&mut self) -> &mut M::Buf {
        &mut self.buf
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
            return Err(Error::Arg(format!("the plan's {} rows are all taken", self.rows)));
        }
        self.taken += 1;
        Ok(())
    }
}

/// `v` as a plan word (its bits); `Err` above `u32::MAX`.
pub(crate) fn word(v: usize) -> Result<f32> {
    u32::try_from(v).map(f32::from_bits).map_err(|_| Error::Arg(format!("plan value {v} does not fit a word")))
}

/// `v` as two plan words, the low half first.
pub(crate) fn pair(v: u64) -> [f32; 2] {
    [f32::from_bits(v as u32), f32::from_bits((v >> 32) as u32)]
}
