//! Max pooling's launches: one thread per pooled value forward, one per input pixel backward (a gather, so no two
//! threads write one address).

use super::PoolOps;
use crate::backend::Gpu;
use crate::desc::PoolDesc;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, need, run};
use crate::gpu::{Arg, Cost, Executor, IntBuf, Kernel};

impl<E: Executor> PoolOps for Gpu<E> {
    fn max_pool2d_forward(&self, d: PoolDesc, x: &E::Buf, y: &mut E::Buf) -> Result<IntBuf<E::Buf>> {
        let e = self.executor();
        need("max_pool2d x", x, d.planes * d.h * d.w)?;
        need("max_pool2d y", y, d.out_len())?;
        let argmax = e.alloc_i32(d.out_len())?;
        let args = [Arg::Buf(x), Arg::Buf(y), Arg::Ints(&argmax), i32_arg(d.planes)?, i32_arg(d.h)?, i32_arg(d.w)?];
        let (n, m) = (d.planes * d.h * d.w, d.out_len());
        run(e, Kernel::MaxPool2dFwd, elementwise(m), Cost::pass(n, 2 * m, 2), &args)?;
        Ok(argmax)
    }
    fn max_pool2d_backward(&self, d: PoolDesc, argmax: &IntBuf<E::Buf>, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        // The argmaxes were written by the forward kernel (each in 0..4), so they address only their window.
        if argmax.len() < d.out_len() {
            return Err(Error::Shape(format!("max_pool2d: {} argmaxes for {} windows", argmax.len(), d.out_len())));
        }
        need("max_pool2d gy", gy, d.out_len())?;
        need("max_pool2d dx", dx, d.planes * d.h * d.w)?;
        let args = [Arg::Ints(argmax), Arg::Buf(gy), Arg::Buf(dx), i32_arg(d.planes)?, i32_arg(d.h)?, i32_arg(d.w)?];
        let (n, m) = (d.planes * d.h * d.w, d.out_len());
        run(self.executor(), Kernel::MaxPool2dBwd, elementwise(n), Cost::pass(2 * m, n, 1), &args)
    }
}
