//! The optimiser's launches: AdamW and the EMA elementwise per tensor, and gradient clipping on the device with no
//! round trip for the scale (a two-pass norm, then `scale_by` reading the coefficient from device memory).

use super::{AdamWScalars, OptimOps};
use crate::backend::Gpu;
use crate::error::Result;
use crate::gpu::launch::{elementwise, need, partials, run};
use crate::gpu::{Arg, Cost, DeviceBuf, Executor, Kernel};
use crate::ops::reduce::gpu::{finish_sum, sumsq_partials, Finish};

impl<E: Executor> OptimOps for Gpu<E> {
    fn clip_grad_norm(&self, grads: &mut [&mut E::Buf], max_norm: f32) -> Result<(f32, f32)> {
        let e = self.executor();
        let total_parts = grads.iter().map(|g| partials(g.len())).sum::<usize>();
        let mut parts = e.alloc(total_parts.max(1))?;
        let mut offset = 0;
        for g in grads.iter() {
            offset += sumsq_partials(e, g, None, g.len(), (&mut parts, offset))?;
        }
        let mut out = e.alloc(2)?;
        finish_sum(e, &parts, offset, &mut out, Finish::ClipNorm { max_norm })?;
        for g in grads.iter_mut() {
            let n = g.len();
            let args = [Arg::Buf(&**g), Arg::BufAt(&out, 1), Arg::I64(n as i64)];
            run(e, Kernel::ScaleBy, elementwise(n), Cost::pass(n, n, 1), &args)?;
        }
        // The two scalars come back for the log; the scaling itself already ran on the device.
        let v = e.download(&out)?;
        Ok((v[0], v[1]))
    }
    fn adamw_step(&self, s: &AdamWScalars, p: &mut E::Buf, m: &mut E::Buf, v: &mut E::Buf, g: &E::Buf) -> Result<()> {
        let n = p.len();
        need("adamw m", m, n)?;
        need("adamw v", v, n)?;
        need("adamw g", g, n)?;
        let args = [
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
        ];
        // p, m, v read and written, g read: ~14 operations per parameter.
        run(self.executor(), Kernel::Adamw, elementwise(n), Cost::pass(4 * n, 3 * n, 14), &args)
    }
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut E::Buf, p: &E::Buf) -> Result<()> {
        let n = shadow.len();
        need("ema p", p, n)?;
        let args = [Arg::Buf(shadow), Arg::Buf(p), Arg::I64(n as i64), Arg::F32(d), Arg::F32(alpha)];
        run(self.executor(), Kernel::EmaUpdate, elementwise(n), Cost::pass(2 * n, n, 3), &args)
    }
}
