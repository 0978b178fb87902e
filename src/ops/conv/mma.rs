//! The convolutions' tensor-core launches (`conv_mma.cu`), for [`Precision::Bf16`](crate::backend::Precision):
//! each f32 NCHW activation a GEMM gathers from is converted once into a bf16 NHWC copy (its operand: shared by
//! every reader through the tape, or written beside the f32 output by the GEMM that makes it), each weight into
//! the bf16 operand layout, and the implicit GEMMs write f32 NCHW results, so the rest of the GPU backend is
//! unchanged.
//!
//! | op | gathers (NHWC bf16) | map | weight packing | output |
//! |---|---|---|---|---|
//! | conv forward | x | conv | `[co][tap][ci]` | `[n, co, oh, ow]` |
//! | conv dx | dy | adjoint | `[ci][tap][co]` | `[n, ci, h, w]` |
//! | conv dW | dy (rows), x (gathered) | conv | — | `[co, ci, k, k]` |
//! | transposed conv forward | x | adjoint | `[c][tap][ch]` | `[n, c, h, w]` |
//! | transposed conv dx | dy | conv | `[ch][tap][c]` | `[n, ch, oh, ow]` |
//! | transposed conv dW | x (rows), dy (gathered) | conv | — | `[ch, c, k, k]` |
//!
//! The GEMMs read channels 16 bytes (8 bf16) at a time, so the NHWC copies ([`Nhwc`]) and the packed weights pad
//! every channel count to a multiple of 8 with zeros ([`padded`]); the UNet's 1-channel input and output convs
//! then do 8x their (few) FLOPs instead of falling back to the f32 path's column matrix.
//!
//! Per step, each tensor is converted once: the forward keeps its input's copy and its weight packed for the dx
//! GEMM (packed in the forward's packing launch) for the backward ([`Kept`]); the backward converts dy once for
//! both GEMMs, and that conversion also sums dy per channel for the bias gradients ([`to_nhwc_bf16_summed`]).

use super::Keep;
use crate::desc::{Columns, ConvGeom, Planes};
use crate::error::{Error, Result};
use crate::gpu::launch::{columns_arg, elementwise, i32_arg, need, need_bf16, run, SPLIT_TARGET_BLOCKS};
use crate::gpu::{Arg, Bf16Buf, Cost, Executor, IntBuf, Kernel, LaunchCfg};
use crate::ops::reduce::gpu::sum_rows;
use crate::ops::unary::UnaryKind;
use std::sync::Arc;

/// Block tile of both GEMM kernels (`BM`, `BN` in conv_mma.cu), threads per block, and pixels per k-tile.
const TILE: usize = 64;
const THREADS: u32 = 128;
const BK: usize = 32;
/// Dynamic shared memory of the two GEMMs: 3 stages of two bf16 tiles, rows padded by 8 values.
const GATHER_SMEM: u32 = 3 * 2 * (TILE * (BK + 8)) as u32 * 2;
const WGRAD_SMEM: u32 = 3 * 2 * (BK * (TILE + 8)) as u32 * 2;
const MAX_SPLITS: usize = 64;

/// `c` rounded up to a multiple of 8: the channel count of an NHWC copy and of a packed weight's last dimension.
pub(crate) fn padded(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// `v` rounded to bfloat16 on the host as the kernels' `f32_to_bf16` rounds it: to nearest, ties to even; a NaN
/// stays a quiet NaN.
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// A channels-last bf16 copy of `n` images of `c` channels: `[n, plane, padded(c)]`, the padding zero.
pub struct Nhwc<B> {
    pub(crate) buf: Bf16Buf<B>,
    pub(crate) c: usize,
}

impl<B> Nhwc<B> {
    /// `buf` holding `[n, plane, padded(c)]` bf16 values.
    pub(crate) fn new(buf: Bf16Buf<B>, c: usize) -> Self {
        Nhwc { buf, c }
    }
}

/// What a bf16 conv's forward keeps for its backward (`ConvOps::Kept`), as [`Keep`] asks: its input's [`Nhwc`] copy
/// for the weight gradient, and its weight packed for the input gradient's GEMM.
pub struct Kept<B> {
    pub(crate) input: Option<Arc<Nhwc<B>>>,
    pub(crate) weight: Option<Bf16Buf<B>>,
}

impl<B> Kept<B> {
    /// `None` when there is nothing to keep.
    pub(crate) fn of(keep: Keep, input: Arc<Nhwc<B>>, weight: Option<Bf16Buf<B>>) -> Option<Self> {
        let input = keep.for_dw.then_some(input);
        (input.is_some() || weight.is_some()).then_some(Kept { input, weight })
    }
}

fn grid_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("grid of {v} blocks exceeds the launch limit")))
}

/// `x: [n, c, plane]` f32 as an [`Nhwc`] copy (a row-major `[n, c]` matrix when `plane` is 1).
pub(crate) fn to_nhwc_bf16<E: Executor>(e: &E, x: &E::Buf, n: usize, c: usize, plane: usize) -> Result<Nhwc<E::Buf>> {
    Ok(to_nhwc_bf16_summed(e, x, Planes { n, c, plane }, false)?.0)
}

/// An NHWC copy and the per-image channel sums `[n, c]` made with it.
pub(crate) type Summed<B> = (Nhwc<B>, Option<B>);

/// A bias gradient still to be summed over rows of channel sums (per image, or per block of the kernel that made
/// them): `out[j] = Σ_i rows[i][j]`, `[n, len]` in, `[len]` out.
pub(crate) struct PendingBias<'a, B> {
    pub(crate) rows: &'a B,
    pub(crate) n: usize,
    pub(crate) len: usize,
    pub(crate) out: &'a mut B,
}

impl<B> PendingBias<'_, B> {
    /// Sums it with a launch of its own, for a backward pass with no weight gradient to share [`wgrad`]'s with.
    pub(crate) fn sum<E: Executor<Buf = B>>(self, e: &E) -> Result<()> {
        sum_rows(e, self.rows, 0, self.n, self.len, self.out)
    }
}

/// Blocks a summing [`to_nhwc_bf16_summed`] wants before it splits an image's pixels over several: about one
/// 1024-thread block per multiprocessor. A constant, so that the summation order depends on the shapes only.
const SUM_BLOCKS: usize = 128;

/// [`to_nhwc_bf16`] of `x: [d.n, d.c, d.plane]`, and with `summing` the per-image channel sums of `x`, `[n, c]`
/// (what a bias gradient is the sum over images of, and a per-image channel bias's gradient is). A summing
/// conversion runs one block per (32 channels, image) over all of the image's pixels, writing the per-image sums
/// itself, unless that leaves fewer than [`SUM_BLOCKS`] blocks: then each image's pixels are split over `splits`
/// blocks and one `sum_rows` adds their partials. All in a fixed order, so they differ from
/// `ReduceOps::channel_sums` by f32 summation order only.
pub(crate) fn to_nhwc_bf16_summed<E: Executor>(e: &E, x: &E::Buf, d: Planes, summing: bool) -> Result<Summed<E::Buf>> {
    let (n, c, plane) = (d.n, d.c, d.plane);
    need("nchw_to_nhwc_bf16 x", x, n * c * plane)?;
    let (cp, tiles) = (padded(c), plane.div_ceil(32).max(1));
    let blocks = cp.div_ceil(32) * n;
    let splits = if summing { tiles.min(SUM_BLOCKS.div_ceil(blocks.max(1))) } else { tiles };
    let buf = e.alloc_bf16(n * cp * plane)?;
    let parts = if summing { Some(e.alloc(splits * n * c)?) } else { None };
    let cfg = LaunchCfg {
        grid: [grid_u32(splits)?, grid_u32(cp.div_ceil(32))?, grid_u32(n)?],
        block: [32, 32, 1],
        shared_bytes: 0,
    };
    let args = [Arg::Buf(x), Arg::Bf16(&buf), Arg::opt(parts.as_ref()), i32_arg(c)?, i32_arg(cp)?, i32_arg(plane)?];
    // f32 read, bf16 written (the padding too), and the partial sums.
    let cost = Cost::bytes(4 * n * c * plane + 2 * n * cp * plane + parts.as_ref().map_or(0, |_| 4 * splits * n * c));
    run(e, Kernel::NchwToNhwcBf16, cfg, cost, &args)?;
    let nhwc = Nhwc { buf, c };
    let Some(parts) = parts else { return Ok((nhwc, None)) };
    if splits == 1 {
        return Ok((nhwc, Some(parts)));
    }
    let mut per_image = e.alloc(n * c)?;
    sum_rows(e, &parts, 0, splits, n * c, &mut per_image)?;
    Ok((nhwc, Some(per_image)))
}

/// A packed weight, and its adjoint GEMM's packing when asked for.
pub(crate) type Packed<B> = (Bf16Buf<B>, Option<Bf16Buf<B>>);

/// A weight as the bf16 GEMM operand `[o][kk][padded(c)]`: `w` is `[o, c, kk]`, or `[c, o, kk]` when `swap`. With
/// `adjoint`, the same launch also packs it as the adjoint GEMM's operand, `[c][kk][padded(o)]` (what
/// `pack_weight(e, w, (c, o, kk), !swap, false)` makes): a conv's forward packs the weight for its input gradient.
pub(crate) fn pack_weight<E: Executor>(
    e: &E,
    w: &E::Buf,
    (o, c, kk): (usize, usize, usize),
    swap: bool,
    adjoint: bool,
) -> Result<Packed<E::Buf>> {
    need("pack_weight_bf16 w", w, o * c * kk)?;
    let (len, adj_len) = (o * kk * padded(c), c * kk * padded(o));
    let wp = e.alloc_bf16(len)?;
    let wp_adj = if adjoint { Some(e.alloc_bf16(adj_len)?) } else { None };
    let args = [
        Arg::Buf(w),
        Arg::Bf16(&wp),
        wp_adj.as_ref().map_or(Arg::Null, Arg::Bf16),
        i32_arg(o)?,
        i32_arg(c)?,
        i32_arg(kk)?,
        Arg::I32(swap as i32),
    ];
    let (mut cfg, packs) = if adjoint { (elementwise(len.max(adj_len)), 2) } else { (elementwise(len), 1) };
    cfg.grid[1] = packs;
    // w read once per packing, each packing written.
    let cost = Cost::bytes(4 * packs as usize * o * c * kk + 2 * (len + if adjoint { adj_len } else { 0 }));
    run(e, Kernel::PackWeightBf16, cfg, cost, &args)?;
    Ok((wp, wp_adj))
}

/// Where [`pack_weights`] puts one weight `[a, b, kk]` of a parameter arena (a linear layer's has kk = 1): its `[a][tap][b]` operand (a
/// conv's forward, a transposed conv's input gradient) and its `[b][tap][a]` one (the other way round).
#[derive(Clone, Copy, Debug)]
struct Slot {
    a: usize,
    b: usize,
    kk: usize,
    at: [usize; 2],
}

/// The conv and linear weights of a parameter arena packed both ways in one launch: which are packed where, and the table the
/// kernel reads (made from the shapes once, so packing uploads nothing).
pub struct PackPlan<B> {
    table: IntBuf<B>,
    slots: Vec<Option<Slot>>,
    len: usize,
    arena_words: usize,
}

/// A weight packed both ways ([`PackPlan`]): `[a][tap][b]` and `[b][tap][a]`, views of one packed arena.
pub struct PackedWeight<B> {
    pub(crate) operands: [Bf16Buf<B>; 2],
}

/// Operands start at multiples of this many values (256 bytes), as the GEMMs' 16-byte copies need at least.
const PACK_ALIGN: usize = 128;

/// The plan for the 4-D and 2-D tensors among `tensors` (each its offset in the arena's words and its shape), or
/// `None` when there are none.
pub(crate) fn pack_plan<E: Executor>(e: &E, tensors: &[(usize, &[usize])]) -> Result<Option<PackPlan<E::Buf>>> {
    let (mut len, mut table, mut arena_words) = (0, Vec::new(), 0);
    let mut place = |n: usize| {
        let at = len;
        len += n.div_ceil(PACK_ALIGN) * PACK_ALIGN;
        at
    };
    let slots: Vec<Option<Slot>> = tensors
        .iter()
        .map(|&(offset, shape)| {
            arena_words = arena_words.max(offset + shape.iter().product::<usize>());
            // A linear layer's [out, in] weight is a 1x1 conv's.
            let (a, b, kk) = match *shape {
                [a, b, k, k2] => (a, b, k * k2),
                [a, b] => (a, b, 1),
                _ => return None,
            };
            let at = [place(a * kk * padded(b)), place(b * kk * padded(a))];
            table.extend([offset, a, b, kk, at[0], at[1]]);
            Some(Slot { a, b, kk, at })
        })
        .collect();
    if table.is_empty() {
        return Ok(None);
    }
    let table: Vec<u32> = table.into_iter().map(|v| u32::try_from(v).unwrap_or(u32::MAX)).collect();
    Ok(Some(PackPlan { table: e.upload_i32(&table)?, slots, len, arena_words }))
}

/// Every weight of `plan` packed from `arena`, in one launch of `pack_weights_bf16`: one entry per tensor of the
/// plan, `None` for those that are not 4-D or 2-D.
pub(crate) fn pack_weights<E: Executor>(
    e: &E,
    plan: &PackPlan<E::Buf>,
    arena: &E::Buf,
) -> Result<Vec<Option<PackedWeight<E::Buf>>>> {
    need("pack_weights_bf16 params", arena, plan.arena_words)?;
    if plan.table.bound().is_none_or(|b| b > plan.len.max(plan.arena_words) as u64 + 1) {
        return Err(Error::Arg("pack_weights_bf16: the table does not fit the buffers".into()));
    }
    let packed = e.alloc_bf16(plan.len)?;
    let slots: Vec<Slot> = plan.slots.iter().flatten().copied().collect();
    let largest = slots.iter().map(|s| s.a.max(s.b) * s.kk * padded(s.a.max(s.b))).max().unwrap_or(0);
    let mut cfg = elementwise(largest);
    cfg.grid[1] = grid_u32(slots.len())?;
    cfg.grid[2] = 2;
    // Each weight read once per operand, each operand written.
    let read: usize = slots.iter().map(|s| 2 * 4 * s.a * s.b * s.kk).sum();
    run(
        e,
        Kernel::PackWeightsBf16,
        cfg,
        Cost::bytes(read + 2 * plan.len),
        &[Arg::Buf(arena), Arg::Bf16(&packed), Arg::Ints(&plan.table)],
    )?;
    plan.slots
        .iter()
        .map(|s| {
            s.map(|s| {
                let lens = [s.a * s.kk * padded(s.b), s.b * s.kk * padded(s.a)];
                let [p0, p1] = [0, 1].map(|i| e.view_bf16(&packed, s.at[i], lens[i]));
                Ok(PackedWeight { operands: [p0?, p1?] })
            })
            .transpose()
        })
        .collect()
}

/// One implicit-GEMM convolution: `n` images of the gathered tensor `[n, ih, iw, c]` (NHWC bf16) through `k x k`
/// taps with `stride` and `pad`, by the conv's map or (`adjoint`) its adjoint's, onto an `[n, outputs, qh, qw]`
/// f32 output grid.
pub(crate) struct Gather {
    pub n: usize,
    pub c: usize,
    pub input: (usize, usize),
    pub outputs: usize,
    pub grid: (usize, usize),
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub adjoint: bool,
}

impl Gather {
    /// The output-pixel classes `conv_gather_mma` runs as separate GEMMs (`blockIdx.z`): `(rows, depth)` of each.
    /// A strided adjoint's output pixels fall into `stride²` classes by their position mod the stride, each of
    /// which reads every stride-th tap only (the others would meet no input pixel); anything else is one class of
    /// every pixel and every tap.
    /// (A stride of 1, or a conv's own map, is the one class of every pixel and tap.)
    fn classes(&self) -> impl Iterator<Item = (usize, usize)> {
        let Gather { n, c, grid, k, stride, pad, adjoint, .. } = *self;
        let s = if adjoint { stride } else { 1 };
        // The count of v in 0..len with v ≡ first (mod s), and the first output row or column of class r.
        let every = move |first: usize, len: usize| if first < len { (len - first).div_ceil(s) } else { 0 };
        let first = move |r: usize| (r + s - pad % s) % s;
        (0..s * s).map(move |z| {
            let (ry, rx) = (z / s, z % s);
            let pixels = every(first(ry), grid.0) * every(first(rx), grid.1);
            (n * pixels, every(ry, k) * every(rx, k) * padded(c))
        })
    }

    /// The conv `g` (adjoint = false: x -> out) or its adjoint (x on the output grid -> image grid).
    pub(crate) fn of(g: &ConvGeom, n: usize, channels: usize, adjoint: bool) -> Self {
        let (image, cols) = ((g.h, g.w), (g.oh, g.ow));
        let (c, outputs, input, grid) =
            if adjoint { (channels, g.c, cols, image) } else { (g.c, channels, image, cols) };
        Gather { n, c, input, outputs, grid, k: g.k, stride: g.stride, pad: g.pad, adjoint }
    }
}

/// The terms [`gather`] adds to its product: a bias `[outputs]`, a channel bias `[n, outputs]`, a residual shaped
/// like the output.
pub(crate) type Terms<'a, B> = (Option<&'a B>, Option<Columns<'a, B>>, Option<&'a B>);

/// Where a gather also writes its result's operand, and with it, when given, the column sums of the result per
/// block (`[Gather::sums_rows, outputs]`: they add up to the result's channel sums).
pub(crate) type OperandOut<'a, B> = Option<(&'a mut Nhwc<B>, Option<&'a mut B>)>;

/// Where a gather also writes an activation of its result (then the operand, if any, holds the activation's).
pub(crate) type ActOut<'a, B> = Option<(UnaryKind, &'a mut B)>;

impl Gather {
    /// The launch grid: output-channel tiles, row tiles of the largest class, classes.
    fn grid(&self) -> Result<[u32; 3]> {
        Ok([
            grid_u32(self.outputs.div_ceil(TILE))?,
            grid_u32(self.classes().map(|c| c.0).max().unwrap_or(0).div_ceil(TILE).max(1))?,
            grid_u32(self.classes().count())?,
        ])
    }

    /// The rows of a gather's column sums: one per block of a column of its grid.
    pub(crate) fn sums_rows(&self) -> Result<usize> {
        let [_, y, z] = self.grid()?;
        Ok(y as usize * z as usize)
    }
}

/// `out = gather(input) · wpᵀ + bias + chan_bias + residual` (`+=` onto `out` when `accumulate`, instead of the
/// residual); the result also written as an operand when given (for a conv that reads it), with its column sums,
/// and its activation `f(out)` into `act` when given (the operand then holds `f(out)`).
#[allow(clippy::too_many_arguments)] // the GEMM's operands, its epilogue's terms and its two outputs
pub(crate) fn gather<E: Executor>(
    e: &E,
    d: &Gather,
    input: &Nhwc<E::Buf>,
    wp: &Bf16Buf<E::Buf>,
    (bias, chan_bias, residual): Terms<E::Buf>,
    accumulate: bool,
    (out, act): (&mut E::Buf, ActOut<'_, E::Buf>),
    operand: OperandOut<'_, E::Buf>,
) -> Result<()> {
    let (out_nhwc, col_sums) = match operand {
        Some((o, sums)) => (Some(o), sums),
        None => (None, None),
    };
    if input.c != d.c {
        return Err(Error::Shape(format!("conv_gather_mma: input of {} channels, expected {}", input.c, d.c)));
    }
    let (q, cp) = (d.grid.0 * d.grid.1, padded(d.c));
    let depth = d.k * d.k * cp;
    need_bf16("conv_gather_mma input", &input.buf, d.n * d.input.0 * d.input.1 * cp)?;
    need_bf16("conv_gather_mma weight", wp, d.outputs * depth)?;
    need("conv_gather_mma out", out, d.n * d.outputs * q)?;
    bias.map_or(Ok(()), |b| need("conv_gather_mma bias", b, d.outputs))?;
    let (cb, cb_stride) = columns_arg("conv_gather_mma chan_bias", chan_bias, d.n, d.outputs)?;
    residual.map_or(Ok(()), |r| need("conv_gather_mma residual", r, d.n * d.outputs * q))?;
    if accumulate && residual.is_some() {
        return Err(Error::Arg("conv_gather_mma: a residual is added instead of accumulating, not as well".into()));
    }
    let np = padded(d.outputs);
    if let Some(o) = &out_nhwc {
        if o.c != d.outputs {
            return Err(Error::Shape(format!("conv_gather_mma: operand of {} channels for {}", o.c, d.outputs)));
        }
        need_bf16("conv_gather_mma out_nhwc", &o.buf, d.n * q * np)?;
    }
    if let Some((_, a)) = &act {
        need("conv_gather_mma act_out", &**a, d.n * d.outputs * q)?;
    }
    let sums_len = d.sums_rows()? * d.outputs;
    if let Some(s) = &col_sums {
        need("conv_gather_mma col_sums", &**s, sums_len)?;
    }
    let cfg = LaunchCfg { grid: d.grid()?, block: [THREADS, 1, 1], shared_bytes: GATHER_SMEM };
    let mut args = vec![
        Arg::Bf16(&input.buf),
        Arg::Bf16(wp),
        Arg::Buf(out),
        Arg::opt(bias),
        cb,
        Arg::opt(residual),
        out_nhwc.as_ref().map_or(Arg::Null, |o| Arg::Bf16(&o.buf)),
        Arg::opt(col_sums.as_deref()),
    ];
    for v in [d.n, cp, d.input.0, d.input.1, d.outputs, np, d.grid.0, d.grid.1, d.k, d.stride, d.pad] {
        args.push(i32_arg(v)?);
    }
    args.extend([Arg::I32(d.adjoint as i32), Arg::I32(accumulate as i32), i32_arg(cb_stride)?]);
    args.extend([Arg::opt(act.as_ref().map(|(_, a)| &**a)), Arg::I32(act.as_ref().map_or(0, |(k, _)| *k as i32))]);
    // Each class's taps executed (the padded channels too, and the taps of a conv's own map that fall in the zero
    // padding); the gathered input and the weight read once, the output written once (and it or the residual read
    // once when accumulating or adding one).
    let out_len = d.n * d.outputs * q;
    let flops: usize = d.classes().map(|(rows, depth)| 2 * rows * d.outputs.div_ceil(8) * 8 * depth).sum();
    let extra = bias.map_or(0, |_| d.outputs) + chan_bias.map_or(0, |_| d.n * d.outputs);
    let bytes = 2 * d.n * d.input.0 * d.input.1 * cp
        + 2 * d.outputs * depth
        + 4 * (out_len * (1 + (accumulate || residual.is_some()) as usize) + extra)
        + out_nhwc.as_ref().map_or(0, |_| 2 * d.n * q * np)
        + col_sums.as_ref().map_or(0, |_| 4 * sums_len)
        + act.as_ref().map_or(0, |_| 4 * out_len);
    run(e, Kernel::ConvGatherMma, cfg, Cost::tensor(flops, bytes), &args)
}

/// A weight gradient `dw[m, c, k, k] = Σ_pixels rows[pixel, m] · gathered[src(pixel, tap), c]`, `rows` on the
/// conv's output grid `[n, qh, qw, m]`, `gathered` on its input grid `[n, ih, iw, c]` (both NHWC bf16).
pub(crate) struct Wgrad {
    pub n: usize,
    pub m: usize,
    pub c: usize,
    pub input: (usize, usize),
    pub grid: (usize, usize),
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Wgrad {
    /// The weight gradient of the conv `g` with `m` channels on its output grid (a conv's outputs, a transposed
    /// conv's inputs).
    pub(crate) fn of(g: &ConvGeom, n: usize, m: usize) -> Self {
        Wgrad { n, m, c: g.c, input: (g.h, g.w), grid: (g.oh, g.ow), k: g.k, stride: g.stride, pad: g.pad }
    }
}

/// The split-K partition of [`wgrad`]: `(splits, pixels per split)`, from the shapes alone.
fn partition(d: &Wgrad) -> (usize, usize) {
    let pixels = d.n * d.grid.0 * d.grid.1;
    let tiles = padded(d.m).div_ceil(TILE) * (d.k * d.k * padded(d.c)).div_ceil(TILE);
    let ktiles = pixels.div_ceil(BK).max(1);
    let want = SPLIT_TARGET_BLOCKS.div_ceil(tiles).clamp(1, MAX_SPLITS.min(ktiles));
    let per = ktiles.div_ceil(want) * BK;
    (pixels.div_ceil(per).max(1), per)
}

/// Tiles of a [`wgrad`] launch at most: one ticket each in the backend's counter array
/// ([`crate::backend::TICKETS`]).
fn tiles(d: &Wgrad) -> usize {
    (d.k * d.k * padded(d.c)).div_ceil(TILE) * padded(d.m).div_ceil(TILE)
}

/// `dw` (overwritten) as [`Wgrad`] describes: per-split partial sums on the tensor cores, the splits added in a
/// fixed order by each tile's last block (counted on `tickets`, one per tile, 0 between launches), which for tile 0
/// also sums `bias` when given: one launch.
pub(crate) fn wgrad<E: Executor>(
    e: &E,
    d: &Wgrad,
    (rows, gathered): (&Nhwc<E::Buf>, &Nhwc<E::Buf>),
    dw: &mut E::Buf,
    bias: Option<PendingBias<E::Buf>>,
    tickets: &IntBuf<E::Buf>,
) -> Result<()> {
    if (rows.c, gathered.c) != (d.m, d.c) {
        return Err(Error::Shape(format!(
            "conv_wgrad_mma: operands of {} and {} channels, expected {} and {}",
            rows.c, gathered.c, d.m, d.c
        )));
    }
    let (kk, mp, cp) = (d.k * d.k, padded(d.m), padded(d.c));
    let width = kk * cp;
    need_bf16("conv_wgrad_mma rows", &rows.buf, d.n * d.grid.0 * d.grid.1 * mp)?;
    need_bf16("conv_wgrad_mma gathered", &gathered.buf, d.n * d.input.0 * d.input.1 * cp)?;
    need("conv_wgrad_mma dw", dw, d.m * d.c * kk)?;
    if tickets.len() < tiles(d) {
        return Err(Error::Shape(format!(
            "conv_wgrad_mma: {} output tiles, more than the {} block counters",
            tiles(d),
            tickets.len()
        )));
    }
    let (rows_b, len_b) = bias.as_ref().map_or((0, 0), |b| (b.n, b.len));
    if let Some(b) = &bias {
        need("conv_wgrad_mma bias_part", b.rows, b.n * b.len)?;
        need("conv_wgrad_mma db", b.out, b.len)?;
    }
    let (splits, per) = partition(d);
    let part = e.alloc(splits * mp * width)?;
    let cfg = LaunchCfg {
        grid: [grid_u32(width.div_ceil(TILE))?, grid_u32(mp.div_ceil(TILE))?, grid_u32(splits)?],
        block: [THREADS, 1, 1],
        shared_bytes: WGRAD_SMEM,
    };
    let (bias_part, db) = match &bias {
        Some(b) => (Arg::Buf(b.rows), Arg::Buf(&*b.out)),
        None => (Arg::Null, Arg::Null),
    };
    let mut args =
        vec![Arg::Bf16(&rows.buf), Arg::Bf16(&gathered.buf), Arg::Buf(&part), Arg::Buf(dw), Arg::Ints(tickets)];
    args.extend([bias_part, db]);
    for v in [d.n, mp, cp, d.m, d.c, d.input.0, d.input.1, d.grid.0, d.grid.1, d.k, d.stride, d.pad, per, rows_b, len_b]
    {
        args.push(i32_arg(v)?);
    }
    // The GEMM's operands read once and its partials written; then the partials read again, each split adding one
    // FLOP per weight, and the weight gradient written (and the bias's rows read, its sums written).
    let pixels = d.n * d.grid.0 * d.grid.1;
    let weights = d.m * d.c * kk;
    let gemm = Cost::tensor(
        2 * mp * width * pixels,
        2 * pixels * mp + 2 * d.n * d.input.0 * d.input.1 * cp + 4 * splits * mp * width,
    );
    let reduce = Cost::pass(splits * mp * width + rows_b * len_b, weights + len_b, splits.max(rows_b));
    run(e, Kernel::ConvWgradMma, cfg, gemm.plus(reduce), &args)
}
