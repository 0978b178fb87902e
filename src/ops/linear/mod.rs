//! Linear layers `y = x Wᵀ + b`, and the matrix products under them and under the convolutions: the CPU's GEMM
//! (`gemm.rs`, on the `gemm` crate) and the GPU's (`gemm.cu`, launched from `gpu.rs`).

mod cpu;
pub mod gemm;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, ConvOps, Memory};
use crate::desc::{GradsInto, LayerGrads, LinearDesc, Planes};
use crate::error::Result;
use crate::ops::conv::{overwriting, Keep};
use crate::ops::conv::{Gout, InputIn, WeightIn};
use crate::ops::unary::{unary_rule, UnaryKind};
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for linear layers. As for the convs, the tape uses the `_keep` / `_with` forms, which let
/// the forward keep a value for the backward ([`ConvOps::Kept`]: the GPU runs linear layers as 1x1 convs under
/// bf16); by default they are the plain forms.
pub trait LinearOps: ConvOps {
    /// `y = x Wᵀ + b`.
    fn linear_forward(
        &self,
        d: LinearDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx = gy·W`, `dW = gyᵀ·x`, each only when asked for (the bias's gradient is `ReduceOps::column_sums`).
    fn linear_backward(
        &self,
        d: LinearDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        gy: &Self::Buf,
        grads: LayerGrads<Self::Buf>,
    ) -> Result<()>;
    /// [`LinearOps::linear_forward`], also returning what [`LinearOps::linear_backward_with`] can reuse, as `keep`
    /// asks; `w.1` is the weight already packed (see [`ConvOps::conv2d_forward_keep`]).
    fn linear_forward_keep(
        &self,
        d: LinearDesc,
        ((x, operand), (w, packed), bias): (InputIn<'_, Self>, WeightIn<'_, Self>, Option<&Self::Buf>),
        y: &mut Self::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let _ = (keep, packed, operand);
        self.linear_forward(d, x, w, bias, y).map(|()| None)
    }
    /// [`LinearOps::linear_forward_keep`] into `y`, then the activation `a = f(y)` of `kind`, also written into
    /// `operand` when given (for the linear layer that reads `a`, [`ConvOps::operand_for_output`]); by default the
    /// two in turn.
    fn linear_forward_act(
        &self,
        d: LinearDesc,
        inputs: (InputIn<'_, Self>, WeightIn<'_, Self>, Option<&Self::Buf>),
        (y, (kind, a, operand)): (&mut Self::Buf, Activated<'_, Self>),
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let kept = self.linear_forward_keep(d, inputs, y, keep)?;
        match operand {
            Some(op) => self.unary_with_operand(kind, (y, Planes { n: d.batch, c: d.fout, plane: 1 }), a, op)?,
            None => self.unary_forward(kind, y, a)?,
        }
        Ok(kept)
    }
    /// [`LinearOps::linear_backward`] with what the forward kept, `dx` added to when `grads` says so, and the
    /// bias's gradient `db: [fout]` (the column sums of `gy`) when asked for; by default through
    /// [`ReduceOps::column_sums`](crate::backend::ReduceOps::column_sums).
    fn linear_backward_with(
        &self,
        d: LinearDesc,
        (x, w, gy): (&Self::Buf, &Self::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        (grads, db): (GradsInto<Self::Buf>, Option<&mut Self::Buf>),
    ) -> Result<()> {
        let (_, gy) = (kept, gy.values);
        overwriting(self, grads, |g| self.linear_backward(d, x, w, gy, g))?;
        db.map_or(Ok(()), |db| self.column_sums(gy, d.batch, d.fout, db))
    }
}

/// An activation after a linear layer ([`LinearOps::linear_forward_act`]): its kind, its values, and its operand
/// when one is written.
pub type Activated<'a, B> = (UnaryKind, &'a mut <B as Memory>::Buf, Option<&'a mut <B as ConvOps>::Operand>);

impl<B: Backend> Tape<'_, B> {
    /// `y = x Wᵀ + b`, `x: [batch, in]`, `w: [out, in]`, `b: [out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let started = profile::start();
        let d = self.linear_desc(x, w, b)?;
        let mut y = Tensor::alloc(self.backend(), &[d.batch, d.fout])?;
        let operand = self.operand(x)?;
        let inputs = (
            (self.value(x).buf(), operand.as_ref()),
            (self.value(w).buf(), self.packed(w)?),
            b.map(|b| self.value(b).buf()),
        );
        let kept = self.backend().linear_forward_keep(d, inputs, y.buf_mut(), Keep::on(self, x, w))?;
        Ok(self.push(Linear { x, w, b, d, kept }, y, started))
    }

    /// `(y, a)` with `y = x Wᵀ + b` and `a = f(y)` for the activation `kind`, `a` written with its operand for the
    /// linear layer that reads it ([`Tape::operand`]): [`Tape::linear`] and [`Tape::unary_with`] as two ops on the
    /// tape (the activation's backward reads `y`), made in one pass where the backend fuses them (under bf16 on a
    /// GPU, the GEMM's epilogue writes both values and the operand).
    pub fn linear_act(&mut self, x: Var, w: Var, b: Option<Var>, kind: UnaryKind) -> Result<(Var, Var)> {
        let started = profile::start();
        let d = self.linear_desc(x, w, b)?;
        let be = self.backend();
        let (mut y, mut a) = (Tensor::alloc(be, &[d.batch, d.fout])?, Tensor::alloc(be, &[d.batch, d.fout])?);
        let mut a_operand = be.operand_for_output(Planes { n: d.batch, c: d.fout, plane: 1 })?;
        let operand = self.operand(x)?;
        let inputs = (
            (self.value(x).buf(), operand.as_ref()),
            (self.value(w).buf(), self.packed(w)?),
            b.map(|b| self.value(b).buf()),
        );
        let outputs = (y.buf_mut(), (kind, a.buf_mut(), a_operand.as_mut()));
        let kept = self.backend().linear_forward_act(d, inputs, outputs, Keep::on(self, x, w))?;
        let y = self.push(Linear { x, w, b, d, kept }, y, started);
        let v = self.push(unary_rule(kind, y), a, None);
        if let Some(op) = a_operand {
            self.set_operand(v, op);
        }
        Ok((y, v))
    }

    /// The linear layer of `x` by `w` and `b`, checked against each other.
    fn linear_desc(&self, x: Var, w: Var, b: Option<Var>) -> Result<LinearDesc> {
        let (batch, fin) = self.value(x).dims2("linear input")?;
        let (fout, win) = self.value(w).dims2("linear weight")?;
        if win != fin {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!("linear: weight {ws:?} does not fit input {xs:?}");
        }
        self.check_shape(b, &[fout], "linear bias")?;
        Ok(LinearDesc { batch, fin, fout })
    }
}

/// `y = x Wᵀ + b`: `dx = gy·W`, `dW = gyᵀ·x`, `db = Σ_rows gy`; keeps what the forward left for the backward.
struct Linear<B: Backend> {
    x: Var,
    w: Var,
    b: Option<Var>,
    d: LinearDesc,
    kept: Option<B::Kept>,
}

impl<B: Backend> Linear<B> {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        [Some(self.x), Some(self.w), self.b].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for Linear<B> {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let (mut dx, mut dw) = (tape.grad_into(self.x)?, tape.grad_for(self.w)?);
        let add_dx = dx.as_ref().is_some_and(|d| d.1);
        let grads = LayerGrads { dx: dx.as_mut().map(|d| d.0.buf_mut()), dw: dw.as_mut().map(Tensor::buf_mut) };
        let grads = GradsInto { grads, add_dx };
        // The bias's gradient, written into its place.
        let mut db = match self.b {
            Some(b) => tape.grad_for(b)?.map(|t| (b, t)),
            None => None,
        };
        let mut gy = Gout { operand: tape.gout_operand(), ..Gout::of(gout.buf()) };
        let bufs = (tape.value(self.x).buf(), tape.value(self.w).buf(), &mut gy);
        let db_buf = db.as_mut().map(|(_, t)| t.buf_mut());
        be.linear_backward_with(self.d, bufs, self.kept.as_ref(), (grads, db_buf))?;
        Ok(dx.map(|(d, _)| (self.x, d)).into_iter().chain(dw.map(|d| (self.w, d))).chain(db).collect())
    }
    fn reads_grad_operand(&self) -> bool {
        true
    }
}

impl<B: Backend> fmt::Display for Linear<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linear({})", list_vars(&self.vars()))
    }
}
