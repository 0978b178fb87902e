//! The GPU side: the executors that run the CUDA C kernels (each op family's `.cu` file) and what their launchers
//! share.
//!
//! - [`emu::Emulator`] runs the kernels on the CPU: build.rs compiles the same `.cu` files as host C++ and the
//!   emulator runs each grid with a fiber per CUDA thread, checking launch limits, barriers and buffer bounds. It
//!   is always available, so the kernels are exercised by every test run, GPU or not.
//! - [`cuda::Cuda`] runs them on an NVIDIA GPU through the driver API (cudarc, loaded at run time), from PTX that
//!   build.rs compiled with NVRTC, or from the embedded sources compiled at run time.
//!
//! Every family's launchers (its `gpu.rs`) are written once, as launches (kernel, grid, block, shared memory,
//! arguments) against the [`Executor`] trait, so the launch code tested on the emulator is the launch code that runs
//! on the GPU.

pub mod count;
pub mod cuda;
pub mod emu;
pub mod graph;
pub mod kernels;
pub(crate) mod launch;
pub mod model;
pub mod ptx;
pub mod record;

use crate::error::{Error, Result};
pub use count::{Cost, Counts};
pub use kernels::{Kernel, ParamKind};

/// Grid and block shape of one launch, with its dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// A 1-D launch of `blocks` blocks of `threads` threads, no dynamic shared memory.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchCfg { grid: [blocks, 1, 1], block: [threads, 1, 1], shared_bytes: 0 }
    }
}

/// A device buffer of `int` words: indices a kernel addresses memory with. Only the executors make one, so a
/// kernel's `int*` parameter never sees float bits, nor a float parameter an index. An uploaded buffer knows a
/// bound on its values, which launchers check against what the kernel indexes before they launch it.
#[derive(Debug)]
pub struct IntBuf<B> {
    buf: B,
    /// Every value lies in `0..bound`; `None` when a kernel wrote them (no bound known to the host).
    bound: Option<u64>,
}

impl<B: DeviceBuf> IntBuf<B> {
    /// Length in words.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Every value lies in `0..bound`, when the host knows such a bound (it uploaded the values).
    pub fn bound(&self) -> Option<u64> {
        self.bound
    }
    /// Whether the buffer holds no words.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A device buffer of bfloat16 values, two to a 4-byte word (the lower-indexed value in the low half, as a GPU
/// reads a `bf16*` on a little-endian device). The tensor-core kernels' operands: kernels convert f32 tensors into
/// these and read them with 16-byte copies, so only kernels write them.
#[derive(Debug)]
pub struct Bf16Buf<B> {
    /// The values in pairs, one 32-bit word each.
    pub(crate) buf: B,
    len: usize,
}

impl<B: DeviceBuf> Bf16Buf<B> {
    /// Length in bf16 values.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One kernel argument. `float*` parameters take [`Arg::Buf`] / [`Arg::BufAt`], `int*` ones [`Arg::Ints`].
pub enum Arg<'a, B> {
    /// A buffer, from its start.
    Buf(&'a B),
    /// An index buffer.
    Ints(&'a IntBuf<B>),
    /// A bfloat16 buffer.
    Bf16(&'a Bf16Buf<B>),
    /// A buffer from word `offset` on.
    BufAt(&'a B, usize),
    /// A null pointer (kernels treat it as "absent", e.g. no bias).
    Null,
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
}

impl<'a, B> Arg<'a, B> {
    /// What kind of argument this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Arg::Buf(_) | Arg::BufAt(..) => "a float buffer",
            Arg::Ints(_) => "an int buffer",
            Arg::Bf16(_) => "a bf16 buffer",
            Arg::Null => "null",
            Arg::I32(_) => "I32",
            Arg::I64(_) => "I64",
            Arg::U64(_) => "U64",
            Arg::F32(_) => "F32",
        }
    }

    /// `Buf(b)` or `Null`.
    pub fn opt(b: Option<&'a B>) -> Self {
        b.map_or(Arg::Null, Arg::Buf)
    }

    /// The device buffer behind a pointer argument, and the word offset into it.
    pub fn buffer(&self) -> Option<(&'a B, usize)> {
        match *self {
            Arg::Buf(b) => Some((b, 0)),
            Arg::BufAt(b, off) => Some((b, off)),
            Arg::Ints(b) => Some((&b.buf, 0)),
            Arg::Bf16(b) => Some((&b.buf, 0)),
            _ => None,
        }
    }
}

/// A device buffer of 4-byte words (shareable across threads, as the backends' buffers are).
pub trait DeviceBuf: std::fmt::Debug + Send + Sync {
    /// Length in words.
    fn len(&self) -> usize;
    /// Whether the buffer holds no words.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something that holds device memory and runs kernels on it: the emulator or a CUDA device.
pub trait Executor: Send + Sync + 'static {
    /// The executor's buffer type.
    type Buf: DeviceBuf;
    /// A captured launch sequence ([`graph`]): a CUDA graph, or the emulator's list of launches. It owns the
    /// buffers its launches touch.
    type Graph;
    /// What runs the kernels, e.g. "CUDA device 0: NVIDIA H200" or "CPU emulator (2 threads)".
    fn describe(&self) -> String;
    /// What this executor has done so far: launches with their declared cost, host syncs, copies, allocations.
    fn counters(&self) -> &count::Counters;
    /// A buffer of `len` words with unspecified contents (the emulator fills it with NaN, so a kernel that reads
    /// what nobody wrote shows up in the results).
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A buffer of `len` words aliasing `buf` from word `offset`: what a kernel writes through either, the other
    /// reads. The memory stays allocated while any view of it lives. Views let a set of tensors (the parameters,
    /// their gradients, the optimiser's moments) be one contiguous arena that a single launch updates. A launch
    /// must not be handed a view and a buffer it aliases when it writes either; no launcher does.
    fn view(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Self::Buf>;
    /// Whether `a` and `b` are the same words of the same allocation (e.g. a view and another view of it made
    /// with the same offset and length).
    fn same_words(&self, a: &Self::Buf, b: &Self::Buf) -> bool;
    /// An index buffer holding a copy of `data` (non-negative values), for kernels' `int*` parameters.
    fn upload_i32(&self, data: &[u32]) -> Result<IntBuf<Self::Buf>> {
        if let Some(bad) = data.iter().find(|&&v| v > i32::MAX as u32) {
            return Err(Error::Arg(format!("index {bad} exceeds the kernels' int range")));
        }
        let bound = data.iter().max().map_or(0, |&m| m as u64 + 1);
        // Both executors move 4-byte words; the bits travel unchanged through an f32 view.
        let buf = self.upload(&data.iter().map(|&v| f32::from_bits(v)).collect::<Vec<_>>())?;
        Ok(IntBuf { buf, bound: Some(bound) })
    }
    /// An index buffer aliasing all of `idx` ([`Executor::view`]), with its bound.
    fn view_i32(&self, idx: &IntBuf<Self::Buf>) -> Result<IntBuf<Self::Buf>> {
        Ok(IntBuf { buf: self.view(&idx.buf, 0, idx.len())?, bound: idx.bound })
    }
    /// An index buffer of `len` words for a kernel to fill.
    fn alloc_i32(&self, len: usize) -> Result<IntBuf<Self::Buf>> {
        Ok(IntBuf { buf: self.alloc(len)?, bound: None })
    }
    /// A bfloat16 buffer of `len` values for a kernel to fill (whole words, so an odd length has a spare half).
    fn alloc_bf16(&self, len: usize) -> Result<Bf16Buf<Self::Buf>> {
        Ok(Bf16Buf { buf: self.alloc(len.div_ceil(2))?, len })
    }
    /// A bfloat16 buffer holding a copy of `values` (the bits of each), two to a word, the first in the low half.
    fn upload_bf16(&self, values: &[u16]) -> Result<Bf16Buf<Self::Buf>> {
        let words: Vec<f32> = values
            .chunks(2)
            .map(|p| f32::from_bits(p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16))
            .collect();
        Ok(Bf16Buf { buf: self.upload(&words)?, len: values.len() })
    }
    /// A view of `len` values of `buf` from value `offset` on, which must be even (a view starts at a word).
    fn view_bf16(&self, buf: &Bf16Buf<Self::Buf>, offset: usize, len: usize) -> Result<Bf16Buf<Self::Buf>> {
        if !offset.is_multiple_of(2) || offset + len > buf.len {
            return Err(Error::Shape(format!("bf16 view of {len} values at {offset} in a buffer of {}", buf.len)));
        }
        Ok(Bf16Buf { buf: self.view(&buf.buf, offset / 2, len.div_ceil(2))?, len })
    }
    /// Copies an index buffer back, after all launches before it have finished.
    fn download_i32(&self, buf: &IntBuf<Self::Buf>) -> Result<Vec<u32>> {
        Ok(self.download(&buf.buf)?.into_iter().map(f32::to_bits).collect())
    }
    /// Copies the buffer back, after all launches before it have finished.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Waits until every launch queued so far has finished (a timer reads the clock after it). The emulator runs
    /// each launch to completion inside `launch`, so there it has nothing to wait for.
    fn synchronize(&self) -> Result<()>;
    /// Queues `kernel` on the executor's stream (the emulator runs it at once).
    ///
    /// # Safety
    /// The arguments must describe the buffers truthfully: every index the kernel derives from them must lie
    /// inside the buffer it addresses. The argument kinds are checked against the kernel's C signature, but
    /// lengths cannot be, so the launchers check them first (`launch::need`).
    unsafe fn launch(&self, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<Self::Buf>]) -> Result<()>;
    /// From now until [`Executor::end_capture`], launches are recorded into a graph instead of run; copies to or
    /// from the host and waits are errors, and so (on a CUDA device) is an allocation that its cache cannot serve.
    /// Use [`graph::capture`], which also keeps the counters.
    fn begin_capture(&self) -> Result<()>;
    /// The launches recorded since [`Executor::begin_capture`], as a graph that owns every buffer they touch.
    fn end_capture(&self) -> Result<Self::Graph>;
    /// Queues one run of `graph` (the emulator runs it at once). Use [`graph::replay`], which also counts it.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}

/// Checks a launch before either executor runs it: the arguments (see [`check_args`]), and the block size and
/// dynamic shared memory against the kernel's own limits (its `__launch_bounds__` and its
/// `// max-dynamic-shared:` opt-in, 48 KiB without one), so that a launch the GPU would refuse, or run with fewer
/// threads than asked, is an error naming the kernel on the emulator too.
pub fn check_launch<B>(kernel: Kernel, cfg: LaunchCfg, args: &[Arg<B>]) -> Result<()> {
    check_args(kernel, args)?;
    let threads = cfg.block.iter().map(|&d| d as u64).product::<u64>();
    if let Some(max) = kernel.max_threads() {
        if threads > max as u64 {
            return Err(Error::Device(format!(
                "{}: launch refused: a block of {threads} threads ({}x{}x{}) exceeds the kernel's \
                 __launch_bounds__({max})",
                kernel.name(),
                cfg.block[0],
                cfg.block[1],
                cfg.block[2]
            )));
        }
    }
    let max_shared = kernel.max_dynamic_shared();
    if cfg.shared_bytes > max_shared {
        let why = if max_shared == kernels::DEFAULT_MAX_DYNAMIC_SHARED {
            "the 48 KiB a kernel may use without a `// max-dynamic-shared:` opt-in"
        } else {
            "its `// max-dynamic-shared:` opt-in"
        };
        return Err(Error::Device(format!(
            "{}: launch refused: {} bytes of dynamic shared memory exceed {max_shared}, {why}",
            kernel.name(),
            cfg.shared_bytes
        )));
    }
    // A block's static and dynamic shared memory together: 48 KiB without an opt-in, sm_90's 227 KiB with one.
    let total = cfg.shared_bytes as u64 + kernel.static_shared() as u64;
    let opted_in = max_shared != kernels::DEFAULT_MAX_DYNAMIC_SHARED;
    let block_max = if opted_in { kernels::MAX_SHARED_PER_BLOCK } else { max_shared };
    if total > block_max as u64 {
        return Err(Error::Device(format!(
            "{}: launch refused: {} bytes of static and {} of dynamic shared memory exceed the block's {block_max}",
            kernel.name(),
            kernel.static_shared(),
            cfg.shared_bytes
        )));
    }
    Ok(())
}

/// Checks `args` against the kernel's parameter list (count and kind), so a mismatch is an error on both
/// executors instead of garbage on one of them.
pub fn check_args<B>(kernel: Kernel, args: &[Arg<B>]) -> Result<()> {
    let params = kernel.params();
    if params.len() != args.len() {
        return Err(Error::Device(format!(
            "{}: {} arguments for {} parameters",
            kernel.name(),
            args.len(),
            params.len()
        )));
    }
    for ((name, kind), arg) in params.iter().zip(args) {
        let ok = matches!(
            (kind, arg),
            (ParamKind::ConstPtr | ParamKind::MutPtr, Arg::Buf(_) | Arg::BufAt(..) | Arg::Null)
                | (ParamKind::ConstIntPtr | ParamKind::MutIntPtr, Arg::Ints(_) | Arg::Null)
                | (ParamKind::ConstBf16Ptr | ParamKind::MutBf16Ptr, Arg::Bf16(_) | Arg::Null)
                | (ParamKind::I32, Arg::I32(_))
                | (ParamKind::I64, Arg::I64(_))
                | (ParamKind::U64, Arg::U64(_))
                | (ParamKind::F32, Arg::F32(_))
        );
        if !ok {
            return Err(Error::Device(format!(
                "{}: parameter `{name}` is {kind:?}, got {}",
                kernel.name(),
                arg.kind()
            )));
        }
    }
    Ok(())
}
