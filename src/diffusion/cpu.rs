//! The diffusion kernels on the CPU: the schedule's `q_sample` and the samplers' update loops, with the same Philox
//! noise the GPU draws.

use super::sampler::{ddim_update, ddpm_update};
use super::{DdimCoefs, DdpmCoefs, DiffusionOps, Schedule};
use crate::backend::Cpu;
use crate::error::Result;
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
}

/// `noise = Some((seed, stream))` drawn into a fresh buffer of `len` normals, as the samplers draw their z.
fn draw(noise: Option<(u64, u64)>, len: usize) -> Option<Vec<f32>> {
    noise.map(|(seed, stream)| {
        let mut z = vec![0.0; len];
        rng::fill_normal(seed, stream, &mut z);
        z
    })
}
