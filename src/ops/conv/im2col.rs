//! The f32 convolutions' launches beside the GEMM (`conv.cu`): im2col and its adjoint col2im, which turn a conv into
//! `sgemm`'s matrix product, and the broadcast add of the biases after it.

use crate::desc::{Columns, ConvGeom};
use crate::error::Result;
use crate::gpu::launch::{columns_arg, elementwise, i32_arg, need, run};
use crate::gpu::{Arg, Cost, Executor, Kernel};

/// The geometry arguments shared by `im2col` and `col2im`, after `n`.
fn geom_args<'a, B>(g: &ConvGeom, n: usize) -> Result<Vec<Arg<'a, B>>> {
    [n, g.c, g.h, g.w, g.k, g.stride, g.pad, g.oh, g.ow].into_iter().map(i32_arg).collect()
}

/// `col[i] = im2col(x[i])` for `n` images (`x: [n, g.c, g.h, g.w]`, `col: [n, g.c·k·k, g.oh·g.ow]`).
pub(super) fn im2col<E: Executor>(e: &E, g: &ConvGeom, n: usize, x: &E::Buf, col: &mut E::Buf) -> Result<()> {
    need("im2col x", x, n * g.c * g.h * g.w)?;
    let total = n * g.col_rows() * g.col_cols();
    need("im2col col", col, total)?;
    let mut args = vec![Arg::Buf(x), Arg::Buf(col)];
    args.extend(geom_args(g, n)?);
    run(e, Kernel::Im2col, elementwise(total), Cost::pass(n * g.c * g.h * g.w, total, 0), &args)
}

/// `x[i] = col2im(col[i])`, the adjoint of [`im2col`] (overwrites x; a gather, so deterministic).
pub(super) fn col2im<E: Executor>(e: &E, g: &ConvGeom, n: usize, col: &E::Buf, x: &mut E::Buf) -> Result<()> {
    let total = n * g.c * g.h * g.w;
    need("col2im col", col, n * g.col_rows() * g.col_cols())?;
    need("col2im x", x, total)?;
    let mut args = vec![Arg::Buf(col), Arg::Buf(x)];
    args.extend(geom_args(g, n)?);
    let cols = n * g.col_rows() * g.col_cols();
    run(e, Kernel::Col2im, elementwise(total), Cost::pass(cols, total, cols / total.max(1)), &args)
}

/// Runs `f` on the column matrices of `x` (x itself for a 1×1 stride-1 unpadded conv, whose columns it is).
pub(super) fn with_columns<E: Executor>(
    e: &E,
    g: &ConvGeom,
    n: usize,
    x: &E::Buf,
    f: impl FnOnce(&E::Buf) -> Result<()>,
) -> Result<()> {
    if g.is_pointwise() {
        return f(x);
    }
    let mut col = e.alloc(n * g.col_rows() * g.col_cols())?;
    im2col(e, g, n, x, &mut col)?;
    f(&col)
}

/// `y[i, c, :] += bias[c] + chan_bias[i, c]` for `y: [n, c, plane]`; either term may be absent. The broadcast add
/// of conv and linear biases and of the time embedding into a ResBlock.
pub(crate) fn add_channel_bias<E: Executor>(
    e: &E,
    y: &mut E::Buf,
    (bias, chan_bias): (Option<&E::Buf>, Option<Columns<E::Buf>>),
    n: usize,
    c: usize,
    plane: usize,
) -> Result<()> {
    if bias.is_none() && chan_bias.is_none() {
        return Ok(());
    }
    need("add_channel_bias y", y, n * c * plane)?;
    bias.map_or(Ok(()), |b| need("add_channel_bias bias", b, c))?;
    let (cb, cb_stride) = columns_arg("add_channel_bias chan_bias", chan_bias, n, c)?;
    let args = [Arg::Buf(y), Arg::opt(bias), cb, i32_arg(n)?, i32_arg(c)?, i32_arg(plane)?, i32_arg(cb_stride)?];
    let len = n * c * plane;
    run(e, Kernel::AddChannelBias, elementwise(len), Cost::pass(len, len, 2), &args)
}
