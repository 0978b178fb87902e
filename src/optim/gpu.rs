//! The optimiser's launches: AdamW and the EMA elementwise per tensor, and gradient clipping on the device with no
//! round trip for the scale (a two-pass norm, then `scale_by` reading the coefficient from device memory); and the
//! same step over arenas in two launches (the norm, its last block taking the second pass, then `adamw_ema`), with
//! no round trip at all.

use super::{AdamWScalars, FlatStep, OptimOps};
use crate::backend::Gpu;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, need, partials, run, BLOCK};
use crate::gpu::{Arg, Cost, DeviceBuf, Executor, Kernel, LaunchCfg};
use crate::ops::reduce::gpu::{finish_args, finish_sum, sumsq_partials, Finish, Finished};
use crate::train::StepPlan;

impl<E: Executor> OptimOps for Gpu<E> {
    fn clip_grad_norm(&self, grads: &mut [&mut E::Buf], max_norm: f32) -> Result<(f32, f32)> {
        let e = self.executor();
        let total_parts = grads.iter().map(|g| partials(g.len())).sum::<usize>();
        let mut parts = e.alloc(total_parts.max(1))?;
        let mut offset = 0;
        for g in grads.iter() {
            offset += sumsq_partials(e, g, None, g.len(), (&mut parts, offset), None)?;
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
        let args = [Arg::Buf(p), Arg::Buf(m), Arg::Buf(v), Arg::Buf(g), Arg::I64(n as i64)]
            .into_iter()
            .chain(adam_args(s))
            .collect::<Vec<_>>();
        // p, m, v read and written, g read: ~14 operations per parameter.
        run(self.executor(), Kernel::Adamw, elementwise(n), Cost::pass(4 * n, 3 * n, 14), &args)
    }
    fn flat_step(&self, f: FlatStep<'_, Self>) -> Result<()> {
        let (e, n) = (self.executor(), f.p.len());
        for (what, b) in [("m", &*f.m), ("v", &*f.v), ("shadow", &*f.shadow), ("g", f.g)] {
            if b.len() != n {
                return Err(Error::Shape(format!("flat optimiser step: {what} arena of {} words, p of {n}", b.len())));
            }
        }
        // The table's rows address the gradient arena; their maker checked them against its layout, whose length
        // is the arena's (checked above).
        let blocks = f.norm_table.len() / 4;
        match f.norm_table.bound() {
            Some(bound) if bound <= n as u64 + 1 && blocks > 0 => {}
            _ => return Err(Error::Arg("flat optimiser step: the norm table does not fit the arena".into())),
        }
        let (stats, at) = f.stats;
        need("flat optimiser step stats", stats, at + 2)?;
        let parts = e.alloc(blocks)?;
        // The norm and the clip coefficient written by the first pass's last block.
        let clip = e.view(stats, at, 2)?;
        let finish = Finished { ticket: self.tickets()?, out: &clip, how: Finish::ClipNorm { max_norm: f.max_norm } };
        let mut args = vec![Arg::Buf(f.g), Arg::Ints(f.norm_table), Arg::Buf(&parts)];
        args.extend(finish_args(Some(finish))?);
        run(e, Kernel::SumsqSegments, LaunchCfg::linear(blocks as u32, BLOCK), Cost::simt(2 * n, 4 * n), &args)?;
        let s = &f.adam;
        let args = [
            Arg::Buf(f.p),
            Arg::Buf(f.m),
            Arg::Buf(f.v),
            Arg::Buf(f.g),
            Arg::Buf(f.shadow),
            Arg::BufAt(&clip, 1),
            Arg::I64(n as i64),
        ]
        .into_iter()
        .chain(adam_args(s))
        .chain([Arg::F32(f.ema.0), Arg::F32(f.ema.1), Arg::opt(f.plan.map(StepPlan::buf))])
        .collect::<Vec<_>>();
        // p, m, v and the shadow read and written, g read: ~17 operations per parameter.
        run(e, Kernel::AdamwEma, elementwise(n), Cost::pass(5 * n, 4 * n, 17), &args)
    }
    fn advance_plan(&self, plan: &mut StepPlan<Self>, staged: &E::Buf, ring: &mut E::Buf) -> Result<()> {
        need("plan_advance staged", staged, 3)?;
        need("plan_advance ring", ring, plan.stats_end())?;
        let rows = plan.rows_mut();
        rows.take_row()?;
        let args = [Arg::Buf(rows.buf_mut()), Arg::Buf(staged), Arg::Buf(ring)];
        run(self.executor(), Kernel::PlanAdvance, LaunchCfg::linear(1, 1), Cost::pass(4, 4, 0), &args)
    }
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut E::Buf, p: &E::Buf) -> Result<()> {
        let n = shadow.len();
        need("ema p", p, n)?;
        let args = [Arg::Buf(shadow), Arg::Buf(p), Arg::I64(n as i64), Arg::F32(d), Arg::F32(alpha)];
        run(self.executor(), Kernel::EmaUpdate, elementwise(n), Cost::pass(2 * n, n, 3), &args)
    }
}

/// AdamW's per-step scalars as the kernels `adamw` and `adamw_ema` take them, after the length.
fn adam_args<'a, B>(s: &AdamWScalars) -> [Arg<'a, B>; 7] {
    [s.decay, s.w1, s.b2, s.w2, s.neg_step_size, s.bc2_sqrt, s.eps].map(Arg::F32)
}
