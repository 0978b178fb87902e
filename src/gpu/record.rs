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

/// Free buffers per size class.
type FreeList = Arc<Mutex<HashMap<usize, usize>>>;

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
        *free.lock().unwrap_or_else(|e| e.into_inner()).entry(size_class(self.len)).or_default() += 1;
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

    fn take(&self, len: usize) -> RecBuf {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.get_mut(&size_class(len)) {
            Some(n) if *n > 0 => *n -= 1,
            _ => self.counters.allocated(),
        }
        let id = (self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed), 0);
        RecBuf { len, free: Some(self.free.clone()), id }
    }
}

impl Executor for Recorder {
    type Buf = RecBuf;

    fn describe(&self) -> String {
        "launch recorder (counts and checks launches, runs no kernel)".into()
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn alloc(&self, len: usize) -> Result<RecBuf> {
        Ok(self.take(len))
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
        self.counters.uploaded(data.len());
        Ok(self.take(data.len()))
    }
    fn download(&self, buf: &RecBuf) -> Result<Vec<f32>> {
        self.counters.downloaded(buf.len);
        Ok(vec![0.0; buf.len])
    }
    fn synchronize(&self) -> Result<()> {
        self.counters.synchronized();
        Ok(())
    }
    unsafe fn launch(&self, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<RecBuf>]) -> Result<()> {
        check_launch(kernel, cfg, args)
    }
}
