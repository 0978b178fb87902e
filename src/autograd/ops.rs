//! The ops the UNet and the MNIST classifier are made of. For each op: the [`Tape`] method that checks shapes and
//! runs the forward kernel, and, right below it, the backward that turns `dL/d(output)` into gradients for the
//! inputs that need one. Both call the tape's [`Backend`], so each op is written once for every device.

use super::{profile, Tape, Var};
use crate::backend::{Backend, Cpu};
use crate::cpu::conv::ConvGeom;
use crate::cpu::norm::NormDims;
use crate::error::Result;
use crate::params::ParamId;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// GroupNorm's `eps`, as PyTorch's default.
pub const GROUP_NORM_EPS: f32 = 1e-5;

/// One recorded operation: its inputs and attributes, plus what it saved for the backward pass (in buffers of
/// the tape's backend `B`).
#[derive(Debug)]
pub enum Op<B: Backend = Cpu> {
    /// A constant fed into the graph.
    Input,
    /// A trainable parameter.
    Param(ParamId),
    /// `y = conv2d(x, w) + b + chan_bias[n, c] + residual`.
    Conv2d { x: Var, w: Var, b: Option<Var>, chan_bias: Option<Var>, residual: Option<Var>, geom: ConvGeom },
    /// `y = conv_transpose2d(x, w) + b`, weight `[c_in, c_out, k, k]`.
    ConvTranspose2d { x: Var, w: Var, b: Option<Var>, geom: ConvGeom },
    /// `y = γ·(x-μ)/σ + β` per group, then SiLU if `silu`. Saves `(μ, 1/σ)` per (image, group).
    GroupNorm { x: Var, gamma: Var, beta: Var, groups: usize, silu: bool, mean: B::Buf, rstd: B::Buf },
    /// `y = x·σ(x)`.
    Silu { x: Var },
    /// `y = x Wᵀ + b`.
    Linear { x: Var, w: Var, b: Option<Var> },
    /// `y = [a, b]` along channels.
    Concat { a: Var, b: Var },
    /// `L = mean((pred - target)²)`.
    Mse { pred: Var, target: Var },
    /// `y = max(x, 0)`.
    Relu { x: Var },
    /// 2x2 max pooling with stride 2. Saves the offset `2·dy + dx` of each window's maximum.
    MaxPool2d { x: Var, argmax: B::Buf },
    /// `y = x` viewed as `[n, rest]` (an image batch flattened for a linear layer).
    Flatten { x: Var },
    /// `L = -(1/n) Σ_i log_softmax(z_i)[y_i]`. Keeps the labels (class indices as f32) and each row's
    /// log-sum-exp.
    CrossEntropy { logits: Var, labels: B::Buf, lse: B::Buf },
}

/// Optional terms fused into a conv's output (see [`crate::cpu::conv::Epilogue`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvExtra {
    /// `[n, c_out]`, added to every pixel of channel c of image n (the ResBlock's time projection).
    pub chan_bias: Option<Var>,
    /// `[n, c_out, oh, ow]`, added elementwise (a residual connection).
    pub residual: Option<Var>,
}

impl<B: Backend> Op<B> {
    /// The op's kind, as printed and profiled.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Param(_) => "param",
            Op::Conv2d { geom, .. } if geom.k == 1 => "conv2d_1x1",
            Op::Conv2d { geom, .. } if geom.stride == 2 => "conv2d_s2",
            Op::Conv2d { .. } => "conv2d",
            Op::ConvTranspose2d { .. } => "conv_transpose2d",
            Op::GroupNorm { silu: true, .. } => "group_norm_silu",
            Op::GroupNorm { .. } => "group_norm",
            Op::Silu { .. } => "silu",
            Op::Linear { .. } => "linear",
            Op::Concat { .. } => "concat",
            Op::Mse { .. } => "mse",
            Op::Relu { .. } => "relu",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::Flatten { .. } => "flatten",
            Op::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// The values this op reads.
    pub fn inputs(&self) -> Vec<Var> {
        match self {
            Op::Input | Op::Param(_) => vec![],
            Op::Conv2d { x, w, b, chan_bias, residual, .. } => {
                [Some(*x), Some(*w), *b, *chan_bias, *residual].into_iter().flatten().collect()
            }
            Op::ConvTranspose2d { x, w, b, .. } | Op::Linear { x, w, b } => {
                [Some(*x), Some(*w), *b].into_iter().flatten().collect()
            }
            Op::GroupNorm { x, gamma, beta, .. } => vec![*x, *gamma, *beta],
            Op::Silu { x } | Op::Relu { x } | Op::MaxPool2d { x, .. } | Op::Flatten { x } => vec![*x],
            Op::Concat { a, b } => vec![*a, *b],
            Op::Mse { pred, target } => vec![*pred, *target],
            Op::CrossEntropy { logits, .. } => vec![*logits],
        }
    }

    /// Gradients of this op's inputs, given `gout = dL/d(output)`; only for inputs that need one.
    pub(super) fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let need = |v: Var| tape.needs_grad(v);
        let be = tape.backend();
        let wrap = |shape: &[usize], buf: B::Buf| Tensor::from_buf(be.clone(), shape, buf);
        let mut out = Vec::new();
        match self {
            Op::Input | Op::Param(_) => {}
            Op::Conv2d { x, w, b, chan_bias, residual, geom } => {
                conv_backward(tape, *x, *w, *geom, &gout, B::conv2d_backward, &mut out)?;
                let (n, co, plane) = (gout.shape()[0], gout.shape()[1], geom.oh * geom.ow);
                if let Some(b) = b.filter(|&b| need(b)) {
                    out.push((b, wrap(&[co], be.channel_sums(gout.buf(), n, co, plane, false)?)?));
                }
                if let Some(cb) = chan_bias.filter(|&v| need(v)) {
                    out.push((cb, wrap(&[n, co], be.channel_sums(gout.buf(), n, co, plane, true)?)?));
                }
                if let Some(r) = residual.filter(|&v| need(v)) {
                    out.push((r, gout));
                }
            }
            Op::ConvTranspose2d { x, w, b, geom } => {
                conv_backward(tape, *x, *w, *geom, &gout, B::conv_transpose2d_backward, &mut out)?;
                if let Some(b) = b.filter(|&b| need(b)) {
                    let (n, co) = (gout.shape()[0], geom.c);
                    out.push((b, wrap(&[co], be.channel_sums(gout.buf(), n, co, geom.h * geom.w, false)?)?));
                }
            }
            Op::GroupNorm { x, gamma, beta, groups, silu, mean, rstd } => {
                group_norm_backward(tape, (*x, *gamma, *beta), *groups, *silu, (mean, rstd), &gout, &mut out)?
            }
            Op::Silu { x } => {
                let mut dx = Tensor::alloc(be, gout.shape())?;
                be.silu_backward(tape.value(*x).buf(), gout.buf(), dx.buf_mut())?;
                out.push((*x, dx));
            }
            Op::Linear { x, w, b } => linear_backward(tape, *x, *w, *b, &gout, &mut out)?,
            Op::Concat { a, b } => {
                let (sa, sb) = (tape.value(*a).shape(), tape.value(*b).shape());
                let (ga, gb) = be.split_channels(gout.buf(), sa[0], sa[1], sb[1], sa[2] * sa[3])?;
                out.push((*a, wrap(sa, ga)?));
                out.push((*b, wrap(sb, gb)?));
            }
            Op::Mse { pred, target } => {
                // dL/dpred = (2/N)(pred - target) and dL/dtarget = (2/N)(target - pred): the same kernel with the
                // roles swapped. dL/dL is a host scalar for the kernel (1 unless a caller scales the loss).
                let gloss = gout.to_vec()?[0];
                for (v, other) in [(*pred, *target), (*target, *pred)] {
                    if need(v) {
                        let mut g = Tensor::alloc(be, tape.value(v).shape())?;
                        be.mse_backward(tape.value(v).buf(), tape.value(other).buf(), gloss, g.buf_mut())?;
                        out.push((v, g));
                    }
                }
            }
            Op::Relu { x } => {
                let mut dx = Tensor::alloc(be, gout.shape())?;
                be.relu_backward(tape.value(*x).buf(), gout.buf(), dx.buf_mut())?;
                out.push((*x, dx));
            }
            Op::MaxPool2d { x, argmax } => {
                let xv = tape.value(*x);
                let (n, c, h, w) = xv.dims4("max_pool2d input")?;
                let mut dx = Tensor::alloc(be, xv.shape())?;
                be.max_pool2d_backward(n * c, h, w, argmax, gout.buf(), dx.buf_mut())?;
                out.push((*x, dx));
            }
            Op::Flatten { x } => out.push((*x, gout.reshape(tape.value(*x).shape())?)),
            Op::CrossEntropy { logits, labels, lse } => {
                let zv = tape.value(*logits);
                let (n, classes) = zv.dims2("cross_entropy logits")?;
                let mut dz = Tensor::alloc(be, zv.shape())?;
                be.cross_entropy_backward(zv.buf(), labels, lse, gout.to_vec()?[0], n, classes, dz.buf_mut())?;
                out.push((*logits, dz));
            }
        }
        out.retain(|(v, _)| need(*v));
        Ok(out)
    }
}

impl<B: Backend> fmt::Display for Op<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: Vec<Var>| vs.iter().map(|v| format!("%{}", v.0)).collect::<Vec<_>>().join(", ");
        match self {
            Op::Input => write!(f, "input"),
            Op::Param(_) => write!(f, "param"),
            Op::Conv2d { geom, .. } => {
                write!(f, "conv2d({}; k={} s={} p={})", list(self.inputs()), geom.k, geom.stride, geom.pad)
            }
            Op::ConvTranspose2d { geom, .. } => {
                write!(f, "conv_transpose2d({}; k={} s={} p={})", list(self.inputs()), geom.k, geom.stride, geom.pad)
            }
            Op::GroupNorm { groups, silu, .. } => {
                write!(f, "group_norm{}({}; groups={groups})", if *silu { "_silu" } else { "" }, list(self.inputs()))
            }
            Op::Silu { .. } => write!(f, "silu({})", list(self.inputs())),
            Op::Linear { .. } => write!(f, "linear({})", list(self.inputs())),
            Op::Concat { .. } => write!(f, "concat({})", list(self.inputs())),
            Op::Mse { .. } => write!(f, "mse({})", list(self.inputs())),
            Op::Relu { .. } => write!(f, "relu({})", list(self.inputs())),
            Op::MaxPool2d { .. } => write!(f, "max_pool2d({}; k=2 s=2)", list(self.inputs())),
            Op::Flatten { .. } => write!(f, "flatten({})", list(self.inputs())),
            Op::CrossEntropy { .. } => write!(f, "cross_entropy({})", list(self.inputs())),
        }
    }
}

/// Checks that an optional bias-like input has exactly `shape`.
fn check_shape<B: Backend>(tape: &Tape<B>, v: Option<Var>, shape: &[usize], what: &str) -> Result<()> {
    match v.map(|v| tape.value(v).shape()) {
        Some(s) if s != shape => shape_err!("{what}: expected shape {shape:?}, got {s:?}"),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// conv2d

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
            return shape_err!(
                "conv2d: weight {:?} does not fit input {:?}",
                self.value(w).shape(),
                self.value(x).shape()
            );
        }
        let Some(geom) = ConvGeom::new(ci, h, wd, kh, stride, pad) else {
            return shape_err!("conv2d: kernel {kh} stride {stride} pad {pad} does not fit a {h}x{wd} input");
        };
        check_shape(self, b, &[co], "conv2d bias")?;
        check_shape(self, extra.chan_bias, &[n, co], "conv2d channel bias")?;
        check_shape(self, extra.residual, &[n, co, geom.oh, geom.ow], "conv2d residual")?;
        let mut y = Tensor::alloc(self.backend(), &[n, co, geom.oh, geom.ow])?;
        let buf = |v: Option<Var>| v.map(|v| self.value(v).buf());
        let (xb, wb) = (self.value(x).buf(), self.value(w).buf());
        self.backend().conv2d_forward(
            &geom,
            n,
            xb,
            wb,
            co,
            buf(b),
            buf(extra.chan_bias),
            buf(extra.residual),
            y.buf_mut(),
        )?;
        Ok(self.push(Op::Conv2d { x, w, b, chan_bias: extra.chan_bias, residual: extra.residual, geom }, y, started))
    }
}

/// The backend entry point shared by conv2d and conv_transpose2d: `(geom, n, x, w, channels, gout, dx, dw)`.
type ConvBackwardKernel<B> = fn(
    &B,
    &ConvGeom,
    usize,
    &<B as Backend>::Buf,
    &<B as Backend>::Buf,
    usize,
    &<B as Backend>::Buf,
    Option<&mut <B as Backend>::Buf>,
    Option<&mut <B as Backend>::Buf>,
) -> Result<()>;

/// `Some(tensor shaped like v)` for a kernel to fill when `v` needs a gradient.
fn grad_for<B: Backend>(tape: &Tape<B>, v: Var) -> Result<Option<Tensor<B>>> {
    tape.needs_grad(v).then(|| Tensor::alloc(tape.backend(), tape.value(v).shape())).transpose()
}

/// Input and weight gradients of a conv (`kernel` is [`Backend::conv2d_backward`] or
/// [`Backend::conv_transpose2d_backward`]; `channels` is the weight's first dimension).
fn conv_backward<B: Backend>(
    tape: &Tape<B>,
    x: Var,
    w: Var,
    geom: ConvGeom,
    gout: &Tensor<B>,
    kernel: ConvBackwardKernel<B>,
    out: &mut Vec<(Var, Tensor<B>)>,
) -> Result<()> {
    let (xv, wv) = (tape.value(x), tape.value(w));
    let (mut dx, mut dw) = (grad_for(tape, x)?, grad_for(tape, w)?);
    let n = xv.shape()[0];
    kernel(
        tape.backend(),
        &geom,
        n,
        xv.buf(),
        wv.buf(),
        wv.shape()[0],
        gout.buf(),
        dx.as_mut().map(Tensor::buf_mut),
        dw.as_mut().map(Tensor::buf_mut),
    )?;
    out.extend(dx.map(|d| (x, d)).into_iter().chain(dw.map(|d| (w, d))));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// conv_transpose2d

impl<B: Backend> Tape<'_, B> {
    /// `y = conv_transpose2d(x, w, stride, pad) + b` (PyTorch's ConvTranspose2d), `x: [n, c_in, h, w]`,
    /// `w: [c_in, c_out, k, k]`, `y: [n, c_out, (h-1)s - 2p + k, (w-1)s - 2p + k]`.
    pub fn conv_transpose2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv_transpose2d input")?;
        let (wci, co, kh, kw) = self.value(w).dims4("conv_transpose2d weight")?;
        let (oh, ow) = (
            (h as isize - 1) * stride as isize - 2 * pad as isize + kh as isize,
            (wd as isize - 1) * stride as isize - 2 * pad as isize + kw as isize,
        );
        if wci != ci || kh != kw || stride == 0 || oh <= 0 || ow <= 0 {
            return shape_err!(
                "conv_transpose2d: weight {:?} (stride {stride}, pad {pad}) does not fit input {:?}",
                self.value(w).shape(),
                self.value(x).shape()
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
        check_shape(self, b, &[co], "conv_transpose2d bias")?;
        let mut y = Tensor::alloc(self.backend(), &[n, co, geom.h, geom.w])?;
        let bias = b.map(|b| self.value(b).buf());
        self.backend().conv_transpose2d_forward(
            &geom,
            n,
            self.value(x).buf(),
            self.value(w).buf(),
            ci,
            bias,
            y.buf_mut(),
        )?;
        Ok(self.push(Op::ConvTranspose2d { x, w, b, geom }, y, started))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// group_norm (+ silu)

impl<B: Backend> Tape<'_, B> {
    /// GroupNorm over `groups` groups of `x: [n, c, h, w]` with affine `gamma, beta: [c]`, eps 1e-5; followed by
    /// SiLU when `silu` (fused: one pass, and the pre-SiLU value is not kept).
    pub fn group_norm(&mut self, x: Var, gamma: Var, beta: Var, groups: usize, silu: bool) -> Result<Var> {
        let started = profile::start();
        let (n, c, h, w) = self.value(x).dims4("group_norm input")?;
        if groups == 0 || c % groups != 0 {
            return shape_err!("group_norm: {c} channels do not split into {groups} groups");
        }
        check_shape(self, Some(gamma), &[c], "group_norm weight")?;
        check_shape(self, Some(beta), &[c], "group_norm bias")?;
        let d = NormDims { n, c, plane: h * w, groups };
        let mut y = Tensor::alloc(self.backend(), &[n, c, h, w])?;
        let (g, b) = (self.value(gamma).buf(), self.value(beta).buf());
        let (mean, rstd) =
            self.backend().group_norm_forward(d, self.value(x).buf(), g, b, GROUP_NORM_EPS, silu, y.buf_mut())?;
        Ok(self.push(Op::GroupNorm { x, gamma, beta, groups, silu, mean, rstd }, y, started))
    }
}

/// Gradients of a group norm's input and affine parameters.
#[allow(clippy::type_complexity)]
fn group_norm_backward<B: Backend>(
    tape: &Tape<B>,
    (x, gamma, beta): (Var, Var, Var),
    groups: usize,
    silu: bool,
    (mean, rstd): (&B::Buf, &B::Buf),
    gout: &Tensor<B>,
    out: &mut Vec<(Var, Tensor<B>)>,
) -> Result<()> {
    let xv = tape.value(x);
    let (n, c, h, w) = xv.dims4("group_norm input")?;
    let d = NormDims { n, c, plane: h * w, groups };
    let mut dx = grad_for(tape, x)?;
    let (g, b) = (tape.value(gamma).buf(), tape.value(beta).buf());
    let be = tape.backend();
    let (dg, db) =
        be.group_norm_backward(d, xv.buf(), g, b, mean, rstd, silu, gout.buf(), dx.as_mut().map(Tensor::buf_mut))?;
    out.extend(dx.map(|d| (x, d)));
    out.push((gamma, Tensor::from_buf(be.clone(), &[c], dg)?));
    out.push((beta, Tensor::from_buf(be.clone(), &[c], db)?));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// silu, linear, concat, mse

impl<B: Backend> Tape<'_, B> {
    /// `y = silu(x) = x·σ(x)` elementwise.
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        let started = profile::start();
        let xv = self.value(x);
        let mut y = Tensor::alloc(self.backend(), xv.shape())?;
        self.backend().silu_forward(xv.buf(), y.buf_mut())?;
        Ok(self.push(Op::Silu { x }, y, started))
    }

    /// `y = x Wᵀ + b`, `x: [batch, in]`, `w: [out, in]`, `b: [out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let started = profile::start();
        let (batch, fin) = self.value(x).dims2("linear input")?;
        let (fout, win) = self.value(w).dims2("linear weight")?;
        if win != fin {
            return shape_err!(
                "linear: weight {:?} does not fit input {:?}",
                self.value(w).shape(),
                self.value(x).shape()
            );
        }
        check_shape(self, b, &[fout], "linear bias")?;
        let mut y = Tensor::alloc(self.backend(), &[batch, fout])?;
        let bias = b.map(|b| self.value(b).buf());
        self.backend().linear_forward(self.value(x).buf(), self.value(w).buf(), bias, batch, fin, fout, y.buf_mut())?;
        Ok(self.push(Op::Linear { x, w, b }, y, started))
    }

    /// `y = [a, b]` concatenated along channels (`[n, ca, h, w]`, `[n, cb, h, w]` → `[n, ca+cb, h, w]`).
    pub fn concat(&mut self, a: Var, b: Var) -> Result<Var> {
        let started = profile::start();
        let (n, ca, h, w) = self.value(a).dims4("concat first input")?;
        let (nb, cb, hb, wb) = self.value(b).dims4("concat second input")?;
        if (n, h, w) != (nb, hb, wb) {
            return shape_err!(
                "concat: {:?} and {:?} differ outside the channel dim",
                self.value(a).shape(),
                self.value(b).shape()
            );
        }
        let mut y = Tensor::alloc(self.backend(), &[n, ca + cb, h, w])?;
        self.backend().concat_channels(self.value(a).buf(), self.value(b).buf(), n, ca, cb, h * w, y.buf_mut())?;
        Ok(self.push(Op::Concat { a, b }, y, started))
    }

    /// `L = mean((pred - target)²)` over all elements, a one-element tensor.
    pub fn mse(&mut self, pred: Var, target: Var) -> Result<Var> {
        let started = profile::start();
        let (p, t) = (self.value(pred), self.value(target));
        if p.shape() != t.shape() {
            return shape_err!("mse: prediction {:?} and target {:?} differ", p.shape(), t.shape());
        }
        let loss = Tensor::from_buf(self.backend().clone(), &[1], self.backend().mse(p.buf(), t.buf())?)?;
        Ok(self.push(Op::Mse { pred, target }, loss, started))
    }
}

/// Gradients of a linear layer's input, weight and bias.
fn linear_backward<B: Backend>(
    tape: &Tape<B>,
    x: Var,
    w: Var,
    b: Option<Var>,
    gout: &Tensor<B>,
    out: &mut Vec<(Var, Tensor<B>)>,
) -> Result<()> {
    let (xv, wv) = (tape.value(x), tape.value(w));
    let (batch, fin) = xv.dims2("linear input")?;
    let fout = wv.shape()[0];
    let (mut dx, mut dw) = (grad_for(tape, x)?, grad_for(tape, w)?);
    let (dxs, dws) = (dx.as_mut().map(Tensor::buf_mut), dw.as_mut().map(Tensor::buf_mut));
    let be = tape.backend();
    be.linear_backward(xv.buf(), wv.buf(), gout.buf(), batch, fin, fout, dxs, dws)?;
    out.extend(dx.map(|d| (x, d)).into_iter().chain(dw.map(|d| (w, d))));
    if let Some(b) = b {
        out.push((b, Tensor::from_buf(be.clone(), &[fout], be.column_sums(gout.buf(), batch, fout)?)?));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// relu, max_pool2d, flatten, cross_entropy: the classifier's ops

impl<B: Backend> Tape<'_, B> {
    /// `y = max(x, 0)` elementwise.
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let started = profile::start();
        let xv = self.value(x);
        let mut y = Tensor::alloc(self.backend(), xv.shape())?;
        self.backend().relu_forward(xv.buf(), y.buf_mut())?;
        Ok(self.push(Op::Relu { x }, y, started))
    }

    /// 2x2 max pooling with stride 2 (PyTorch's `MaxPool2d(2)`): `[n, c, h, w]` → `[n, c, h/2, w/2]`, an odd last
    /// row or column dropped; the gradient goes to each window's first maximum in row-major order.
    pub fn max_pool2d(&mut self, x: Var) -> Result<Var> {
        let started = profile::start();
        let (n, c, h, w) = self.value(x).dims4("max_pool2d input")?;
        if h < 2 || w < 2 {
            return shape_err!("max_pool2d: a {h}x{w} input has no 2x2 window");
        }
        let mut y = Tensor::alloc(self.backend(), &[n, c, h / 2, w / 2])?;
        let argmax = self.backend().max_pool2d_forward(n * c, h, w, self.value(x).buf(), y.buf_mut())?;
        Ok(self.push(Op::MaxPool2d { x, argmax }, y, started))
    }

    /// `[n, d1, d2, ...]` → `[n, d1·d2·...]`, the same values in the same order (`torch.flatten(x, 1)`).
    pub fn flatten(&mut self, x: Var) -> Result<Var> {
        let started = profile::start();
        let xv = self.value(x);
        let Some((&n, rest)) = xv.shape().split_first().filter(|(_, rest)| !rest.is_empty()) else {
            return shape_err!("flatten: expected at least 2 dimensions, got shape {:?}", xv.shape());
        };
        let rest = rest.iter().product();
        // The tape owns every node's value, so the flattened one is a copy (one pass over the activations).
        let y = xv.try_clone()?.reshape(&[n, rest])?;
        Ok(self.push(Op::Flatten { x }, y, started))
    }

    /// The mean softmax cross-entropy `L = -(1/n) Σ_i log_softmax(z_i)[y_i]` of `logits: [n, classes]` against one
    /// label in `0..classes` per row, a one-element tensor. Max-subtracted, so any finite logits are safe.
    pub fn cross_entropy(&mut self, logits: Var, labels: &[usize]) -> Result<Var> {
        let started = profile::start();
        let (n, classes) = self.value(logits).dims2("cross_entropy logits")?;
        if labels.len() != n {
            return shape_err!("cross_entropy: {} labels for {n} rows of logits", labels.len());
        }
        // The kernels index each row with its label, so labels are checked here, on the host, where they are made.
        if let Some(bad) = labels.iter().find(|&&y| y >= classes) {
            return shape_err!("cross_entropy: label {bad} out of range 0..{classes}");
        }
        let be = self.backend().clone();
        let labels = be.upload(labels.iter().map(|&y| y as f32).collect())?;
        let (loss, lse) = be.cross_entropy(self.value(logits).buf(), &labels, n, classes)?;
        let loss = Tensor::from_buf(be, &[1], loss)?;
        Ok(self.push(Op::CrossEntropy { logits, labels, lse }, loss, started))
    }
}
