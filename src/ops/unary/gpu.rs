//! The activations' launches: one grid-stride kernel each way, the kind passed as its `unary.cu` code.

use super::{UnaryKind, UnaryOps};
use crate::backend::Gpu;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, need, need_bf16, run};
use crate::gpu::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, Kernel};
use crate::ops::conv::mma::padded;

/// `out = f(x)` (`gy` None: `unary_fwd`) or `out = gy·f'(x)` (`unary_bwd`); with `copy = Some((buf, cols))`, `out`
/// as a `[rows, cols]` matrix is also written into `buf` as the GEMMs' operand: bf16 rows of `padded(cols)` values,
/// the padding 0.
pub(crate) fn unary_copy<E: Executor>(
    e: &E,
    kind: UnaryKind,
    (x, gy): (&E::Buf, Option<&E::Buf>),
    out: &mut E::Buf,
    copy: Option<(&mut Bf16Buf<E::Buf>, usize)>,
) -> Result<()> {
    let n = x.len();
    match gy {
        Some(gy) => need("unary gy", gy, n).and_then(|()| need("unary dx", out, n))?,
        None => need("unary y", out, n)?,
    }
    let cols = copy.as_ref().map_or(1, |c| c.1);
    if cols == 0 || !n.is_multiple_of(cols) {
        return Err(Error::Shape(format!("unary copy: {n} values are not rows of {cols}")));
    }
    let copy_len = n / cols * padded(cols);
    if let Some((c, _)) = &copy {
        need_bf16("unary copy", c, copy_len)?;
    }
    let bytes = copy.as_ref().map_or(0, |_| 2 * copy_len);
    let (kernel, read, flops) = if gy.is_some() { (Kernel::UnaryBwd, 2 * n, 6) } else { (Kernel::UnaryFwd, n, 4) };
    let mut args = vec![Arg::I32(kind as i32), Arg::Buf(x)];
    args.extend(gy.map(Arg::Buf));
    args.extend([
        Arg::Buf(out),
        copy.as_ref().map_or(Arg::Null, |c| Arg::Bf16(c.0)),
        Arg::I64(n as i64),
        i32_arg(cols)?,
    ]);
    run(e, kernel, elementwise(n), Cost::pass(read, n, flops).plus(Cost::bytes(bytes)), &args)
}

impl<E: Executor> UnaryOps for Gpu<E> {
    fn unary_forward(&self, kind: UnaryKind, x: &E::Buf, y: &mut E::Buf) -> Result<()> {
        unary_copy(self.executor(), kind, (x, None), y, None)
    }
    fn unary_backward(&self, kind: UnaryKind, x: &E::Buf, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        unary_copy(self.executor(), kind, (x, Some(gy)), dx, None)
    }
}
