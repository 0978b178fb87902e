//! Group norm's launches: one block per (group, image) each way; the affine parameters' gradients are written as
//! per-image partials and reduced over images in order (no atomics), both in one launch, into the caller's buffers.

use super::NormOps;
use crate::backend::Gpu;
use crate::desc::NormDesc;
use crate::error::{Error, Result};
use crate::gpu::launch::{i32_arg, int, need, run, BLOCK};
use crate::gpu::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::ops::conv::mma::Nhwc;

impl<E: Executor> NormOps for Gpu<E> {
    fn group_norm_forward(
        &self,
        d: NormDesc,
        x: &E::Buf,
        affine: (&E::Buf, &E::Buf),
        y: &mut E::Buf,
    ) -> Result<(E::Buf, E::Buf)> {
        need("group_norm y", y, d.n * d.c * d.plane)?;
        forward(self.executor(), d, x, affine, Output::F32(y))
    }
    fn group_norm_backward(
        &self,
        d: NormDesc,
        inputs: (&E::Buf, &E::Buf, &E::Buf),
        stats: (&E::Buf, &E::Buf),
        gy: &E::Buf,
        dx: Option<(&mut E::Buf, bool)>,
        daffine: (&mut E::Buf, &mut E::Buf),
    ) -> Result<()> {
        backward(self, d, (inputs, stats, gy), dx, daffine, None)
    }
}

/// A backward's inputs: `(x, γ, β)`, the saved `(μ, 1/σ)`, and the output's gradient.
type BackwardIn<'a, B> = ((&'a B, &'a B, &'a B), (&'a B, &'a B), &'a B);

/// Where a backward also writes dx's operand: dx as bf16 channels-last, its per-image channel sums `[n, c]`, and
/// those sums as bf16, row `i` at `sums_b[i·stride]` (`stride` = c, or the width of a wider operand whose columns
/// they are), and as f32 at the same place of `sums_f` when given (that wider operand's gradient).
pub(crate) struct DxOperand<'a, B> {
    pub dxb: &'a Bf16Buf<B>,
    pub sums: &'a B,
    pub sums_b: &'a Bf16Buf<B>,
    pub sums_f: Option<&'a B>,
    pub stride: usize,
}

/// One `group_norm_bwd` launch: [`NormOps::group_norm_backward`], also writing `operand` when given (dx given too).
pub(crate) fn backward<E: Executor>(
    gpu: &Gpu<E>,
    d: NormDesc,
    ((x, gamma, beta), (mean, rstd), gy): BackwardIn<'_, E::Buf>,
    dx: Option<(&mut E::Buf, bool)>,
    (dgamma, dbeta): (&mut E::Buf, &mut E::Buf),
    operand: Option<DxOperand<'_, E::Buf>>,
) -> Result<()> {
    let e = gpu.executor();
    check(d, x, gamma, beta)?;
    need("group_norm mean", mean, d.n * d.groups)?;
    need("group_norm rstd", rstd, d.n * d.groups)?;
    need("group_norm gy", gy, d.n * d.c * d.plane)?;
    need("group_norm dgamma", dgamma, d.c)?;
    need("group_norm dbeta", dbeta, d.c)?;
    if let Some((dx, _)) = &dx {
        need("group_norm dx", *dx, d.n * d.c * d.plane)?;
    }
    if operand.is_some() && (dx.is_none() || !d.c.is_multiple_of(8)) {
        return Err(Error::Shape(format!(
            "group_norm: dx's operand needs dx and channels a multiple of 8, got {}",
            d.c
        )));
    }
    if let Some(o) = &operand {
        let rows = d.n.saturating_sub(1) * o.stride + d.c;
        if o.stride < d.c || o.sums_b.len() < rows || o.sums_f.is_some_and(|f| f.len() < rows) {
            return Err(Error::Shape(format!("group_norm: sums of {} channels at row stride {}", d.c, o.stride)));
        }
    }
    let accumulate = dx.as_ref().is_some_and(|(_, acc)| *acc);
    // x and gy are staged for the dx pass, which only runs with a dx.
    let has_dx = dx.is_some();
    let staged = if has_dx { staging(d, 2) } else { None };
    let nc = d.n * d.c;
    let parts = e.alloc(2 * nc)?;
    let args = [
        Arg::Buf(x),
        Arg::Buf(gamma),
        Arg::Buf(beta),
        Arg::Buf(mean),
        Arg::Buf(rstd),
        Arg::Buf(gy),
        Arg::opt(dx.map(|(b, _)| &*b)),
        Arg::BufAt(&parts, 0),
        Arg::BufAt(&parts, nc),
        Arg::Buf(dgamma),
        Arg::Buf(dbeta),
        Arg::Ints(gpu.tickets()?),
        operand.as_ref().map_or(Arg::Null, |o| Arg::Bf16(o.dxb)),
        Arg::opt(operand.as_ref().map(|o| o.sums)),
        operand.as_ref().map_or(Arg::Null, |o| Arg::Bf16(o.sums_b)),
        Arg::opt(operand.as_ref().and_then(|o| o.sums_f)),
        i32_arg(operand.as_ref().map_or(d.c, |o| o.stride))?,
        i32_arg(d.c)?,
        i32_arg(d.plane)?,
        i32_arg(d.groups)?,
        Arg::I32(d.silu as i32),
        Arg::I32(accumulate as i32),
        Arg::I32(staged.is_some() as i32),
    ];
    // x and gy read for the group sums and, for dx unless staged, again (and dx itself when accumulating), and
    // the per-image partials of dγ and dβ written and read back by the last block: ~12 operations per value;
    // dx's operand (half a value each) and its sums besides, when asked for.
    let len = d.n * d.c * d.plane;
    let reads = if has_dx && staged.is_none() { 4 } else { 2 };
    let read = (reads + usize::from(accumulate)) * len + 2 * nc;
    let written = len + 2 * nc + operand.as_ref().map_or(0, |o| len / 2 + nc + nc / 2 + o.sums_f.map_or(0, |_| nc));
    run(e, Kernel::GroupNormBwd, grid(d, staged)?, Cost::pass(read, written, 12), &args)
}

/// A GroupNorm's output as a conv operand, and its saved `(μ, 1/σ)`, `[n·groups]` each.
type Normed<B> = (Nhwc<B>, (B, B));

/// Where a forward writes its output.
enum Output<'a, B> {
    /// `[n, c, plane]` f32, as the tape holds values.
    F32(&'a mut B),
    /// bf16 channels-last, the operand of a tensor-core conv.
    Nhwc(&'a Bf16Buf<B>),
}

/// GroupNorm (then SiLU when `d.silu`) of `x` written as the bf16 channels-last operand of the conv that reads it
/// (`c` a multiple of 8, so no padding), with the saved `(μ, 1/σ)`: the values `group_norm_forward` would write, each
/// rounded to bf16 as the conv's conversion of them would round it.
pub(crate) fn group_norm_forward_nhwc<E: Executor>(
    e: &E,
    d: NormDesc,
    x: &E::Buf,
    affine: (&E::Buf, &E::Buf),
) -> Result<Normed<E::Buf>> {
    if !d.c.is_multiple_of(8) {
        return Err(Error::Shape(format!("group_norm into a bf16 operand: {} channels, not a multiple of 8", d.c)));
    }
    let yb = e.alloc_bf16(d.n * d.c * d.plane)?;
    let stats = forward(e, d, x, affine, Output::Nhwc(&yb))?;
    Ok((Nhwc::new(yb, d.c), stats))
}

/// One `group_norm_fwd` launch; returns fresh `(μ, 1/σ)`.
fn forward<E: Executor>(
    e: &E,
    d: NormDesc,
    x: &E::Buf,
    (gamma, beta): (&E::Buf, &E::Buf),
    y: Output<E::Buf>,
) -> Result<(E::Buf, E::Buf)> {
    check(d, x, gamma, beta)?;
    // Fresh buffers that only this launch writes.
    let (mean, rstd) = (e.alloc(d.n * d.groups)?, e.alloc(d.n * d.groups)?);
    let len = d.n * d.c * d.plane;
    let staged = staging(d, 1);
    let (y32, yb, written) = match y {
        Output::F32(y) => (Arg::Buf(&*y), Arg::Null, 4 * len),
        Output::Nhwc(b) => (Arg::Null, Arg::Bf16(b), 2 * len),
    };
    let args = [
        Arg::Buf(x),
        Arg::Buf(gamma),
        Arg::Buf(beta),
        y32,
        yb,
        Arg::Buf(&mean),
        Arg::Buf(&rstd),
        i32_arg(d.c)?,
        i32_arg(d.plane)?,
        i32_arg(d.groups)?,
        Arg::F32(d.eps),
        Arg::I32(d.silu as i32),
        Arg::I32(staged.is_some() as i32),
    ];
    // Statistics from one read, the normalised (and SiLU'd) output from a second unless staged: ~8 operations per
    // value.
    let read = if staged.is_some() { 4 * len } else { 8 * len };
    let cost = Cost::simt(8 * len, read + written);
    run(e, Kernel::GroupNormFwd, grid(d, staged)?, cost, &args)?;
    Ok((mean, rstd))
}

/// Dynamic shared memory a block may take to keep its group's values, the kernels' `max-dynamic-shared`: 64 KiB
/// leaves room for three blocks of 256 threads on an SM (228 KiB), enough to keep a memory-bound pass near full
/// bandwidth.
const STAGE_MAX: usize = 64 * 1024;

/// The dynamic shared memory, in bytes, that keeps `arrays` f32 arrays of one group's values, if it is at most
/// [`STAGE_MAX`]; `None` means the kernel reads device memory again instead.
fn staging(d: NormDesc, arrays: usize) -> Option<u32> {
    let bytes = arrays * 4 * (d.c / d.groups.max(1)) * d.plane;
    (bytes <= STAGE_MAX).then_some(bytes as u32)
}

/// One block per (group, image), with `shared` bytes of dynamic shared memory for the staged group.
fn grid(d: NormDesc, shared: Option<u32>) -> Result<LaunchCfg> {
    let grid = [int(d.groups)? as u32, int(d.n)? as u32, 1];
    Ok(LaunchCfg { grid, block: [BLOCK, 1, 1], shared_bytes: shared.unwrap_or(0) })
}

fn check<B: crate::gpu::DeviceBuf>(d: NormDesc, x: &B, gamma: &B, beta: &B) -> Result<()> {
    if d.groups == 0 || !d.c.is_multiple_of(d.groups) {
        return Err(Error::Shape(format!("group_norm: {} channels in {} groups", d.c, d.groups)));
    }
    need("group_norm x", x, d.n * d.c * d.plane)?;
    need("group_norm gamma", gamma, d.c)?;
    need("group_norm beta", beta, d.c)
}
