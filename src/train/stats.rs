//! The loss and gradient norm of each training step, kept where they are computed until read: on a GPU a copy
//! back to the host waits for the device, so a step writes its numbers into a ring on the device and the host reads
//! the ring every few steps (when it logs, checkpoints or the ring is full), not every step.

use super::StepStats;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Steps the ring holds: a read every 256 steps at most, of 3 KiB.
pub const RING_STEPS: usize = 256;
/// Words per step: loss, total gradient norm, clip coefficient.
const WORDS: usize = 3;

/// The ring and which of its slots hold steps not yet read.
#[derive(Clone, Debug)]
pub struct StatsRing<B: Backend> {
    ring: Option<Tensor<B>>,
    /// Slots written and not yet read, oldest first.
    pending: Vec<usize>,
    /// Steps read from the ring (to make room) and not yet taken.
    ready: Vec<StepStats>,
}

impl<B: Backend> Default for StatsRing<B> {
    fn default() -> Self {
        StatsRing { ring: None, pending: Vec::new(), ready: Vec::new() }
    }
}

impl<B: Backend> StatsRing<B> {
    /// The ring's buffer and the first word of the slot for `step`, reading the ring first when that slot still
    /// holds a step not yet read.
    pub fn slot(&mut self, backend: &B, step: u64) -> Result<(&mut B::Buf, usize)> {
        let at = self.reserve(backend, step)?;
        Ok((self.buf_mut().expect("made by reserve"), at))
    }

    /// Marks the slot of `step` as written (reading the ring first when it still holds a step not yet read, and
    /// making the ring at first use); its first word.
    pub fn reserve(&mut self, backend: &B, step: u64) -> Result<usize> {
        let slot = (step % RING_STEPS as u64) as usize;
        if self.pending.contains(&slot) {
            self.read()?;
        }
        if self.ring.is_none() {
            let words = backend.full(RING_STEPS * WORDS, 0.0)?;
            self.ring = Some(Tensor::from_buf(backend.clone(), &[RING_STEPS * WORDS], words)?);
        }
        self.pending.push(slot);
        Ok(Self::word_of(step))
    }

    /// The first word of `step`'s slot.
    pub fn word_of(step: u64) -> usize {
        (step % RING_STEPS as u64) as usize * WORDS
    }

    /// The ring, once made.
    pub fn buf_mut(&mut self) -> Option<&mut B::Buf> {
        self.ring.as_mut().map(Tensor::buf_mut)
    }

    /// Forgets the slot just handed out by [`StatsRing::slot`] (its step failed before writing it).
    pub fn cancel(&mut self) {
        self.pending.pop();
    }

    /// Every step written since the last call, oldest first: one copy from the device when any are pending.
    pub fn take(&mut self) -> Result<Vec<StepStats>> {
        self.read()?;
        Ok(std::mem::take(&mut self.ready))
    }

    fn read(&mut self) -> Result<()> {
        let (Some(ring), false) = (&self.ring, self.pending.is_empty()) else { return Ok(()) };
        let words = ring.backend().download(ring.buf())?;
        for slot in self.pending.drain(..) {
            let w = words.get(slot * WORDS..slot * WORDS + WORDS).ok_or_else(|| Error::Shape("stats ring".into()))?;
            self.ready.push(StepStats { loss: w[0], grad_norm: w[1] });
        }
        Ok(())
    }
}
