//! What every family's launchers (`src/ops/*/gpu.rs`, `src/optim/gpu.rs`, `src/diffusion/gpu.rs`) share: block and
//! grid sizes, the length checks that make a launch sound, and the one place that calls the unsafe
//! [`Executor::launch`].
//!
//! Layouts and semantics are those of the CPU kernels: row-major f32, images NCHW. Each launcher checks that every
//! buffer is long enough for what its kernels touch, and takes the buffers it writes as `&mut`. Results equal the
//! CPU's up to summation order (GEMMs and reductions sum in a different but fixed order, in f32 where the CPU
//! sometimes uses f64); the purely elementwise kernels follow the CPU's f32 operation order.

use super::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::desc::Columns;
use crate::error::{Error, Result};

/// Threads per block of the elementwise and reduction kernels (`BLOCK` in kernels/common.cuh).
pub(crate) const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels: enough blocks to fill any current GPU several times over.
const MAX_BLOCKS: usize = 4096;
/// Blocks that a split-K launch (a weight gradient summed over the batch's pixels) is split to fill: two per
/// multiprocessor of a 132-multiprocessor H100/H200. A constant, not the device's count, so that the partition, and
/// with it every bit of the result, depends only on the shapes.
pub(crate) const SPLIT_TARGET_BLOCKS: usize = 264;
/// Partial sums per tensor in the two-pass reductions (at most; fewer for short tensors).
const MAX_PARTIALS: usize = 1024;

/// A grid-stride launch over `n` elements.
pub(crate) fn elementwise(n: usize) -> LaunchCfg {
    LaunchCfg::linear(n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32, BLOCK)
}

/// The number of first-pass blocks (= partial sums) of a reduction over `n` values.
pub(crate) fn partials(n: usize) -> usize {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_PARTIALS)
}

/// `Err` naming `what` unless `b` holds at least `len` words.
pub(crate) fn need<B: DeviceBuf>(what: &str, b: &B, len: usize) -> Result<()> {
    if b.len() < len {
        return Err(Error::Shape(format!("{what}: buffer of {} words, needs {len}", b.len())));
    }
    Ok(())
}

/// The arguments of optional columns `c` of `rows` rows and `width` columns (a kernel reads row `i`, column `j` at
/// `ptr[i * stride + j]`): the buffer from its first column (null when absent) and the row stride, checked to fit.
pub(crate) fn columns_arg<'a, B: DeviceBuf>(
    what: &str,
    c: Option<Columns<'a, B>>,
    rows: usize,
    width: usize,
) -> Result<(Arg<'a, B>, usize)> {
    let Some(c) = c else { return Ok((Arg::Null, width)) };
    if c.start + width > c.stride {
        return Err(Error::Shape(format!("{what}: columns {}..{} of {}", c.start, c.start + width, c.stride)));
    }
    need(what, c.buf, rows.saturating_sub(1) * c.stride + c.start + width)?;
    Ok((Arg::BufAt(c.buf, c.start), c.stride))
}

/// `Err` naming `what` unless `b` holds at least `len` bf16 values.
pub(crate) fn need_bf16<B: DeviceBuf>(what: &str, b: &Bf16Buf<B>, len: usize) -> Result<()> {
    if b.len() < len {
        return Err(Error::Shape(format!("{what}: bf16 buffer of {} values, needs {len}", b.len())));
    }
    Ok(())
}

/// `v` as a kernel's `int`; `Err` when it does not fit.
pub(crate) fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("{v} exceeds the kernels' 32-bit index range")))
}

/// `v` as a kernel's `int` argument.
pub(crate) fn i32_arg<'a, B>(v: usize) -> Result<Arg<'a, B>> {
    int(v).map(Arg::I32)
}

/// Launches `k` after the caller has checked the buffer lengths, and counts it with the `cost` the caller declares
/// for it (see [`Cost`]).
pub(crate) fn run<E: Executor>(e: &E, k: Kernel, cfg: LaunchCfg, cost: Cost, args: &[Arg<E::Buf>]) -> Result<()> {
    // SAFETY: every launcher checks with `need` that each buffer covers the indices its kernel derives from the
    // dimension arguments it passes, and index buffers hold values their makers checked (`Memory::upload_indices`).
    unsafe { e.launch(k, cfg, args) }?;
    e.counters().launched(k, cfg, cost);
    Ok(())
}
