//! The GPU backend: buffers on an [`Executor`] and every entry point a launch sequence of [`crate::gpu::ops`].
//! Generic over the executor, so `Gpu<Emulator>` (every test run) and `Gpu<Cuda>` (a real device) run the same
//! launch code.

use super::Backend;
use crate::cpu::conv::ConvGeom;
use crate::cpu::norm::NormDims;
use crate::diffusion::sampler::{DdimCoefs, DdpmCoefs};
use crate::diffusion::Schedule;
use crate::error::{Error, Result};
use crate::gpu::{ops, DeviceBuf, Executor};
use crate::optim::AdamWScalars;
use std::fmt;
use std::sync::Arc;

/// A GPU backend: a shared handle to one executor (the emulator or a CUDA device).
pub struct Gpu<E: Executor> {
    exec: Arc<E>,
}

impl<E: Executor> Gpu<E> {
    /// A backend running on `exec`.
    pub fn new(exec: E) -> Self {
        Gpu { exec: Arc::new(exec) }
    }

    /// The executor the kernels run on.
    pub fn executor(&self) -> &E {
        &self.exec
    }
}

impl<E: Executor> Clone for Gpu<E> {
    fn clone(&self) -> Self {
        Gpu { exec: self.exec.clone() }
    }
}

impl<E: Executor> fmt::Debug for Gpu<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.exec.describe())
    }
}

/// `Option<&mut B>` as the `Option<&B>` the launchers take (device kernels write through shared handles).
fn shared<B>(b: Option<&mut B>) -> Option<&B> {
    b.map(|b| &*b)
}

impl<E: Executor> Backend for Gpu<E> {
    type Buf = E::Buf;

    fn describe(&self) -> String {
        self.exec.describe()
    }
    fn buf_len(buf: &E::Buf) -> usize {
        buf.len()
    }
    fn alloc(&self, len: usize) -> Result<E::Buf> {
        self.exec.alloc(len)
    }
    fn full(&self, len: usize, v: f32) -> Result<E::Buf> {
        self.exec.upload(&vec![v; len])
    }
    fn upload(&self, data: Vec<f32>) -> Result<E::Buf> {
        self.exec.upload(&data)
    }
    fn download(&self, buf: &E::Buf) -> Result<Vec<f32>> {
        self.exec.download(buf)
    }
    fn copy(&self, buf: &E::Buf) -> Result<E::Buf> {
        let out = self.exec.alloc(buf.len())?;
        ops::copy(&*self.exec, buf, &out, buf.len())?;
        Ok(out)
    }

    fn add_assign(&self, acc: &mut E::Buf, g: &E::Buf) -> Result<()> {
        ops::add_assign(&*self.exec, acc, g, acc.len())
    }
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &E::Buf,
        w: &E::Buf,
        co: usize,
        bias: Option<&E::Buf>,
        chan_bias: Option<&E::Buf>,
        residual: Option<&E::Buf>,
        out: &mut E::Buf,
    ) -> Result<()> {
        ops::conv2d_forward(&*self.exec, g, n, x, w, co, bias, chan_bias, residual, out)
    }
    fn conv2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &E::Buf,
        w: &E::Buf,
        co: usize,
        gout: &E::Buf,
        dx: Option<&mut E::Buf>,
        dw: Option<&mut E::Buf>,
    ) -> Result<()> {
        ops::conv2d_backward(&*self.exec, g, n, x, w, co, gout, shared(dx), shared(dw))
    }
    fn conv_transpose2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &E::Buf,
        w: &E::Buf,
        ci: usize,
        bias: Option<&E::Buf>,
        out: &mut E::Buf,
    ) -> Result<()> {
        ops::conv_transpose2d_forward(&*self.exec, g, n, x, w, ci, bias, out)
    }
    fn conv_transpose2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &E::Buf,
        w: &E::Buf,
        ci: usize,
        gout: &E::Buf,
        dx: Option<&mut E::Buf>,
        dw: Option<&mut E::Buf>,
    ) -> Result<()> {
        ops::conv_transpose2d_backward(&*self.exec, g, n, x, w, ci, gout, shared(dx), shared(dw))
    }
    fn channel_sums(&self, t: &E::Buf, n: usize, c: usize, plane: usize, per_image: bool) -> Result<E::Buf> {
        let out = self.exec.alloc(if per_image { n * c } else { c })?;
        ops::channel_sums(&*self.exec, t, n, c, plane, per_image, &out)?;
        Ok(out)
    }
    fn group_norm_forward(
        &self,
        d: NormDims,
        x: &E::Buf,
        gamma: &E::Buf,
        beta: &E::Buf,
        eps: f32,
        silu: bool,
        y: &mut E::Buf,
    ) -> Result<(E::Buf, E::Buf)> {
        let (mean, rstd) = (self.exec.alloc(d.n * d.groups)?, self.exec.alloc(d.n * d.groups)?);
        ops::group_norm_forward(&*self.exec, d, x, gamma, beta, eps, silu, y, &mean, &rstd)?;
        Ok((mean, rstd))
    }
    fn group_norm_backward(
        &self,
        d: NormDims,
        x: &E::Buf,
        gamma: &E::Buf,
        beta: &E::Buf,
        mean: &E::Buf,
        rstd: &E::Buf,
        silu: bool,
        gy: &E::Buf,
        dx: Option<&mut E::Buf>,
    ) -> Result<(E::Buf, E::Buf)> {
        let (dgamma, dbeta) = (self.exec.alloc(d.c)?, self.exec.alloc(d.c)?);
        ops::group_norm_backward(&*self.exec, d, x, gamma, beta, mean, rstd, silu, gy, shared(dx), &dgamma, &dbeta)?;
        Ok((dgamma, dbeta))
    }
    fn silu_forward(&self, x: &E::Buf, y: &mut E::Buf) -> Result<()> {
        ops::silu_forward(&*self.exec, x, y, x.len())
    }
    fn silu_backward(&self, x: &E::Buf, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        ops::silu_backward(&*self.exec, x, gy, dx, x.len())
    }
    fn linear_forward(
        &self,
        x: &E::Buf,
        w: &E::Buf,
        bias: Option<&E::Buf>,
        batch: usize,
        fin: usize,
        fout: usize,
        y: &mut E::Buf,
    ) -> Result<()> {
        ops::linear_forward(&*self.exec, x, w, bias, batch, fin, fout, y)
    }
    fn linear_backward(
        &self,
        x: &E::Buf,
        w: &E::Buf,
        gy: &E::Buf,
        batch: usize,
        fin: usize,
        fout: usize,
        dx: Option<&mut E::Buf>,
        dw: Option<&mut E::Buf>,
    ) -> Result<()> {
        ops::linear_backward(&*self.exec, x, w, gy, batch, fin, fout, shared(dx), shared(dw), None)
    }
    fn column_sums(&self, m: &E::Buf, rows: usize, cols: usize) -> Result<E::Buf> {
        let out = self.exec.alloc(cols)?;
        ops::column_sums(&*self.exec, m, rows, cols, &out)?;
        Ok(out)
    }
    fn concat_channels(
        &self,
        a: &E::Buf,
        b: &E::Buf,
        n: usize,
        ca: usize,
        cb: usize,
        plane: usize,
        out: &mut E::Buf,
    ) -> Result<()> {
        ops::concat_channels(&*self.exec, a, b, n, ca, cb, plane, out)
    }
    fn split_channels(&self, g: &E::Buf, n: usize, ca: usize, cb: usize, plane: usize) -> Result<(E::Buf, E::Buf)> {
        let (a, b) = (self.exec.alloc(n * ca * plane)?, self.exec.alloc(n * cb * plane)?);
        ops::split_channels(&*self.exec, g, n, ca, cb, plane, &a, &b)?;
        Ok((a, b))
    }
    fn mse(&self, p: &E::Buf, t: &E::Buf) -> Result<E::Buf> {
        let out = self.exec.alloc(1)?;
        ops::mse(&*self.exec, p, t, p.len(), &out)?;
        Ok(out)
    }
    fn mse_backward(&self, p: &E::Buf, t: &E::Buf, gloss: f32, dp: &mut E::Buf) -> Result<()> {
        ops::mse_backward(&*self.exec, p, t, gloss, p.len(), dp)
    }
    fn relu_forward(&self, x: &E::Buf, y: &mut E::Buf) -> Result<()> {
        ops::relu_forward(&*self.exec, x, y, x.len())
    }
    fn relu_backward(&self, x: &E::Buf, gy: &E::Buf, dx: &mut E::Buf) -> Result<()> {
        ops::relu_backward(&*self.exec, x, gy, dx, x.len())
    }
    fn max_pool2d_forward(&self, planes: usize, h: usize, w: usize, x: &E::Buf, y: &mut E::Buf) -> Result<E::Buf> {
        let argmax = self.exec.alloc(planes * (h / 2) * (w / 2))?;
        ops::max_pool2d_forward(&*self.exec, planes, h, w, x, y, &argmax)?;
        Ok(argmax)
    }
    fn max_pool2d_backward(
        &self,
        planes: usize,
        h: usize,
        w: usize,
        argmax: &E::Buf,
        gy: &E::Buf,
        dx: &mut E::Buf,
    ) -> Result<()> {
        ops::max_pool2d_backward(&*self.exec, planes, h, w, argmax, gy, dx)
    }
    fn cross_entropy(&self, z: &E::Buf, labels: &E::Buf, n: usize, classes: usize) -> Result<(E::Buf, E::Buf)> {
        let (loss, lse) = (self.exec.alloc(1)?, self.exec.alloc(n)?);
        ops::cross_entropy(&*self.exec, z, labels, n, classes, &lse, &loss)?;
        Ok((loss, lse))
    }
    fn cross_entropy_backward(
        &self,
        z: &E::Buf,
        labels: &E::Buf,
        lse: &E::Buf,
        gloss: f32,
        n: usize,
        classes: usize,
        dz: &mut E::Buf,
    ) -> Result<()> {
        ops::cross_entropy_backward(&*self.exec, z, labels, lse, gloss, n, classes, dz)
    }

    fn q_sample(&self, sched: &Schedule, x0: &E::Buf, t: &[usize], seed: u64, stream: u64) -> Result<(E::Buf, E::Buf)> {
        // The kernel indexes the schedule tables with t, so t is checked here, on the host, where it is made.
        if let Some(bad) = t.iter().find(|&&ti| ti >= sched.t) {
            return Err(Error::Arg(format!("q_sample: timestep {bad} out of range 0..{}", sched.t)));
        }
        let e = &*self.exec;
        let t_dev = e.upload_i32(&t.iter().map(|&v| v as i32).collect::<Vec<_>>())?;
        let (sqrt_ab, sqrt_1m_ab) = (e.upload(&sched.sqrt_alphas_bar)?, e.upload(&sched.sqrt_one_minus_alphas_bar)?);
        let (noise, xt) = (e.alloc(x0.len())?, e.alloc(x0.len())?);
        let per_item = x0.len() / t.len().max(1);
        ops::q_sample(e, x0, &t_dev, &sqrt_ab, &sqrt_1m_ab, t.len(), per_item, seed, stream, &noise, &xt)?;
        Ok((noise, xt))
    }
    fn ddpm_step(
        &self,
        c: &DdpmCoefs,
        x: &E::Buf,
        eps: &E::Buf,
        noise: Option<(u64, u64)>,
        out: &mut E::Buf,
    ) -> Result<()> {
        ops::ddpm_step(&*self.exec, c, x, eps, x.len(), noise, out)
    }
    fn ddim_step(
        &self,
        c: &DdimCoefs,
        x: &E::Buf,
        eps: &E::Buf,
        noise: Option<(u64, u64)>,
        out: &mut E::Buf,
    ) -> Result<()> {
        ops::ddim_step(&*self.exec, c, x, eps, x.len(), noise, out)
    }
    fn clip_grad_norm(&self, grads: &mut [&mut E::Buf], max_norm: f32) -> Result<(f32, f32)> {
        let out = self.exec.alloc(2)?;
        let list: Vec<(&E::Buf, usize)> = grads.iter().map(|g| (&**g, g.len())).collect();
        ops::clip_grad_norm(&*self.exec, &list, max_norm, &out)?;
        // The two scalars come back for the log; the scaling itself already ran on the device.
        let v = self.exec.download(&out)?;
        Ok((v[0], v[1]))
    }
    fn adamw_step(&self, s: &AdamWScalars, p: &mut E::Buf, m: &mut E::Buf, v: &mut E::Buf, g: &E::Buf) -> Result<()> {
        ops::adamw_step(&*self.exec, s, p, m, v, g, p.len())
    }
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut E::Buf, p: &E::Buf) -> Result<()> {
        ops::ema_update(&*self.exec, d, alpha, shadow, p, shadow.len())
    }
}
