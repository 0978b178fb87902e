//! The CPU emulator of the CUDA launch model (runtime in `emu/runtime.cpp`, language shim in `emu/shim.h`).
//!
//! A launch runs every block of the grid; the blocks are shared among a few OS threads, and inside a block each
//! CUDA thread is a fiber that runs until its next barrier. The runtime refuses launches a GPU would refuse
//! (more than 1024 threads, oversized grids, more dynamic shared memory than the kernel may use: 48 KiB unless it
//! opts in to more), and [`check_launch`] those above a kernel's `__launch_bounds__`; it fills dynamic shared
//! memory before each block with the word `0x7fc07fc0` (a NaN read as f32 and as either bf16 half), and reports
//! divergent `__syncthreads()`, divergent or partial-warp shuffles and tensor-core instructions, misused `cp.async`
//! and deadlocks with the source lines involved, as an [`Error::Device`]. Buffers carry guard words after their
//! end that are checked after each launch, so an out-of-bounds write is an error naming the argument.
//!
//! The fibers of a block run in a [`ThreadOrder`]; a correct kernel computes the same bits in every order, so
//! running a test in another order (`EMU_THREAD_ORDER`) exposes a barrier missing between one thread's
//! shared-memory write and another thread's read, which the default order may hide.

use super::count::Counters;
use super::{check_launch, Arg, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::error::{Error, Result};
use std::ffi::c_void;

extern "C" {
    fn emu_launch(
        kernel: unsafe extern "C" fn(*const *mut c_void),
        args: *const *mut c_void,
        grid: *const u32,
        block: *const u32,
        dyn_smem: usize,
        max_dyn_smem: usize,
        workers: u32,
        order: u32,
        seed: u64,
        err: *mut u8,
        err_len: usize,
    ) -> i32;
}

/// Guard words after each buffer, and their value (a NaN no kernel computes).
const GUARD: usize = 64;
const CANARY: u32 = 0x7fc0_dead;

/// A host allocation standing in for device memory: `len` words plus `GUARD` canary words, or a view of `len` words
/// from word `offset` of another buffer's allocation. A view has no guard words of its own (the words after it
/// belong to its neighbour), so only the allocation's end is checked for writes past it.
pub struct EmuBuf {
    data: std::sync::Arc<[std::cell::UnsafeCell<f32>]>,
    offset: usize,
    len: usize,
}

// SAFETY: the words are written through raw pointers only inside the unsafe `Executor::launch`, whose caller
// guarantees in-bounds accesses, and whose only caller in the crate (`launch::run`) is reached from launchers that
// take every buffer their kernel writes as `&mut`; so no thread reads a buffer while a launch writes it. A view
// (`Executor::view`) shares its allocation with other buffers: the launchers that write an arena through its
// whole-buffer handle (the flat optimiser) take the stores owning both the arena and its views as `&mut`, and no
// launch is handed a view together with a buffer it aliases. Between launches the buffer is plain memory, read only
// through `download`.
unsafe impl Send for EmuBuf {}
// SAFETY: as for `Send`: shared references only read, and only between launches.
unsafe impl Sync for EmuBuf {}

impl EmuBuf {
    fn new(data: impl Iterator<Item = f32>, len: usize) -> Self {
        let words = data.chain(std::iter::repeat_n(f32::from_bits(CANARY), GUARD));
        EmuBuf { data: words.map(std::cell::UnsafeCell::new).collect(), offset: 0, len }
    }
    fn ptr(&self, offset: usize) -> *mut f32 {
        // SAFETY: UnsafeCell<f32> has f32's layout, the slice is one allocation, a view lies inside it, and callers
        // pass `offset <= len` (checked in `launch`), so the pointer stays inside it or one past a word of it.
        unsafe { (self.data.as_ptr() as *mut f32).add(self.offset + offset) }
    }
    fn guard_intact(&self) -> bool {
        // SAFETY: called after a launch has finished, so nothing writes the words while they are read.
        let guard = &self.data[self.data.len() - GUARD..];
        guard.iter().all(|w| unsafe { (*w.get()).to_bits() } == CANARY)
    }
    fn words(&self) -> &[std::cell::UnsafeCell<f32>] {
        &self.data[self.offset..self.offset + self.len]
    }
}

impl std::fmt::Debug for EmuBuf {
    /// The length only: reading the contents needs the executor.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmuBuf[{} words]", self.len)
    }
}

impl DeviceBuf for EmuBuf {
    fn len(&self) -> usize {
        self.len
    }
}

/// The order in which the emulator resumes the fibers (CUDA threads) of a block, each running until its next
/// barrier. A GPU promises no order at all between threads that do not synchronise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Threads 0, 1, .., n-1 (linear index within the block), every round: the default.
    Forward,
    /// Threads n-1, .., 1, 0, every round.
    Reversed,
    /// A permutation drawn again every round from the seed and the block index: reproducible for one seed.
    Shuffled(u64),
}

impl ThreadOrder {
    /// The order `EMU_THREAD_ORDER` names: `forward` (or unset), `reverse`, `shuffle` (seed 0) or `shuffle:SEED`.
    ///
    /// # Panics
    /// On any other value: a test run asked for an order it would silently not get.
    pub fn from_env() -> Self {
        let Ok(v) = std::env::var("EMU_THREAD_ORDER") else { return ThreadOrder::Forward };
        match v.as_str() {
            "" | "forward" => ThreadOrder::Forward,
            "reverse" => ThreadOrder::Reversed,
            "shuffle" => ThreadOrder::Shuffled(0),
            _ => match v.strip_prefix("shuffle:").and_then(|s| s.parse().ok()) {
                Some(seed) => ThreadOrder::Shuffled(seed),
                None => panic!("EMU_THREAD_ORDER={v}: expected forward, reverse, shuffle or shuffle:SEED"),
            },
        }
    }

    /// `(order, seed)` as emu_launch takes them.
    fn code(self) -> (u32, u64) {
        match self {
            ThreadOrder::Forward => (0, 0),
            ThreadOrder::Reversed => (1, 0),
            ThreadOrder::Shuffled(seed) => (2, seed),
        }
    }
}

/// The CPU emulator.
pub struct Emulator {
    workers: u32,
    order: ThreadOrder,
    counters: Counters,
    /// The launches of the graph being captured, while a capture is on.
    capture: std::sync::Mutex<Option<Vec<EmuLaunch>>>,
}

impl Emulator {
    /// An emulator that spreads the blocks of a launch over `EMU_THREADS` OS threads (default: all cores) and runs
    /// the threads of a block in the order `EMU_THREAD_ORDER` names ([`ThreadOrder::from_env`]).
    pub fn new() -> Self {
        let workers = std::env::var("EMU_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        Emulator {
            workers: workers.max(1),
            order: ThreadOrder::from_env(),
            counters: Counters::default(),
            capture: Default::default(),
        }
    }

    /// The same emulator, running the threads of each block in `order` instead.
    pub fn with_thread_order(self, order: ThreadOrder) -> Self {
        Emulator { order, ..self }
    }

    /// The order in which the threads of a block run.
    pub fn thread_order(&self) -> ThreadOrder {
        self.order
    }
}

impl Emulator {
    /// The launches captured so far, while a capture is on.
    fn capturing(&self) -> std::sync::MutexGuard<'_, Option<Vec<EmuLaunch>>> {
        // The list is only pushed to and taken, valid whatever a panicking holder was doing.
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` when a capture is on: `what` (a copy or a wait) would not be part of the graph.
    fn outside_capture(&self, what: &str) -> Result<()> {
        match self.capturing().is_some() {
            true => Err(super::graph::copy_error(what)),
            false => Ok(()),
        }
    }

    /// Runs one launch to completion, then checks that it wrote nothing past the end of its buffers.
    ///
    /// # Safety
    /// As [`Executor::launch`]: the arguments describe the buffers truthfully.
    unsafe fn run(&self, node: &EmuLaunch) -> Result<()> {
        let (kernel, cfg) = (node.kernel, node.cfg);
        let mut slots = node.slots.clone();
        let ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        let mut err = [0u8; 1024];
        let entry = super::kernels::EMU_ENTRY[kernel as usize];
        let (order, seed) = self.order.code();
        // SAFETY: the slots hold one value per kernel parameter, of its kind (checked by `check_launch`), and the
        // pointers address live buffers (`node.bufs` keeps them) that the caller vouches are long enough.
        let rc = unsafe {
            emu_launch(
                entry,
                ptrs.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.shared_bytes as usize,
                kernel.max_dynamic_shared() as usize,
                self.workers,
                order,
                seed,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(Error::Device(format!("{}: {}", kernel.name(), String::from_utf8_lossy(&err[..end]))));
        }
        for (name, b) in &node.bufs {
            if !b.guard_intact() {
                return Err(Error::Device(format!("{}: wrote past the end of `{name}`", kernel.name())));
            }
        }
        Ok(())
    }
}

/// One launch as the emulator runs it: each argument's value in an 8-byte slot (the kernel entry reads slot i as
/// its i-th parameter's type; little-endian, so a 4-byte value sits at the slot's start), and the buffers the
/// pointers address, kept alive for as long as a graph holds the launch.
struct EmuLaunch {
    kernel: Kernel,
    cfg: LaunchCfg,
    slots: Vec<u64>,
    bufs: Vec<(&'static str, EmuBuf)>,
}

impl EmuLaunch {
    fn new(kernel: Kernel, cfg: LaunchCfg, args: &[Arg<EmuBuf>]) -> Result<Self> {
        let mut slots = Vec::with_capacity(args.len());
        let mut bufs = Vec::new();
        for (i, (a, (name, _))) in args.iter().zip(kernel.params()).enumerate() {
            slots.push(match *a {
                Arg::Buf(_) | Arg::BufAt(..) | Arg::Ints(_) | Arg::Bf16(_) => {
                    let (b, off) = a.buffer().expect("a pointer argument");
                    if off > b.len {
                        return Err(Error::Device(format!(
                            "{}: argument {i} offset {off} past the end of a {}-word buffer",
                            kernel.name(),
                            b.len
                        )));
                    }
                    bufs.push((*name, EmuBuf { data: b.data.clone(), offset: b.offset, len: b.len }));
                    b.ptr(off) as u64
                }
                Arg::Null => 0,
                Arg::I32(v) => v as u32 as u64,
                Arg::I64(v) => v as u64,
                Arg::U64(v) => v,
                Arg::F32(v) => v.to_bits() as u64,
            });
        }
        Ok(EmuLaunch { kernel, cfg, slots, bufs })
    }
}

/// The emulator's graph: the captured launches, run again in order by each replay.
pub struct EmuGraph(Vec<EmuLaunch>);

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor for Emulator {
    type Buf = EmuBuf;
    type Graph = EmuGraph;

    fn describe(&self) -> String {
        match self.order {
            ThreadOrder::Forward => format!("CPU emulator ({} threads)", self.workers),
            order => format!("CPU emulator ({} threads, thread order {order:?})", self.workers),
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn alloc(&self, len: usize) -> Result<EmuBuf> {
        self.counters.allocated();
        Ok(EmuBuf::new(std::iter::repeat_n(f32::NAN, len), len))
    }

    fn view(&self, buf: &EmuBuf, offset: usize, len: usize) -> Result<EmuBuf> {
        if offset + len > buf.len {
            return Err(Error::Device(format!(
                "a view of words {offset}..{} of a {}-word buffer",
                offset + len,
                buf.len
            )));
        }
        Ok(EmuBuf { data: buf.data.clone(), offset: buf.offset + offset, len })
    }

    fn same_words(&self, a: &EmuBuf, b: &EmuBuf) -> bool {
        std::sync::Arc::ptr_eq(&a.data, &b.data) && (a.offset, a.len) == (b.offset, b.len)
    }

    fn upload(&self, data: &[f32]) -> Result<EmuBuf> {
        self.outside_capture("a copy to the device")?;
        self.counters.allocated();
        self.counters.uploaded(data.len());
        Ok(EmuBuf::new(data.iter().copied(), data.len()))
    }

    fn download(&self, buf: &EmuBuf) -> Result<Vec<f32>> {
        self.outside_capture("a copy from the device")?;
        self.counters.downloaded(buf.len);
        // SAFETY: launches run to completion inside `launch`, so no kernel writes the words while they are read.
        Ok(buf.words().iter().map(|w| unsafe { *w.get() }).collect())
    }

    fn synchronize(&self) -> Result<()> {
        self.outside_capture("a wait for the device")?;
        self.counters.synchronized();
        Ok(())
    }

    unsafe fn launch(&self, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<EmuBuf>]) -> Result<()> {
        check_launch(kernel, cfg, args)?;
        let node = EmuLaunch::new(kernel, cfg, args)?;
        // Recorded while a capture is on; else run, with the capture's lock released.
        let to_run = match self.capturing().as_mut() {
            Some(graph) => {
                graph.push(node);
                None
            }
            None => Some(node),
        };
        // SAFETY: the caller vouches for the arguments (the trait's contract).
        to_run.map_or(Ok(()), |node| unsafe { self.run(&node) })
    }

    fn begin_capture(&self) -> Result<()> {
        let mut capture = self.capturing();
        if capture.is_some() {
            return Err(Error::Device("a graph capture began inside another".into()));
        }
        *capture = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<EmuGraph> {
        let launches = self.capturing().take().ok_or_else(|| Error::Device("no graph capture to end".into()))?;
        Ok(EmuGraph(launches))
    }

    fn replay(&self, graph: &EmuGraph) -> Result<()> {
        self.outside_capture("replaying a graph")?;
        for node in &graph.0 {
            // SAFETY: each launch was checked when captured, and the graph keeps every buffer it points into.
            unsafe { self.run(node) }?;
        }
        Ok(())
    }
}
