//! The losses' launches: the MSE as a two-pass sum of squares, its gradient elementwise; cross-entropy as one
//! thread per row, its mean by the two-pass sum's second pass, and its gradient elementwise.

use super::LossOps;
use crate::backend::Gpu;
use crate::desc::LogitsDesc;
use crate::desc::Planes;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, int, need, need_bf16, run, BLOCK};
use crate::gpu::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, IntBuf, Kernel, LaunchCfg};
use crate::ops::conv::mma::padded;
use crate::ops::reduce::gpu::{finish_sum, sumsq_partials, Finish, Finished};

impl<E: Executor> LossOps for Gpu<E> {
    /// One launch: the sum of squares' last block takes the mean.
    fn mse(&self, p: &E::Buf, t: &E::Buf, out: &mut E::Buf) -> Result<()> {
        let (e, n) = (self.executor(), p.len());
        need("mse loss", out, 1)?;
        let mut parts = e.alloc(crate::gpu::launch::partials(n))?;
        let finish = Finished { ticket: self.tickets()?, out, how: Finish::Mean { divisor: n as f32 } };
        sumsq_partials(e, p, Some(t), n, (&mut parts, 0), Some(finish)).map(drop)
    }
    fn mse_backward(&self, p: &E::Buf, t: &E::Buf, gloss: &E::Buf, dp: &mut E::Buf) -> Result<()> {
        let n = p.len();
        need("mse t", t, n)?;
        need("mse dp", dp, n)?;
        need("mse gloss", gloss, 1)?;
        mse_backward(self.executor(), (p, t, gloss), dp, None)
    }
    fn cross_entropy(&self, d: LogitsDesc, z: &E::Buf, labels: &IntBuf<E::Buf>) -> Result<(E::Buf, E::Buf)> {
        let e = self.executor();
        check(d, z, labels)?;
        // `lse` and `rows` are fresh buffers that only this launch writes.
        let (lse, rows, mut loss) = (e.alloc(d.n)?, e.alloc(d.n)?, e.alloc(1)?);
        let args =
            [Arg::Buf(z), Arg::Ints(labels), Arg::Buf(&lse), Arg::Buf(&rows), i32_arg(d.n)?, i32_arg(d.classes)?];
        let z_len = d.n * d.classes;
        run(e, Kernel::CrossEntropyRows, elementwise(d.n), Cost::pass(z_len + d.n, 2 * d.n, 3 * d.classes), &args)?;
        finish_sum(e, &rows, d.n, &mut loss, Finish::Mean { divisor: d.n as f32 })?;
        Ok((loss, lse))
    }
    fn cross_entropy_backward(
        &self,
        d: LogitsDesc,
        z: &E::Buf,
        (labels, lse): (&IntBuf<E::Buf>, &E::Buf),
        gloss: f32,
        dz: &mut E::Buf,
    ) -> Result<()> {
        check(d, z, labels)?;
        need("cross_entropy lse", lse, d.n)?;
        need("cross_entropy dz", dz, d.n * d.classes)?;
        // dL/n formed on the host, as the CPU does.
        let scale = gloss / d.n as f32;
        let args = [
            Arg::Buf(z),
            Arg::Ints(labels),
            Arg::Buf(lse),
            Arg::Buf(dz),
            Arg::F32(scale),
            i32_arg(d.n)?,
            i32_arg(d.classes)?,
        ];
        let z_len = d.n * d.classes;
        run(self.executor(), Kernel::CrossEntropyBwd, elementwise(z_len), Cost::pass(z_len + 2 * d.n, z_len, 3), &args)
    }
}

/// The logits and labels cover `d`, and every label is a class: the kernels index each row with its label.
fn check<B: DeviceBuf>(d: LogitsDesc, z: &B, labels: &IntBuf<B>) -> Result<()> {
    need("cross_entropy z", z, d.n * d.classes)?;
    if labels.len() < d.n {
        return Err(Error::Shape(format!("cross_entropy: {} labels for {} rows", labels.len(), d.n)));
    }
    match labels.bound() {
        Some(b) if b <= d.classes as u64 => Ok(()),
        _ => Err(Error::Arg(format!("cross_entropy: labels not known to lie in 0..{}", d.classes))),
    }
}

/// Where the MSE's backward also writes dp's operand (its `[n, c, plane]` shape, the operand and the per-image
/// channel sums).
pub(crate) type DpOperand<'a, B> = (Planes, &'a Bf16Buf<B>, &'a B);

/// One `mse_bwd` launch: elementwise, or with `operand` one block per channel and image that also writes it.
pub(crate) fn mse_backward<E: Executor>(
    e: &E,
    (p, t, gloss): (&E::Buf, &E::Buf, &E::Buf),
    dp: &mut E::Buf,
    operand: Option<DpOperand<'_, E::Buf>>,
) -> Result<()> {
    let n = p.len();
    need("mse t", t, n)?;
    need("mse dp", dp, n)?;
    need("mse gloss", gloss, 1)?;
    let mut args = vec![Arg::Buf(p), Arg::Buf(t), Arg::Buf(dp), Arg::Buf(gloss), Arg::I64(n as i64)];
    let Some((d, nhwc, sums)) = operand else {
        args.extend([Arg::Null, Arg::Null, Arg::I32(1), Arg::I32(1)]);
        return run(e, Kernel::MseBwd, elementwise(n), Cost::pass(2 * n, n, 2), &args);
    };
    if d.n * d.c * d.plane != n {
        return Err(Error::Shape(format!("mse backward: {n} values are not {d:?}")));
    }
    need_bf16("mse dp_nhwc", nhwc, d.n * d.plane * padded(d.c))?;
    need("mse dp_sums", sums, d.n * d.c)?;
    args.extend([Arg::Bf16(nhwc), Arg::Buf(sums), i32_arg(d.c)?, i32_arg(d.plane)?]);
    let cfg = LaunchCfg { grid: [int(d.c)? as u32, int(d.n)? as u32, 1], block: [BLOCK, 1, 1], shared_bytes: 0 };
    let cost = Cost::pass(2 * n, n + d.n * d.c, 3).plus(Cost::bytes(2 * d.n * d.plane * padded(d.c)));
    run(e, Kernel::MseBwd, cfg, cost, &args)
}
