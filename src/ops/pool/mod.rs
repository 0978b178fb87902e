//! Pooling and reshaping for the classifier: 2x2 max pooling with stride 2, and flatten.

mod cpu;
mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::PoolDesc;
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for pooling.
pub trait PoolOps: Memory {
    /// 2x2 max pooling, stride 2: `y: [planes, h/2, w/2]`; returns the offset `2·dy + dx` of each window's maximum.
    fn max_pool2d_forward(&self, d: PoolDesc, x: &Self::Buf, y: &mut Self::Buf) -> Result<Self::Idx>;
    /// `dx = gy` at each window's saved maximum, 0 elsewhere.
    fn max_pool2d_backward(&self, d: PoolDesc, argmax: &Self::Idx, gy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// 2x2 max pooling with stride 2 (PyTorch's `MaxPool2d(2)`): `[n, c, h, w]` → `[n, c, h/2, w/2]`, an odd last
    /// row or column dropped; the gradient goes to each window's first maximum in row-major order.
    pub fn max_pool2d(&mut self, x: Var) -> Result<Var> {
        let started = profile::start();
        let (n, c, h, w) = self.value(x).dims4("max_pool2d input")?;
        if h < 2 || w < 2 {
            return shape_err!("max_pool2d: a {h}x{w} input has no 2x2 window");
        }
        let d = PoolDesc { planes: n * c, h, w };
        let mut y = Tensor::alloc(self.backend(), &[n, c, h / 2, w / 2])?;
        let argmax = self.backend().max_pool2d_forward(d, self.value(x).buf(), y.buf_mut())?;
        Ok(self.push(MaxPool2d { x, d, argmax }, y, started))
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
        Ok(self.push(Flatten { x }, y, started))
    }
}

/// 2x2 max pooling, keeping each window's argmax: `dx = gy` there, 0 elsewhere.
struct MaxPool2d<B: Backend> {
    x: Var,
    d: PoolDesc,
    argmax: B::Idx,
}

impl<B: Backend> Rule<B> for MaxPool2d<B> {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let mut dx = Tensor::alloc(tape.backend(), tape.value(self.x).shape())?;
        tape.backend().max_pool2d_backward(self.d, &self.argmax, gout.buf(), dx.buf_mut())?;
        Ok(vec![(self.x, dx)])
    }
}

impl<B: Backend> fmt::Display for MaxPool2d<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max_pool2d({}; k=2 s=2)", list_vars(&[self.x]))
    }
}

/// `y = x` reshaped: the gradient is `gout` reshaped back.
struct Flatten {
    x: Var,
}

impl<B: Backend> Rule<B> for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        Ok(vec![(self.x, gout.reshape(tape.value(self.x).shape())?)])
    }
}

impl fmt::Display for Flatten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flatten({})", list_vars(&[self.x]))
    }
}
