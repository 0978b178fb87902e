//! Captured launch sequences (CUDA graphs): a step's launches recorded once and replayed as one submission, so
//! that a small model's step costs one launch of host time instead of one per kernel.
//!
//! Every executor captures through the same two calls: [`capture`] runs the host code of a step while the executor
//! records its launches instead of running them, and [`replay`] runs the recording. On a CUDA device the recording
//! is a CUDA graph; the emulator keeps each launch's argument values (pointers included) and runs them again, so a
//! capture that would misbehave on a device (a host read of a value the step computes, a buffer freed between two
//! replays, a value that changes from step to step baked into an argument) misbehaves on the emulator too.
//!
//! What a capture requires, on every executor: no copy to or from the host and no wait inside it (they would not be
//! part of the graph); on a CUDA device no allocation the caching allocator cannot serve (a warm-up step run
//! without capture fills the cache). A graph owns every buffer its launches touch, so their addresses stay valid
//! and unshared for as long as it lives; what changes from replay to replay must be read by the kernels from
//! device memory.

use super::count::Launch;
use super::Executor;
use crate::error::Result;

/// A captured launch sequence on executor `E`, with the launches it makes (for the counters).
pub struct Graph<E: Executor> {
    raw: E::Graph,
    launches: Vec<Launch>,
}

impl<E: Executor> Graph<E> {
    /// The launches one replay makes, in order.
    pub fn launches(&self) -> &[Launch] {
        &self.launches
    }
}

impl<E: Executor> std::fmt::Debug for Graph<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph[{} launches]", self.launches.len())
    }
}

/// Runs `work` with `e` capturing its launches instead of running them, and returns them as a graph. Nothing has
/// run when it returns: [`replay`] runs it. The capture ends whether or not `work` succeeds.
pub fn capture<E: Executor>(e: &E, work: &mut dyn FnMut() -> Result<()>) -> Result<Graph<E>> {
    e.begin_capture()?;
    e.counters().begin_capture();
    let done = work();
    let launches = e.counters().end_capture();
    let raw = e.end_capture();
    done?;
    Ok(Graph { raw: raw?, launches })
}

/// Queues one run of `graph` on `e`'s stream (the emulator runs it at once).
pub fn replay<E: Executor>(e: &E, graph: &Graph<E>) -> Result<()> {
    e.replay(&graph.raw)?;
    e.counters().replayed(&graph.launches);
    Ok(())
}

/// The error for `what` (a copy to or from the host, a wait, a replay) asked for while a capture is on: it would
/// not be part of the graph.
pub(crate) fn copy_error(what: &str) -> crate::error::Error {
    crate::error::Error::Device(format!(
        "{what} during a graph capture: a graph holds only launches (run a step without capture first, so that \
         everything it uploads once is on the device)"
    ))
}

/// The error for an allocation of `len` words that the cache cannot serve while a capture is on.
pub(crate) fn alloc_error(len: usize) -> crate::error::Error {
    crate::error::Error::Device(format!(
        "an allocation of {len} words during a graph capture that the cache cannot serve (run the step once \
         without capture first, so that the cache holds what it allocates)"
    ))
}
