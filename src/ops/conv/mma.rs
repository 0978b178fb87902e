//! The convolutions' tensor-core launches (`conv_mma.cu`), for [`Precision::Bf16`](crate::backend::Precision):
//! each f32 NCHW activation a GEMM gathers from is converted once into a bf16 NHWC copy, each weight into the bf16
//! operand layout, and the implicit GEMMs write f32 NCHW results, so the rest of the GPU backend is unchanged.
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

use crate::desc::ConvGeom;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, need, need_bf16, run, SPLIT_TARGET_BLOCKS};
use crate::gpu::{Arg, Bf16Buf, Cost, Executor, Kernel, LaunchCfg};

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

/// A channels-last bf16 copy of `n` images of `c` channels: `[n, plane, padded(c)]`, the padding zero.
pub(crate) struct Nhwc<B> {
    buf: Bf16Buf<B>,
    c: usize,
}

fn grid_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("grid of {v} blocks exceeds the launch limit")))
}

/// `x: [n, c, plane]` f32 as an [`Nhwc`] copy (a row-major `[n, c]` matrix when `plane` is 1).
pub(crate) fn to_nhwc_bf16<E: Executor>(e: &E, x: &E::Buf, n: usize, c: usize, plane: usize) -> Result<Nhwc<E::Buf>> {
    need("nchw_to_nhwc_bf16 x", x, n * c * plane)?;
    let cp = padded(c);
    let buf = e.alloc_bf16(n * cp * plane)?;
    let cfg = LaunchCfg {
        grid: [grid_u32(plane.div_ceil(32))?, grid_u32(cp.div_ceil(32))?, grid_u32(n)?],
        block: [32, 8, 1],
        shared_bytes: 0,
    };
    let args = [Arg::Buf(x), Arg::Bf16(&buf), i32_arg(c)?, i32_arg(cp)?, i32_arg(plane)?];
    // f32 read, bf16 written (the padding too).
    let cost = Cost::bytes(4 * n * c * plane + 2 * n * cp * plane);
    run(e, Kernel::NchwToNhwcBf16, cfg, cost, &args)?;
    Ok(Nhwc { buf, c })
}

/// A weight as the bf16 GEMM operand `[o][kk][padded(c)]`: `w` is `[o, c, kk]`, or `[c, o, kk]` when `swap`.
pub(crate) fn pack_weight<E: Executor>(
    e: &E,
    w: &E::Buf,
    (o, c, kk): (usize, usize, usize),
    swap: bool,
) -> Result<Bf16Buf<E::Buf>> {
    need("pack_weight_bf16 w", w, o * c * kk)?;
    let cp = padded(c);
    let wp = e.alloc_bf16(o * kk * cp)?;
    let args =
        [Arg::Buf(w), Arg::Bf16(&wp), i32_arg(o)?, i32_arg(c)?, i32_arg(cp)?, i32_arg(kk)?, Arg::I32(swap as i32)];
    let cost = Cost::bytes(4 * o * c * kk + 2 * o * kk * cp);
    run(e, Kernel::PackWeightBf16, elementwise(o * kk * cp), cost, &args)?;
    Ok(wp)
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
    /// The conv `g` (adjoint = false: x -> out) or its adjoint (x on the output grid -> image grid).
    pub(crate) fn of(g: &ConvGeom, n: usize, channels: usize, adjoint: bool) -> Self {
        let (image, cols) = ((g.h, g.w), (g.oh, g.ow));
        let (c, outputs, input, grid) =
            if adjoint { (channels, g.c, cols, image) } else { (g.c, channels, image, cols) };
        Gather { n, c, input, outputs, grid, k: g.k, stride: g.stride, pad: g.pad, adjoint }
    }
}

/// `out = gather(input) · wpᵀ + bias + chan_bias` (`+=` onto `out` when `accumulate`).
pub(crate) fn gather<E: Executor>(
    e: &E,
    d: &Gather,
    input: &Nhwc<E::Buf>,
    wp: &Bf16Buf<E::Buf>,
    (bias, chan_bias): (Option<&E::Buf>, Option<&E::Buf>),
    accumulate: bool,
    out: &mut E::Buf,
) -> Result<()> {
    if input.c != d.c {
        return Err(Error::Shape(format!("conv_gather_mma: input of {} channels, expected {}", input.c, d.c)));
    }
    let (q, cp) = (d.grid.0 * d.grid.1, padded(d.c));
    let depth = d.k * d.k * cp;
    need_bf16("conv_gather_mma input", &input.buf, d.n * d.input.0 * d.input.1 * cp)?;
    need_bf16("conv_gather_mma weight", wp, d.outputs * depth)?;
    need("conv_gather_mma out", out, d.n * d.outputs * q)?;
    bias.map_or(Ok(()), |b| need("conv_gather_mma bias", b, d.outputs))?;
    chan_bias.map_or(Ok(()), |b| need("conv_gather_mma chan_bias", b, d.n * d.outputs))?;
    let cfg = LaunchCfg {
        grid: [grid_u32(d.outputs.div_ceil(TILE))?, grid_u32((d.n * q).div_ceil(TILE))?, 1],
        block: [THREADS, 1, 1],
        shared_bytes: GATHER_SMEM,
    };
    let mut args = vec![Arg::Bf16(&input.buf), Arg::Bf16(wp), Arg::Buf(out), Arg::opt(bias), Arg::opt(chan_bias)];
    for v in [d.n, cp, d.input.0, d.input.1, d.outputs, d.grid.0, d.grid.1, d.k, d.stride, d.pad] {
        args.push(i32_arg(v)?);
    }
    args.extend([Arg::I32(d.adjoint as i32), Arg::I32(accumulate as i32)]);
    // Every tap executed (an adjoint's zero taps and the padded channels too); the gathered input and the weight
    // read once, the output written (and read when accumulating) once.
    let out_len = d.n * d.outputs * q;
    let flops = 2 * d.n * q * d.outputs.div_ceil(8) * 8 * depth;
    let extra = bias.map_or(0, |_| d.outputs) + chan_bias.map_or(0, |_| d.n * d.outputs);
    let bytes = 2 * d.n * d.input.0 * d.input.1 * cp
        + 2 * d.outputs * depth
        + 4 * (out_len * (1 + accumulate as usize) + extra);
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

/// `dw` (overwritten) as [`Wgrad`] describes: per-split partial sums on the tensor cores, then the splits added in
/// a fixed order.
pub(crate) fn wgrad<E: Executor>(
    e: &E,
    d: &Wgrad,
    rows: &Nhwc<E::Buf>,
    gathered: &Nhwc<E::Buf>,
    dw: &mut E::Buf,
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
    let (splits, per) = partition(d);
    let part = e.alloc(splits * mp * width)?;
    let cfg = LaunchCfg {
        grid: [grid_u32(width.div_ceil(TILE))?, grid_u32(mp.div_ceil(TILE))?, grid_u32(splits)?],
        block: [THREADS, 1, 1],
        shared_bytes: WGRAD_SMEM,
    };
    let mut args = vec![Arg::Bf16(&rows.buf), Arg::Bf16(&gathered.buf), Arg::Buf(&part)];
    for v in [d.n, mp, cp, d.input.0, d.input.1, d.grid.0, d.grid.1, d.k, d.stride, d.pad, per] {
        args.push(i32_arg(v)?);
    }
    let pixels = d.n * d.grid.0 * d.grid.1;
    let flops = 2 * mp * width * pixels;
    let bytes = 2 * pixels * mp + 2 * d.n * d.input.0 * d.input.1 * cp + 4 * splits * mp * width;
    run(e, Kernel::ConvWgradMma, cfg, Cost::tensor(flops, bytes), &args)?;
    let mut args = vec![Arg::Buf(&part), Arg::Buf(dw)];
    for v in [splits, d.m, d.c, mp, cp, kk] {
        args.push(i32_arg(v)?);
    }
    let cost = Cost::pass(splits * mp * width, d.m * d.c * kk, splits);
    run(e, Kernel::WgradReduce, elementwise(d.m * d.c * kk), cost, &args)
}
