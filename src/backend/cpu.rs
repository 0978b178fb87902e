//! The CPU backend: `Vec<f32>` buffers and the kernels of `crate::cpu`, called exactly as the tape called them
//! before backends existed (same kernels, same argument order, same zero-initialised outputs), so results are
//! unchanged to the bit.

use super::Backend;
use crate::cpu::classify;
use crate::cpu::conv::{self, ConvGeom, ConvGrads, Epilogue};
use crate::cpu::elementwise as ew;
use crate::cpu::norm::{self, NormDims};
use crate::diffusion::sampler::{ddim_update, ddpm_update, DdimCoefs, DdpmCoefs};
use crate::diffusion::Schedule;
use crate::error::Result;
use crate::optim::AdamWScalars;
use crate::rng;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Elements per parallel task of the elementwise optimiser updates: large enough to amortise a task, small
/// enough to spread one big tensor over every core. The updates are elementwise, so the split cannot change
/// a result.
const CHUNK: usize = 1 << 14;

/// The CPU: multi-threaded kernels over host memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

/// `Some(&mut v[..])` from an optional buffer.
fn slice(b: Option<&mut Vec<f32>>) -> Option<&mut [f32]> {
    b.map(|v| &mut v[..])
}

/// `noise = Some((seed, stream))` drawn into a fresh buffer of `len` normals, as the samplers draw their z.
fn draw(noise: Option<(u64, u64)>, len: usize) -> Option<Vec<f32>> {
    noise.map(|(seed, stream)| {
        let mut z = vec![0.0; len];
        rng::fill_normal(seed, stream, &mut z);
        z
    })
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn describe(&self) -> String {
        match rayon::current_num_threads() {
            1 => "CPU (1 thread)".to_string(),
            n => format!("CPU ({n} threads)"),
        }
    }
    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn full(&self, len: usize, v: f32) -> Result<Vec<f32>> {
        Ok(vec![v; len])
    }
    fn upload(&self, data: Vec<f32>) -> Result<Vec<f32>> {
        Ok(data)
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn download_owned(&self, buf: Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf)
    }
    fn copy(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn add_assign(&self, acc: &mut Vec<f32>, g: &Vec<f32>) -> Result<()> {
        acc.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        co: usize,
        bias: Option<&Vec<f32>>,
        chan_bias: Option<&Vec<f32>>,
        residual: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let epi = Epilogue {
            bias: bias.map(|v| &v[..]),
            chan_bias: chan_bias.map(|v| &v[..]),
            residual: residual.map(|v| &v[..]),
        };
        conv::conv2d_forward(g, n, x, w, co, epi, out);
        Ok(())
    }
    fn conv2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        co: usize,
        gout: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        conv::conv2d_backward(g, n, x, w, co, gout, ConvGrads { dx: slice(dx), dw: slice(dw) });
        Ok(())
    }
    fn conv_transpose2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        ci: usize,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        conv::conv_transpose2d_forward(g, n, x, w, ci, bias.map(|v| &v[..]), out);
        Ok(())
    }
    fn conv_transpose2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        ci: usize,
        gout: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        conv::conv_transpose2d_backward(g, n, x, w, ci, gout, ConvGrads { dx: slice(dx), dw: slice(dw) });
        Ok(())
    }
    fn channel_sums(&self, t: &Vec<f32>, n: usize, c: usize, plane: usize, per_image: bool) -> Result<Vec<f32>> {
        Ok(conv::channel_sums(t, n, c, plane, per_image))
    }
    fn group_norm_forward(
        &self,
        d: NormDims,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        eps: f32,
        silu: bool,
        y: &mut Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(norm::group_norm_forward(d, x, gamma, beta, eps, silu, y))
    }
    fn group_norm_backward(
        &self,
        d: NormDims,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        silu: bool,
        gy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(norm::group_norm_backward(d, x, gamma, beta, mean, rstd, silu, gy, slice(dx)))
    }
    fn silu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        ew::silu_forward(x, y);
        Ok(())
    }
    fn silu_backward(&self, x: &Vec<f32>, gy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        ew::silu_backward(x, gy, dx);
        Ok(())
    }
    fn linear_forward(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        batch: usize,
        fin: usize,
        fout: usize,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        ew::linear_forward(x, w, bias.map(|v| &v[..]), batch, fin, fout, y);
        Ok(())
    }
    fn linear_backward(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        gy: &Vec<f32>,
        batch: usize,
        fin: usize,
        fout: usize,
        dx: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        ew::linear_backward(x, w, gy, batch, fin, fout, slice(dx), slice(dw));
        Ok(())
    }
    fn column_sums(&self, m: &Vec<f32>, _rows: usize, cols: usize) -> Result<Vec<f32>> {
        Ok(ew::column_sums(m, cols))
    }
    fn concat_channels(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        _n: usize,
        ca: usize,
        cb: usize,
        plane: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        ew::concat_channels(a, b, ca, cb, plane, out);
        Ok(())
    }
    fn split_channels(
        &self,
        g: &Vec<f32>,
        n: usize,
        ca: usize,
        cb: usize,
        plane: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(ew::split_channels(g, n, ca, cb, plane))
    }
    fn mse(&self, p: &Vec<f32>, t: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(vec![ew::mse(p, t)])
    }
    fn mse_backward(&self, p: &Vec<f32>, t: &Vec<f32>, gloss: f32, dp: &mut Vec<f32>) -> Result<()> {
        ew::mse_backward(p, t, gloss, dp);
        Ok(())
    }
    fn relu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        ew::relu_forward(x, y);
        Ok(())
    }
    fn relu_backward(&self, x: &Vec<f32>, gy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        ew::relu_backward(x, gy, dx);
        Ok(())
    }
    fn max_pool2d_forward(
        &self,
        planes: usize,
        h: usize,
        w: usize,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<Vec<f32>> {
        let mut argmax = vec![0.0; planes * (h / 2) * (w / 2)];
        classify::max_pool2d_forward(h, w, x, y, &mut argmax);
        Ok(argmax)
    }
    fn max_pool2d_backward(
        &self,
        _planes: usize,
        h: usize,
        w: usize,
        argmax: &Vec<f32>,
        gy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        classify::max_pool2d_backward(h, w, argmax, gy, dx);
        Ok(())
    }
    fn cross_entropy(&self, z: &Vec<f32>, labels: &Vec<f32>, n: usize, classes: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut lse = vec![0.0; n];
        let loss = classify::cross_entropy(z, labels, classes, &mut lse);
        Ok((vec![loss], lse))
    }
    fn cross_entropy_backward(
        &self,
        z: &Vec<f32>,
        labels: &Vec<f32>,
        lse: &Vec<f32>,
        gloss: f32,
        _n: usize,
        classes: usize,
        dz: &mut Vec<f32>,
    ) -> Result<()> {
        classify::cross_entropy_backward(z, labels, lse, gloss, classes, dz);
        Ok(())
    }

    fn q_sample(
        &self,
        sched: &Schedule,
        x0: &Vec<f32>,
        t: &[usize],
        seed: u64,
        stream: u64,
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
    fn clip_grad_norm(&self, grads: &mut [&mut Vec<f32>], max_norm: f32) -> Result<(f32, f32)> {
        // Per-tensor sums of squares in f64 (in parallel), then their sum in the store's order.
        let sq: Vec<f64> = grads.par_iter().map(|g| g.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
        let total = sq.iter().sum::<f64>().sqrt() as f32;
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|v| *v *= coef));
        }
        Ok((total, coef))
    }
    fn adamw_step(
        &self,
        s: &AdamWScalars,
        p: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        g: &Vec<f32>,
    ) -> Result<()> {
        let &AdamWScalars { decay, w1, b2, w2, neg_step_size, bc2_sqrt, eps } = s;
        let chunks =
            p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK));
        chunks.for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                *p *= decay;
                *m += w1 * (g - *m);
                *v = *v * b2 + w2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            }
        });
        Ok(())
    }
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut Vec<f32>, p: &Vec<f32>) -> Result<()> {
        shadow.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(|(s, p)| {
            s.iter_mut().zip(p).for_each(|(s, &p)| *s = *s * d + alpha * p);
        });
        Ok(())
    }
}
