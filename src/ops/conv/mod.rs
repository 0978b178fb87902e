//! Convolutions: conv2d with an optional fused epilogue (bias, per-image channel bias, residual) and
//! conv_transpose2d, forward and backward. A conv maps an image `[C, H, W]` to `[C_out, OH, OW]`,
//! `OH = (H + 2p - k)/s + 1`; written as a matrix product, `out = W[C_out, C·k·k] · im2col(x)[C·k·k, OH·OW]`. The
//! transposed conv is the adjoint of that map.
//!
//! On the CPU (`cpu.rs`) the column matrix is built in cache-sized bands, the backward passes are forward convs
//! where they can be, and the 3x3 stride-1 convs run as Winograd F(2x2, 3x3) (`winograd.rs`). On the GPU
//! (`gpu.rs`, `conv.cu`) it is im2col and a tiled GEMM.

pub(crate) mod cpu;
pub(crate) mod gpu;
mod mma;
#[cfg(test)]
mod tests;
mod winograd;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::{ConvDesc, ConvGeom, Epilogue, LayerGrads, Planes};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for convolutions.
pub trait ConvOps: Memory {
    /// `out[i] = W·im2col(x[i]) + epilogue`, `x: [n, geom.c, geom.h, geom.w]`, `w: [channels, geom.c, k, k]`.
    fn conv2d_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        epi: Epilogue<Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx[i] = col2im(Wᵀ·gout[i])`, `dW = Σ_i gout[i]·im2col(x[i])ᵀ`, each only when asked for.
    fn conv2d_backward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        gout: &Self::Buf,
        grads: LayerGrads<Self::Buf>,
    ) -> Result<()>;
    /// The adjoint of the conv `d.geom`, plus `bias`: `x: [n, channels, geom.oh, geom.ow]`,
    /// `out: [n, geom.c, geom.h, geom.w]`.
    fn conv_transpose2d_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Input and weight gradients of [`ConvOps::conv_transpose2d_forward`].
    fn conv_transpose2d_backward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        gout: &Self::Buf,
        grads: LayerGrads<Self::Buf>,
    ) -> Result<()>;
}

/// Optional terms fused into a conv's output (see [`Epilogue`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvExtra {
    /// `[n, c_out]`, added to every pixel of channel c of image n (the ResBlock's time projection).
    pub chan_bias: Option<Var>,
    /// `[n, c_out, oh, ow]`, added elementwise (a residual connection).
    pub residual: Option<Var>,
}

impl<B: Backend> Tape<'_, B> {
    /// `y = conv2d(x, w, stride, pad) + b + extra` with `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`,
    /// `b: [c_out]`; `y: [n, c_out, (h+2p-k)/s+1, (w+2p-k)/s+1]`.
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        stride: usize,
        pad: usize,
        extra: ConvExtra,
    ) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv2d input")?;
        let (co, wci, kh, kw) = self.value(w).dims4("conv2d weight")?;
        if wci != ci || kh != kw {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!("conv2d: weight {ws:?} does not fit input {xs:?}");
        }
        let Some(geom) = ConvGeom::new(ci, h, wd, kh, stride, pad) else {
            return shape_err!("conv2d: kernel {kh} stride {stride} pad {pad} does not fit a {h}x{wd} input");
        };
        self.check_shape(b, &[co], "conv2d bias")?;
        self.check_shape(extra.chan_bias, &[n, co], "conv2d channel bias")?;
        self.check_shape(extra.residual, &[n, co, geom.oh, geom.ow], "conv2d residual")?;
        let d = ConvDesc { n, geom, channels: co };
        let mut y = Tensor::alloc(self.backend(), &[n, co, geom.oh, geom.ow])?;
        let buf = |v: Option<Var>| v.map(|v| self.value(v).buf());
        let epi = Epilogue { bias: buf(b), chan_bias: buf(extra.chan_bias), residual: buf(extra.residual) };
        self.backend().conv2d_forward(&d, self.value(x).buf(), self.value(w).buf(), epi, y.buf_mut())?;
        Ok(self.push(Conv2d { x, w, b, extra, d }, y, started))
    }

    /// `y = conv_transpose2d(x, w, stride, pad) + b` (PyTorch's ConvTranspose2d), `x: [n, c_in, h, w]`,
    /// `w: [c_in, c_out, k, k]`, `y: [n, c_out, (h-1)s - 2p + k, (w-1)s - 2p + k]`.
    pub fn conv_transpose2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv_transpose2d input")?;
        let (wci, co, kh, kw) = self.value(w).dims4("conv_transpose2d weight")?;
        let out_len = |len: usize| (len as isize - 1) * stride as isize - 2 * pad as isize + kh as isize;
        let (oh, ow) = (out_len(h), out_len(wd));
        if wci != ci || kh != kw || stride == 0 || oh <= 0 || ow <= 0 {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!(
                "conv_transpose2d: weight {ws:?} (stride {stride}, pad {pad}) does not fit input {xs:?}"
            );
        }
        // The conv whose adjoint this is maps the [co, oh, ow] output back onto the [h, w] input grid.
        let geom = match ConvGeom::new(co, oh as usize, ow as usize, kh, stride, pad) {
            Some(g) if g.oh == h && g.ow == wd => g,
            _ => {
                return shape_err!(
                    "conv_transpose2d: stride {stride} pad {pad} k {kh} is not invertible for a {h}x{wd} input"
                )
            }
        };
        self.check_shape(b, &[co], "conv_transpose2d bias")?;
        let d = ConvDesc { n, geom, channels: ci };
        let mut y = Tensor::alloc(self.backend(), &[n, co, geom.h, geom.w])?;
        let bias = b.map(|b| self.value(b).buf());
        self.backend().conv_transpose2d_forward(&d, self.value(x).buf(), self.value(w).buf(), bias, y.buf_mut())?;
        Ok(self.push(ConvTranspose2d { x, w, b, d }, y, started))
    }
}

/// The input and weight gradients of a conv or transposed conv, through `kernel` (the backend's backward).
fn input_grads<B: Backend>(
    tape: &Tape<B>,
    (x, w): (Var, Var),
    gout: &Tensor<B>,
    kernel: impl FnOnce(&B::Buf, &B::Buf, &B::Buf, LayerGrads<B::Buf>) -> Result<()>,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let (mut dx, mut dw) = (tape.grad_for(x)?, tape.grad_for(w)?);
    let grads = LayerGrads { dx: dx.as_mut().map(Tensor::buf_mut), dw: dw.as_mut().map(Tensor::buf_mut) };
    kernel(tape.value(x).buf(), tape.value(w).buf(), gout.buf(), grads)?;
    Ok(dx.map(|d| (x, d)).into_iter().chain(dw.map(|d| (w, d))).collect())
}

/// `y = conv2d(x, w) + b + chan_bias[n, c] + residual`: the backend's conv backward for `x` and `w`; per-channel
/// sums of `gout` for the biases; `gout` itself for the residual.
struct Conv2d {
    x: Var,
    w: Var,
    b: Option<Var>,
    extra: ConvExtra,
    d: ConvDesc,
}

impl Conv2d {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        [Some(self.x), Some(self.w), self.b, self.extra.chan_bias, self.extra.residual].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for Conv2d {
    fn name(&self) -> &'static str {
        match self.d.geom {
            g if g.k == 1 => "conv2d_1x1",
            g if g.stride == 2 => "conv2d_s2",
            _ => "conv2d",
        }
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let mut out =
            input_grads(tape, (self.x, self.w), &gout, |x, w, g, grads| be.conv2d_backward(&self.d, x, w, g, grads))?;
        let planes = Planes { n: self.d.n, c: self.d.channels, plane: self.d.geom.oh * self.d.geom.ow };
        if let Some(b) = self.b.filter(|&b| tape.needs_grad(b)) {
            out.push((b, Tensor::from_buf(be.clone(), &[planes.c], be.channel_sums(planes, gout.buf(), false)?)?));
        }
        if let Some(cb) = self.extra.chan_bias.filter(|&v| tape.needs_grad(v)) {
            let sums = be.channel_sums(planes, gout.buf(), true)?;
            out.push((cb, Tensor::from_buf(be.clone(), &[planes.n, planes.c], sums)?));
        }
        if let Some(r) = self.extra.residual.filter(|&v| tape.needs_grad(v)) {
            out.push((r, gout));
        }
        Ok(out)
    }
}

impl fmt::Display for Conv2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, inputs) = (self.d.geom, list_vars(&self.vars()));
        write!(f, "conv2d({inputs}; k={} s={} p={})", g.k, g.stride, g.pad)
    }
}

/// `y = conv_transpose2d(x, w) + b`: the backend's backward for `x` and `w`; per-channel sums for `b`.
struct ConvTranspose2d {
    x: Var,
    w: Var,
    b: Option<Var>,
    d: ConvDesc,
}

impl ConvTranspose2d {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        [Some(self.x), Some(self.w), self.b].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let mut out = input_grads(tape, (self.x, self.w), &gout, |x, w, g, grads| {
            be.conv_transpose2d_backward(&self.d, x, w, g, grads)
        })?;
        if let Some(b) = self.b.filter(|&b| tape.needs_grad(b)) {
            let planes = Planes { n: self.d.n, c: self.d.geom.c, plane: self.d.geom.h * self.d.geom.w };
            out.push((b, Tensor::from_buf(be.clone(), &[planes.c], be.channel_sums(planes, gout.buf(), false)?)?));
        }
        Ok(out)
    }
}

impl fmt::Display for ConvTranspose2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, inputs) = (self.d.geom, list_vars(&self.vars()));
        write!(f, "conv_transpose2d({inputs}; k={} s={} p={})", g.k, g.stride, g.pad)
    }
}
