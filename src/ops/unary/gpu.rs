//! The activations' launches: one grid-stride kernel each way, the kind passed as its `unary.cu` code.

use super::{UnaryKind, UnaryOps};
use crate::backend::Gpu;
use crate::error::Result;
use crate::gpu::launch::{elementwise, need, need_bf16, run};
use crate::gpu::{Arg, Bf16Buf, Cost, DeviceBuf, Executor, Kernel};

/// `y = f(x)`, also written as bf16 into `copy` when given (the same layout as `y`: a `[rows, c]` matrix with c a
/// multiple of 8 is then the GEMMs' operand).
pub(crate) fn unary_forward_copy<E: Executor>(
    e: &E,
    kind: UnaryKind,
    x: &E::Buf,
    y: &mut E::Buf,
    copy: Option<&mut Bf16Buf<E::Buf>>,
) -> Result<()> {
    let n = x.len();
    need("unary y", y, n)?;
    if let Some(c) = &copy {
        need_bf16("unary copy", c, n)?;
    }
    let bytes = copy.as_ref().map_or(0, |_| 2 * n);
    let args = [
        Arg::I32(kind as i32),
        Arg::Buf(x),
        Arg::Buf(y),
        copy.as_ref().map_or(Arg::Null, |c| Arg::Bf16(c)),
        Arg::I64(n as i64),
    ];
    run(e, Kernel::UnaryFwd, elementwise(n), Cost::pass(n, n, 4).plus(Cost::bytes(bytes)), &args)
}

impl<E: Executor> UnaryOps for Gpu<E> {
    fn unary_forward(&self, kind: UnaryKind, x: &E::Buf, y: &mut E::Buf) -> Result<()> {
        unary_forward_copy(self.executor(), kind, x, y, None)
    }
    fn unary_backward(&self, kind: UnaryKind, x: &E::Buf, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        let n = x.len();
        need("unary gy", gy, n)?;
        need("unary dx", dx, n)?;
        let args = [Arg::I32(kind as i32), Arg::Buf(x), Arg::Buf(gy), Arg::Buf(dx), Arg::I64(n as i64)];
        run(self.executor(), Kernel::UnaryBwd, elementwise(n), Cost::pass(2 * n, n, 6), &args)
    }
}
