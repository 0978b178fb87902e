//! What a run asks of a device, counted as it goes: every executor keeps [`Counters`] (launches, host syncs, bytes
//! over the bus, device allocations), and every launcher declares the [`Cost`] of its launch (tensor-core and plain
//! FLOPs, DRAM bytes) from its shapes, so that a run's demands can be read without timing anything and turned into
//! a time by a [`DeviceModel`](super::model::DeviceModel).

use super::{Kernel, LaunchCfg};
use std::sync::{Mutex, MutexGuard};

/// The work of one launch, declared by its launcher from the shapes: what the kernel executes (padding and skipped
/// taps included) and the DRAM traffic it needs at least (each operand read once, each result written once; reuse
/// through caches not counted as traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// FLOPs on the tensor cores (an FMA counts 2).
    pub tc_flops: u64,
    /// FLOPs on the ordinary f32 units (an FMA counts 2; a transcendental counts 1).
    pub fp32_flops: u64,
    /// Bytes read from and written to device memory.
    pub dram_bytes: u64,
}

impl Cost {
    /// A pass that reads `read` and writes `written` f32 words, with `flops_per` f32 operations per written word.
    pub fn pass(read: usize, written: usize, flops_per: usize) -> Self {
        Cost { tc_flops: 0, fp32_flops: (written * flops_per) as u64, dram_bytes: 4 * (read + written) as u64 }
    }

    /// Moves `bytes` with no arithmetic to speak of.
    pub fn bytes(bytes: usize) -> Self {
        Cost { tc_flops: 0, fp32_flops: 0, dram_bytes: bytes as u64 }
    }

    /// `flops` on the ordinary f32 units, moving `bytes`.
    pub fn simt(flops: usize, bytes: usize) -> Self {
        Cost { tc_flops: 0, fp32_flops: flops as u64, dram_bytes: bytes as u64 }
    }

    /// `flops` on the tensor cores, moving `bytes`.
    pub fn tensor(flops: usize, bytes: usize) -> Self {
        Cost { tc_flops: flops as u64, fp32_flops: 0, dram_bytes: bytes as u64 }
    }

    /// Both costs, as of one launch doing both.
    pub fn plus(mut self, o: Cost) -> Self {
        self.add(o);
        self
    }

    fn add(&mut self, o: Cost) {
        self.tc_flops += o.tc_flops;
        self.fp32_flops += o.fp32_flops;
        self.dram_bytes += o.dram_bytes;
    }
}

/// One launch as the counters saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: Kernel,
    pub cfg: LaunchCfg,
    pub cost: Cost,
}

impl Launch {
    /// Blocks in the grid.
    pub fn blocks(&self) -> u64 {
        self.cfg.grid.iter().map(|&g| g as u64).product()
    }
}

/// Totals since the executor was made (or between two snapshots, by [`Counts::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Kernel launches.
    pub launches: u64,
    /// Times the host waited for the device: each download and each synchronize.
    pub host_syncs: u64,
    /// Bytes copied host to device.
    pub h2d_bytes: u64,
    /// Bytes copied device to host.
    pub d2h_bytes: u64,
    /// Buffers obtained from the device's allocator (a CUDA executor's allocation that its cache could not serve).
    pub allocs: u64,
    /// Replays of captured launch sequences (CUDA graphs); their launches are counted in `launches` too.
    pub graph_launches: u64,
    /// The launches' declared work, summed.
    pub cost: Cost,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            launches: self.launches - earlier.launches,
            host_syncs: self.host_syncs - earlier.host_syncs,
            h2d_bytes: self.h2d_bytes - earlier.h2d_bytes,
            d2h_bytes: self.d2h_bytes - earlier.d2h_bytes,
            allocs: self.allocs - earlier.allocs,
            graph_launches: self.graph_launches - earlier.graph_launches,
            cost: Cost {
                tc_flops: self.cost.tc_flops - earlier.cost.tc_flops,
                fp32_flops: self.cost.fp32_flops - earlier.cost.fp32_flops,
                dram_bytes: self.cost.dram_bytes - earlier.cost.dram_bytes,
            },
        }
    }
}

#[derive(Default)]
struct State {
    counts: Counts,
    /// Every launch since [`Counters::record`], while recording.
    log: Option<Vec<Launch>>,
    /// The launches of the graph being captured, which run (and count) only when it is replayed.
    captured: Option<Vec<Launch>>,
}

/// An executor's running totals. Cheap enough to keep always; the per-launch log only while asked for.
#[derive(Default)]
pub struct Counters(Mutex<State>);

impl State {
    fn count(&mut self, launch: &Launch) {
        self.counts.launches += 1;
        self.counts.cost.add(launch.cost);
        if let Some(log) = self.log.as_mut() {
            log.push(*launch);
        }
    }
}

impl Counters {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers, valid whatever a panicking holder was doing.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The totals so far.
    pub fn snapshot(&self) -> Counts {
        self.state().counts
    }

    /// Starts (or restarts) the log of launches that [`Counters::take_log`] returns.
    pub fn record(&self) {
        self.state().log = Some(Vec::new());
    }

    /// The launches since [`Counters::record`]; stops the log.
    pub fn take_log(&self) -> Vec<Launch> {
        self.state().log.take().unwrap_or_default()
    }

    pub(crate) fn launched(&self, kernel: Kernel, cfg: LaunchCfg, cost: Cost) {
        let launch = Launch { kernel, cfg, cost };
        let mut s = self.state();
        match s.captured.as_mut() {
            Some(captured) => captured.push(launch),
            None => s.count(&launch),
        }
    }

    /// From now until [`Counters::end_capture`], launches are kept for the graph instead of counted.
    pub(crate) fn begin_capture(&self) {
        self.state().captured = Some(Vec::new());
    }

    /// The launches captured since [`Counters::begin_capture`].
    pub(crate) fn end_capture(&self) -> Vec<Launch> {
        self.state().captured.take().unwrap_or_default()
    }

    /// One replay of a graph of `launches`: each counted as launched.
    pub(crate) fn replayed(&self, launches: &[Launch]) {
        let mut s = self.state();
        s.counts.graph_launches += 1;
        for l in launches {
            s.count(l);
        }
    }

    pub(crate) fn uploaded(&self, words: usize) {
        self.state().counts.h2d_bytes += 4 * words as u64;
    }

    /// A download of `words` words, which waits for the device.
    pub(crate) fn downloaded(&self, words: usize) {
        let mut s = self.state();
        s.counts.d2h_bytes += 4 * words as u64;
        s.counts.host_syncs += 1;
    }

    pub(crate) fn synchronized(&self) {
        self.state().counts.host_syncs += 1;
    }

    pub(crate) fn allocated(&self) {
        self.state().counts.allocs += 1;
    }
}
