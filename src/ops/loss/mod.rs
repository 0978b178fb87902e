//! The losses: mean-squared error (the diffusion model's ε-loss) and softmax cross-entropy (the classifier's).

pub(crate) mod cpu;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

pub use cpu::log_sum_exp;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::{LogitsDesc, Planes};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for the losses.
pub trait LossOps: Memory {
    /// `L = (1/N)·Σ (p - t)²` into the one word `out` (on a GPU a view, e.g. of the training statistics' ring).
    fn mse(&self, p: &Self::Buf, t: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// `dp = (2/N)·(p - t)·gloss[0]`, `gloss` the loss's one-word gradient, read where it lives (on a GPU, without
    /// a copy to the host).
    fn mse_backward(&self, p: &Self::Buf, t: &Self::Buf, gloss: &Self::Buf, dp: &mut Self::Buf) -> Result<()>;
    /// `L = (1/n)·Σ_i (lse_i - z_i[y_i])` for logits `z` and `labels` (each below `d.classes`, checked by the
    /// caller); returns `(L, lse)`, a one-word buffer and the `[n]` row log-sum-exps for the backward.
    fn cross_entropy(&self, d: LogitsDesc, z: &Self::Buf, labels: &Self::Idx) -> Result<(Self::Buf, Self::Buf)>;
    /// `dz = (softmax(z) - onehot(y))·gloss/n`, from the labels and the forward's row log-sum-exps.
    fn cross_entropy_backward(
        &self,
        d: LogitsDesc,
        z: &Self::Buf,
        saved: (&Self::Idx, &Self::Buf),
        gloss: f32,
        dz: &mut Self::Buf,
    ) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// `L = mean((pred - target)²)` over all elements, a one-element tensor.
    pub fn mse(&mut self, pred: Var, target: Var) -> Result<Var> {
        let loss = Tensor::alloc(self.backend(), &[1])?;
        self.mse_into(pred, target, loss)
    }

    /// [`Tape::mse`] written into `loss` (one word, e.g. a view of the slot of the step's statistics: no copy).
    pub fn mse_into(&mut self, pred: Var, target: Var, mut loss: Tensor<B>) -> Result<Var> {
        let started = profile::start();
        let (p, t) = (self.value(pred), self.value(target));
        if p.shape() != t.shape() {
            return shape_err!("mse: prediction {:?} and target {:?} differ", p.shape(), t.shape());
        }
        if loss.numel() != 1 {
            return shape_err!("mse: a loss of shape {:?}, expected one word", loss.shape());
        }
        self.backend().mse(p.buf(), t.buf(), loss.buf_mut())?;
        Ok(self.push(Mse { pred, target }, loss, started))
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
        let labels = be.upload_indices(&labels.iter().map(|&y| y as u32).collect::<Vec<_>>())?;
        let d = LogitsDesc { n, classes };
        let (loss, lse) = be.cross_entropy(d, self.value(logits).buf(), &labels)?;
        let loss = Tensor::from_buf(be, &[1], loss)?;
        Ok(self.push(CrossEntropy { logits, d, labels, lse }, loss, started))
    }
}

/// `L = mean((pred - target)²)`: `dL/dpred = (2/N)(pred - target)`, `dL/dtarget = (2/N)(target - pred)`.
struct Mse {
    pred: Var,
    target: Var,
}

impl<B: Backend> Rule<B> for Mse {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.pred, self.target]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        // The same kernel with the roles swapped; dL/dL (1 unless a caller scales the loss) stays on the device.
        // A gradient that a conv's backward reads is written with its operand.
        let (be, mut out) = (tape.backend(), Vec::new());
        for (v, other) in [(self.pred, self.target), (self.target, self.pred)] {
            let Some(mut g) = tape.grad_for(v)? else { continue };
            let inputs = (tape.value(v).buf(), tape.value(other).buf(), gout.buf());
            match *tape.value(v).shape() {
                [n, c, h, w] if tape.wants_grad_operand(v) => {
                    let d = Planes { n, c, plane: h * w };
                    if let Some(op) = be.mse_backward_with_operand(inputs, g.buf_mut(), d)? {
                        tape.set_grad_operand(v, std::sync::Arc::new(op));
                    }
                }
                _ => be.mse_backward(inputs.0, inputs.1, inputs.2, g.buf_mut())?,
            }
            out.push((v, g));
        }
        Ok(out)
    }
}

impl fmt::Display for Mse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mse({})", list_vars(&[self.pred, self.target]))
    }
}

/// `L = -(1/n) Σ_i log_softmax(z_i)[y_i]`, keeping the labels and each row's log-sum-exp:
/// `dz = (softmax(z) - onehot(y))·dL/n`.
struct CrossEntropy<B: Backend> {
    logits: Var,
    d: LogitsDesc,
    labels: B::Idx,
    lse: B::Buf,
}

impl<B: Backend> Rule<B> for CrossEntropy<B> {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.logits]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let z = tape.value(self.logits);
        let mut dz = Tensor::alloc(tape.backend(), z.shape())?;
        let gloss = gout.to_vec()?[0];
        tape.backend().cross_entropy_backward(self.d, z.buf(), (&self.labels, &self.lse), gloss, dz.buf_mut())?;
        Ok(vec![(self.logits, dz)])
    }
}

impl<B: Backend> fmt::Display for CrossEntropy<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cross_entropy({})", list_vars(&[self.logits]))
    }
}
