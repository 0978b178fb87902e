//! The GPU backend's memory: buffers on an [`Executor`]. Its launches are each family's `gpu.rs`. Generic over
//! the executor, so `Gpu<Emulator>` (every test run) and `Gpu<Cuda>` (a real device) run the same launch code.

use super::{Memory, Precision};
use crate::error::Result;
use crate::gpu::{DeviceBuf, Executor, IntBuf};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Block counters a backend holds for last-block reductions: one per output tile of the largest weight gradient
/// (a 3x3 conv of 1024 to 1024 channels has 16 x 144 tiles of 64 x 64).
pub const TICKETS: usize = 4096;

/// A GPU backend: a shared handle to one executor (the emulator or a CUDA device).
pub struct Gpu<E: Executor> {
    exec: Arc<E>,
    precision: Precision,
    /// [`TICKETS`] `int`s, 0 between launches: counts of finished blocks by which the last block of a launch (or
    /// of a tile of one) knows to finish its reduction (and sets its count back to 0). Launches on the executor's
    /// one stream never overlap, so one array serves them all. Uploaded when the backend is made, before any step
    /// (so that no step's buffers change), or, should that fail, at its first use, whose error then says why.
    tickets: Arc<OnceLock<IntBuf<E::Buf>>>,
}

impl<E: Executor> Gpu<E> {
    /// A backend running on `exec` in f32.
    pub fn new(exec: E) -> Self {
        let gpu = Gpu { exec: Arc::new(exec), precision: Precision::Fp32, tickets: Arc::default() };
        let _ = gpu.tickets();
        gpu
    }

    /// This backend's executor with its convolutions and linear layers in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Gpu { precision, ..self }
    }

    /// The executor the kernels run on.
    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// The block counters of last-block reductions (see the field), 0 when no launch is running.
    pub(crate) fn tickets(&self) -> Result<&IntBuf<E::Buf>> {
        if let Some(t) = self.tickets.get() {
            return Ok(t);
        }
        let fresh = self.exec.upload_i32(&[0; TICKETS])?;
        Ok(self.tickets.get_or_init(|| fresh))
    }
}

impl<E: Executor> Clone for Gpu<E> {
    fn clone(&self) -> Self {
        Gpu { exec: self.exec.clone(), precision: self.precision, tickets: self.tickets.clone() }
    }
}

impl<E: Executor> fmt::Debug for Gpu<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({}, {})", self.exec.describe(), self.precision.name())
    }
}

impl<E: Executor> Memory for Gpu<E> {
    type Buf = E::Buf;
    type Idx = IntBuf<E::Buf>;

    fn describe(&self) -> String {
        self.exec.describe()
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn at_precision(&self, precision: Precision) -> Result<Self> {
        Ok(self.clone().with_precision(precision))
    }
    fn buf_len(buf: &E::Buf) -> usize {
        buf.len()
    }
    fn alloc(&self, len: usize) -> Result<E::Buf> {
        self.exec.alloc(len)
    }
    fn full(&self, len: usize, v: f32) -> Result<E::Buf> {
        // Filled by a kernel, not uploaded: the loss's seed gradient would otherwise cross the bus every step.
        let mut out = self.exec.alloc(len)?;
        crate::ops::reduce::gpu::fill(&*self.exec, &mut out, v)?;
        Ok(out)
    }
    fn upload(&self, data: Vec<f32>) -> Result<E::Buf> {
        self.exec.upload(&data)
    }
    fn download(&self, buf: &E::Buf) -> Result<Vec<f32>> {
        self.exec.download(buf)
    }
    fn synchronize(&self) -> Result<()> {
        self.exec.synchronize()
    }
    fn copy(&self, buf: &E::Buf) -> Result<E::Buf> {
        let mut out = self.exec.alloc(buf.len())?;
        crate::ops::reduce::gpu::copy_at(&*self.exec, buf, &mut out, 0)?;
        Ok(out)
    }
    fn copy_into(&self, src: &E::Buf, dst: &mut E::Buf, at: usize) -> Result<()> {
        crate::ops::reduce::gpu::copy_at(&*self.exec, src, dst, at)
    }
    fn reads_wait(&self) -> bool {
        true
    }
    fn has_views(&self) -> bool {
        true
    }
    fn view(&self, arena: &E::Buf, offset: usize, len: usize) -> Result<E::Buf> {
        self.exec.view(arena, offset, len)
    }
    fn same_words(&self, a: &E::Buf, b: &E::Buf) -> bool {
        self.exec.same_words(a, b)
    }
    fn upload_indices(&self, data: &[u32]) -> Result<IntBuf<E::Buf>> {
        self.exec.upload_i32(data)
    }
    fn share_indices(&self, idx: &IntBuf<E::Buf>) -> Result<IntBuf<E::Buf>> {
        self.exec.view_i32(idx)
    }
    fn download_indices(&self, idx: &IntBuf<E::Buf>) -> Result<Vec<u32>> {
        self.exec.download_i32(idx)
    }
    type Graph = crate::gpu::graph::Graph<E>;
    fn has_graphs(&self) -> bool {
        true
    }
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Self::Graph> {
        crate::gpu::graph::capture(&*self.exec, work)
    }
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        crate::gpu::graph::replay(&*self.exec, graph)
    }
}
