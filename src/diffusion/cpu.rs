//! The diffusion kernels on the CPU: the schedule's `q_sample`, the training batch's draw, the time embedding's
//! sinusoid and the samplers' update loops, with the same Philox draws as the GPU.

use super::dpm_solver::dpm_update;
use super::sampler::{ddim_update, ddpm_update};
use super::{
    drops_label, BatchDraw, DdimCoefs, DdpmCoefs, DiffusionOps, DpmCoefs, Drawn, LabelDraw, Schedule, ScheduleTables,
    WithOperand,
};
use crate::backend::Cpu;
use crate::error::{Error, Result};
use crate::nn::TimeEmbedding;
use crate::rng;
use crate::tensor::Tensor;

impl DiffusionOps for Cpu {
    fn q_sample(
        &self,
        sched: &Schedule,
        x0: &Vec<f32>,
        t: &[usize],
        (seed, stream): (u64, u64),
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let shape = [t.len(), x0.len() / t.len().max(1)];
        let mut noise = Tensor::zeros(&shape);
        rng::fill_normal(seed, stream, noise.data_mut());
        let xt = sched.q_sample(&Tensor::new(&shape, x0.clone())?, t, &noise)?;
        Ok((noise.into_data(), xt.into_data()))
    }
    fn draw_batch(&self, tables: &ScheduleTables<Cpu>, d: &BatchDraw<'_, Cpu>) -> Result<Drawn<Cpu>> {
        no_plan(d.plan.is_some())?;
        let picked = d.perm.get(d.first..d.first + d.batch).unwrap_or(&[]);
        let bound = picked.iter().max().map(|&m| m as u64 + 1);
        d.check(tables, d.perm.len(), bound)?;
        let per = d.per_item;
        let t: Vec<u32> =
            (0..d.batch).map(|i| rng::uniform_below(d.seed, d.t_stream, i as u64, tables.timesteps as u32)).collect();
        let mut noise = vec![0.0; d.batch * per];
        rng::fill_normal(d.seed, d.noise_stream, &mut noise);
        // Schedule::q_sample's loop, over the picked images in place of a gathered copy: the same f32 operations.
        let mut xt = vec![0.0f32; noise.len()];
        for (i, (&src, &ti)) in picked.iter().zip(&t).enumerate() {
            let (s, r) = (tables.sqrt_alphas_bar[ti as usize], tables.sqrt_one_minus_alphas_bar[ti as usize]);
            let x0 = &d.images[src as usize * per..][..per];
            for ((o, &x), &e) in xt[i * per..][..per].iter_mut().zip(x0).zip(&noise[i * per..][..per]) {
                *o = s * x + r * e;
            }
        }
        Ok((noise, xt, t, None))
    }
    fn draw_labels(&self, d: &LabelDraw<'_, Cpu>) -> Result<Vec<u32>> {
        no_plan(d.plan.is_some())?;
        let picked = d.perm.get(d.first..d.first + d.batch).unwrap_or(&[]);
        let bound = |v: &[u32]| v.iter().max().map(|&m| m as u64 + 1);
        d.check(d.perm.len(), bound(picked), d.labels.len(), bound(d.labels))?;
        let drawn = picked.iter().enumerate();
        Ok(drawn
            .map(|(i, &src)| if drops_label(d.seed, d.stream, i as u64) { d.null } else { d.labels[src as usize] })
            .collect())
    }
    fn guide(&self, eps: &Vec<f32>, half: usize, w: f32, out: &mut Vec<f32>) -> Result<()> {
        if eps.len() != 2 * half || out.len() != half {
            return Err(Error::Shape(format!("guide: {} words of eps and {} of out for {half}", eps.len(), out.len())));
        }
        let (cond, uncond) = eps.split_at(half);
        for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
            *o = (1.0 + w) * c - w * u;
        }
        Ok(())
    }
    fn time_sinusoid(&self, t: &Vec<u32>, n: usize, dim: usize, _operand: bool) -> Result<WithOperand<Cpu>> {
        let (Some(t), true) = (t.get(..n), dim.is_multiple_of(2)) else {
            return Err(Error::Shape(format!("time_sinusoid: {n} timesteps of width {dim} from {}", t.len())));
        };
        let t: Vec<usize> = t.iter().map(|&v| v as usize).collect();
        Ok((TimeEmbedding::sinusoid(&t, dim).into_data(), None))
    }
    fn ddpm_step(
        &self,
        c: &DdpmCoefs,
        x: &Vec<f32>,
        eps: &Vec<f32>,
        noise: Option<(u64, u64)>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let z = draw(noise, x.len());
        ddpm_update(c, x, eps, z.as_deref(), out);
        Ok(())
    }
    fn ddim_step(
        &self,
        c: &DdimCoefs,
        x: &Vec<f32>,
        eps: &Vec<f32>,
        noise: Option<(u64, u64)>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let z = draw(noise, x.len());
        ddim_update(c, x, eps, z.as_deref(), out);
        Ok(())
    }
    fn dpm_step(
        &self,
        c: &DpmCoefs,
        x: &Vec<f32>,
        eps: &Vec<f32>,
        x0_prev: &mut Vec<f32>,
        noise: Option<(u64, u64)>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let z = draw(noise, x.len());
        dpm_update(c, x, eps, x0_prev, z.as_deref(), out);
        Ok(())
    }
}

/// `noise = Some((seed, stream))` drawn into a fresh buffer of `len` normals, as the samplers draw their z.
fn draw(noise: Option<(u64, u64)>, len: usize) -> Option<Vec<f32>> {
    noise.map(|(seed, stream)| {
        let mut z = vec![0.0; len];
        rng::fill_normal(seed, stream, &mut z);
        z
    })
}

/// `Err` for a step plan, which only a captured step (a GPU's) reads.
fn no_plan(planned: bool) -> Result<()> {
    match planned {
        true => Err(Error::Arg("the CPU draws batches from the step's own values, not a plan".into())),
        false => Ok(()),
    }
}
