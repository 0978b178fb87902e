//! The diffusion kernels' launches: q_sample, the training batch's draw, the time embedding's sinusoid and the
//! sampler steps (from their arguments or from a sampler's plan), each one elementwise pass with its Philox draws
//! made on the device.

use super::{
    BatchDraw, DdimCoefs, DdpmCoefs, DiffusionOps, DpmCoefs, Drawn, LabelDraw, SamplerPlan, Schedule, ScheduleTables,
    StepCoefs, WithOperand, LABEL_DROP_ONE_IN,
};
use crate::backend::{ConvOps, Gpu};
use crate::desc::Planes;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, need, run};
use crate::gpu::{Arg, Cost, DeviceBuf, Executor, IntBuf, Kernel, LaunchCfg};
use crate::nn::TimeEmbedding;
use crate::ops::conv::mma::padded;
use crate::train::StepPlan;

impl<E: Executor> DiffusionOps for Gpu<E> {
    fn q_sample(
        &self,
        sched: &Schedule,
        x0: &E::Buf,
        t: &[usize],
        (seed, stream): (u64, u64),
    ) -> Result<(E::Buf, E::Buf)> {
        // The kernel indexes the schedule tables with t, so t is checked here, on the host, where it is made.
        if let Some(bad) = t.iter().find(|&&ti| ti >= sched.t) {
            return Err(Error::Arg(format!("q_sample: timestep {bad} out of range 0..{}", sched.t)));
        }
        let e = self.executor();
        let t_dev = e.upload_i32(&t.iter().map(|&v| v as u32).collect::<Vec<_>>())?;
        let (sqrt_ab, sqrt_1m_ab) = (e.upload(&sched.sqrt_alphas_bar)?, e.upload(&sched.sqrt_one_minus_alphas_bar)?);
        need("q_sample sqrt_alphas_bar", &sqrt_ab, sched.t)?;
        need("q_sample sqrt_one_minus_alphas_bar", &sqrt_1m_ab, sched.t)?;
        let n = x0.len();
        let per_item = n / t.len().max(1);
        // Fresh buffers that only this launch writes.
        let (noise, xt) = (e.alloc(n)?, e.alloc(n)?);
        let args = [
            Arg::Buf(x0),
            Arg::Ints(&t_dev),
            Arg::Buf(&sqrt_ab),
            Arg::Buf(&sqrt_1m_ab),
            Arg::Buf(&noise),
            Arg::Buf(&xt),
            Arg::I64(n as i64),
            Arg::I64(per_item.max(1) as i64),
            Arg::U64(seed),
            Arg::U64(stream),
        ];
        // x0 read, noise and x_t written; the Philox draw and Box-Muller are ~40 operations per value.
        run(e, Kernel::QSample, elementwise(n), Cost::pass(n, 2 * n, 40), &args)?;
        Ok((noise, xt))
    }

    fn draw_batch(&self, tables: &ScheduleTables<Self>, d: &BatchDraw<'_, Self>) -> Result<Drawn<Self>> {
        d.check(tables, d.perm.len(), d.perm.bound())?;
        let e = self.executor();
        let n = d.batch * d.per_item;
        let (noise, xt, t) = (e.alloc(n)?, e.alloc(n)?, e.alloc_i32(d.batch)?);
        let channels = d.operand_channels.unwrap_or(1);
        if channels == 0 || !d.per_item.is_multiple_of(channels) {
            return Err(Error::Shape(format!("draw_batch: items of {} words are not {channels} channels", d.per_item)));
        }
        let planes = Planes { n: d.batch, c: channels, plane: d.per_item / channels };
        let operand = match d.operand_channels {
            Some(_) => self.operand_for_output(planes)?,
            None => None,
        };
        let args = [
            Arg::Buf(d.images),
            Arg::Ints(d.perm),
            Arg::I64(d.first as i64),
            Arg::Buf(&tables.sqrt_alphas_bar),
            Arg::Buf(&tables.sqrt_one_minus_alphas_bar),
            i32_arg(tables.timesteps)?,
            Arg::Buf(&noise),
            Arg::Buf(&xt),
            Arg::Ints(&t),
            operand.as_ref().map_or(Arg::Null, |o| Arg::Bf16(&o.buf)),
            i32_arg(channels)?,
            Arg::I64(n as i64),
            Arg::I64(d.per_item as i64),
            Arg::U64(d.seed),
            Arg::U64(d.t_stream),
            Arg::U64(d.noise_stream),
            Arg::opt(d.plan.map(StepPlan::buf)),
        ];
        // The picked images read, noise and x_t written (t is a word per image), and x_t's operand; two Philox
        // draws and Box-Muller are ~50 operations per value.
        let copy = operand.as_ref().map_or(0, |_| 2 * d.batch * planes.plane * padded(channels));
        let cost = Cost::pass(n, 2 * n + d.batch, 50).plus(Cost::bytes(copy));
        run(e, Kernel::DrawBatch, elementwise(n), cost, &args)?;
        Ok((noise, xt, t, operand))
    }

    fn draw_labels(&self, d: &LabelDraw<'_, Self>) -> Result<IntBuf<E::Buf>> {
        d.check(d.perm.len(), d.perm.bound(), d.labels.len(), d.labels.bound())?;
        let e = self.executor();
        let out = e.alloc_i32(d.batch)?;
        let args = [
            Arg::Ints(d.labels),
            Arg::Ints(d.perm),
            Arg::I64(d.first as i64),
            Arg::Ints(&out),
            Arg::I64(d.batch as i64),
            Arg::I32(d.null as i32),
            Arg::I32(LABEL_DROP_ONE_IN as i32),
            Arg::U64(d.seed),
            Arg::U64(d.stream),
            Arg::opt(d.plan.map(StepPlan::buf)),
        ];
        // A permutation value and a label read, a label written, one Philox draw per item.
        run(e, Kernel::DrawLabels, elementwise(d.batch), Cost::pass(2 * d.batch, d.batch, 30), &args)?;
        Ok(out)
    }

    fn guide(&self, eps: &E::Buf, half: usize, w: f32, out: &mut E::Buf) -> Result<()> {
        need("guide eps", eps, 2 * half)?;
        need("guide out", out, half)?;
        let args = [Arg::Buf(eps), Arg::Buf(out), Arg::I64(half as i64), Arg::F32(w)];
        run(self.executor(), Kernel::Guide, elementwise(half), Cost::pass(2 * half, half, 3), &args)
    }

    fn time_sinusoid(&self, t: &IntBuf<E::Buf>, n: usize, dim: usize, operand: bool) -> Result<WithOperand<Self>> {
        if t.len() < n || !dim.is_multiple_of(2) {
            return Err(Error::Shape(format!("time_sinusoid: {n} timesteps of width {dim} from {}", t.len())));
        }
        let e = self.executor();
        let out = e.alloc(n * dim)?;
        let op = if operand { self.operand_for_output(Planes { n, c: dim, plane: 1 })? } else { None };
        let args = [
            Arg::Ints(t),
            Arg::Buf(&out),
            op.as_ref().map_or(Arg::Null, |o| Arg::Bf16(&o.buf)),
            Arg::I64(n as i64),
            i32_arg(dim / 2)?,
            Arg::F32(TimeEmbedding::freq_log()),
        ];
        // t read, the sinusoid written (and its operand): exp, a division, two products and sin or cos per value.
        let cost = Cost::pass(n, n * dim, 30).plus(Cost::bytes(op.as_ref().map_or(0, |_| 2 * n * padded(dim))));
        run(e, Kernel::TimeSinusoid, elementwise(n * dim), cost, &args)?;
        Ok((out, op))
    }

    fn ddpm_step(
        &self,
        c: &DdpmCoefs,
        x: &E::Buf,
        eps: &E::Buf,
        noise: Option<(u64, u64)>,
        out: &mut E::Buf,
    ) -> Result<()> {
        sampler_step(self.executor(), &StepCoefs::Ddpm(*c), &[x, eps, out], noise, None)
    }

    fn ddim_step(
        &self,
        c: &DdimCoefs,
        x: &E::Buf,
        eps: &E::Buf,
        noise: Option<(u64, u64)>,
        out: &mut E::Buf,
    ) -> Result<()> {
        sampler_step(self.executor(), &StepCoefs::Ddim(*c), &[x, eps, out], noise, None)
    }

    fn dpm_step(
        &self,
        c: &DpmCoefs,
        x: &E::Buf,
        eps: &E::Buf,
        x0_prev: &mut E::Buf,
        noise: Option<(u64, u64)>,
        out: &mut E::Buf,
    ) -> Result<()> {
        sampler_step(self.executor(), &StepCoefs::Dpm(*c), &[x, eps, x0_prev, out], noise, None)
    }

    fn plan_sinusoid(&self, plan: &SamplerPlan<Self>, n: usize, operand: bool) -> Result<WithOperand<Self>> {
        // The table has a row per step (SamplerPlan::new makes both); the current row must be one of them.
        let (table, dim) = plan.sinusoids();
        if plan.rows().remaining() == 0 {
            return Err(Error::Arg("plan_sinusoid: the plan's steps are all taken".into()));
        }
        let e = self.executor();
        let out = e.alloc(n * dim)?;
        let op = if operand { self.operand_for_output(Planes { n, c: dim, plane: 1 })? } else { None };
        let args = [
            Arg::Buf(plan.rows().buf()),
            Arg::Buf(table),
            Arg::Buf(&out),
            op.as_ref().map_or(Arg::Null, |o| Arg::Bf16(&o.buf)),
            Arg::I64(n as i64),
            i32_arg(dim)?,
        ];
        // One row read (cached), the sinusoid written (and its operand).
        let cost = Cost::pass(dim, n * dim, 0).plus(Cost::bytes(op.as_ref().map_or(0, |_| 2 * n * padded(dim))));
        run(e, Kernel::PlanSinusoid, elementwise(n * dim), cost, &args)?;
        Ok((out, op))
    }

    fn planned_step(
        &self,
        plan: &mut SamplerPlan<Self>,
        x: &mut E::Buf,
        eps: &E::Buf,
        x0_prev: Option<&mut E::Buf>,
    ) -> Result<()> {
        let e = self.executor();
        let x: &E::Buf = x;
        let (seed, noisy) = plan.noise();
        // The noise stream and flag given here stand for the rows' (the kernel reads the plan's).
        let noise = noisy.then_some((seed, 0));
        match (plan.first(), x0_prev) {
            (StepCoefs::Dpm(_), Some(prev)) => {
                sampler_step(e, plan.first(), &[x, eps, prev, x], noise, Some(plan.rows().buf()))?
            }
            (StepCoefs::Dpm(_), None) => return Err(Error::Arg("a planned DPM-Solver++ step without its x̂0".into())),
            (c, _) => sampler_step(e, c, &[x, eps, x], noise, Some(plan.rows().buf()))?,
        }
        // The step's end: the plan moved on a row (nothing staged).
        let rows = plan.rows_mut();
        rows.take_row()?;
        let args = [Arg::Buf(rows.buf_mut()), Arg::Null, Arg::Null];
        run(e, Kernel::PlanAdvance, LaunchCfg::linear(1, 1), Cost::pass(1, 1, 0), &args)
    }
}

/// One sampler update `k(bufs.., n, scalars.., seed, stream, draw_noise, plan)` over the `n = bufs[0].len()`
/// elements of x, every other buffer checked to cover them: all the steps' kernels take their buffers first (x,
/// eps, DPM-Solver++'s x̂0, out; out may be x) and their coefficients between the length and the noise stream.
fn sampler_step<E: Executor>(
    e: &E,
    c: &StepCoefs,
    bufs: &[&E::Buf],
    noise: Option<(u64, u64)>,
    plan: Option<&E::Buf>,
) -> Result<()> {
    // The kernel, and the words read and written per element and operations per written word (for the launch's
    // Cost).
    let (k, (read, written, flops)) = match c {
        StepCoefs::Ddpm(_) => (Kernel::DdpmStep, (2, 1, 5)),
        StepCoefs::Ddim(_) => (Kernel::DdimStep, (2, 1, 7)),
        StepCoefs::Dpm(_) => (Kernel::DpmStep, (3, 2, 6)),
    };
    let n = bufs[0].len();
    for b in &bufs[1..] {
        need("sampler step buffer", *b, n)?;
    }
    let (seed, stream) = noise.unwrap_or((0, 0));
    let mut args: Vec<Arg<'_, E::Buf>> = bufs.iter().map(|&b| Arg::Buf(b)).collect();
    args.push(Arg::I64(n as i64));
    args.extend(c.floats().into_iter().map(Arg::F32));
    args.extend(c.flags().into_iter().map(|f| Arg::I32(f as i32)));
    args.extend([Arg::U64(seed), Arg::U64(stream), Arg::I32(noise.is_some() as i32), Arg::opt(plan)]);
    // With noise, the Philox draw and Box-Muller add ~40 operations per element.
    let flops = if noise.is_some() { flops + 40 / written } else { flops };
    run(e, k, elementwise(n), Cost::pass(read * n, written * n, flops), &args)
}
