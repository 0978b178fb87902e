//! The sums' and copies' launches, and the two-pass sum (`sumsq_partials` + `finish_sum`) that the MSE loss and
//! gradient clipping build on.

use super::ReduceOps;
use crate::backend::Gpu;
use crate::desc::{ConcatDesc, Planes};
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, int, need, need_bf16, partials, run, BLOCK};
use crate::gpu::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, IntBuf, Kernel, LaunchCfg};
use crate::ops::conv::mma::padded;

impl<E: Executor> ReduceOps for Gpu<E> {
    fn add_assign(&self, acc: &mut E::Buf, g: &E::Buf) -> Result<()> {
        let n = acc.len();
        need("add_assign g", g, n)?;
        let args = [Arg::Buf(acc), Arg::Buf(g), Arg::I64(n as i64)];
        run(self.executor(), Kernel::AddAssign, elementwise(n), Cost::pass(2 * n, n, 1), &args)
    }
    fn channel_sums(&self, d: Planes, t: &E::Buf, per_image: bool, out: &mut E::Buf) -> Result<()> {
        let e = self.executor();
        if per_image {
            return row_sums(e, t, d.n * d.c, d.plane, out);
        }
        let mut parts = e.alloc(d.n * d.c)?;
        row_sums(e, t, d.n * d.c, d.plane, &mut parts)?;
        sum_rows(e, &parts, 0, d.n, d.c, out)
    }
    fn column_sums(&self, m: &E::Buf, rows: usize, cols: usize, out: &mut E::Buf) -> Result<()> {
        sum_rows(self.executor(), m, 0, rows, cols, out)
    }
    fn concat(&self, d: ConcatDesc, a: &E::Buf, b: &E::Buf, out: &mut E::Buf) -> Result<()> {
        concat_channels(self.executor(), d, (a, b), out, None)
    }
    fn split(&self, d: ConcatDesc, g: &E::Buf) -> Result<(E::Buf, E::Buf)> {
        let e = self.executor();
        let (mut a, mut b) = (e.alloc(d.n * d.ca * d.plane)?, e.alloc(d.n * d.cb * d.plane)?);
        split_channels(e, d, g, (&mut a, &mut b), (None, None))?;
        Ok((a, b))
    }
    fn copy_columns(
        &self,
        src: &E::Buf,
        (rows, width): (usize, usize),
        dst: &mut E::Buf,
        (start, stride): (usize, usize),
    ) -> Result<()> {
        // A [rows, stride] matrix is `rows` images of `stride` one-pixel channels.
        copy_channels(self.executor(), (src, width, 0), (dst, stride, start), width, rows, 1)
    }
}

/// `out[r] = Σ_p t[r, p]` over `rows` rows of `len` (kernel `row_sums`, one block per row).
pub(crate) fn row_sums<E: Executor>(e: &E, t: &E::Buf, rows: usize, len: usize, out: &mut E::Buf) -> Result<()> {
    need("row_sums t", t, rows * len)?;
    need("row_sums out", out, rows)?;
    let cfg = LaunchCfg::linear(int(rows)? as u32, BLOCK);
    run(e, Kernel::RowSums, cfg, Cost::pass(rows * len, rows, len), &[Arg::Buf(t), Arg::Buf(out), i32_arg(len)?])
}

/// `out[c] = Σ_i parts[offset + i·c_len + c]` over `n` rows of `c_len` columns, in row order: per-image partial
/// gradients reduced deterministically.
pub(crate) fn sum_rows<E: Executor>(
    e: &E,
    parts: &E::Buf,
    offset: usize,
    n: usize,
    c_len: usize,
    out: &mut E::Buf,
) -> Result<()> {
    need("sum_rows parts", parts, offset + n * c_len)?;
    need("sum_rows out", out, c_len)?;
    let cfg = LaunchCfg::linear(int(c_len.div_ceil(256).max(1))? as u32, BLOCK);
    let args = [Arg::BufAt(parts, offset), Arg::Buf(out), i32_arg(n)?, i32_arg(c_len)?];
    run(e, Kernel::SumRows, cfg, Cost::pass(n * c_len, c_len, n), &args)
}

/// A channel concat in one `concat_channels` launch, also writing `cat_nhwc` when given (`cat` as bf16
/// channels-last, `[n, plane, padded(ca + cb)]`, the padding 0: the GEMMs' operand).
pub(crate) fn concat_channels<E: Executor>(
    e: &E,
    d: ConcatDesc,
    (a, b): (&E::Buf, &E::Buf),
    cat: &mut E::Buf,
    cat_nhwc: Option<&mut Bf16Buf<E::Buf>>,
) -> Result<()> {
    let len = d.n * (d.ca + d.cb) * d.plane;
    need("concat_channels a", a, d.n * d.ca * d.plane)?;
    need("concat_channels b", b, d.n * d.cb * d.plane)?;
    need("concat_channels cat", cat, len)?;
    if let Some(nhwc) = &cat_nhwc {
        need_bf16("concat_channels cat_nhwc", nhwc, d.n * d.plane * padded(d.ca + d.cb))?;
    }
    let bf16_bytes = cat_nhwc.as_ref().map_or(0, |_| 2 * d.n * d.plane * padded(d.ca + d.cb));
    let args = [
        Arg::Buf(a),
        Arg::Buf(b),
        Arg::Buf(cat),
        cat_nhwc.as_ref().map_or(Arg::Null, |c| Arg::Bf16(c)),
        i32_arg(d.ca)?,
        i32_arg(d.cb)?,
        i32_arg(d.n)?,
        i32_arg(d.plane)?,
    ];
    let cost = Cost::pass(len, len, 0).plus(Cost::bytes(bf16_bytes));
    run(e, Kernel::ConcatChannels, elementwise(len), cost, &args)
}

/// Where a split also writes one part as the GEMMs' operand (`[n, plane, padded(count)]` bf16) and its per-image
/// channel sums (`[n, count]`).
pub(crate) type PartOperand<'a, B> = Option<(&'a mut Bf16Buf<B>, &'a mut B)>;

/// A part's operand and sums as `split_channels` arguments (null when not written).
fn part_args<'a, B>(op: &'a PartOperand<'_, B>) -> [Arg<'a, B>; 2] {
    match op {
        Some((nhwc, sums)) => [Arg::Bf16(nhwc), Arg::Buf(sums)],
        None => [Arg::Null, Arg::Null],
    }
}

/// The inverse of [`concat_channels`] in one `split_channels` launch: `a`, `b` = the two channel blocks of `cat`,
/// each also written as an operand with its sums when given.
pub(crate) fn split_channels<E: Executor>(
    e: &E,
    d: ConcatDesc,
    cat: &E::Buf,
    (a, b): (&mut E::Buf, &mut E::Buf),
    (a_op, b_op): (PartOperand<'_, E::Buf>, PartOperand<'_, E::Buf>),
) -> Result<()> {
    let len = d.n * (d.ca + d.cb) * d.plane;
    need("split_channels cat", cat, len)?;
    let mut bytes = 8 * len;
    for (what, part, op, count) in [("a", &*a, &a_op, d.ca), ("b", &*b, &b_op, d.cb)] {
        need(&format!("split_channels {what}"), part, d.n * count * d.plane)?;
        if let Some((nhwc, sums)) = op {
            need_bf16(&format!("split_channels {what}_nhwc"), nhwc, d.n * d.plane * padded(count))?;
            need(&format!("split_channels {what}_sums"), &**sums, d.n * count)?;
            bytes += 2 * d.n * d.plane * padded(count) + 4 * d.n * count;
        }
    }
    let mut args = vec![Arg::Buf(cat), Arg::Buf(a), Arg::Buf(b)];
    args.extend(part_args(&a_op));
    args.extend(part_args(&b_op));
    args.extend([i32_arg(d.ca)?, i32_arg(d.cb)?, i32_arg(d.plane)?]);
    let cfg =
        LaunchCfg { grid: [int(d.ca + d.cb)? as u32, int(d.n)? as u32, 1], block: [BLOCK, 1, 1], shared_bytes: 0 };
    run(e, Kernel::SplitChannels, cfg, Cost::bytes(bytes), &args)
}

/// `dst[i, dst_off..dst_off+count, :] = src[i, src_off..src_off+count, :]` for `n` images of `plane` pixels, where
/// `src` is `(buffer, channels, first channel)` and `dst` likewise.
fn copy_channels<E: Executor>(
    e: &E,
    (src, src_c, src_off): (&E::Buf, usize, usize),
    (dst, dst_c, dst_off): (&mut E::Buf, usize, usize),
    count: usize,
    n: usize,
    plane: usize,
) -> Result<()> {
    need("copy_channels src", src, n * src_c * plane)?;
    need("copy_channels dst", dst, n * dst_c * plane)?;
    if src_off + count > src_c || dst_off + count > dst_c {
        return Err(Error::Shape("copy_channels: channel block out of range".into()));
    }
    let args = [
        Arg::Buf(src),
        i32_arg(src_c)?,
        i32_arg(src_off)?,
        Arg::Buf(dst),
        i32_arg(dst_c)?,
        i32_arg(dst_off)?,
        i32_arg(count)?,
        i32_arg(n)?,
        i32_arg(plane)?,
    ];
    let len = n * count * plane;
    run(e, Kernel::CopyChannels, elementwise(len), Cost::pass(len, len, 0), &args)
}

/// `dst[at..at + src.len()] = src`: a one-image copy of `src.len()` one-pixel channels into channel `at` on.
pub(crate) fn copy_at<E: Executor>(e: &E, src: &E::Buf, dst: &mut E::Buf, at: usize) -> Result<()> {
    let dst_c = dst.len();
    copy_channels(e, (src, src.len(), 0), (dst, dst_c, at), src.len(), 1, 1)
}

/// First pass of a deterministic sum of squares: `parts[offset + b]` = block `b`'s share of `Σ (x - y)²` (of
/// `Σ x²` without `y`) over `n` words, for `partials(n)` blocks; with `finish`, the last block to finish also
/// takes the second pass ([`Finished`]). Returns the block count.
pub(crate) fn sumsq_partials<E: Executor>(
    e: &E,
    x: &E::Buf,
    y: Option<&E::Buf>,
    n: usize,
    (parts, offset): (&mut E::Buf, usize),
    finish: Option<Finished<'_, E::Buf>>,
) -> Result<usize> {
    let np = partials(n);
    need("sumsq x", x, n)?;
    y.map_or(Ok(()), |y| need("sumsq y", y, n))?;
    need("sumsq parts", parts, offset + np)?;
    if finish.is_some() && offset != 0 {
        return Err(Error::Arg("sumsq_partials: a sum finished in its launch starts its partials at 0".into()));
    }
    let mut args = vec![Arg::Buf(x), Arg::opt(y), Arg::BufAt(parts, offset), Arg::I64(n as i64)];
    args.extend(finish_args(finish)?);
    let read = if y.is_some() { 2 * n } else { n };
    run(e, Kernel::SumsqPartials, LaunchCfg::linear(np as u32, BLOCK), Cost::simt(3 * n, 4 * read), &args)?;
    Ok(np)
}

/// What [`finish_sum`] makes of the sum of the partials.
#[derive(Clone, Copy)]
pub(crate) enum Finish {
    /// `out[0] = sum / divisor`.
    Mean { divisor: f32 },
    /// `out[0] = total = √sum`, `out[1] = min(1, max_norm / (total + 1e-6))` (`clip_grad_norm_`).
    ClipNorm { max_norm: f32 },
}

impl Finish {
    /// The kernels' `mode`, `divisor` and `max_norm`, and the words written.
    fn args(self) -> (i32, f32, f32, usize) {
        match self {
            Finish::Mean { divisor } => (0, divisor, 0.0, 1),
            Finish::ClipNorm { max_norm } => (1, 1.0, max_norm, 2),
        }
    }
}

/// A first pass's sum finished in its own launch, by its last block (counted on `ticket`, an int that is 0 between
/// launches): the result into `out`, as `how` says.
pub(crate) struct Finished<'a, B> {
    pub ticket: &'a IntBuf<B>,
    pub out: &'a B,
    pub how: Finish,
}

/// The first passes' last five arguments: the ticket, `out` and the finish's mode, or nulls for no finish.
pub(crate) fn finish_args<B: DeviceBuf>(finish: Option<Finished<'_, B>>) -> Result<[Arg<'_, B>; 5]> {
    let Some(f) = finish else { return Ok([Arg::Null, Arg::Null, Arg::I32(0), Arg::F32(1.0), Arg::F32(0.0)]) };
    let (mode, divisor, max_norm, out_len) = f.how.args();
    need("sum out", f.out, out_len)?;
    Ok([Arg::Ints(f.ticket), Arg::Buf(f.out), Arg::I32(mode), Arg::F32(divisor), Arg::F32(max_norm)])
}

/// Second pass: one block adds the first `np` partials in a fixed order into `out`, as `how` says.
pub(crate) fn finish_sum<E: Executor>(e: &E, parts: &E::Buf, np: usize, out: &mut E::Buf, how: Finish) -> Result<()> {
    need("finish_sum parts", parts, np)?;
    let (mode, divisor, max_norm, out_len) = how.args();
    need("finish_sum out", out, out_len)?;
    let args = [Arg::Buf(parts), i32_arg(np)?, Arg::Buf(out), Arg::I32(mode), Arg::F32(divisor), Arg::F32(max_norm)];
    run(e, Kernel::FinishSum, LaunchCfg::linear(1, 1024), Cost::pass(np, out_len, 1), &args)
}

/// `x[..] = v` on the device (kernel `fill`): a constant buffer without an upload.
pub(crate) fn fill<E: Executor>(e: &E, x: &mut E::Buf, v: f32) -> Result<()> {
    let n = x.len();
    run(e, Kernel::Fill, elementwise(n), Cost::pass(0, n, 0), &[Arg::Buf(x), Arg::I64(n as i64), Arg::F32(v)])
}
