//! An executor that runs nothing: it checks and counts every launch, allocation and copy of the real launch
//! sequence at full size, with buffers that hold no memory, so a step's demands (and, through a
//! [`DeviceModel`](super::model::DeviceModel), its time) can be read on a machine without a GPU in seconds.
//!
//! Downloads return zeros: the launch sequence of a training or sampling step does not depend on the values it
//! computes. Allocations are counted as the CUDA executor's caching allocator would make them (a buffer freed
//! returns to its size class and serves the next request of that class), so [`Counts::allocs`] predicts the
//! device allocations of a real run.
//!
//! [`Counts::allocs`]: super::count::Counts::allocs

use super::count::Counters;
use super::cuda::size_class;
use super::{check_launch, Arg, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Free buffers per size class, as the CUDA executor's cache holds them; during a graph capture, those freed by the
/// capture apart (the graph will own them).
type FreeList = Arc<Mutex<Free>>;

#[derive(Default)]
struct Free {
    classes: HashMap<usize, usize>,
    capture: Option<HashMap<usize, usize>>,
}

impl Free {
    /// Where a buffer freed now goes.
    fn freed(&mut self) -> &mut HashMap<usize, usize> {
        self.capture.as_mut().unwrap_or(&mut self.classes)
    }
}

/// A capture's graph: the counts per size class it keeps out of the cache while it lives, as the CUDA executor's
/// graph keeps the buffers that its capture freed.
pub struct RecGraph {
    held: HashMap<usize, usize>,
    free: FreeList,
}

impl Drop for RecGraph {
    fn drop(&mut self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for (&class, &n) in &self.held {
            *free.freed().entry(class).or_default() += n;
        }
    }
}

/// A buffer without memory: a length, and its size class's free list to return to (none for a view, whose
/// allocation belongs to the buffer it was made from).
pub struct RecBuf {
    len: usize,
    free: Option<FreeList>,
    /// The allocation (a number unique to it) and the view's first word in it.
    id: (u64, usize),
}

impl std::fmt::Debug for RecBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecBuf[{} words]", self.len)
    }
}

impl DeviceBuf for RecBuf {
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for RecBuf {
    fn drop(&mut self) {
        let Some(free) = &self.free else { return };
        *free.lock().unwrap_or_else(|e| e.into_inner()).freed().entry(size_class(self.len)).or_default() += 1;
    }
}

/// The recording executor.
#[derive(Default)]
pub struct Recorder {
    counters: Counters,
    free: FreeList,
    next_id: std::sync::atomic::AtomicU64,
}

impl Recorder {
    /// A recorder with nothing counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer of `len` words: from the cache when it holds one of the size class (first those a capture in
    /// progress freed), else a new allocation, which a capture refuses as the CUDA executor does.
    fn take(&self, len: usize) -> Result<RecBuf> {
        let class = size_class(len);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let Free { classes, capture } = &mut *free;
        let capturing = capture.is_some();
        let cached =
            [capture.as_mut(), Some(classes)].into_iter().flatten().find_map(|m| m.get_mut(&class).filter(|n| **n > 0));
        match (cached, capturing) {
            (Some(n), _) => *n -= 1,
            (None, false) => self.counters.allocated(),
            (None, true) => return Err(super::graph::alloc_error(len)),
        }
        let id = (self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed), 0);
        Ok(RecBuf { len, free: Some(self.free.clone()), id })
    }

    /// `Err` when a capture is on: `what` (a copy or a wait) would not be part of the graph.
    fn outside_capture(&self, what: &str) -> Result<()> {
        match self.free.lock().unwrap_or_else(|e| e.into_inner()).capture.is_some() {
            true => Err(super::graph::copy_error(what)),
            false => Ok(()),
        }
    }
}

impl Executor for Recorder {
    type Buf = RecBuf;
    type Graph = RecGraph;

    fn describe(&self) -> String {
        "launch recorder (counts and checks launches, runs no kernel)".into()
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn alloc(&self, len: usize) -> Result<RecBuf> {
        self.take(len)
    }
    fn view(&self, buf: &RecBuf, offset: usize, len: usize) -> Result<RecBuf> {
        if offset + len > buf.len {
            return Err(Error::Device(format!(
                "a view of words {offset}..{} of a {}-word buffer",
                offset + len,
                buf.len
            )));
        }
        Ok(RecBuf { len, free: None, id: (buf.id.0, buf.id.1 + offset) })
    }
    fn same_words(&self, a: &RecBuf, b: &RecBuf) -> bool {
        (a.id, a.len) == (b.id, b.len)
    }
    fn upload(&self, data: &[f32]) -> Result<RecBuf> {
        self.outside_capture("a copy to the device")?;
        self.counters.uploaded(data.len());
        self.take(data.len())
    }
    fn download(&self, buf: &RecBuf) -> Result<Vec<f32>> {
        self.outside_capture("a copy from the device")?;
        self.counters.downloaded(buf.len);
        Ok(vec![0.0; buf.len])
    }
    fn synchronize(&self) -> Result<()> {
        self.outside_capture("a wait for the device")?;
        self.counters.synchronized();
        Ok(())
    }
    unsafe fn launch(&self, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<RecBuf>]) -> Result<()> {
        check_launch(kernel, cfg, args)
    }
    fn begin_capture(&self) -> Result<()> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.capture.is_some() {
            return Err(Error::Device("a graph capture began inside another".into()));
        }
        free.capture = Some(HashMap::new());
        Ok(())
    }
    fn end_capture(&self) -> Result<RecGraph> {
        let held = self.free.lock().unwrap_or_else(|e| e.into_inner()).capture.take();
        let held = held.ok_or_else(|| Error::Device("no graph capture to end".into()))?;
        Ok(RecGraph { held, free: self.free.clone() })
    }
    fn replay(&self, _graph: &RecGraph) -> Result<()> {
        self.outside_capture("replaying a graph")
    }
}
