//! Group normalisation (Wu & He 2018), optionally fused with the SiLU that follows it in every ResBlock.

mod cpu;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::NormDesc;
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;
use std::sync::Arc;

/// GroupNorm's `eps`, as PyTorch's default.
pub const GROUP_NORM_EPS: f32 = 1e-5;

/// What a backend offers for group norms.
pub trait NormOps: Memory {
    /// `y = γ·(x-μ)/σ + β` per group (then SiLU when `d.silu`); returns the saved `(μ, 1/σ)`, `[n·groups]` each.
    fn group_norm_forward(
        &self,
        d: NormDesc,
        x: &Self::Buf,
        affine: (&Self::Buf, &Self::Buf),
        y: &mut Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// The backward from `(x, γ, β)` and the saved `(μ, 1/σ)`: `dx` when asked for (`(dx, true)`: added to what
    /// `dx` holds, x's gradient from its other readers, in the same pass), and `(dγ, dβ)` written into `daffine`
    /// (`[c]` each: the parameters' gradients, in their places).
    fn group_norm_backward(
        &self,
        d: NormDesc,
        inputs: (&Self::Buf, &Self::Buf, &Self::Buf),
        stats: (&Self::Buf, &Self::Buf),
        gy: &Self::Buf,
        dx: Option<(&mut Self::Buf, bool)>,
        daffine: (&mut Self::Buf, &mut Self::Buf),
    ) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// GroupNorm over `groups` groups of `x: [n, c, h, w]` with affine `gamma, beta: [c]`, eps 1e-5; followed by
    /// SiLU when `silu` (fused: one pass, and the pre-SiLU value is not kept).
    pub fn group_norm(&mut self, x: Var, gamma: Var, beta: Var, groups: usize, silu: bool) -> Result<Var> {
        let started = profile::start();
        let d = self.norm_desc(x, (gamma, beta), groups, silu)?;
        let mut y = Tensor::alloc(self.backend(), self.value(x).shape())?;
        let affine = (self.value(gamma).buf(), self.value(beta).buf());
        let (mean, rstd) = self.backend().group_norm_forward(d, self.value(x).buf(), affine, y.buf_mut())?;
        Ok(self.push(GroupNorm { x, gamma, beta, d, mean, rstd }, y, started))
    }

    /// The GroupNorm of `x: [n, c, h, w]` over `groups` groups with affine `gamma, beta: [c]`, checked.
    pub(crate) fn norm_desc(&self, x: Var, (gamma, beta): (Var, Var), groups: usize, silu: bool) -> Result<NormDesc> {
        let (n, c, h, w) = self.value(x).dims4("group_norm input")?;
        if groups == 0 || c % groups != 0 {
            return shape_err!("group_norm: {c} channels do not split into {groups} groups");
        }
        self.check_shape(Some(gamma), &[c], "group_norm weight")?;
        self.check_shape(Some(beta), &[c], "group_norm bias")?;
        Ok(NormDesc { n, c, plane: h * w, groups, eps: GROUP_NORM_EPS, silu })
    }
}

/// The gradients of a GroupNorm `d` of `x` with affine `(gamma, beta)` and saved `(μ, 1/σ)`, given its output's
/// gradient `gy`: x's when it needs one, γ's and β's in their places.
pub(crate) fn norm_grads<B: Backend>(
    tape: &Tape<B>,
    (x, gamma, beta): (Var, Var, Var),
    d: NormDesc,
    stats: (&B::Buf, &B::Buf),
    gy: &B::Buf,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let be = tape.backend();
    // x's gradient so far, when its other readers have made one, is added to in the same pass.
    let mut dx = tape.grad_into(x)?;
    // γ's and β's gradients in their places; both are made in one launch, so one that needs none (a tape tracks
    // every parameter, so never in practice) is made into scratch and dropped.
    let place = |v: Var| tape.grad_for(v)?.map_or_else(|| Tensor::alloc(be, &[d.c]), Ok);
    let (mut dg, mut db) = (place(gamma)?, place(beta)?);
    let inputs = (tape.value(x).buf(), tape.value(gamma).buf(), tape.value(beta).buf());
    let dxb = dx.as_mut().map(|(t, acc)| (t.buf_mut(), *acc));
    // When a conv's backward reads x's gradient, its operand is written with it (from the values dx ends up
    // holding); should a reader of x that runs later here add to that gradient, the tape drops the operand. When
    // that conv adds a channel bias that is columns of a wider value, the per-image sums (the bias's gradient) go
    // straight into that value's gradient.
    let operand = dxb.is_some() && tape.wants_grad_operand(x);
    let daffine = (dg.buf_mut(), db.buf_mut());
    let columns = tape.chan_bias_columns(x).filter(|_| operand).map(|cb| (cb, d.c, x));
    let op = tape.with_grad_columns(columns, |into| {
        let into_columns = into.is_some();
        let op = be.group_norm_backward_with(d, inputs, stats, gy, dxb, daffine, (operand, into))?;
        let written = into_columns && op.is_some();
        Ok((op, written))
    })?;
    if let Some(op) = op {
        tape.set_grad_operand(x, Arc::new(op));
    }
    let mut out: Vec<_> = dx.map(|(d, _)| (x, d)).into_iter().collect();
    out.push((gamma, dg));
    out.push((beta, db));
    Ok(out)
}

/// `y = γ·(x-μ)/σ + β` per group, then SiLU if `d.silu`. Saves `(μ, 1/σ)` per (image, group); the backward
/// recomputes the pre-SiLU value from them.
struct GroupNorm<B: Backend> {
    x: Var,
    gamma: Var,
    beta: Var,
    d: NormDesc,
    mean: B::Buf,
    rstd: B::Buf,
}

impl<B: Backend> Rule<B> for GroupNorm<B> {
    fn name(&self) -> &'static str {
        if self.d.silu {
            "group_norm_silu"
        } else {
            "group_norm"
        }
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x, self.gamma, self.beta]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        norm_grads(tape, (self.x, self.gamma, self.beta), self.d, (&self.mean, &self.rstd), gout.buf())
    }
}

impl<B: Backend> fmt::Display for GroupNorm<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inputs = list_vars(&[self.x, self.gamma, self.beta]);
        write!(f, "{}({inputs}; groups={})", Rule::<B>::name(self), self.d.groups)
    }
}
