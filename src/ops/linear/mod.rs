//! Linear layers `y = x Wᵀ + b`, and the matrix products under them and under the convolutions: the CPU's GEMM
//! (`gemm.rs`, on the `gemm` crate) and the GPU's (`gemm.cu`, launched from `gpu.rs`).

mod cpu;
pub mod gemm;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::{LayerGrads, LinearDesc};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for linear layers.
pub trait LinearOps: Memory {
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
}

impl<B: Backend> Tape<'_, B> {
    /// `y = x Wᵀ + b`, `x: [batch, in]`, `w: [out, in]`, `b: [out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let started = profile::start();
        let (batch, fin) = self.value(x).dims2("linear input")?;
        let (fout, win) = self.value(w).dims2("linear weight")?;
        if win != fin {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!("linear: weight {ws:?} does not fit input {xs:?}");
        }
        self.check_shape(b, &[fout], "linear bias")?;
        let d = LinearDesc { batch, fin, fout };
        let mut y = Tensor::alloc(self.backend(), &[batch, fout])?;
        let bias = b.map(|b| self.value(b).buf());
        self.backend().linear_forward(d, self.value(x).buf(), self.value(w).buf(), bias, y.buf_mut())?;
        Ok(self.push(Linear { x, w, b, d }, y, started))
    }
}

/// `y = x Wᵀ + b`: `dx = gy·W`, `dW = gyᵀ·x`, `db = Σ_rows gy`.
struct Linear {
    x: Var,
    w: Var,
    b: Option<Var>,
    d: LinearDesc,
}

impl Linear {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        [Some(self.x), Some(self.w), self.b].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let (mut dx, mut dw) = (tape.grad_for(self.x)?, tape.grad_for(self.w)?);
        let grads = LayerGrads { dx: dx.as_mut().map(Tensor::buf_mut), dw: dw.as_mut().map(Tensor::buf_mut) };
        be.linear_backward(self.d, tape.value(self.x).buf(), tape.value(self.w).buf(), gout.buf(), grads)?;
        let mut out: Vec<_> = dx.map(|d| (self.x, d)).into_iter().chain(dw.map(|d| (self.w, d))).collect();
        if let Some(b) = self.b.filter(|&b| tape.needs_grad(b)) {
            let db = be.column_sums(gout.buf(), self.d.batch, self.d.fout)?;
            out.push((b, Tensor::from_buf(be.clone(), &[self.d.fout], db)?));
        }
        Ok(out)
    }
}

impl fmt::Display for Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linear({})", list_vars(&self.vars()))
    }
}
