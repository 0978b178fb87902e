//! The activations' launches: one grid-stride kernel each way, the kind passed as its `unary.cu` code.

use super::{UnaryKind, UnaryOps};
use crate::backend::Gpu;
use crate::error::Result;
use crate::gpu::launch::{elementwise, need, run};
use crate::gpu::{Arg, Cost, DeviceBuf, Executor, Kernel};

impl<E: Executor> UnaryOps for Gpu<E> {
    fn unary_forward(&self, kind: UnaryKind, x: &E::Buf, y: &mut E::Buf) -> Result<()> {
        let n = x.len();
        need("unary y", y, n)?;
        let args = [Arg::I32(kind as i32), Arg::Buf(x), Arg::Buf(y), Arg::I64(n as i64)];
        run(self.executor(), Kernel::UnaryFwd, elementwise(n), Cost::pass(n, n, 4), &args)
    }
    fn unary_backward(&self, kind: UnaryKind, x: &E::Buf, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        let n = x.len();
        need("unary gy", gy, n)?;
        need("unary dx", dx, n)?;
        let args = [Arg::I32(kind as i32), Arg::Buf(x), Arg::Buf(gy), Arg::Buf(dx), Arg::I64(n as i64)];
        run(self.executor(), Kernel::UnaryBwd, elementwise(n), Cost::pass(2 * n, n, 6), &args)
    }
}
