//! The one interface every op, optimiser and sampler step runs through, and its implementations.
//!
//! A [`Backend`] owns buffers of f32 ([`Backend::Buf`]) and has one method per kernel entry point the tape
//! (`crate::autograd`), the optimiser (`crate::optim`), the training step and the samplers use, with the
//! signatures of the CPU kernels in `crate::cpu` (buffers where those take slices). Model code is written once
//! against `Tape<B>`; which kernels run is decided by the type of its tensors:
//!
//! - [`Cpu`]: buffers are `Vec<f32>` and every method calls the CPU kernels exactly as the tape did before
//!   backends existed, so CPU results are bit for bit what they were.
//! - [`Gpu<E>`]: buffers live on an [`Executor`](crate::gpu::Executor) and every method is a launch sequence of
//!   `crate::gpu::ops`, so the CPU emulator (`Gpu<Emulator>`) and a real device (`Gpu<Cuda>`) share all launch
//!   code.
//!
//! Outputs are `&mut Buf` even though device kernels write through shared handles: the signature says which
//! buffers an entry point writes.

mod cpu;
mod gpu;

pub use cpu::Cpu;
pub use gpu::Gpu;

use crate::cpu::conv::ConvGeom;
use crate::cpu::norm::NormDims;
use crate::diffusion::sampler::{DdimCoefs, DdpmCoefs};
use crate::diffusion::Schedule;
use crate::error::Result;
use crate::optim::AdamWScalars;
use std::fmt;

/// Where tensors live and kernels run. A value of this type is a cheap handle (a unit struct for the CPU, a
/// shared pointer to the device for the GPU) that every tensor carries.
#[allow(clippy::too_many_arguments)]
pub trait Backend: Clone + fmt::Debug + Send + Sync + 'static {
    /// A buffer of f32 words.
    type Buf: fmt::Debug + Send + Sync;

    /// What runs the kernels, e.g. "CPU (2 threads)" or "CUDA device 0: NVIDIA H200 (...)".
    fn describe(&self) -> String;
    /// Length of `buf` in words.
    fn buf_len(buf: &Self::Buf) -> usize;

    // ---- memory -----------------------------------------------------------------------------------------------

    /// A buffer of `len` words for a kernel to overwrite completely (zeros on the CPU; unspecified on a device).
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer of `len` words equal to `v`.
    fn full(&self, len: usize, v: f32) -> Result<Self::Buf>;
    /// A buffer holding `data` (moved, on the CPU).
    fn upload(&self, data: Vec<f32>) -> Result<Self::Buf>;
    /// A host copy of `buf`, after all work queued before has finished.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// `buf` on the host, consuming it (a move on the CPU).
    fn download_owned(&self, buf: Self::Buf) -> Result<Vec<f32>> {
        self.download(&buf)
    }
    /// A copy of `buf` on the same backend.
    fn copy(&self, buf: &Self::Buf) -> Result<Self::Buf>;

    // ---- autograd kernels (see `crate::cpu` for each one's maths) ----------------------------------------------

    /// `acc += g` elementwise (gradient accumulation where a value fans out).
    fn add_assign(&self, acc: &mut Self::Buf, g: &Self::Buf) -> Result<()>;
    /// `out[i] = W·im2col(x[i]) + bias + chan_bias[i] + residual[i]` (`cpu::conv::conv2d_forward`).
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        co: usize,
        bias: Option<&Self::Buf>,
        chan_bias: Option<&Self::Buf>,
        residual: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx[i] = col2im(Wᵀ·gout[i])`, `dW = Σ_i gout[i]·im2col(x[i])ᵀ`, each only when asked for.
    fn conv2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        co: usize,
        gout: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<()>;
    /// The adjoint of the conv with geometry `g`, plus `bias` (`cpu::conv::conv_transpose2d_forward`).
    fn conv_transpose2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        ci: usize,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Input and weight gradients of [`Backend::conv_transpose2d_forward`].
    fn conv_transpose2d_backward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        ci: usize,
        gout: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<()>;
    /// Per-channel sums of `t: [n, c, plane]`: `[n, c]` when `per_image`, else `[c]` (a broadcast bias's gradient).
    fn channel_sums(&self, t: &Self::Buf, n: usize, c: usize, plane: usize, per_image: bool) -> Result<Self::Buf>;
    /// `y = γ·(x-μ)/σ + β` per group (then SiLU when `silu`); returns the saved `(μ, 1/σ)`, `[n·groups]` each.
    fn group_norm_forward(
        &self,
        d: NormDims,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
        silu: bool,
        y: &mut Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// GroupNorm backward: `dx` when asked for; returns `(dγ, dβ)`.
    fn group_norm_backward(
        &self,
        d: NormDims,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        silu: bool,
        gy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// `y = x·σ(x)`.
    fn silu_forward(&self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = gy·σ(x)·(1 + x·(1-σ(x)))`.
    fn silu_backward(&self, x: &Self::Buf, gy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// `y = x Wᵀ + b`, `x: [batch, fin]`, `w: [fout, fin]`.
    fn linear_forward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        batch: usize,
        fin: usize,
        fout: usize,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx = gy·W`, `dW = gyᵀ·x`, each only when asked for.
    fn linear_backward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        gy: &Self::Buf,
        batch: usize,
        fin: usize,
        fout: usize,
        dx: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<()>;
    /// Column sums of `m: [rows, cols]` (a linear bias's gradient).
    fn column_sums(&self, m: &Self::Buf, rows: usize, cols: usize) -> Result<Self::Buf>;
    /// `out = [a, b]` along channels, `a: [n, ca, plane]`, `b: [n, cb, plane]`.
    fn concat_channels(
        &self,
        a: &Self::Buf,
        b: &Self::Buf,
        n: usize,
        ca: usize,
        cb: usize,
        plane: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// The inverse of [`Backend::concat_channels`].
    fn split_channels(
        &self,
        g: &Self::Buf,
        n: usize,
        ca: usize,
        cb: usize,
        plane: usize,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// `L = (1/N)·Σ (p - t)²`, a one-word buffer.
    fn mse(&self, p: &Self::Buf, t: &Self::Buf) -> Result<Self::Buf>;
    /// `dp = (2/N)·(p - t)·gloss`.
    fn mse_backward(&self, p: &Self::Buf, t: &Self::Buf, gloss: f32, dp: &mut Self::Buf) -> Result<()>;
    /// `y = max(x, 0)`.
    fn relu_forward(&self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = gy·[x > 0]`.
    fn relu_backward(&self, x: &Self::Buf, gy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// 2x2 max pooling, stride 2, of `planes` planes of `h×w` into `y: [planes, h/2, w/2]`; returns the offset
    /// `2·dy + dx` of each window's maximum, as f32 (`cpu::classify::max_pool2d_forward`).
    fn max_pool2d_forward(
        &self,
        planes: usize,
        h: usize,
        w: usize,
        x: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<Self::Buf>;
    /// `dx = gy` at each window's saved maximum, 0 elsewhere.
    fn max_pool2d_backward(
        &self,
        planes: usize,
        h: usize,
        w: usize,
        argmax: &Self::Buf,
        gy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// `L = (1/n)·Σ_i (lse_i - z_i[y_i])` for `z: [n, classes]` and `labels` (`n` class indices as f32); returns
    /// `(L, lse)`, a one-word buffer and the `[n]` row log-sum-exps for the backward.
    fn cross_entropy(
        &self,
        z: &Self::Buf,
        labels: &Self::Buf,
        n: usize,
        classes: usize,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// `dz = (softmax(z) - onehot(y))·gloss/n`.
    fn cross_entropy_backward(
        &self,
        z: &Self::Buf,
        labels: &Self::Buf,
        lse: &Self::Buf,
        gloss: f32,
        n: usize,
        classes: usize,
        dz: &mut Self::Buf,
    ) -> Result<()>;

    // ---- training and sampling ---------------------------------------------------------------------------------

    /// The forward process with its noise drawn here: `noise[e] = rng::normal(seed, stream, e)` and
    /// `x_t[b] = sqrt(ᾱ_{t_b})·x0[b] + sqrt(1-ᾱ_{t_b})·noise[b]` for the `t.len()` items of `x0`. Returns
    /// `(noise, x_t)`.
    fn q_sample(
        &self,
        sched: &Schedule,
        x0: &Self::Buf,
        t: &[usize],
        seed: u64,
        stream: u64,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// One DDPM step `out = sra·(x - eps_coef·eps) + sigma·z` (`diffusion::sampler::ddpm_step`), with
    /// `z = rng::normal(seed, stream, ·)` when `noise = Some((seed, stream))`, else no noise term.
    fn ddpm_step(
        &self,
        c: &DdpmCoefs,
        x: &Self::Buf,
        eps: &Self::Buf,
        noise: Option<(u64, u64)>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// One DDIM step (`diffusion::sampler::ddim_step`), noise as in [`Backend::ddpm_step`].
    fn ddim_step(
        &self,
        c: &DdimCoefs,
        x: &Self::Buf,
        eps: &Self::Buf,
        noise: Option<(u64, u64)>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `torch.nn.utils.clip_grad_norm_` over all `grads` together: `total = ‖g‖₂`,
    /// `coef = min(1, max_norm/(total + 1e-6))`, `g *= coef` when `coef < 1`. Returns `(total, coef)`.
    fn clip_grad_norm(&self, grads: &mut [&mut Self::Buf], max_norm: f32) -> Result<(f32, f32)>;
    /// One AdamW update of `p` with moments `m`, `v` from gradient `g` (`optim::AdamW::step`'s f32 order).
    fn adamw_step(
        &self,
        s: &AdamWScalars,
        p: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        g: &Self::Buf,
    ) -> Result<()>;
    /// `shadow = shadow·d + alpha·p` (`optim::Ema::update`).
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut Self::Buf, p: &Self::Buf) -> Result<()>;
}
