//! `conv2d(silu(GroupNorm(x)))` as one op: every GroupNorm of the UNet is read by one conv only, so the normalised
//! activation need not be a tape value. On the CPU and in f32 the two ops run in turn and the activation is kept
//! for the weight gradient; under bf16 on the GPU, GroupNorm writes the conv's bf16 channels-last operand directly
//! (`gpu.rs`), saving the f32 activation's write, its read and the conversion's launch.

use super::{weight_grads, with_gout, ChanBias, ConvExtra, ConvOps, Keep};
use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::Backend;
use crate::desc::{ConvDesc, Epilogue, NormDesc, Planes};
use crate::error::Result;
use crate::ops::norm::norm_grads;
use crate::tensor::Tensor;
use std::fmt;

/// The GroupNorm in front of a conv: affine `gamma, beta: [c]` over `groups` groups, then SiLU when `silu`.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub gamma: Var,
    pub beta: Var,
    pub groups: usize,
    pub silu: bool,
}

/// What [`ConvOps::norm_conv2d_forward`] leaves for the backward: GroupNorm's `(μ, 1/σ)`, the normalised
/// activation when the backend made it in f32, and what the conv kept.
pub struct NormConv<B: ConvOps> {
    pub stats: (B::Buf, B::Buf),
    pub activation: Option<B::Buf>,
    pub kept: Option<B::Kept>,
}

/// [`ConvOps::norm_conv2d_forward`] as GroupNorm into an f32 activation, then the conv of it.
pub fn norm_then_conv<B: ConvOps>(
    be: &B,
    (nd, x, affine): (NormDesc, &B::Buf, (&B::Buf, &B::Buf)),
    d: &ConvDesc,
    w: (&B::Buf, Option<&B::PackedWeight>),
    epi: Epilogue<B::Buf>,
    out: &mut B::Buf,
    keep: Keep,
) -> Result<NormConv<B>> {
    let mut a = be.alloc(nd.n * nd.c * nd.plane)?;
    let stats = be.group_norm_forward(nd, x, affine, &mut a)?;
    let kept = be.conv2d_forward_keep(d, (&a, None), w, epi, out, keep)?;
    Ok(NormConv { stats, activation: Some(a), kept })
}

impl<B: Backend> Tape<'_, B> {
    /// `y = conv2d(a, w, stride, pad) + b + extra` with `a = GroupNorm(x)` (then SiLU), for a GroupNorm that only
    /// this conv reads: [`Tape::group_norm`] then [`Tape::conv2d`], with `a` not on the tape.
    #[allow(clippy::too_many_arguments)] // the conv's own arguments, plus the norm
    pub fn norm_conv2d(
        &mut self,
        x: Var,
        norm: Norm,
        w: Var,
        b: Option<Var>,
        stride: usize,
        pad: usize,
        extra: ConvExtra,
    ) -> Result<Var> {
        let started = profile::start();
        let nd = self.norm_desc(x, (norm.gamma, norm.beta), norm.groups, norm.silu)?;
        let d = self.conv2d_desc(x, w, b, (stride, pad), extra)?;
        let mut y = Tensor::alloc(self.backend(), &[d.n, d.channels, d.geom.oh, d.geom.ow])?;
        // The weight's gradient reads `a`; the conv's input gradient is made when GroupNorm's backward runs.
        let norm_grads = [x, norm.gamma, norm.beta].iter().any(|&v| self.needs_grad(v));
        let keep = Keep { for_dw: self.needs_grad(w), for_dx: norm_grads };
        let affine = (self.value(norm.gamma).buf(), self.value(norm.beta).buf());
        let planes = Planes { n: d.n, c: d.channels, plane: d.geom.oh * d.geom.ow };
        let mut operand = if extra.operand { self.backend().operand_for_output(planes)? } else { None };
        let saved = self.backend().norm_conv2d_forward(
            (nd, self.value(x).buf(), affine),
            &d,
            (self.value(w).buf(), self.packed(w)?),
            self.epilogue(b, extra),
            (y.buf_mut(), operand.as_mut()),
            keep,
        )?;
        let v = self.push(NormConv2d { x, norm, w, b, extra, nd, d, saved }, y, started);
        if let Some(op) = operand {
            self.set_operand(v, op);
        }
        Ok(v)
    }
}

/// `y = conv2d(GroupNorm(x), w) + b + extra`: the conv's backward into the activation's gradient, then
/// GroupNorm's from it.
struct NormConv2d<B: Backend> {
    x: Var,
    norm: Norm,
    w: Var,
    b: Option<Var>,
    extra: ConvExtra,
    nd: NormDesc,
    d: ConvDesc,
    saved: NormConv<B>,
}

impl<B: Backend> NormConv2d<B> {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        let (n, e) = (self.norm, self.extra);
        [Some(self.x), Some(n.gamma), Some(n.beta), Some(self.w), self.b, e.chan_bias.map(|c| c.var), e.residual]
            .into_iter()
            .flatten()
            .collect()
    }
}

impl<B: Backend> Rule<B> for NormConv2d<B> {
    fn name(&self) -> &'static str {
        "norm_conv2d"
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let (x, n) = (self.x, self.norm);
        // The activation's gradient (written, not added to), only when GroupNorm's backward reads it.
        let mut da = if [x, n.gamma, n.beta].iter().any(|&v| tape.needs_grad(v)) {
            Some((Tensor::alloc(be, tape.value(x).shape())?, false))
        } else {
            None
        };
        let (a, w, kept) = (self.saved.activation.as_ref(), tape.value(self.w).buf(), self.saved.kept.as_ref());
        let mut out = with_gout(tape, gout, self.extra, |gout| {
            weight_grads(tape, da.as_mut(), self.w, (self.b, self.extra.chan_bias), |grads, sums| {
                be.conv2d_backward_with(&self.d, (a, w, gout), kept, grads, sums)
            })
        })?;
        if let Some((da, _)) = da {
            let stats = (&self.saved.stats.0, &self.saved.stats.1);
            out.extend(norm_grads(tape, (x, n.gamma, n.beta), self.nd, stats, da.buf())?);
        }
        Ok(out)
    }
    fn reads_grad_operand(&self) -> bool {
        true
    }
    fn chan_bias(&self) -> Option<ChanBias> {
        self.extra.chan_bias
    }
}

impl<B: Backend> fmt::Display for NormConv2d<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, inputs) = (self.d.geom, list_vars(&self.vars()));
        write!(f, "norm_conv2d({inputs}; groups={} k={} s={} p={})", self.norm.groups, g.k, g.stride, g.pad)
    }
}
