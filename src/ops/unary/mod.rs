//! Elementwise activations `y = f(x)`, one [`UnaryKind`] each: the scalar formula and its derivative are written
//! here once for the CPU (beside the kind) and once in `unary.cu` for the GPU; the tape method, the rule, the
//! kernels' loops and the tests are shared by every kind.

mod cpu;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

pub use cpu::{exp_fast, sigmoid};

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::Planes;
use crate::error::Result;
use crate::tensor::Tensor;
use std::fmt;

/// An elementwise activation. The discriminant is the kind's code in `unary.cu`'s `switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum UnaryKind {
    /// `silu(x) = x·σ(x)`.
    Silu = 0,
    /// `relu(x) = max(x, 0)`; a NaN stays NaN, as in `torch.relu`.
    Relu = 1,
}

impl UnaryKind {
    /// Every kind, for the tests.
    pub const ALL: &'static [UnaryKind] = &[UnaryKind::Silu, UnaryKind::Relu];

    /// The op's name, as printed and profiled.
    pub fn name(self) -> &'static str {
        match self {
            UnaryKind::Silu => "silu",
            UnaryKind::Relu => "relu",
        }
    }

    /// `f(x)` (the CPU's formula; `unary.cu` has the GPU's).
    #[inline(always)]
    pub fn forward(self, x: f32) -> f32 {
        match self {
            UnaryKind::Silu => x * sigmoid(x),
            UnaryKind::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
        }
    }

    /// `gy·f'(x)`.
    #[inline(always)]
    pub fn backward(self, x: f32, gy: f32) -> f32 {
        match self {
            // σ(x)·(1 + x·(1 - σ(x))).
            UnaryKind::Silu => {
                let s = sigmoid(x);
                gy * (s * (1.0 + x * (1.0 - s)))
            }
            // The subgradient 0 at x = 0, as PyTorch takes it.
            UnaryKind::Relu => {
                if x > 0.0 {
                    gy
                } else {
                    0.0
                }
            }
        }
    }
}

/// What a backend offers for elementwise activations.
pub trait UnaryOps: Memory {
    /// `y = f(x)` elementwise.
    fn unary_forward(&self, kind: UnaryKind, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = gy·f'(x)` elementwise.
    fn unary_backward(&self, kind: UnaryKind, x: &Self::Buf, gy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// `y = f(x)` elementwise for the activation `kind`.
    pub fn unary(&mut self, kind: UnaryKind, x: Var) -> Result<Var> {
        self.unary_with(kind, x, false)
    }

    /// [`Tape::unary`]; with `operand`, `y`'s operand is written in the same pass when `x` is a `[n, c]` matrix,
    /// for the linear layers that read `y` ([`Tape::operand`]).
    pub fn unary_with(&mut self, kind: UnaryKind, x: Var, operand: bool) -> Result<Var> {
        let started = profile::start();
        let (be, xv) = (self.backend(), self.value(x));
        let mut y = Tensor::alloc(be, xv.shape())?;
        let planes = match *xv.shape() {
            [n, c] if operand => Some(Planes { n, c, plane: 1 }),
            _ => None,
        };
        let room = match planes {
            Some(d) => be.operand_for_output(d)?.map(|op| (d, op)),
            None => None,
        };
        let Some((d, mut op)) = room else {
            be.unary_forward(kind, xv.buf(), y.buf_mut())?;
            return Ok(self.push(Unary { kind, x }, y, started));
        };
        be.unary_with_operand(kind, (xv.buf(), d), y.buf_mut(), &mut op)?;
        let v = self.push(Unary { kind, x }, y, started);
        self.set_operand(v, op);
        Ok(v)
    }

    /// `y = silu(x) = x·σ(x)` elementwise.
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryKind::Silu, x)
    }

    /// `y = max(x, 0)` elementwise.
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryKind::Relu, x)
    }
}

/// The tape's rule of `y = f(x)` for the activation `kind`, for an op that computed `y` itself
/// ([`Tape::linear_act`]).
pub(crate) fn unary_rule<B: Backend>(kind: UnaryKind, x: Var) -> impl Rule<B> {
    Unary { kind, x }
}

/// `y = f(x)`: `dx = gy·f'(x)`.
struct Unary {
    kind: UnaryKind,
    x: Var,
}

impl<B: Backend> Rule<B> for Unary {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let (be, x) = (tape.backend(), tape.value(self.x));
        let mut dx = Tensor::alloc(be, gout.shape())?;
        // A matrix that a linear layer made: its gradient's operand is written with it.
        let matrix = match *x.shape() {
            [n, c] if tape.wants_grad_operand(self.x) => Some(Planes { n, c, plane: 1 }),
            _ => None,
        };
        let Some(d) = matrix else {
            be.unary_backward(self.kind, x.buf(), gout.buf(), dx.buf_mut())?;
            return Ok(vec![(self.x, dx)]);
        };
        if let Some(op) = be.unary_backward_with_operand(self.kind, (x.buf(), d), gout.buf(), dx.buf_mut())? {
            tape.set_grad_operand(self.x, std::sync::Arc::new(op));
        }
        Ok(vec![(self.x, dx)])
    }
}

impl fmt::Display for Unary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind.name(), list_vars(&[self.x]))
    }
}
