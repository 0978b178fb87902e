//! The ops the UNet is made of. For each op: the [`Tape`] method that checks shapes and runs the forward kernel,
//! and, right below it, the backward that turns `dL/d(output)` into gradients for the inputs that need one.

use super::{profile, Tape, Var};
use crate::cpu::conv::{self, ConvGeom, ConvGrads, Epilogue};
use crate::cpu::elementwise as ew;
use crate::cpu::norm::{self, NormDims};
use crate::error::Result;
use crate::params::ParamId;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// GroupNorm's `eps`, as PyTorch's default.
pub const GROUP_NORM_EPS: f32 = 1e-5;

/// One recorded operation: its inputs and attributes, plus what it saved for the backward pass.
#[derive(Debug)]
pub enum Op {
    /// A constant fed into the graph.
    Input,
    /// A trainable parameter.
    Param(ParamId),
    /// `y = conv2d(x, w) + b + chan_bias[n, c] + residual`.
    Conv2d { x: Var, w: Var, b: Option<Var>, chan_bias: Option<Var>, residual: Option<Var>, geom: ConvGeom },
    /// `y = conv_transpose2d(x, w) + b`, weight `[c_in, c_out, k, k]`.
    ConvTranspose2d { x: Var, w: Var, b: Option<Var>, geom: ConvGeom },
    /// `y = γ·(x-μ)/σ + β` per group, then SiLU if `silu`. Saves `(μ, 1/σ)` per (image, group).
    GroupNorm { x: Var, gamma: Var, beta: Var, groups: usize, silu: bool, mean: Vec<f32>, rstd: Vec<f32> },
    /// `y = x·σ(x)`.
    Silu { x: Var },
    /// `y = x Wᵀ + b`.
    Linear { x: Var, w: Var, b: Option<Var> },
    /// `y = [a, b]` along channels.
    Concat { a: Var, b: Var },
    /// `L = mean((pred - target)²)`.
    Mse { pred: Var, target: Var },
}

/// Optional terms fused into a conv's output (see [`Epilogue`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvExtra {
    /// `[n, c_out]`, added to every pixel of channel c of image n (the ResBlock's time projection).
    pub chan_bias: Option<Var>,
    /// `[n, c_out, oh, ow]`, added elementwise (a residual connection).
    pub residual: Option<Var>,
}

impl Op {
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
            Op::Silu { x } => vec![*x],
            Op::Concat { a, b } => vec![*a, *b],
            Op::Mse { pred, target } => vec![*pred, *target],
        }
    }

    /// Gradients of this op's inputs, given `gout = dL/d(output)`; only for inputs that need one.
    pub(super) fn backward(&self, tape: &Tape, gout: Tensor) -> Result<Vec<(Var, Tensor)>> {
        let need = |v: Var| tape.needs_grad(v);
        let mut out = Vec::new();
        match self {
            Op::Input | Op::Param(_) => {}
            Op::Conv2d { x, w, b, chan_bias, residual, geom } => {
                conv_backward(tape, *x, *w, *geom, &gout, conv::conv2d_backward, &mut out);
                let (n, co, plane) = (gout.shape()[0], gout.shape()[1], geom.oh * geom.ow);
                if let Some(b) = b.filter(|&b| need(b)) {
                    out.push((b, Tensor::new(&[co], conv::channel_sums(gout.data(), n, co, plane, false))?));
                }
                if let Some(cb) = chan_bias.filter(|&v| need(v)) {
                    out.push((cb, Tensor::new(&[n, co], conv::channel_sums(gout.data(), n, co, plane, true))?));
                }
                if let Some(r) = residual.filter(|&v| need(v)) {
                    out.push((r, gout));
                }
            }
            Op::ConvTranspose2d { x, w, b, geom } => {
                conv_backward(tape, *x, *w, *geom, &gout, conv::conv_transpose2d_backward, &mut out);
                if let Some(b) = b.filter(|&b| need(b)) {
                    let (n, co) = (gout.shape()[0], geom.c);
                    out.push((b, Tensor::new(&[co], conv::channel_sums(gout.data(), n, co, geom.h * geom.w, false))?));
                }
            }
            Op::GroupNorm { x, gamma, beta, groups, silu, mean, rstd } => {
                group_norm_backward(tape, (*x, *gamma, *beta), *groups, *silu, (mean, rstd), &gout, &mut out)?
            }
            Op::Silu { x } => {
                let mut dx = Tensor::zeros(gout.shape());
                ew::silu_backward(tape.value(*x).data(), gout.data(), dx.data_mut());
                out.push((*x, dx));
            }
            Op::Linear { x, w, b } => linear_backward(tape, *x, *w, *b, &gout, &mut out)?,
            Op::Concat { a, b } => {
                let (sa, sb) = (tape.value(*a).shape().to_vec(), tape.value(*b).shape().to_vec());
                let (ga, gb) = ew::split_channels(gout.data(), sa[0], sa[1], sb[1], sa[2] * sa[3]);
                out.push((*a, Tensor::new(&sa, ga)?));
                out.push((*b, Tensor::new(&sb, gb)?));
            }
            Op::Mse { pred, target } => {
                // dL/dpred = (2/N)(pred - target) and dL/dtarget = (2/N)(target - pred): the same kernel with the
                // roles swapped.
                for (v, other) in [(*pred, *target), (*target, *pred)] {
                    if need(v) {
                        let mut g = Tensor::zeros(tape.value(v).shape());
                        let (p, t) = (tape.value(v).data(), tape.value(other).data());
                        ew::mse_backward(p, t, gout.data()[0], g.data_mut());
                        out.push((v, g));
                    }
                }
            }
        }
        out.retain(|(v, _)| need(*v));
        Ok(out)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: Vec<Var>| vs.iter().map(|v| format!("%{}", v.0)).collect::<Vec<_>>().join(", ");
        match self {
            Op::Input => write!(f, "input"),
            Op::Param(_) => write!(f, "param"),
            Op::Conv2d { geom, .. } => write!(f, "conv2d({}; k={} s={} p={})", list(self.inputs()), geom.k, geom.stride, geom.pad),
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
        }
    }
}

/// Checks that an optional bias-like input has exactly `shape`.
fn check_shape(tape: &Tape, v: Option<Var>, shape: &[usize], what: &str) -> Result<()> {
    match v.map(|v| tape.value(v).shape()) {
        Some(s) if s != shape => shape_err!("{what}: expected shape {shape:?}, got {s:?}"),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// conv2d

impl Tape<'_> {
    /// `y = conv2d(x, w, stride, pad) + b + extra` with `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`,
    /// `b: [c_out]`; `y: [n, c_out, (h+2p-k)/s+1, (w+2p-k)/s+1]`.
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize, extra: ConvExtra) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv2d input")?;
        let (co, wci, kh, kw) = self.value(w).dims4("conv2d weight")?;
        if wci != ci || kh != kw {
            return shape_err!("conv2d: weight {:?} does not fit input {:?}", self.value(w).shape(), self.value(x).shape());
        }
        let Some(geom) = ConvGeom::new(ci, h, wd, kh, stride, pad) else {
            return shape_err!("conv2d: kernel {kh} stride {stride} pad {pad} does not fit a {h}x{wd} input");
        };
        check_shape(self, b, &[co], "conv2d bias")?;
        check_shape(self, extra.chan_bias, &[n, co], "conv2d channel bias")?;
        check_shape(self, extra.residual, &[n, co, geom.oh, geom.ow], "conv2d residual")?;
        let mut y = Tensor::zeros(&[n, co, geom.oh, geom.ow]);
        let epi = Epilogue {
            bias: b.map(|b| self.value(b).data()),
            chan_bias: extra.chan_bias.map(|v| self.value(v).data()),
            residual: extra.residual.map(|v| self.value(v).data()),
        };
        conv::conv2d_forward(&geom, n, self.value(x).data(), self.value(w).data(), co, epi, y.data_mut());
        Ok(self.push(Op::Conv2d { x, w, b, chan_bias: extra.chan_bias, residual: extra.residual, geom }, y, started))
    }
}

/// The kernel-level backward shared by conv2d and conv_transpose2d: `(geom, n, x, w, channels, gout, grads)`.
type ConvBackwardKernel = fn(&ConvGeom, usize, &[f32], &[f32], usize, &[f32], ConvGrads);

/// Input and weight gradients of a conv (`kernel` is [`conv::conv2d_backward`] or
/// [`conv::conv_transpose2d_backward`]; `channels` is the weight's first dimension).
fn conv_backward(tape: &Tape, x: Var, w: Var, geom: ConvGeom, gout: &Tensor, kernel: ConvBackwardKernel, out: &mut Vec<(Var, Tensor)>) {
    let (xv, wv) = (tape.value(x), tape.value(w));
    let mut dx = tape.needs_grad(x).then(|| Tensor::zeros(xv.shape()));
    let mut dw = tape.needs_grad(w).then(|| Tensor::zeros(wv.shape()));
    let grads = ConvGrads { dx: dx.as_mut().map(|t| t.data_mut()), dw: dw.as_mut().map(|t| t.data_mut()) };
    kernel(&geom, xv.shape()[0], xv.data(), wv.data(), wv.shape()[0], gout.data(), grads);
    out.extend(dx.map(|d| (x, d)).into_iter().chain(dw.map(|d| (w, d))));
}

// ---------------------------------------------------------------------------------------------------------------
// conv_transpose2d

impl Tape<'_> {
    /// `y = conv_transpose2d(x, w, stride, pad) + b` (PyTorch's ConvTranspose2d), `x: [n, c_in, h, w]`,
    /// `w: [c_in, c_out, k, k]`, `y: [n, c_out, (h-1)s - 2p + k, (w-1)s - 2p + k]`.
    pub fn conv_transpose2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv_transpose2d input")?;
        let (wci, co, kh, kw) = self.value(w).dims4("conv_transpose2d weight")?;
        let (oh, ow) = ((h as isize - 1) * stride as isize - 2 * pad as isize + kh as isize, (wd as isize - 1) * stride as isize - 2 * pad as isize + kw as isize);
        if wci != ci || kh != kw || stride == 0 || oh <= 0 || ow <= 0 {
            return shape_err!("conv_transpose2d: weight {:?} (stride {stride}, pad {pad}) does not fit input {:?}", self.value(w).shape(), self.value(x).shape());
        }
        // The conv whose adjoint this is maps the [co, oh, ow] output back onto the [h, w] input grid.
        let geom = match ConvGeom::new(co, oh as usize, ow as usize, kh, stride, pad) {
            Some(g) if g.oh == h && g.ow == wd => g,
            _ => return shape_err!("conv_transpose2d: stride {stride} pad {pad} k {kh} is not invertible for a {h}x{wd} input"),
        };
        check_shape(self, b, &[co], "conv_transpose2d bias")?;
        let mut y = Tensor::zeros(&[n, co, geom.h, geom.w]);
        let bias = b.map(|b| self.value(b).data());
        conv::conv_transpose2d_forward(&geom, n, self.value(x).data(), self.value(w).data(), ci, bias, y.data_mut());
        Ok(self.push(Op::ConvTranspose2d { x, w, b, geom }, y, started))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// group_norm (+ silu)

impl Tape<'_> {
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
        let mut y = Tensor::zeros(&[n, c, h, w]);
        let (g, b) = (self.value(gamma).data(), self.value(beta).data());
        let (mean, rstd) = norm::group_norm_forward(d, self.value(x).data(), g, b, GROUP_NORM_EPS, silu, y.data_mut());
        Ok(self.push(Op::GroupNorm { x, gamma, beta, groups, silu, mean, rstd }, y, started))
    }
}

/// Gradients of a group norm's input and affine parameters.
fn group_norm_backward(tape: &Tape, (x, gamma, beta): (Var, Var, Var), groups: usize, silu: bool, (mean, rstd): (&[f32], &[f32]), gout: &Tensor, out: &mut Vec<(Var, Tensor)>) -> Result<()> {
    let xv = tape.value(x);
    let (n, c, h, w) = xv.dims4("group_norm input")?;
    let d = NormDims { n, c, plane: h * w, groups };
    let mut dx = tape.needs_grad(x).then(|| Tensor::zeros(xv.shape()));
    let (g, b) = (tape.value(gamma).data(), tape.value(beta).data());
    let (dg, db) = norm::group_norm_backward(d, xv.data(), g, b, mean, rstd, silu, gout.data(), dx.as_mut().map(|t| t.data_mut()));
    out.extend(dx.map(|d| (x, d)));
    out.push((gamma, Tensor::new(&[c], dg)?));
    out.push((beta, Tensor::new(&[c], db)?));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// silu, linear, concat, mse

impl Tape<'_> {
    /// `y = silu(x) = x·σ(x)` elementwise.
    pub fn silu(&mut self, x: Var) -> Var {
        let started = profile::start();
        let xv = self.value(x);
        let mut y = Tensor::zeros(xv.shape());
        ew::silu_forward(xv.data(), y.data_mut());
        self.push(Op::Silu { x }, y, started)
    }

    /// `y = x Wᵀ + b`, `x: [batch, in]`, `w: [out, in]`, `b: [out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let started = profile::start();
        let (batch, fin) = self.value(x).dims2("linear input")?;
        let (fout, win) = self.value(w).dims2("linear weight")?;
        if win != fin {
            return shape_err!("linear: weight {:?} does not fit input {:?}", self.value(w).shape(), self.value(x).shape());
        }
        check_shape(self, b, &[fout], "linear bias")?;
        let mut y = Tensor::zeros(&[batch, fout]);
        let bias = b.map(|b| self.value(b).data());
        ew::linear_forward(self.value(x).data(), self.value(w).data(), bias, batch, fin, fout, y.data_mut());
        Ok(self.push(Op::Linear { x, w, b }, y, started))
    }

    /// `y = [a, b]` concatenated along channels (`[n, ca, h, w]`, `[n, cb, h, w]` → `[n, ca+cb, h, w]`).
    pub fn concat(&mut self, a: Var, b: Var) -> Result<Var> {
        let started = profile::start();
        let (n, ca, h, w) = self.value(a).dims4("concat first input")?;
        let (nb, cb, hb, wb) = self.value(b).dims4("concat second input")?;
        if (n, h, w) != (nb, hb, wb) {
            return shape_err!("concat: {:?} and {:?} differ outside the channel dim", self.value(a).shape(), self.value(b).shape());
        }
        let mut y = Tensor::zeros(&[n, ca + cb, h, w]);
        ew::concat_channels(self.value(a).data(), self.value(b).data(), ca, cb, h * w, y.data_mut());
        Ok(self.push(Op::Concat { a, b }, y, started))
    }

    /// `L = mean((pred - target)²)` over all elements, a one-element tensor.
    pub fn mse(&mut self, pred: Var, target: Var) -> Result<Var> {
        let started = profile::start();
        let (p, t) = (self.value(pred), self.value(target));
        if p.shape() != t.shape() {
            return shape_err!("mse: prediction {:?} and target {:?} differ", p.shape(), t.shape());
        }
        let loss = Tensor::new(&[1], vec![ew::mse(p.data(), t.data())])?;
        Ok(self.push(Op::Mse { pred, target }, loss, started))
    }
}

/// Gradients of a linear layer's input, weight and bias.
fn linear_backward(tape: &Tape, x: Var, w: Var, b: Option<Var>, gout: &Tensor, out: &mut Vec<(Var, Tensor)>) -> Result<()> {
    let (xv, wv) = (tape.value(x), tape.value(w));
    let (batch, fin) = xv.dims2("linear input")?;
    let fout = wv.shape()[0];
    let mut dx = tape.needs_grad(x).then(|| Tensor::zeros(xv.shape()));
    let mut dw = tape.needs_grad(w).then(|| Tensor::zeros(wv.shape()));
    let (dxs, dws) = (dx.as_mut().map(|t| t.data_mut()), dw.as_mut().map(|t| t.data_mut()));
    ew::linear_backward(xv.data(), wv.data(), gout.data(), batch, fin, fout, dxs, dws);
    out.extend(dx.map(|d| (x, d)).into_iter().chain(dw.map(|d| (w, d))));
    if let Some(b) = b {
        out.push((b, Tensor::new(&[fout], ew::column_sums(gout.data(), fout))?));
    }
    Ok(())
}
