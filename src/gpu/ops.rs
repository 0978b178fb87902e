//! The GPU ops: each one a fixed sequence of kernel launches, written once for every [`Executor`].
//!
//! Layouts and semantics are those of the CPU reference (`crate::cpu`, `crate::optim`, `crate::diffusion`):
//! row-major f32, images NCHW. Each op checks that every buffer is long enough for what its kernels touch, which
//! is what makes the unsafe launches sound. Results equal the CPU's up to summation order (GEMMs and reductions
//! sum in a different but fixed order, in f32 where the CPU sometimes uses f64); the purely elementwise ops
//! (sampler steps, AdamW, EMA, q_sample with its Philox noise) follow the CPU's f32 operation order.

use super::{Arg, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::cpu::conv::ConvGeom;
use crate::cpu::norm::NormDims;
use crate::diffusion::sampler::{DdimCoefs, DdpmCoefs};
use crate::error::{Error, Result};
use crate::optim::AdamWScalars;

/// Threads per block of the elementwise and reduction kernels (`BLOCK` in kernels/common.cuh).
const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels: enough blocks to fill any current GPU several times over.
const MAX_BLOCKS: usize = 4096;
/// Partial sums per tensor in the two-pass reductions (at most; fewer for short tensors).
const MAX_PARTIALS: usize = 1024;

fn elementwise(n: usize) -> LaunchCfg {
    LaunchCfg::linear(n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32, BLOCK)
}

/// The number of first-pass blocks (= partial sums) of a reduction over `n` values.
fn partials(n: usize) -> usize {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_PARTIALS)
}

fn need<B: DeviceBuf>(what: &str, b: &B, len: usize) -> Result<()> {
    if b.len() < len {
        return Err(Error::Shape(format!("{what}: buffer of {} words, needs {len}", b.len())));
    }
    Ok(())
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("{v} exceeds the kernels' 32-bit index range")))
}

/// Launches after the caller has checked the buffer lengths.
fn run<E: Executor>(e: &E, k: Kernel, cfg: LaunchCfg, args: &[Arg<E::Buf>]) -> Result<()> {
    // SAFETY: every op below checks with `need` that each buffer covers the indices its kernels derive from the
    // dimension arguments it passes.
    unsafe { e.launch(k, cfg, args) }
}

/// One (batched) matrix product for [`sgemm`]: `C_z (+)= Σ_{s<nsum} op(A_{z·nsum+s})·op(B_{z·nsum+s})`
/// for `z < batches`, with `op(A)` `m×k` (stored `k×m` when `trans_a`) and `op(B)` `k×n` (stored `n×k` when
/// `trans_b`). Batch item `i` of A starts `i·stride_a` words in (0 repeats one matrix); likewise B and C.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// Rows of `op(A)` and C.
    pub m: usize,
    /// Columns of `op(B)` and C.
    pub n: usize,
    /// The summed dimension.
    pub k: usize,
    /// A is stored `k×m`.
    pub trans_a: bool,
    /// B is stored `n×k`.
    pub trans_b: bool,
    /// Words between consecutive A matrices (0: one A for all).
    pub stride_a: usize,
    /// Words between consecutive B matrices (0: one B for all).
    pub stride_b: usize,
    /// Words between consecutive C matrices (non-zero when `batches > 1`).
    pub stride_c: usize,
    /// Independent products, each to its own C (grid z).
    pub batches: usize,
    /// Products summed into each C, in order.
    pub nsum: usize,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl Gemm {
    /// A single `C = op(A)·op(B)`.
    pub fn plain(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batches: 1,
            nsum: 1,
            accumulate: false,
        }
    }
}

/// `C (+)= op(A)·op(B)`, batched and/or summed over a batch, as described by [`Gemm`] (kernel `sgemm`, 64×64
/// tiles). Summing over a batch in-kernel replaces atomics: the order is fixed.
pub fn sgemm<E: Executor>(e: &E, g: &Gemm, a: &E::Buf, b: &E::Buf, c: &E::Buf) -> Result<()> {
    let items = g.batches * g.nsum;
    if g.m == 0 || g.n == 0 || items == 0 {
        return Ok(());
    }
    if g.batches > 1 && g.stride_c == 0 {
        return Err(Error::Arg("sgemm: batches writing one C would race; sum them with nsum".into()));
    }
    need("sgemm A", a, (items - 1) * g.stride_a + g.m * g.k)?;
    need("sgemm B", b, (items - 1) * g.stride_b + g.k * g.n)?;
    need("sgemm C", c, (g.batches - 1) * g.stride_c + g.m * g.n)?;
    let cfg = LaunchCfg {
        grid: [g.n.div_ceil(64) as u32, g.m.div_ceil(64) as u32, int(g.batches)? as u32],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    let s = |v: usize| Arg::I64(v as i64);
    run(
        e,
        Kernel::Sgemm,
        cfg,
        &[
            Arg::Buf(a),
            Arg::Buf(b),
            Arg::Buf(c),
            Arg::I32(int(g.m)?),
            Arg::I32(int(g.n)?),
            Arg::I32(int(g.k)?),
            Arg::I32(g.trans_a as i32),
            Arg::I32(g.trans_b as i32),
            s(g.stride_a),
            s(g.stride_b),
            s(g.stride_c),
            Arg::I32(int(g.nsum)?),
            Arg::I32(g.accumulate as i32),
        ],
    )
}

/// The geometry arguments shared by `im2col` and `col2im`, after `n`.
fn geom_args<'a, B>(g: &ConvGeom, n: usize) -> Result<Vec<Arg<'a, B>>> {
    [n, g.c, g.h, g.w, g.k, g.stride, g.pad, g.oh, g.ow].iter().map(|&v| int(v).map(Arg::I32)).collect()
}

/// `col[i] = im2col(x[i])` for `n` images (`x: [n, g.c, g.h, g.w]`, `col: [n, g.c·k·k, g.oh·g.ow]`).
pub fn im2col<E: Executor>(e: &E, g: &ConvGeom, n: usize, x: &E::Buf, col: &E::Buf) -> Result<()> {
    need("im2col x", x, n * g.c * g.h * g.w)?;
    let total = n * g.col_rows() * g.col_cols();
    need("im2col col", col, total)?;
    let mut args = vec![Arg::Buf(x), Arg::Buf(col)];
    args.extend(geom_args(g, n)?);
    run(e, Kernel::Im2col, elementwise(total), &args)
}

/// `x[i] = col2im(col[i])`, the adjoint of [`im2col`] (overwrites x; a gather, so deterministic).
pub fn col2im<E: Executor>(e: &E, g: &ConvGeom, n: usize, col: &E::Buf, x: &E::Buf) -> Result<()> {
    let total = n * g.c * g.h * g.w;
    need("col2im col", col, n * g.col_rows() * g.col_cols())?;
    need("col2im x", x, total)?;
    let mut args = vec![Arg::Buf(col), Arg::Buf(x)];
    args.extend(geom_args(g, n)?);
    run(e, Kernel::Col2im, elementwise(total), &args)
}

/// `y[i, c, :] += bias[c] + chan_bias[i, c]` for `y: [n, c, plane]`; either term may be absent. The broadcast add
/// of conv and linear biases and of the time embedding into a ResBlock.
pub fn add_channel_bias<E: Executor>(
    e: &E,
    y: &E::Buf,
    bias: Option<&E::Buf>,
    chan_bias: Option<&E::Buf>,
    n: usize,
    c: usize,
    plane: usize,
) -> Result<()> {
    if bias.is_none() && chan_bias.is_none() {
        return Ok(());
    }
    need("add_channel_bias y", y, n * c * plane)?;
    bias.map_or(Ok(()), |b| need("add_channel_bias bias", b, c))?;
    chan_bias.map_or(Ok(()), |b| need("add_channel_bias chan_bias", b, n * c))?;
    run(
        e,
        Kernel::AddChannelBias,
        elementwise(n * c * plane),
        &[
            Arg::Buf(y),
            Arg::opt(bias),
            Arg::opt(chan_bias),
            Arg::I32(int(n)?),
            Arg::I32(int(c)?),
            Arg::I32(int(plane)?),
        ],
    )
}

/// Conv2d forward: `out[i] = W·im2col(x[i]) + bias + chan_bias[i] + residual[i]`, `x: [n, g.c, g.h, g.w]`,
/// `w: [co, g.c, k, k]`, `out: [n, co, g.oh, g.ow]`, every extra term optional (`cpu::conv::conv2d_forward` with
/// its `Epilogue`). The residual is copied into `out` first and the GEMM accumulates onto it, as on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    w: &E::Buf,
    co: usize,
    bias: Option<&E::Buf>,
    chan_bias: Option<&E::Buf>,
    residual: Option<&E::Buf>,
    out: &E::Buf,
) -> Result<()> {
    let (kk, plane) = (g.col_rows(), g.col_cols());
    if let Some(r) = residual {
        copy_channels(e, r, co, 0, out, co, 0, co, n, plane)?;
    }
    let gemm = Gemm {
        stride_b: kk * plane,
        stride_c: co * plane,
        batches: n,
        accumulate: residual.is_some(),
        ..Gemm::plain(co, plane, kk, false, false)
    };
    with_columns(e, g, n, x, |col| sgemm(e, &gemm, w, col, out))?;
    add_channel_bias(e, out, bias, chan_bias, n, co, plane)
}

/// Runs `f` on the column matrices of `x` (x itself for a 1×1 stride-1 unpadded conv, whose columns it is).
fn with_columns<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    f: impl FnOnce(&E::Buf) -> Result<()>,
) -> Result<()> {
    if g.k == 1 && g.stride == 1 && g.pad == 0 {
        return f(x);
    }
    let col = e.alloc(n * g.col_rows() * g.col_cols())?;
    im2col(e, g, n, x, &col)?;
    f(&col)
}

/// Conv2d backward for `gout: [n, co, g.oh, g.ow]`: `dx[i] = col2im(Wᵀ·gout[i])` and
/// `dW = Σ_i gout[i]·im2col(x[i])ᵀ` (summed over images inside the GEMM, in order); `None` outputs are skipped.
/// The bias gradient is [`channel_sums`] of `gout`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    w: &E::Buf,
    co: usize,
    gout: &E::Buf,
    dx: Option<&E::Buf>,
    dw: Option<&E::Buf>,
) -> Result<()> {
    let (kk, plane) = (g.col_rows(), g.col_cols());
    if let Some(dw) = dw {
        let gemm =
            Gemm { stride_a: co * plane, stride_b: kk * plane, nsum: n, ..Gemm::plain(co, kk, plane, false, true) };
        with_columns(e, g, n, x, |col| sgemm(e, &gemm, gout, col, dw))?;
    }
    if let Some(dx) = dx {
        let gemm =
            Gemm { stride_b: co * plane, stride_c: kk * plane, batches: n, ..Gemm::plain(kk, plane, co, true, false) };
        if g.k == 1 && g.stride == 1 && g.pad == 0 {
            return sgemm(e, &gemm, w, gout, dx);
        }
        let col = e.alloc(n * kk * plane)?;
        sgemm(e, &gemm, w, gout, &col)?;
        col2im(e, g, n, &col, dx)?;
    }
    Ok(())
}

/// ConvTranspose2d forward (weight `[ci, co, k, k]`), the adjoint of the conv with geometry `g` (`g.c = co`,
/// `(g.h, g.w)` the output size, `(g.oh, g.ow)` the input size): `out[i] = col2im(Wᵀ·x[i]) + bias`,
/// `x: [n, ci, g.oh, g.ow]`, `out: [n, g.c, g.h, g.w]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_forward<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    w: &E::Buf,
    ci: usize,
    bias: Option<&E::Buf>,
    out: &E::Buf,
) -> Result<()> {
    let (kk, plane) = (g.col_rows(), g.col_cols());
    let col = e.alloc(n * kk * plane)?;
    let gemm =
        Gemm { stride_b: ci * plane, stride_c: kk * plane, batches: n, ..Gemm::plain(kk, plane, ci, true, false) };
    sgemm(e, &gemm, w, x, &col)?;
    col2im(e, g, n, &col, out)?;
    add_channel_bias(e, out, bias, None, n, g.c, g.h * g.w)
}

/// ConvTranspose2d backward: with `col[i] = im2col(gout[i])`, `dx[i] = W·col[i]` and `dW = Σ_i x[i]·col[i]ᵀ`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    w: &E::Buf,
    ci: usize,
    gout: &E::Buf,
    dx: Option<&E::Buf>,
    dw: Option<&E::Buf>,
) -> Result<()> {
    let (kk, plane) = (g.col_rows(), g.col_cols());
    let col = e.alloc(n * kk * plane)?;
    im2col(e, g, n, gout, &col)?;
    if let Some(dw) = dw {
        let gemm =
            Gemm { stride_a: ci * plane, stride_b: kk * plane, nsum: n, ..Gemm::plain(ci, kk, plane, false, true) };
        sgemm(e, &gemm, x, &col, dw)?;
    }
    if let Some(dx) = dx {
        let gemm =
            Gemm { stride_b: kk * plane, stride_c: ci * plane, batches: n, ..Gemm::plain(ci, plane, kk, false, false) };
        sgemm(e, &gemm, w, &col, dx)?;
    }
    Ok(())
}

/// `out[r] = Σ_p t[r, p]` over `rows` rows of `len` (kernel `row_sums`, one block per row).
fn row_sums<E: Executor>(e: &E, t: &E::Buf, rows: usize, len: usize, out: &E::Buf) -> Result<()> {
    need("row_sums t", t, rows * len)?;
    need("row_sums out", out, rows)?;
    run(
        e,
        Kernel::RowSums,
        LaunchCfg::linear(int(rows)? as u32, BLOCK),
        &[Arg::Buf(t), Arg::Buf(out), Arg::I32(int(len)?)],
    )
}

/// `out[c] = Σ_i parts[i, c]` over the `n` rows of `parts: [n, c]`, in row order.
fn sum_rows<E: Executor>(e: &E, parts: &E::Buf, offset: usize, n: usize, c: usize, out: &E::Buf) -> Result<()> {
    need("sum_rows parts", parts, offset + n * c)?;
    need("sum_rows out", out, c)?;
    run(
        e,
        Kernel::SumRows,
        LaunchCfg::linear(c.div_ceil(256).max(1) as u32, BLOCK),
        &[Arg::BufAt(parts, offset), Arg::Buf(out), Arg::I32(int(n)?), Arg::I32(int(c)?)],
    )
}

/// Per-channel sums of `t: [n, c, plane]`: `[n, c]` when `per_image`, else `[c]` (summed over images in order).
/// The gradient of a broadcast bias.
pub fn channel_sums<E: Executor>(
    e: &E,
    t: &E::Buf,
    n: usize,
    c: usize,
    plane: usize,
    per_image: bool,
    out: &E::Buf,
) -> Result<()> {
    if per_image {
        return row_sums(e, t, n * c, plane, out);
    }
    let parts = e.alloc(n * c)?;
    row_sums(e, t, n * c, plane, &parts)?;
    sum_rows(e, &parts, 0, n, c, out)
}

/// GroupNorm forward (`cpu::norm::group_norm_forward`): `y = γ·(x-μ)·r + β`, then SiLU when `silu`; writes the
/// per-(image, group) `mean` and `rstd` (`[n·groups]` each) for the backward. One block per (group, image).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_forward<E: Executor>(
    e: &E,
    d: NormDims,
    x: &E::Buf,
    gamma: &E::Buf,
    beta: &E::Buf,
    eps: f32,
    silu: bool,
    y: &E::Buf,
    mean: &E::Buf,
    rstd: &E::Buf,
) -> Result<()> {
    check_norm(e, d, x, gamma, beta)?;
    need("group_norm y", y, d.n * d.c * d.plane)?;
    need("group_norm mean", mean, d.n * d.groups)?;
    need("group_norm rstd", rstd, d.n * d.groups)?;
    let cfg = LaunchCfg { grid: [int(d.groups)? as u32, int(d.n)? as u32, 1], block: [BLOCK, 1, 1], shared_bytes: 0 };
    run(
        e,
        Kernel::GroupNormFwd,
        cfg,
        &[
            Arg::Buf(x),
            Arg::Buf(gamma),
            Arg::Buf(beta),
            Arg::Buf(y),
            Arg::Buf(mean),
            Arg::Buf(rstd),
            Arg::I32(int(d.c)?),
            Arg::I32(int(d.plane)?),
            Arg::I32(int(d.groups)?),
            Arg::F32(eps),
            Arg::I32(silu as i32),
        ],
    )
}

fn check_norm<E: Executor>(_: &E, d: NormDims, x: &E::Buf, gamma: &E::Buf, beta: &E::Buf) -> Result<()> {
    if d.groups == 0 || !d.c.is_multiple_of(d.groups) {
        return Err(Error::Shape(format!("group_norm: {} channels in {} groups", d.c, d.groups)));
    }
    need("group_norm x", x, d.n * d.c * d.plane)?;
    need("group_norm gamma", gamma, d.c)?;
    need("group_norm beta", beta, d.c)
}

/// GroupNorm backward (`cpu::norm::group_norm_backward`): `dx` when given, and `dgamma`, `dbeta` (`[c]`), the
/// latter reduced over images in order from per-image partials (no atomics).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<E: Executor>(
    e: &E,
    d: NormDims,
    x: &E::Buf,
    gamma: &E::Buf,
    beta: &E::Buf,
    mean: &E::Buf,
    rstd: &E::Buf,
    silu: bool,
    gy: &E::Buf,
    dx: Option<&E::Buf>,
    dgamma: &E::Buf,
    dbeta: &E::Buf,
) -> Result<()> {
    check_norm(e, d, x, gamma, beta)?;
    need("group_norm mean", mean, d.n * d.groups)?;
    need("group_norm rstd", rstd, d.n * d.groups)?;
    need("group_norm gy", gy, d.n * d.c * d.plane)?;
    dx.map_or(Ok(()), |dx| need("group_norm dx", dx, d.n * d.c * d.plane))?;
    let nc = d.n * d.c;
    let parts = e.alloc(2 * nc)?;
    let cfg = LaunchCfg { grid: [int(d.groups)? as u32, int(d.n)? as u32, 1], block: [BLOCK, 1, 1], shared_bytes: 0 };
    run(
        e,
        Kernel::GroupNormBwd,
        cfg,
        &[
            Arg::Buf(x),
            Arg::Buf(gamma),
            Arg::Buf(beta),
            Arg::Buf(mean),
            Arg::Buf(rstd),
            Arg::Buf(gy),
            Arg::opt(dx),
            Arg::BufAt(&parts, 0),
            Arg::BufAt(&parts, nc),
            Arg::I32(int(d.c)?),
            Arg::I32(int(d.plane)?),
            Arg::I32(int(d.groups)?),
            Arg::I32(silu as i32),
        ],
    )?;
    sum_rows(e, &parts, 0, d.n, d.c, dgamma)?;
    sum_rows(e, &parts, nc, d.n, d.c, dbeta)
}

/// `y = x·σ(x)` over the first `n` words.
pub fn silu_forward<E: Executor>(e: &E, x: &E::Buf, y: &E::Buf, n: usize) -> Result<()> {
    need("silu x", x, n)?;
    need("silu y", y, n)?;
    run(e, Kernel::SiluFwd, elementwise(n), &[Arg::Buf(x), Arg::Buf(y), Arg::I64(n as i64)])
}

/// `dx = gy·σ(x)·(1 + x·(1-σ(x)))` over the first `n` words.
pub fn silu_backward<E: Executor>(e: &E, x: &E::Buf, gy: &E::Buf, dx: &E::Buf, n: usize) -> Result<()> {
    need("silu x", x, n)?;
    need("silu gy", gy, n)?;
    need("silu dx", dx, n)?;
    run(e, Kernel::SiluBwd, elementwise(n), &[Arg::Buf(x), Arg::Buf(gy), Arg::Buf(dx), Arg::I64(n as i64)])
}

/// `y = max(x, 0)` over the first `n` words.
pub fn relu_forward<E: Executor>(e: &E, x: &E::Buf, y: &E::Buf, n: usize) -> Result<()> {
    need("relu x", x, n)?;
    need("relu y", y, n)?;
    run(e, Kernel::ReluFwd, elementwise(n), &[Arg::Buf(x), Arg::Buf(y), Arg::I64(n as i64)])
}

/// `dx = gy·[x > 0]` over the first `n` words.
pub fn relu_backward<E: Executor>(e: &E, x: &E::Buf, gy: &E::Buf, dx: &E::Buf, n: usize) -> Result<()> {
    need("relu x", x, n)?;
    need("relu gy", gy, n)?;
    need("relu dx", dx, n)?;
    run(e, Kernel::ReluBwd, elementwise(n), &[Arg::Buf(x), Arg::Buf(gy), Arg::Buf(dx), Arg::I64(n as i64)])
}

/// 2x2 max pooling, stride 2, of `planes` planes of `h×w` (`cpu::classify::max_pool2d_forward`):
/// `y, argmax: [planes, h/2, w/2]`, `argmax` the offset `2·dy + dx` of each window's first maximum.
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_forward<E: Executor>(
    e: &E,
    planes: usize,
    h: usize,
    w: usize,
    x: &E::Buf,
    y: &E::Buf,
    argmax: &E::Buf,
) -> Result<()> {
    let out = planes * (h / 2) * (w / 2);
    need("max_pool2d x", x, planes * h * w)?;
    need("max_pool2d y", y, out)?;
    need("max_pool2d argmax", argmax, out)?;
    run(
        e,
        Kernel::MaxPool2dFwd,
        elementwise(out),
        &[Arg::Buf(x), Arg::Buf(y), Arg::Buf(argmax), Arg::I32(int(planes)?), Arg::I32(int(h)?), Arg::I32(int(w)?)],
    )
}

/// The backward of [`max_pool2d_forward`]: `dx = gy` at each window's saved maximum, 0 elsewhere (one thread per
/// input pixel, so no two write one address).
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward<E: Executor>(
    e: &E,
    planes: usize,
    h: usize,
    w: usize,
    argmax: &E::Buf,
    gy: &E::Buf,
    dx: &E::Buf,
) -> Result<()> {
    let out = planes * (h / 2) * (w / 2);
    need("max_pool2d argmax", argmax, out)?;
    need("max_pool2d gy", gy, out)?;
    need("max_pool2d dx", dx, planes * h * w)?;
    run(
        e,
        Kernel::MaxPool2dBwd,
        elementwise(planes * h * w),
        &[Arg::Buf(argmax), Arg::Buf(gy), Arg::Buf(dx), Arg::I32(int(planes)?), Arg::I32(int(h)?), Arg::I32(int(w)?)],
    )
}

/// Cross-entropy of `z: [n, classes]` against `labels` (`n` class indices as f32, checked on the host where they
/// are made): `lse[i]` the row log-sum-exps, `out[0] = (1/n)·Σ_i (lse_i - z_i[y_i])`, the row losses added by
/// one block in a fixed order (`cpu::classify::cross_entropy`).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<E: Executor>(
    e: &E,
    z: &E::Buf,
    labels: &E::Buf,
    n: usize,
    classes: usize,
    lse: &E::Buf,
    out: &E::Buf,
) -> Result<()> {
    check_cross_entropy(z, labels, lse, n, classes)?;
    need("cross_entropy out", out, 1)?;
    let rows = e.alloc(n)?;
    run(
        e,
        Kernel::CrossEntropyRows,
        elementwise(n),
        &[Arg::Buf(z), Arg::Buf(labels), Arg::Buf(lse), Arg::Buf(&rows), Arg::I32(int(n)?), Arg::I32(int(classes)?)],
    )?;
    finish_sum(e, &rows, n, out, 0, n as f32, 0.0)
}

/// `dz = (e^{z - lse_i} - onehot(y))·gloss/n` (`cpu::classify::cross_entropy_backward`).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward<E: Executor>(
    e: &E,
    z: &E::Buf,
    labels: &E::Buf,
    lse: &E::Buf,
    gloss: f32,
    n: usize,
    classes: usize,
    dz: &E::Buf,
) -> Result<()> {
    check_cross_entropy(z, labels, lse, n, classes)?;
    need("cross_entropy dz", dz, n * classes)?;
    let scale = gloss / n as f32;
    run(
        e,
        Kernel::CrossEntropyBwd,
        elementwise(n * classes),
        &[
            Arg::Buf(z),
            Arg::Buf(labels),
            Arg::Buf(lse),
            Arg::Buf(dz),
            Arg::F32(scale),
            Arg::I32(int(n)?),
            Arg::I32(int(classes)?),
        ],
    )
}

fn check_cross_entropy<B: DeviceBuf>(z: &B, labels: &B, lse: &B, n: usize, classes: usize) -> Result<()> {
    need("cross_entropy z", z, n * classes)?;
    need("cross_entropy labels", labels, n)?;
    need("cross_entropy lse", lse, n)
}

/// Linear layer `y[b, o] = Σ_i x[b, i]·W[o, i] + bias[o]` (`x Wᵀ + b`), `x: [batch, fin]`, `w: [fout, fin]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<E: Executor>(
    e: &E,
    x: &E::Buf,
    w: &E::Buf,
    bias: Option<&E::Buf>,
    batch: usize,
    fin: usize,
    fout: usize,
    y: &E::Buf,
) -> Result<()> {
    sgemm(e, &Gemm::plain(batch, fout, fin, false, true), x, w, y)?;
    add_channel_bias(e, y, bias, None, batch, fout, 1)
}

/// Linear backward: `dx = gy·W`, `dW = gyᵀ·x`, `db = Σ_b gy[b, :]`; `None` outputs are skipped.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<E: Executor>(
    e: &E,
    x: &E::Buf,
    w: &E::Buf,
    gy: &E::Buf,
    batch: usize,
    fin: usize,
    fout: usize,
    dx: Option<&E::Buf>,
    dw: Option<&E::Buf>,
    db: Option<&E::Buf>,
) -> Result<()> {
    if let Some(dx) = dx {
        sgemm(e, &Gemm::plain(batch, fin, fout, false, false), gy, w, dx)?;
    }
    if let Some(dw) = dw {
        sgemm(e, &Gemm::plain(fout, fin, batch, true, false), gy, x, dw)?;
    }
    db.map_or(Ok(()), |db| sum_rows(e, gy, 0, batch, fout, db))
}

/// `dst[i, dst_off..dst_off+count, :] = src[i, src_off..src_off+count, :]` for `n` images of `plane` pixels.
#[allow(clippy::too_many_arguments)]
fn copy_channels<E: Executor>(
    e: &E,
    src: &E::Buf,
    src_c: usize,
    src_off: usize,
    dst: &E::Buf,
    dst_c: usize,
    dst_off: usize,
    count: usize,
    n: usize,
    plane: usize,
) -> Result<()> {
    need("copy_channels src", src, n * src_c * plane)?;
    need("copy_channels dst", dst, n * dst_c * plane)?;
    if src_off + count > src_c || dst_off + count > dst_c {
        return Err(Error::Shape("copy_channels: channel block out of range".into()));
    }
    let i = |v: usize| int(v).map(Arg::I32);
    run(
        e,
        Kernel::CopyChannels,
        elementwise(n * count * plane),
        &[Arg::Buf(src), i(src_c)?, i(src_off)?, Arg::Buf(dst), i(dst_c)?, i(dst_off)?, i(count)?, i(n)?, i(plane)?],
    )
}

/// `dst[..n] = src[..n]` (a device-side copy: one channel block of one image).
pub fn copy<E: Executor>(e: &E, src: &E::Buf, dst: &E::Buf, n: usize) -> Result<()> {
    copy_channels(e, src, 1, 0, dst, 1, 0, 1, 1, n)
}

/// `acc += g` over the first `n` words (gradient accumulation).
pub fn add_assign<E: Executor>(e: &E, acc: &E::Buf, g: &E::Buf, n: usize) -> Result<()> {
    need("add_assign acc", acc, n)?;
    need("add_assign g", g, n)?;
    run(e, Kernel::AddAssign, elementwise(n), &[Arg::Buf(acc), Arg::Buf(g), Arg::I64(n as i64)])
}

/// Column sums `out[c] = Σ_r m[r, c]` of `m: [rows, cols]`, in row order (a linear layer's bias gradient).
pub fn column_sums<E: Executor>(e: &E, m: &E::Buf, rows: usize, cols: usize, out: &E::Buf) -> Result<()> {
    sum_rows(e, m, 0, rows, cols, out)
}

/// Concatenates `a: [n, ca, plane]` and `b: [n, cb, plane]` along channels into `out: [n, ca + cb, plane]`.
#[allow(clippy::too_many_arguments)]
pub fn concat_channels<E: Executor>(
    e: &E,
    a: &E::Buf,
    b: &E::Buf,
    n: usize,
    ca: usize,
    cb: usize,
    plane: usize,
    out: &E::Buf,
) -> Result<()> {
    copy_channels(e, a, ca, 0, out, ca + cb, 0, ca, n, plane)?;
    copy_channels(e, b, cb, 0, out, ca + cb, ca, cb, n, plane)
}

/// The inverse of [`concat_channels`]: splits `g: [n, ca + cb, plane]` into `a: [n, ca, plane]`, `b: [n, cb, plane]`.
#[allow(clippy::too_many_arguments)]
pub fn split_channels<E: Executor>(
    e: &E,
    g: &E::Buf,
    n: usize,
    ca: usize,
    cb: usize,
    plane: usize,
    a: &E::Buf,
    b: &E::Buf,
) -> Result<()> {
    copy_channels(e, g, ca + cb, 0, a, ca, 0, ca, n, plane)?;
    copy_channels(e, g, ca + cb, ca, b, cb, 0, cb, n, plane)
}

/// `out[0] = (1/n)·Σ (p - t)²` over `n` words, in two deterministic passes (partials, then one block).
pub fn mse<E: Executor>(e: &E, p: &E::Buf, t: &E::Buf, n: usize, out: &E::Buf) -> Result<()> {
    need("mse p", p, n)?;
    need("mse t", t, n)?;
    need("mse out", out, 1)?;
    let np = partials(n);
    let parts = e.alloc(np)?;
    run(
        e,
        Kernel::SumsqPartials,
        LaunchCfg::linear(np as u32, BLOCK),
        &[Arg::Buf(p), Arg::Buf(t), Arg::Buf(&parts), Arg::I64(n as i64)],
    )?;
    finish_sum(e, &parts, np, out, 0, n as f32, 0.0)
}

fn finish_sum<E: Executor>(
    e: &E,
    parts: &E::Buf,
    np: usize,
    out: &E::Buf,
    mode: i32,
    divisor: f32,
    max_norm: f32,
) -> Result<()> {
    run(
        e,
        Kernel::FinishSum,
        LaunchCfg::linear(1, 1024),
        &[Arg::Buf(parts), Arg::I32(int(np)?), Arg::Buf(out), Arg::I32(mode), Arg::F32(divisor), Arg::F32(max_norm)],
    )
}

/// `dp = (2/n)·(p - t)·gloss` over `n` words (`cpu::elementwise::mse_backward`).
pub fn mse_backward<E: Executor>(e: &E, p: &E::Buf, t: &E::Buf, gloss: f32, n: usize, dp: &E::Buf) -> Result<()> {
    need("mse p", p, n)?;
    need("mse t", t, n)?;
    need("mse dp", dp, n)?;
    let scale = 2.0 * gloss / n as f32;
    run(
        e,
        Kernel::MseBwd,
        elementwise(n),
        &[Arg::Buf(p), Arg::Buf(t), Arg::Buf(dp), Arg::F32(scale), Arg::I64(n as i64)],
    )
}

/// The sinusoidal time embedding `[sin(t·f), cos(t·f)]`, `out: [batch, 2·half]`, `t`: `batch` i32 timesteps,
/// `freqs`: `half` words from `TimeEmbedding::freqs` (`nn::layers::TimeEmbedding::sinusoid`).
pub fn time_embedding<E: Executor>(
    e: &E,
    t: &E::Buf,
    freqs: &E::Buf,
    batch: usize,
    half: usize,
    out: &E::Buf,
) -> Result<()> {
    need("time_embedding t", t, batch)?;
    need("time_embedding freqs", freqs, half)?;
    need("time_embedding out", out, batch * 2 * half)?;
    run(
        e,
        Kernel::TimeEmbedding,
        elementwise(batch * 2 * half),
        &[Arg::Buf(t), Arg::Buf(freqs), Arg::Buf(out), Arg::I32(int(batch)?), Arg::I32(int(half)?)],
    )
}

/// The forward process with its noise drawn on the device: `noise[e] = rng::normal(seed, stream, e)` and
/// `xt[e] = sqrt_ab[t_b]·x0[e] + sqrt_1m_ab[t_b]·noise[e]` (`Schedule::q_sample`), where `x0` is `batch` items
/// of `per_item` words, `t` holds `batch` i32 timesteps, and `sqrt_ab`, `sqrt_1m_ab` are the schedule's
/// `sqrt_alphas_bar` and `sqrt_one_minus_alphas_bar` uploaded once.
#[allow(clippy::too_many_arguments)]
pub fn q_sample<E: Executor>(
    e: &E,
    x0: &E::Buf,
    t: &E::Buf,
    sqrt_ab: &E::Buf,
    sqrt_1m_ab: &E::Buf,
    batch: usize,
    per_item: usize,
    seed: u64,
    stream: u64,
    noise: &E::Buf,
    xt: &E::Buf,
) -> Result<()> {
    let n = batch * per_item;
    need("q_sample x0", x0, n)?;
    need("q_sample t", t, batch)?;
    need("q_sample noise", noise, n)?;
    need("q_sample xt", xt, n)?;
    // Timesteps index the tables on the device; they are checked where they are made (the host), not here.
    if sqrt_ab.len() != sqrt_1m_ab.len() {
        return Err(Error::Shape("q_sample: schedule tables differ in length".into()));
    }
    run(
        e,
        Kernel::QSample,
        elementwise(n),
        &[
            Arg::Buf(x0),
            Arg::Buf(t),
            Arg::Buf(sqrt_ab),
            Arg::Buf(sqrt_1m_ab),
            Arg::Buf(noise),
            Arg::Buf(xt),
            Arg::I64(n as i64),
            Arg::I64(per_item.max(1) as i64),
            Arg::U64(seed),
            Arg::U64(stream),
        ],
    )
}

/// One DDPM step (`diffusion::sampler::ddpm_step`) over `n` words: `out = sra·(x - eps_coef·eps) + sigma·z`, with
/// `z = rng::normal(seed, stream, e)` drawn on the device when `noise = Some((seed, stream))`, none when `None`.
pub fn ddpm_step<E: Executor>(
    e: &E,
    c: &DdpmCoefs,
    x: &E::Buf,
    eps: &E::Buf,
    n: usize,
    noise: Option<(u64, u64)>,
    out: &E::Buf,
) -> Result<()> {
    check_step(x, eps, out, n)?;
    let (seed, stream) = noise.unwrap_or((0, 0));
    run(
        e,
        Kernel::DdpmStep,
        elementwise(n),
        &[
            Arg::Buf(x),
            Arg::Buf(eps),
            Arg::Buf(out),
            Arg::I64(n as i64),
            Arg::F32(c.sqrt_recip_alpha),
            Arg::F32(c.eps_coef),
            Arg::F32(c.sigma),
            Arg::U64(seed),
            Arg::U64(stream),
            Arg::I32(noise.is_some() as i32),
        ],
    )
}

/// One DDIM step (`diffusion::sampler::ddim_step`) over `n` words, noise as in [`ddpm_step`].
pub fn ddim_step<E: Executor>(
    e: &E,
    c: &DdimCoefs,
    x: &E::Buf,
    eps: &E::Buf,
    n: usize,
    noise: Option<(u64, u64)>,
    out: &E::Buf,
) -> Result<()> {
    check_step(x, eps, out, n)?;
    let (seed, stream) = noise.unwrap_or((0, 0));
    run(
        e,
        Kernel::DdimStep,
        elementwise(n),
        &[
            Arg::Buf(x),
            Arg::Buf(eps),
            Arg::Buf(out),
            Arg::I64(n as i64),
            Arg::F32(c.sqrt_one_minus_ab),
            Arg::F32(c.sqrt_ab),
            Arg::F32(c.sqrt_ab_prev),
            Arg::F32(c.dir_coef),
            Arg::F32(c.sigma),
            Arg::U64(seed),
            Arg::U64(stream),
            Arg::I32(noise.is_some() as i32),
        ],
    )
}

fn check_step<B: DeviceBuf>(x: &B, eps: &B, out: &B, n: usize) -> Result<()> {
    need("sampler step x", x, n)?;
    need("sampler step eps", eps, n)?;
    need("sampler step out", out, n)
}

/// One fused AdamW update of `n` parameters with the scalars of `optim::AdamW::scalars` (same f32 order as
/// `AdamW::step`): `p`, `m`, `v` updated in place from the gradient `g`.
pub fn adamw_step<E: Executor>(
    e: &E,
    s: &AdamWScalars,
    p: &E::Buf,
    m: &E::Buf,
    v: &E::Buf,
    g: &E::Buf,
    n: usize,
) -> Result<()> {
    for (what, b) in [("p", p), ("m", m), ("v", v), ("g", g)] {
        need(&format!("adamw {what}"), b, n)?;
    }
    run(
        e,
        Kernel::Adamw,
        elementwise(n),
        &[
            Arg::Buf(p),
            Arg::Buf(m),
            Arg::Buf(v),
            Arg::Buf(g),
            Arg::I64(n as i64),
            Arg::F32(s.decay),
            Arg::F32(s.w1),
            Arg::F32(s.b2),
            Arg::F32(s.w2),
            Arg::F32(s.neg_step_size),
            Arg::F32(s.bc2_sqrt),
            Arg::F32(s.eps),
        ],
    )
}

/// `shadow = shadow·d + alpha·p` over `n` words, `(d, alpha)` from `optim::Ema::scalars`.
pub fn ema_update<E: Executor>(e: &E, d: f32, alpha: f32, shadow: &E::Buf, p: &E::Buf, n: usize) -> Result<()> {
    need("ema shadow", shadow, n)?;
    need("ema p", p, n)?;
    run(
        e,
        Kernel::EmaUpdate,
        elementwise(n),
        &[Arg::Buf(shadow), Arg::Buf(p), Arg::I64(n as i64), Arg::F32(d), Arg::F32(alpha)],
    )
}

/// `torch.nn.utils.clip_grad_norm_` over all of `grads` (each `(buffer, length)`), on the device and
/// deterministic: per-block sums of squares of every tensor into one partials buffer, one block adding them in
/// order to `out[0] = total = ‖g‖₂` and `out[1] = coef = min(1, max_norm/(total + 1e-6))`, then `g *= coef`
/// where `coef < 1`. The scalars stay on the device (download `out` only to log them).
pub fn clip_grad_norm<E: Executor>(e: &E, grads: &[(&E::Buf, usize)], max_norm: f32, out: &E::Buf) -> Result<()> {
    need("clip_grad_norm out", out, 2)?;
    let counts: Vec<usize> = grads.iter().map(|&(_, n)| partials(n)).collect();
    let parts = e.alloc(counts.iter().sum::<usize>().max(1))?;
    let mut offset = 0;
    for (&(g, n), &np) in grads.iter().zip(&counts) {
        need("clip_grad_norm grad", g, n)?;
        run(
            e,
            Kernel::SumsqPartials,
            LaunchCfg::linear(np as u32, BLOCK),
            &[Arg::Buf(g), Arg::Null, Arg::BufAt(&parts, offset), Arg::I64(n as i64)],
        )?;
        offset += np;
    }
    finish_sum(e, &parts, offset, out, 1, 1.0, max_norm)?;
    for &(g, n) in grads {
        run(e, Kernel::ScaleBy, elementwise(n), &[Arg::Buf(g), Arg::BufAt(out, 1), Arg::I64(n as i64)])?;
    }
    Ok(())
}
